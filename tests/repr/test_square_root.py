"""SquareRootCurvature: C = FᵀF through its cheap routes (Gram eigenvalues, Woodbury), and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.errors import MemoryBudgetError, NonFiniteError
from curvlab.guards import memory_budget
from curvlab.partition import Partition
from curvlab.repr import SquareRootCurvature

F64 = torch.float64


@pytest.fixture
def part():
    return Partition.from_model(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), "layer")  # P = 23


def test_low_rank_eigenvalues_come_from_the_gram_matrix(part):
    torch.manual_seed(0)
    f = torch.randn(3, part.num_params, dtype=F64)
    rep = SquareRootCurvature(f, part, quantity="ggn")
    values = rep.eigvalsh()
    assert values.shape == (23,)
    assert torch.count_nonzero(values[:20]) == 0  # P - K exact zeros
    torch.testing.assert_close(values[20:], torch.linalg.svdvals(f).flip(0) ** 2)
    # the Gram route never forms the [P, P] matrix:
    with memory_budget(3 * 3 * 8):
        rep.eigvalsh()
        with pytest.raises(MemoryBudgetError):
            rep.dense()


def test_woodbury_solve_never_forms_the_dense_matrix(part):
    torch.manual_seed(1)
    f = torch.randn(2, part.num_params, dtype=F64)
    rep = SquareRootCurvature(f, part, quantity="ggn")
    v = torch.randn(23, 4, dtype=F64)
    expected = torch.linalg.solve(f.T @ f + 0.1 * torch.eye(23, dtype=F64), v)
    with memory_budget(15 * 8 * 8):  # the largest block; the dense [23, 23] would need 4232 B
        torch.testing.assert_close(rep.solve(v, 0.1), expected)
        torch.testing.assert_close(rep.block(0, 1), f[:, :15].T @ f[:, 15:])


def test_undamped_solve(part):
    torch.manual_seed(2)
    low = SquareRootCurvature(torch.randn(2, 23, dtype=F64), part, quantity="ggn")
    with pytest.raises(torch.linalg.LinAlgError, match="K = 2 < P = 23"):
        low.solve(torch.ones(23, dtype=F64))
    f = torch.randn(30, 23, dtype=F64)
    tall = SquareRootCurvature(f, part, quantity="ggn")
    v = torch.randn(23, dtype=F64)
    torch.testing.assert_close(tall.solve(v), torch.linalg.solve(f.T @ f, v))
    assert tall.rank == 30


def test_export_dims(part):
    rep = SquareRootCurvature(torch.ones(2, 23), part, quantity="ggn")
    ds = rep.to_xarray()
    assert ds["factor"].dims == ("rank", "col") and ds["factor"].dtype == "float32"
    assert ds["col_group"].values.tolist() == ["0"] * 15 + ["1"] * 8
    assert "row" not in ds.dims


def test_constructor_errors(part):
    with pytest.raises(ValueError, match="factor must have shape \\[\\*, 23\\], got \\(2, 22\\)"):
        SquareRootCurvature(torch.ones(2, 22), part, quantity="ggn")
    with pytest.raises(ValueError, match="factor must be 2-dimensional"):
        SquareRootCurvature(torch.ones(23), part, quantity="ggn")
    with pytest.raises(ValueError, match="at least one row"):
        SquareRootCurvature(torch.ones(0, 23), part, quantity="ggn")
    with pytest.raises(TypeError, match="factor must have a floating dtype"):
        SquareRootCurvature(torch.ones(2, 23, dtype=torch.long), part, quantity="ggn")
    bad = torch.ones(2, 23)
    bad[1, 3] = float("inf")
    with pytest.raises(NonFiniteError, match="factor contains 0 NaN and 1 inf"):
        SquareRootCurvature(bad, part, quantity="ggn")
    with pytest.raises(ValueError, match="attrs may not set 'partition'"):
        SquareRootCurvature(torch.ones(2, 23), part, quantity="ggn", attrs={"partition": "x"})
