"""Step quality: exact steps give 1, brute-force solves, GroupedNewton's exact regimes."""

import math

import pytest
import torch

from curvlab.analysis.interactions import summary_matrix
from curvlab.analysis.steps import damped_steps, quadratic_decrease, step_quality, summary_steps
from curvlab.partition import Partition
from tests.analysis.test_quality import spd


def test_exact_step_gives_ratio_one():
    e, g = spd(6), torch.randn(6, dtype=torch.float64)
    dampings = [0.0, 0.1, 1.0]
    q = step_quality(e, damped_steps(e, g, dampings), g, dampings)
    assert q.cosine.tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    assert q.decrease_ratio.tolist() == pytest.approx([1.0] * 3, abs=1e-12)


def test_damped_steps_match_solve():
    e, g = spd(5, 1), torch.randn(5, dtype=torch.float64)
    for lam in (0.0, 0.5):
        expected = -torch.linalg.solve(e + lam * torch.eye(5, dtype=torch.float64), g)
        assert torch.allclose(damped_steps(e, g, [lam])[0], expected, atol=1e-10)


def test_representation_uses_its_solve():
    from curvlab.repr import DiagonalCurvature

    part = Partition.from_model(torch.nn.Linear(2, 1), "canonical")
    d, g = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    rep = DiagonalCurvature(d, part, quantity="ggn")
    assert torch.allclose(damped_steps(rep, g, [1.0]), damped_steps(torch.diag(d), g, [1.0]))


def test_hand_computed_case():
    # E = diag(2, 1), A = I, g = (1, 1), λ = 0: d* = (-1/2, -1), d̃ = (-1, -1).
    e, a, g = torch.diag(torch.tensor([2.0, 1.0])), torch.eye(2), torch.ones(2)
    q = step_quality(e, damped_steps(a, g, [0.0]), g, [0.0])
    assert float(q.decrease_ratio[0]) == pytest.approx(0.5 / 0.75)
    assert float(q.cosine[0]) == pytest.approx(1.5 / (math.sqrt(2) * math.sqrt(1.25)))
    assert quadratic_decrease(e, g, torch.tensor([[-0.5, -1.0]]), [0.0]).item() == pytest.approx(0.75)


def test_ratio_at_most_one_for_positive_definite_model():
    e, g = spd(8, 2), torch.randn(8, dtype=torch.float64)
    for seed in range(5):
        a = spd(8, 10 + seed)
        q = step_quality(e, damped_steps(a, g, [0.01, 1.0]), g, [0.01, 1.0])
        assert bool((q.decrease_ratio <= 1 + 1e-12).all())
        assert bool((q.cosine.abs() <= 1 + 1e-12).all())


def test_singular_damped_matrix_gives_nan():
    steps = damped_steps(torch.diag(torch.tensor([1.0, 0.0])), torch.ones(2), [0.0])
    assert bool(steps.isnan().all())


def test_summary_with_entries_partition_is_newton():
    # One group per scalar: the summary step is the exact damped Newton step (GroupedNewton, Newton's method).
    model = torch.nn.Linear(2, 2)
    part = Partition.from_model(model, "entries")
    e, g = spd(6, 4), torch.randn(6, dtype=torch.float64)
    u = g.clone()
    hbar = summary_matrix(e, u, part)
    steps = summary_steps(hbar, u * g, u, part, [0.0, 0.3])
    assert torch.allclose(steps, damped_steps(e, g, [0.0, 0.3]), atol=1e-10)


def test_summary_with_trivial_partition_is_optimal_line_search():
    part = Partition.from_model(torch.nn.Linear(2, 2), "trivial")
    e, g = spd(6, 5), torch.randn(6, dtype=torch.float64)
    lam = 0.2
    step = summary_steps(summary_matrix(e, g, part), (g @ g).reshape(1), g, part, [lam])[0]
    expected = -g * (g @ g) / (g @ e @ g + lam * g @ g)
    assert torch.allclose(step, expected)


@pytest.mark.parametrize("dampings", [[], [-1.0]])
def test_bad_dampings(dampings):
    with pytest.raises(ValueError, match="dampings"):
        damped_steps(torch.eye(2), torch.ones(2), dampings)


def test_bad_gradient_length():
    with pytest.raises(ValueError, match="gradient"):
        damped_steps(torch.eye(2), torch.ones(3), [1.0])
