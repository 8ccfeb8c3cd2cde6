"""Conjugate gradient on small SPD systems: both stopping rules, preconditioning, warm start, breakdown."""

import warnings

import pytest
import torch

from curvlab.errors import CurvlabWarning
from curvlab.operators import CGBreakdown, CGNorm, CGSettings, conjugate_gradient


def _sgn_rule(maxiter, tol=0.0):
    """The SGN optimiser's rule: max|r| ≤ tol, no warning, stop on breakdown."""
    return CGSettings(
        rtol=0.0, atol=tol, maxiter=maxiter, norm=CGNorm.MAX_ABS, on_breakdown=CGBreakdown.STOP, warn=False
    )


def _spd(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=torch.float64, generator=gen)
    return a @ a.T + 0.1 * torch.eye(n, dtype=torch.float64), torch.randn(
        n, 2, dtype=torch.float64, generator=gen
    )


def _spd_conditioned(n, seed=0, cond=100.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T, torch.randn(n, generator=g, dtype=torch.float64)


def test_solves_damped_system_for_several_right_hand_sides():
    a, b = _spd(12)
    result = conjugate_gradient(lambda v: a @ v, b, damping=0.5)
    expected = torch.linalg.solve(a + 0.5 * torch.eye(12, dtype=torch.float64), b)
    torch.testing.assert_close(result.solution, expected, rtol=1e-7, atol=1e-9)
    assert result.converged and result.residual_norm.shape == (2,)
    assert result.residual.shape == (12, 2)
    assert bool((result.residual_norm <= 1e-10 * torch.linalg.vector_norm(b, dim=0)).all())


@pytest.mark.parametrize("precondition", [False, True])
def test_solves_spd_system_in_n_iterations(precondition):
    A, b = _spd_conditioned(7)
    M = 1.0 / torch.diagonal(A) if precondition else None
    res = conjugate_gradient(lambda v: A @ v, b, settings=_sgn_rule(7), preconditioner=M)
    torch.testing.assert_close(res.solution, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(res.residual, b - A @ res.solution, rtol=1e-6, atol=1e-9)


def test_preconditioned_damped_columns_with_warm_start():
    a, b = _spd(9, seed=3)
    damped = a + 0.2 * torch.eye(9, dtype=torch.float64)
    x0 = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = conjugate_gradient(
        lambda v: a @ v, b, 0.2, CGSettings(rtol=1e-12), x0=x0, preconditioner=1 / torch.diagonal(damped)
    )
    torch.testing.assert_close(res.solution, torch.linalg.solve(damped, b), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(res.residual, b - damped @ res.solution, rtol=1e-6, atol=1e-9)


def test_max_abs_rule_stops_at_tolerance_and_counts_iterations():
    A, b = _spd_conditioned(20, cond=10.0)
    res = conjugate_gradient(lambda v: A @ v, b, settings=_sgn_rule(100, tol=1e-3))
    assert res.converged and float(res.residual_norm) <= 1e-3 and res.iterations < 20
    torch.testing.assert_close(res.residual_norm, res.residual.abs().max())
    # one iteration earlier the rule was not met (it stops at the first iterate that meets it)
    earlier = conjugate_gradient(lambda v: A @ v, b, settings=_sgn_rule(res.iterations - 1, tol=1e-3))
    assert not earlier.converged and float(earlier.residual_norm) > 1e-3
    short = conjugate_gradient(lambda v: A @ v, b, settings=_sgn_rule(2))
    assert short.iterations == 2 and not short.converged


def test_absolute_tolerance_overrides_a_smaller_relative_one():
    A, b = _spd_conditioned(20, cond=10.0)
    res = conjugate_gradient(lambda v: A @ v, b, settings=CGSettings(rtol=1e-14, atol=1e-2))
    full = conjugate_gradient(lambda v: A @ v, b, settings=CGSettings(rtol=1e-14))
    assert res.converged and float(res.residual_norm) <= 1e-2 and res.iterations < full.iterations


def test_first_iterate_is_cauchy_step():
    A, b = _spd_conditioned(5)
    res = conjugate_gradient(lambda v: A @ v, b, settings=_sgn_rule(1))
    torch.testing.assert_close(res.solution, (b @ b) / (b @ A @ b) * b)


def test_warns_when_not_converged_unless_told_not_to():
    a, b = _spd(12)
    with pytest.warns(CurvlabWarning, match="did not converge"):
        result = conjugate_gradient(lambda v: a @ v, b[:, 0], settings=CGSettings(maxiter=2))
    assert not result.converged and result.iterations == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = conjugate_gradient(lambda v: a @ v, b[:, 0], settings=CGSettings(maxiter=2, warn=False))
    assert not quiet.converged and torch.equal(quiet.solution, result.solution)


def test_indefinite_matrix_raises():
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        conjugate_gradient(lambda v: a @ v, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_breakdown_can_stop_at_the_current_iterate():
    a = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0], dtype=torch.float64)
    # first direction p = b has pᵀAp = 1 > 0: one step; the next direction has negative curvature
    alpha = (b @ b) / (b @ a @ b)
    res = conjugate_gradient(lambda v: a @ v, b, settings=CGSettings(on_breakdown="stop", warn=False))
    assert res.iterations == 2 and not res.converged
    torch.testing.assert_close(res.solution, alpha * b)
    zero = conjugate_gradient(lambda v: 0 * v, b, settings=_sgn_rule(5))
    assert zero.iterations == 1 and torch.equal(zero.solution, torch.zeros(2, dtype=torch.float64))


def test_nan_curvature_propagates_instead_of_stopping():
    b = torch.ones(3, dtype=torch.float64)
    res = conjugate_gradient(lambda v: torch.full_like(v, float("nan")), b, settings=_sgn_rule(5))
    assert not res.converged and bool(torch.isnan(res.solution).all())


def test_warm_start_and_bad_arguments():
    A, b = _spd_conditioned(4)
    x = torch.linalg.solve(A, b)
    assert conjugate_gradient(lambda v: A @ v, b, settings=_sgn_rule(3, tol=1e-8), x0=x).iterations == 0
    with pytest.raises(ValueError, match="maxiter"):
        CGSettings(maxiter=0)
    with pytest.raises(ValueError, match="atol"):
        CGSettings(atol=-1.0)
    with pytest.raises(ValueError, match="rtol"):
        CGSettings(rtol=float("nan"))
    with pytest.raises(ValueError, match="norm"):
        CGSettings(norm="l1")
    with pytest.raises(ValueError, match="on_breakdown"):
        CGSettings(on_breakdown="ignore")
    with pytest.raises(ValueError, match="preconditioner"):
        conjugate_gradient(lambda v: A @ v, b, preconditioner=-torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="preconditioner"):
        conjugate_gradient(lambda v: A @ v, b, preconditioner=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x0"):
        conjugate_gradient(lambda v: A @ v, b, x0=torch.zeros(3, dtype=torch.float64))
