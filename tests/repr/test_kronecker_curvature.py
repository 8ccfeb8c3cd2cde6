"""KroneckerCurvature: layer bookkeeping, dense fallback blocks, export as DataTree groups, errors."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from torch import nn

from curvlab.partition import Partition
from curvlab.repr import KroneckerCurvature, KroneckerFactors
from tests.repr.factories import build, spd

F64 = torch.float64


def test_layers_and_blocks():
    rep, expected = build("kronecker")
    assert list(rep.layers) == ["0", "2", "3"]
    assert isinstance(rep.layers["0"], KroneckerFactors) and isinstance(
        rep.layers["3"], torch.Tensor
    )
    torch.testing.assert_close(rep.block("0", "0"), rep.layers["0"].dense())
    assert torch.count_nonzero(rep.block("0", "3")) == 0
    torch.testing.assert_close(rep.dense(), expected)


def test_export_has_one_group_per_layer_with_factor_dims():
    rep, _ = build("kronecker")
    tree = rep.to_xarray()
    assert isinstance(tree, xr.DataTree) and set(tree.children) == {"layer0", "layer1", "layer2"}
    layer0 = tree["layer0"].to_dataset()
    assert layer0["A"].dims == ("in_i", "in_j") and layer0["G"].dims == ("out_i", "out_j")
    assert layer0.sizes["in_i"] == 4 and layer0.sizes["out_i"] == 2
    assert layer0.attrs["layer"] == "0" and list(layer0.attrs["params"]) == ["0.weight", "0.bias"]
    assert layer0.attrs["block"] == "kronecker" and layer0.attrs["offset"] == 0
    layer2 = tree["layer2"].to_dataset()
    assert layer2.attrs["block"] == "dense" and layer2["matrix"].dims == ("row", "col")
    assert layer2["row"].values.tolist() == [12, 13, 14]
    assert layer2["row_param"].values.tolist() == ["3.weight", "3.weight", "3.bias"]


def test_round_trip_keeps_the_factors_of_every_layer():
    rep, _ = build("kronecker")
    back = KroneckerCurvature.from_xarray(rep.to_xarray())
    for name, value in rep.layers.items():
        got = back.layers[name]
        if isinstance(value, KroneckerFactors):
            assert (
                torch.equal(got.A, value.A)
                and torch.equal(got.G, value.G)
                and got.bias == value.bias
            )
        else:
            assert torch.equal(got, value)


def test_corrupt_exports_are_named():
    rep, _ = build("kronecker")
    tree = rep.to_xarray()
    del tree["layer1"]
    with pytest.raises(ValueError, match="lacks the group 'layer1'"):
        KroneckerCurvature.from_xarray(tree)
    with pytest.raises(ValueError, match="curvlab_kind='kronecker'"):
        KroneckerCurvature.from_xarray(xr.Dataset(attrs={"curvlab_kind": "dense"}))


def test_constructor_errors():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1, bias=False)).double()
    part = Partition.from_model(model, "layer")
    good = {
        "0": KroneckerFactors(spd(4, F64), spd(2, F64), bias=True),
        "1": KroneckerFactors(spd(2, F64), spd(1, F64)),
    }
    KroneckerCurvature(good, part)
    with pytest.raises(ValueError, match="misses groups \\(layers\\) of the partition: 1"):
        KroneckerCurvature({"0": good["0"]}, part)
    with pytest.raises(ValueError, match="not groups of the partition: extra"):
        KroneckerCurvature({**good, "extra": torch.eye(1)}, part)
    with pytest.raises(
        ValueError, match="layers\\['1'\\]: the factors cover parameters of sizes \\[6\\]"
    ):
        KroneckerCurvature({**good, "1": KroneckerFactors(spd(3, F64), spd(2, F64))}, part)
    with pytest.raises(
        ValueError, match="layers\\['0'\\]: the factors cover parameters of sizes \\[6\\] "
    ):
        KroneckerCurvature({**good, "0": KroneckerFactors(spd(3, F64), spd(2, F64))}, part)
    with pytest.raises(ValueError, match="layers\\['1'\\] must have shape \\[2, 2\\]"):
        KroneckerCurvature({**good, "1": torch.eye(3, dtype=F64)}, part)
    with pytest.raises(
        TypeError, match="layers\\['1'\\] must be KroneckerFactors, GroupedKroneckerFactors or a tensor, got list"
    ):
        KroneckerCurvature({**good, "1": [1.0]}, part)
    with pytest.raises(ValueError, match="is torch.float32"):
        KroneckerCurvature({**good, "1": torch.eye(2)}, part)
    with pytest.raises(TypeError, match="layers must map"):
        KroneckerCurvature([good["0"]], part)
    trivial = Partition.from_model(model, "trivial")
    with pytest.raises(ValueError, match="group 'all' spans several layers \\(0, 1\\)"):
        KroneckerCurvature({"all": torch.eye(10, dtype=F64)}, trivial)
