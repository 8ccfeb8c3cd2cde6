"""SummaryMatrix: an S×S matrix over groups (not P×P)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.partition import Partition
from curvlab.repr import SummaryMatrix


@pytest.fixture
def part():
    return Partition.from_model(
        nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)), "canonical"
    )


def test_shapes_are_over_groups(part):
    m = torch.tensor(
        [[2.0, 1, 0, 0], [1, -3, 0, 0], [0, 0, 1, 0.5], [0, 0, 0.5, 4]], dtype=torch.float64
    )
    H = SummaryMatrix(m, part, quantity="newton_summary")
    assert H.shape == (4, 4) and part.num_params == 9
    assert H.dense().shape == (4, 4) and H.diagonal().tolist() == [2.0, -3.0, 1.0, 4.0]
    assert H.block("0.weight", "0.bias").tolist() == [[1.0]] and H.block(3, 2).tolist() == [[0.5]]
    eta = H.solve(torch.tensor([3.0, -2.0, 1.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(H @ eta, torch.tensor([3.0, -2.0, 1.0, 4.0], dtype=torch.float64))
    assert H.eigvalsh()[0] < 0  # indefinite is allowed
    with pytest.raises(ValueError, match="P=4"):
        H.matvec(torch.ones(9, dtype=torch.float64))


def test_export_dims_are_group_names(part):
    H = SummaryMatrix(torch.eye(4), part, quantity="newton_summary")
    ds = H.to_xarray()
    assert ds["matrix"].dims == ("group_i", "group_j")
    assert ds["group_i"].values.tolist() == list(part.group_names)
    assert ds["group_j_size"].values.tolist() == [4, 2, 2, 1]
    assert ds["matrix"].sel(group_i="2.weight", group_j="2.weight").item() == 1.0


def test_constructor_errors(part):
    with pytest.raises(ValueError, match="matrix must have shape \\[4, 4\\], got \\(9, 9\\)"):
        SummaryMatrix(torch.eye(9), part, quantity="newton_summary")
    with pytest.raises(ValueError, match="matrix is not symmetric"):
        SummaryMatrix(torch.triu(torch.ones(4, 4)), part, quantity="newton_summary")
