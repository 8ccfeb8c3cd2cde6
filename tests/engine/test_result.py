"""The result object: mapping access, per-group blocks, xarray export and round trips."""

from __future__ import annotations

import pytest
import torch
import xarray as xr

import curvlab
from curvlab.engine import Curvature, compute
from tests.engine.engine_cases import ENGINE_CASES

QUANTITIES = ["kflr", "diag_ggn", "ggn_block", "empirical_fisher", "hessian"]


@pytest.fixture(scope="module")
def result():
    model, loss_fn, x, y = ENGINE_CASES[0].build(batch_size=6)
    return compute(model, loss_fn, (x, y), QUANTITIES, partition="canonical", progress=False)


def test_mapping_groups_and_provenance(result):
    assert list(result) == QUANTITIES and len(result) == 5
    assert torch.equal(result.group("diag_ggn", "0.weight"), torch.diag(result["diag_ggn"].diagonal()[:20]))
    assert result.attrs["batch_size"] == 6 and '"kflr"' in result.attrs["config"]
    with pytest.raises(KeyError, match="'kfac' was not computed"):
        result["kfac"]


def test_xarray_tree_has_one_child_per_quantity_and_named_kronecker_factors(result):
    tree = result.to_xarray()
    assert isinstance(tree, xr.DataTree) and set(tree.children) == set(QUANTITIES)
    assert tree.attrs["curvlab_kind"] == "curvature" and "torch_version" in tree.attrs
    names = {var for node in tree["kflr"].subtree for var in node.data_vars}
    assert {"A", "G"} <= names


def test_round_trip_in_memory_and_through_netcdf(result, tmp_path):
    back = Curvature.from_xarray(result.to_xarray())
    for q in QUANTITIES:
        assert torch.equal(back[q].dense(), result[q].dense()), q
    path = curvlab.save(result["kflr"], tmp_path / "kflr.nc")
    assert torch.allclose(curvlab.load(path).dense(), result["kflr"].dense())
    result.to_xarray().to_netcdf(tmp_path / "all.nc", engine="h5netcdf")
    loaded = Curvature.from_xarray(xr.open_datatree(tmp_path / "all.nc", engine="h5netcdf").load())
    assert torch.allclose(loaded["ggn_block"].dense(), result["ggn_block"].dense())
