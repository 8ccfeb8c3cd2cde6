"""DenseCurvature: coordinates of the export, and the constructor's errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.errors import NonFiniteError
from curvlab.partition import Partition
from curvlab.repr import DenseCurvature
from tests.repr.factories import spd


@pytest.fixture
def part():
    return Partition.from_model(
        nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)), "layer"
    )  # P = 9


def test_export_coordinates_label_every_row_and_column(part):
    rep = DenseCurvature(spd(9, torch.float64), part, quantity="hessian", attrs={"batch_size": 3})
    ds = rep.to_xarray()
    labels = part.flat_labels()
    assert ds["matrix"].dims == ("row", "col")
    for dim in ("row", "col"):
        assert ds[dim].values.tolist() == list(range(9))
        for key in ("group", "param", "layer", "element"):
            assert ds[f"{dim}_{key}"].values.tolist() == labels[key]
    assert ds["matrix"].attrs["long_name"] == "Hessian of the loss"
    assert Partition.from_json(ds.attrs["partition"]) == part
    # label-based selection works on the export
    sub = (
        ds["matrix"]
        .where(ds["row_group"] == "2", drop=True)
        .where(ds["col_group"] == "2", drop=True)
    )
    torch.testing.assert_close(torch.from_numpy(sub.values), rep.block("2", "2"))


def test_cross_group_blocks_are_kept(part):
    m = spd(9, torch.float64)
    rep = DenseCurvature(m, part, quantity="ggn")
    torch.testing.assert_close(rep.block("0", "2"), m[:6, 6:])
    torch.testing.assert_close(rep.block(1, 0), m[6:, :6])


def test_symmetry_within_working_precision_is_accepted(part):
    m = spd(9, torch.float32)
    noisy = m + 1e-7 * torch.randn(9, 9) * m.abs().max()
    DenseCurvature(noisy, part, quantity="ggn")  # rounding-level asymmetry passes
    noisy[0, 1] += 1e-2 * float(m.abs().max())
    with pytest.raises(ValueError, match="matrix is not symmetric: max \\|M - M\\^T\\|"):
        DenseCurvature(noisy, part, quantity="ggn")


def test_constructor_errors(part):
    with pytest.raises(ValueError, match="matrix must have shape \\[9, 9\\], got \\(8, 8\\)"):
        DenseCurvature(torch.eye(8), part, quantity="ggn")
    with pytest.raises(ValueError, match="matrix must be 2-dimensional"):
        DenseCurvature(torch.ones(9), part, quantity="ggn")
    with pytest.raises(TypeError, match="matrix must have a floating dtype, got torch.int64"):
        DenseCurvature(torch.eye(9, dtype=torch.long), part, quantity="ggn")
    nan = torch.eye(9)
    nan[2, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="matrix contains 1 NaN"):
        DenseCurvature(nan, part, quantity="ggn")
    with pytest.raises(ValueError, match="attrs may not set 'curvlab_kind'"):
        DenseCurvature(torch.eye(9), part, quantity="ggn", attrs={"curvlab_kind": "x"})
    with pytest.raises(TypeError, match="attrs keys must be strings"):
        DenseCurvature(torch.eye(9), part, quantity="ggn", attrs={1: "x"})
