"""measure(): the reference, approximations from the engine or cut from references, the summary."""

import warnings

import numpy as np
import pytest
import torch

import curvlab
from curvlab.analysis.measurement import Measurement, measure
from curvlab.errors import CurvlabWarning
from tests.cases import CASES

CASE = {c.name: c for c in CASES}["mlp-sigmoid-ce"]


@pytest.fixture(scope="module")
def measured():
    model, loss_fn, x, y = CASE.build(batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CurvlabWarning)
        result = measure(model, loss_fn, (x, y), reference="ggn",
                         approximations=["ggn_block", "diag_ggn", "kfac", "summary"], dampings=[0.1, 1.0], k=2)
    return model, loss_fn, x, y, result


def test_reference_and_blocks_are_exact(measured):
    model, loss_fn, x, y, result = measured
    assert isinstance(result, Measurement)
    exact = curvlab.reference.ggn(model, loss_fn, x, y)
    assert torch.allclose(result.curvature["ggn"].dense(), exact)
    blocks = result.quality.matrix_quality.sel(approximation="ggn_block", metric="rel_frobenius_error")
    assert np.allclose(blocks.sel(block=["0", "2"]), 0.0, atol=1e-12)
    diag = result.curvature["diag_ggn"].diagonal()
    assert torch.allclose(diag.to(exact.dtype), exact.diagonal(), atol=1e-10)
    assert torch.allclose(result.gradient, curvlab.reference.gradient(model, loss_fn, x, y))


def test_kfac_is_measured_or_skipped_with_reason(measured):
    *_, result = measured
    assert ("kfac" in result.curvature) != ("kfac" in result.skipped)


def test_summary_row_and_eigenvalues(measured):
    *_, result = measured
    ds = result.quality
    assert "summary" in ds.approximation.values
    assert ds.summary_hbar.shape == (4, 4)  # canonical: 2 weights + 2 biases
    ratio = ds.step_quality.sel(approximation="summary", block="all", step_metric="decrease_ratio")
    assert bool(((ratio > 0) & (ratio <= 1 + 1e-10)).all())
    assert ds.eigenvalues.size == result.curvature["ggn"].dense().shape[0]


def test_curvature_tree_writes_netcdf(measured, tmp_path):
    import xarray as xr

    from curvlab.analysis import netcdf

    *_, result = measured
    tree = result.curvature_tree()
    netcdf.write(tree, tmp_path / "c.nc")
    back = netcdf.read(tmp_path / "c.nc")
    assert {"ggn", "ggn_block", "diag_ggn"} <= set(back.children)
    xr.testing.assert_identical(back["ggn"].to_dataset(), tree["ggn"].to_dataset())
    assert back["ggn_block"]["block0"]["matrix"].shape == tree["ggn_block"]["block0"]["matrix"].shape


@pytest.mark.parametrize("kwargs, match", [({"reference": "nope"}, "unknown reference"),
                                           ({"approximations": ["kfcc"]}, "unknown approximations")])
def test_bad_names(kwargs, match):
    model, loss_fn, x, y = CASE.build(batch_size=2)
    with pytest.raises(ValueError, match=match):
        measure(model, loss_fn, (x, y), **kwargs)


def test_engine_absent_quantity_warns():
    model, loss_fn, x, y = CASE.build(batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = measure(model, loss_fn, (x, y), approximations=["ekfac"], dampings=[1.0], k=1, eigenvalues=False)
    if "ekfac" in result.skipped:
        assert any("ekfac" in str(w.message) for w in caught)
    else:
        assert "ekfac" in result.curvature


def test_summary_from_curvlab_matches_dense_hessian():
    import json

    from curvlab.analysis.interactions import summary_matrix
    from curvlab.partition import Partition

    model, loss_fn, x, y = CASE.build(batch_size=5)
    result = measure(model, loss_fn, (x, y), reference="hessian", approximations=["summary"], dampings=[0.5], k=1,
                     eigenvalues=False)
    assert json.loads(result.quality.attrs["sources"])["summary"] == "curvlab.grouped_newton_summary"
    hessian = curvlab.reference.hessian(model, loss_fn, x, y)
    expected = summary_matrix(hessian, result.gradient, Partition.from_model(model, "canonical"))
    assert np.allclose(result.quality.summary_hbar.values, expected.numpy(), atol=1e-10)
