"""DiagonalCurvature: O(P) routes, the memory guard on a large P, singular solves, export shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.errors import MemoryBudgetError
from curvlab.partition import ParameterInfo, Partition
from curvlab.repr import DiagonalCurvature


def test_large_diagonal_refuses_dense_before_allocating():
    p = 10**6  # dense float32 would need 3.6 TiB; the default budget is 4 GiB
    part = Partition([ParameterInfo("w", "", (p,), 0)], {"w": [("w", None)]})
    rep = DiagonalCurvature(torch.ones(p), part, quantity="ggn")
    with pytest.raises(
        MemoryBudgetError, match=r"\[1000000, 1000000\] float32 matrix needs 3.6 TiB"
    ):
        rep.dense()
    with pytest.raises(MemoryBudgetError, match="eigenvectors"):
        rep.eigh()
    with pytest.raises(MemoryBudgetError, match="block"):
        rep.block("w", "w")
    assert rep.trace().item() == p and rep.eigvalsh().shape == (p,)  # cheap routes still work
    assert rep.solve(torch.ones(p), damping=1.0)[0].item() == 0.5


def test_singular_solve_and_exact_small_entries():
    part = Partition.from_model(nn.Linear(1, 1), "canonical")
    rep = DiagonalCurvature(torch.tensor([1e-30, 0.0], dtype=torch.float64), part, quantity="ggn")
    with pytest.raises(torch.linalg.LinAlgError, match="diagonal entry plus damping is zero"):
        rep.solve(torch.ones(2, dtype=torch.float64))
    rep = DiagonalCurvature(
        torch.tensor([2.0**-100, 2.0**100], dtype=torch.float64), part, quantity="ggn"
    )
    assert rep.solve(torch.ones(2, dtype=torch.float64)).tolist() == [
        2.0**100,
        2.0**-100,
    ]  # no threshold


def test_export_is_one_dimensional_with_coordinates():
    part = Partition.from_model(nn.Sequential(nn.Linear(2, 1)), "layer")
    ds = DiagonalCurvature(torch.arange(3.0), part, quantity="ggn").to_xarray()
    assert ds["diagonal"].dims == ("row",)
    assert ds["row_param"].values.tolist() == ["0.weight", "0.weight", "0.bias"]
    assert ds["row_element"].values.tolist() == [0, 1, 0]
    assert ds["row_layer"].values.tolist() == ["0"] * 3


def test_constructor_errors():
    part = Partition.from_model(nn.Linear(1, 1), "canonical")
    with pytest.raises(ValueError, match="diag must have shape \\[2\\], got \\(3,\\)"):
        DiagonalCurvature(torch.ones(3), part, quantity="ggn")
    with pytest.raises(TypeError, match="diag must be a torch.Tensor, got list"):
        DiagonalCurvature([1.0, 2.0], part, quantity="ggn")
