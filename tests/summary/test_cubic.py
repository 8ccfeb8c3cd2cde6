"""newton_summary_step: the plain solve, the scalar root of the anisotropic cubic regularisation (positive
definite and indefinite H̄, analytic and numeric x0), the global minimiser of the cubic model, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from curvlab.errors import CurvlabError
from curvlab.summary import SingularSummaryError, StepStatus, X0Method, newton_summary_step

F64 = torch.float64


def _random_problem(seed: int, s: int = 4, shift: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(s, s, generator=gen, dtype=F64)
    hbar = a @ a.T / s + shift * torch.eye(s, dtype=F64)
    gbar = torch.randn(s, generator=gen, dtype=F64)
    d3 = torch.randn(s, generator=gen, dtype=F64) * 3
    return gbar, hbar, d3


def _check_stationary(step, gbar, hbar, d3, lambda_int):
    """η = (H̄ + ½λ_int‖Dη‖D²)⁻¹ḡ with r = ‖Dη‖, i.e. the root of f(r) = ‖D(H̄ + ½λ r D²)⁻¹ḡ‖ − r."""
    d = d3.abs() ** (1 / 3)
    r = float((d * step.eta).norm())
    assert step.r == pytest.approx(r, rel=1e-8, abs=1e-12)
    residual = (hbar + 0.5 * lambda_int * r * torch.diag(d**2)) @ step.eta - gbar
    assert float(residual.abs().max()) < 1e-8 * max(1.0, float(gbar.abs().max()))


def test_plain_solve_is_the_grouped_newton_step():
    gbar, hbar, _ = _random_problem(0, shift=0.5)
    step = newton_summary_step(gbar, hbar)
    assert step.status is StepStatus.PLAIN_SOLVE and step.found and step.hbar_pd
    torch.testing.assert_close(step.eta, torch.linalg.solve(hbar, gbar))
    indefinite = torch.diag(torch.tensor([2.0, -1.0], dtype=F64))  # invertible: solved as well
    step = newton_summary_step(torch.tensor([1.0, 1.0]), indefinite)
    assert not step.hbar_pd and step.eta.tolist() == [0.5, -1.0]


def test_singular_hbar_raises_naming_its_smallest_eigenvalue():
    hbar = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64)
    with pytest.raises(SingularSummaryError, match=r"hbar is singular: its smallest eigenvalue is .*e") as info:
        newton_summary_step(torch.tensor([1.0, 0.0]), hbar)
    assert isinstance(info.value, torch.linalg.LinAlgError) and isinstance(info.value, CurvlabError)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("lambda_int", [0.1, 1.0, 10.0])
def test_positive_definite_root_solves_the_scalar_equation(seed, lambda_int):
    gbar, hbar, d3 = _random_problem(seed, shift=0.3)
    step = newton_summary_step(gbar, hbar, d3, lambda_int=lambda_int)
    assert step.status is StepStatus.CONVERGED and step.x0 == 0.0
    assert step.x0_method is X0Method.POSITIVE_DEFINITE and step.iterations > 0
    _check_stationary(step, gbar, hbar, d3, lambda_int)
    # regularisation shortens the step in the D-norm
    d = d3.abs() ** (1 / 3)
    assert float((d * step.eta).norm()) < float((d * torch.linalg.solve(hbar, gbar)).norm())


@pytest.mark.parametrize("seed", range(4))
def test_indefinite_root_is_the_global_minimiser_of_the_cubic_model(seed):
    """Nesterov–Polyak: the root right of x0 makes H̄ + ½λ r D² PSD and minimises the cubic model."""
    gbar, hbar, d3 = _random_problem(seed, shift=-1.0)
    assert float(torch.linalg.eigvalsh(hbar).min()) < 0
    lambda_int = 2.0
    step = newton_summary_step(gbar, hbar, d3, lambda_int=lambda_int)
    assert step.status is StepStatus.CONVERGED and not step.hbar_pd
    assert step.x0_method is X0Method.ANALYTIC
    _check_stationary(step, gbar, hbar, d3, lambda_int)
    d = (d3.abs() ** (1 / 3)).numpy()
    shifted = hbar + 0.5 * lambda_int * step.r * torch.diag(torch.from_numpy(d) ** 2)
    assert float(torch.linalg.eigvalsh(shifted).min()) > -1e-10

    g, h = gbar.numpy(), hbar.numpy()

    def model(eta):  # m(η) = −ḡᵀη + ½ηᵀH̄η + (λ/6)‖Dη‖³
        return -g @ eta + 0.5 * eta @ h @ eta + lambda_int / 6 * np.linalg.norm(d * eta) ** 3

    rng = np.random.default_rng(seed)
    best = min(
        (scipy.optimize.minimize(model, rng.normal(size=4) * 3, method="BFGS", options={"gtol": 1e-10})
         for _ in range(6)),
        key=lambda res: res.fun,
    )
    assert model(step.eta.numpy()) <= best.fun + 1e-9
    np.testing.assert_allclose(step.eta.numpy(), best.x, atol=1e-4)


def test_analytic_x0_follows_the_reference_formula():
    gbar = torch.tensor([1.0, 2.0], dtype=F64)
    hbar = torch.tensor([[1.0, 0.5], [0.5, -2.0]], dtype=F64)
    d3 = torch.tensor([8.0, 27.0], dtype=F64)  # D = diag(2, 3)
    step = newton_summary_step(gbar, hbar, d3, lambda_int=0.5)
    d_inv = torch.diag(torch.tensor([1 / 2, 1 / 3], dtype=F64))
    expected = (2 / 0.5) * abs(min(0.0, float(torch.linalg.eigvalsh(d_inv @ hbar @ d_inv).min())))
    assert step.x0 == pytest.approx(expected, rel=1e-12) or step.x0 == pytest.approx(1.001 * expected)
    assert step.r > step.x0 and step.found


def test_numeric_x0_when_some_d_vanishes():
    """D_22 = 0 but the negative curvature lies along group 1: x0 is the root of λ_min(H̄ + ½λ x D²)."""
    gbar = torch.tensor([1.0, 1.0], dtype=F64)
    hbar = torch.tensor([[-1.0, 0.2], [0.2, 2.0]], dtype=F64)
    d3 = torch.tensor([1.0, 0.0], dtype=F64)
    step = newton_summary_step(gbar, hbar, d3, lambda_int=1.0)
    assert step.x0_method is X0Method.NUMERIC and step.found
    lam_min = float(torch.linalg.eigvalsh(hbar + 0.5 * step.x0 * torch.diag(torch.tensor([1.0, 0.0], dtype=F64))).min())
    assert abs(lam_min) < 1e-6
    _check_stationary(step, gbar, hbar, d3, 1.0)


def test_unreachable_negative_curvature_gives_no_x0_and_a_zero_step():
    """Negative curvature along a group with D_ii = 0 cannot be regularised: η = 0, status no_x0."""
    hbar = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F64)
    step = newton_summary_step(torch.tensor([1.0, 1.0]), hbar, torch.tensor([1.0, 0.0]), lambda_int=1.0)
    assert step.status is StepStatus.NO_X0 and not step.found and step.eta.tolist() == [0.0, 0.0]


def test_zero_gradient_gives_the_zero_step_at_root_zero():
    step = newton_summary_step(torch.zeros(2), torch.eye(2), torch.ones(2), lambda_int=1.0)
    assert step.status is StepStatus.CONVERGED and step.r == 0.0 and step.eta.tolist() == [0.0, 0.0]


def test_float64_throughout():
    gbar, hbar, d3 = _random_problem(1, shift=0.2)
    step = newton_summary_step(gbar.float(), hbar.float(), d3.float(), lambda_int=1.0)
    assert step.eta.dtype == torch.float64


def test_bad_inputs_raise_clear_errors():
    g, h = torch.ones(2), torch.eye(2)
    with pytest.raises(ValueError, match="needs d3"):
        newton_summary_step(g, h, lambda_int=1.0)
    with pytest.raises(ValueError, match="lambda_int must be >= 0"):
        newton_summary_step(g, h, torch.ones(2), lambda_int=-1.0)
    with pytest.raises(ValueError, match=r"hbar must be \[S, S\] = \[2, 2\]"):
        newton_summary_step(g, torch.eye(3))
    with pytest.raises(ValueError, match=r"d3 must be \[S\] = \[2\]"):
        newton_summary_step(g, h, torch.ones(3), lambda_int=1.0)
    with pytest.raises(ValueError, match="gbar holds NaN"):
        newton_summary_step(torch.tensor([1.0, float("nan")]), h)


def test_zero_third_order_term_gives_the_plain_newton_step():
    """D = 0 makes the cubic term vanish: f(0) = 0 is the root and η = H̄⁻¹ḡ (not η = 0)."""
    g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    h = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    step = newton_summary_step(g, h, torch.zeros(2, dtype=torch.float64), lambda_int=1.0)
    assert step.status is StepStatus.CONVERGED
    torch.testing.assert_close(step.eta, torch.linalg.solve(h, g))
