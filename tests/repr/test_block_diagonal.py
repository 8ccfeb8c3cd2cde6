"""BlockDiagonalCurvature: non-contiguous groups, export as one DataTree group per block, errors."""

from __future__ import annotations

import pytest
import torch
import xarray as xr
from torch import nn

from curvlab.partition import Partition
from curvlab.repr import BlockDiagonalCurvature
from tests.repr.factories import place_blocks, spd

F64 = torch.float64


@pytest.fixture
def model():
    return nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))  # P = 6 + 3


def test_non_contiguous_groups(model):
    torch.manual_seed(0)
    part = Partition.from_model(
        model, {"weights": ["0.weight", "2.weight"], "biases": ["0.bias", "2.bias"]}
    )
    assert part.group("weights").indices.tolist() == [0, 1, 2, 3, 6, 7]
    blocks = {"weights": spd(6, F64), "biases": spd(3, F64)}
    rep = BlockDiagonalCurvature(blocks, part, quantity="ggn")
    expected = place_blocks(part, blocks, F64)
    torch.testing.assert_close(rep.dense(), expected)
    v = torch.randn(9, dtype=F64)
    torch.testing.assert_close(rep @ v, expected @ v)
    torch.testing.assert_close(
        rep.solve(v, 0.1), torch.linalg.solve(expected + 0.1 * torch.eye(9, dtype=F64), v)
    )
    values, vectors = rep.eigh()
    torch.testing.assert_close((vectors * values) @ vectors.T, expected)
    torch.testing.assert_close(rep.block("weights", "weights"), blocks["weights"])
    tree = rep.to_xarray()
    assert tree["block0"]["row"].values.tolist() == [0, 1, 2, 3, 6, 7]
    assert tree["block1"]["row_param"].values.tolist() == ["0.bias", "0.bias", "2.bias"]
    assert tree["block1"].attrs["group"] == "biases"
    back = BlockDiagonalCurvature.from_xarray(tree)
    assert all(torch.equal(back.blocks[k], blocks[k]) for k in blocks)


def test_blocks_are_returned_in_group_order(model):
    part = Partition.from_model(model, "layer")
    rep = BlockDiagonalCurvature({"2": torch.eye(3), "0": 2 * torch.eye(6)}, part, quantity="ggn")
    assert list(rep.blocks) == ["0", "2"]


def test_constructor_errors(model):
    part = Partition.from_model(model, "layer")
    good = {"0": torch.eye(6), "2": torch.eye(3)}
    with pytest.raises(ValueError, match="blocks misses groups of the partition: 2"):
        BlockDiagonalCurvature({"0": good["0"]}, part, quantity="ggn")
    with pytest.raises(ValueError, match="not groups of the partition: 1"):
        BlockDiagonalCurvature({**good, "1": torch.eye(1)}, part, quantity="ggn")
    with pytest.raises(
        ValueError, match="blocks\\['2'\\] must have shape \\[3, 3\\], got \\(2, 2\\)"
    ):
        BlockDiagonalCurvature({**good, "2": torch.eye(2)}, part, quantity="ggn")
    with pytest.raises(ValueError, match="blocks\\['2'\\] is torch.float64"):
        BlockDiagonalCurvature({**good, "2": torch.eye(3, dtype=F64)}, part, quantity="ggn")
    with pytest.raises(TypeError, match="blocks must map group names to tensors"):
        BlockDiagonalCurvature([good["0"]], part, quantity="ggn")
    with pytest.raises(TypeError, match="xarray.DataTree"):
        BlockDiagonalCurvature.from_xarray(
            xr.Dataset(attrs=BlockDiagonalCurvature(good, part, quantity="ggn").to_xarray().attrs)
        )
