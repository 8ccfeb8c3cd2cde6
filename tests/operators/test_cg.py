"""Conjugate gradient on small SPD systems."""

import pytest
import torch

from curvlab.errors import CurvlabWarning
from curvlab.operators import CGSettings, conjugate_gradient


def _spd(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=torch.float64, generator=gen)
    return a @ a.T + 0.1 * torch.eye(n, dtype=torch.float64), torch.randn(
        n, 2, dtype=torch.float64, generator=gen
    )


def test_solves_damped_system_for_several_right_hand_sides():
    a, b = _spd(12)
    result = conjugate_gradient(lambda v: a @ v, b, damping=0.5)
    expected = torch.linalg.solve(a + 0.5 * torch.eye(12, dtype=torch.float64), b)
    torch.testing.assert_close(result.solution, expected, rtol=1e-7, atol=1e-9)
    assert result.converged and result.residual_norm.shape == (2,)


def test_warns_when_not_converged():
    a, b = _spd(12)
    with pytest.warns(CurvlabWarning, match="did not converge"):
        result = conjugate_gradient(lambda v: a @ v, b[:, 0], settings=CGSettings(maxiter=2))
    assert not result.converged and result.iterations == 2


def test_indefinite_matrix_raises():
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        conjugate_gradient(lambda v: a @ v, torch.tensor([0.0, 1.0], dtype=torch.float64))
