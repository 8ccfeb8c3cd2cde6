"""Interaction strength on constructed block matrices; the GroupedNewton summary against brute force."""

import math

import pytest
import torch

from curvlab.analysis.interactions import (
    block_norms,
    interaction_strength,
    normalized_summary,
    summary_matrix,
)
from curvlab.partition import Partition


def constructed():
    # groups of sizes 2, 1, 3 with diagonal blocks c·I and chosen off-diagonal blocks
    sizes, scales = [2, 1, 3], [1.0, 4.0, 2.0]
    m = torch.block_diag(*[s * torch.eye(n, dtype=torch.float64) for s, n in zip(scales, sizes, strict=True)])
    m[0:2, 2] = m[2, 0:2] = torch.tensor([3.0, 4.0], dtype=torch.float64)  # ‖M_01‖ = 5
    blocks = [torch.arange(0, 2), torch.arange(2, 3), torch.arange(3, 6)]
    return m, blocks


def test_interaction_matrix_of_constructed_blocks():
    m, blocks = constructed()
    diag = [math.sqrt(2) * 1.0, 4.0, math.sqrt(3) * 2.0]
    expected = torch.eye(3, dtype=torch.float64)
    expected[0, 1] = expected[1, 0] = 5.0 / math.sqrt(diag[0] * diag[1])
    result = interaction_strength(m, blocks)
    assert torch.allclose(torch.from_numpy(result.values), expected)
    assert result.dims == ("group_i", "group_j")
    norms = block_norms(m, blocks).values
    assert norms[0, 1] == pytest.approx(5.0) and norms[2, 2] == pytest.approx(diag[2])


def test_labels_from_partition():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))
    part = Partition.from_model(model, "layer")
    result = interaction_strength(torch.eye(part.num_params), part)
    assert list(result.group_i.values) == ["0", "2"]
    assert result.values.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_zero_diagonal_block_gives_nan():
    m = torch.zeros(2, 2, dtype=torch.float64)
    m[0, 0] = 1.0
    assert math.isnan(interaction_strength(m).values[0, 1])


def test_summary_matrix_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    m, u = a + a.T, torch.randn(6, generator=g, dtype=torch.float64)
    _, blocks = constructed()
    hbar = summary_matrix(m, u, blocks)
    for i, bi in enumerate(blocks):
        for j, bj in enumerate(blocks):
            assert hbar[i, j] == pytest.approx(float(u[bi] @ m[bi][:, bj] @ u[bj]))


def test_normalized_summary_and_inverse():
    h = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    norm = normalized_summary(h).values
    assert norm[0, 1] == pytest.approx(0.5) and norm[0, 2] == 0.0
    inv = torch.linalg.inv(h)
    result = normalized_summary(h, ["a", "b", "c"], inverse=True)
    assert result.values[0, 2] == pytest.approx(float(inv[0, 2] / torch.sqrt(inv[0, 0] * inv[2, 2])))
    assert result.values[0, 2] != 0.0  # the inverse of a tridiagonal matrix is dense
    assert list(result.group_j.values) == ["a", "b", "c"]


def test_singular_summary_warns():
    from curvlab.errors import CurvlabWarning

    with pytest.warns(CurvlabWarning, match="singular"):
        normalized_summary(torch.ones(2, 2, dtype=torch.float64), inverse=True)


def test_wrong_number_of_names():
    with pytest.raises(ValueError, match="group names"):
        normalized_summary(torch.eye(2), ["only one"])
