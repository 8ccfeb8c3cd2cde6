"""The NewtonSummary step: η solving the grouped Newton system, optionally with anisotropic cubic regularisation.

Sign convention (as in GroupedNewton). Along a direction u split into S groups (U is [P, S], column s
holds u restricted to group s), the update θ_s ← θ_s − λ η_s u_s is modelled by

    L(θ − Uη) ≈ L − ḡᵀη + ½ ηᵀH̄η + (λ_int/6) ‖Dη‖³,       D = diag(|D³|^{1/3}),

whose stationary point solves η = (H̄ + ½ λ_int ‖Dη‖ D²)⁻¹ ḡ. With λ_int = 0 this is the grouped
Newton step η* = H̄⁻¹ḡ. With λ_int > 0, writing r = ‖Dη‖, the step is the root of the scalar equation

    f(r) = ‖D (H̄ + ½ λ_int r D²)⁻¹ ḡ‖ − r = 0

on [x0, ∞), where x0 = 0 if H̄ is positive definite, else the smallest r making H̄ + ½ λ_int r D²
positive semi-definite (Nesterov & Polyak 2006, section 5; Wolinski, appendix D):
x0 = (2/λ_int) |min(0, λ_min(D⁻¹H̄D⁻¹))| if every D_ii > 1e-5, else the numeric root of
r ↦ λ_min(H̄ + ½ λ_int r D²). The bracket [x0, x1] starts at x1 = x0 + 1, tripled while f(x1) ≥ 0,
and Brent's method finds r. Everything runs in float64, as in the reference code.

References:
    P. Wolinski, *Structured second-order methods via natural-gradient descent / GroupedNewton*,
    https://github.com/p-wol/GroupedNewton (``nesterov.py``); Y. Nesterov and B. T. Polyak, *Cubic
    regularization of Newton method and its global performance*, Math. Program. 108 (2006).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import scipy.optimize
import torch

from curvlab.errors import CurvlabError

__all__ = ["NewtonSummaryStep", "SingularSummaryError", "StepStatus", "X0Method", "newton_summary_step"]


class SingularSummaryError(CurvlabError, torch.linalg.LinAlgError):
    """H̄ (or the regularised H̄ + ½λ_int r D²) is singular; the message gives its smallest eigenvalue."""


class StepStatus(enum.Enum):
    """How :func:`newton_summary_step` ended."""

    PLAIN_SOLVE = "plain_solve"  #: λ_int = 0: η = H̄⁻¹ḡ
    CONVERGED = "converged"  #: Brent's method converged to the root r
    NOT_CONVERGED = "not_converged"  #: Brent's method hit ``maxiter``; η = 0
    NO_ROOT = "no_root"  #: f(x0) ≤ 0, so no root lies right of x0; η = 0
    NO_X0 = "no_x0"  #: the numeric search for x0 failed (λ_min decreasing in r); η = 0
    NO_BRACKET = "no_bracket"  #: no x1 with f(x1) < 0 within ``maxiter`` triplings; η = 0


class X0Method(enum.Enum):
    """How the left end x0 of the root bracket was found."""

    POSITIVE_DEFINITE = "positive_definite"  #: H̄ is positive definite: x0 = 0
    ANALYTIC = "analytic"  #: x0 = (2/λ_int)|min(0, λ_min(D⁻¹H̄D⁻¹))|
    NUMERIC = "numeric"  #: x0 = root of λ_min(H̄ + ½λ_int x D²) (some D_ii ≤ threshold)


@dataclass(frozen=True)
class NewtonSummaryStep:
    """The step η and diagnostics of :func:`newton_summary_step`.

    Attributes:
        eta: float64 [S], per-group step sizes (update θ_s ← θ_s − λ η_s u_s); zeros if not ``found``.
        status: how the solver ended (:class:`StepStatus`).
        hbar_pd: whether H̄ was positive definite (all eigenvalues > ``pd_threshold``).
        r: the root r = ‖Dη‖ (``None`` for a plain solve or when no root was found).
        iterations: Brent iterations (0 for a plain solve).
        x0: left end of the bracket (``None`` for a plain solve or when not found).
        x0_method: how x0 was found (``None`` for a plain solve).
    """

    eta: torch.Tensor
    status: StepStatus
    hbar_pd: bool
    r: float | None = None
    iterations: int = 0
    x0: float | None = None
    x0_method: X0Method | None = None

    @property
    def found(self) -> bool:
        """True if η solves the system (plain solve or converged root)."""
        return self.status in (StepStatus.PLAIN_SOLVE, StepStatus.CONVERGED)


def newton_summary_step(
    gbar: torch.Tensor,
    hbar: torch.Tensor,
    d3: torch.Tensor | None = None,
    *,
    lambda_int: float = 0.0,
    d_threshold: float = 1e-5,
    pd_threshold: float = 1e-10,
    maxiter: int = 100,
) -> NewtonSummaryStep:
    """Solve η = (H̄ + ½ λ_int ‖Dη‖ D²)⁻¹ ḡ with D = diag(|D³|^{1/3}) (see the module docstring).

    Args:
        gbar: ḡ [S], the gradient summary.
        hbar: H̄ [S, S], the Hessian (or GGN) summary; symmetrised as ½(H̄ + H̄ᵀ).
        d3: D³ [S], the order-3 diagonal; required when ``lambda_int > 0``.
        lambda_int: λ_int ≥ 0, the internal damping (strength of the cubic term). 0 gives η = H̄⁻¹ḡ.
        d_threshold: D_ii ≤ this counts as zero (then x0 is found numerically), as in the reference.
        pd_threshold: H̄ counts as positive definite if all eigenvalues exceed this.
        maxiter: iteration cap of Brent's method and of the bracket search.

    Returns:
        :class:`NewtonSummaryStep` with η in float64 [S] and diagnostics.

    Raises:
        SingularSummaryError: ``lambda_int == 0`` and H̄ is singular (its smallest |eigenvalue| is at
            most S·eps·its largest); the message gives the smallest eigenvalue.
        ValueError: inconsistent shapes, non-finite inputs, ``lambda_int < 0`` or a missing ``d3``.

    Example:
        >>> g, H = torch.tensor([1.0, 2.0]), torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> newton_summary_step(g, H).eta.tolist()                       # H̄⁻¹ḡ
        [0.5, 0.5]
        >>> step = newton_summary_step(torch.tensor([3.0]), torch.tensor([[1.0]]), torch.tensor([1.0]),
        ...                            lambda_int=2.0)     # η = 3/(1 + r), r = |η|: r = (√13 − 1)/2
        >>> step.status.value, round(step.r, 4), round(float(step.eta), 4)
        ('converged', 1.3028, 1.3028)
        >>> H_indef = torch.tensor([[1.0, 0.0], [0.0, -1.0]])   # indefinite: x0 = 1 (H̄ + x0 D² singular,
        >>> s = newton_summary_step(g, H_indef, torch.tensor([1.0, 1.0]), lambda_int=2.0)  # nudged by 0.1%)
        >>> s.hbar_pd, s.x0_method.value, s.x0, s.found
        (False, 'analytic', 1.001, True)
    """
    g, h, dvec = _validate(gbar, hbar, d3, lambda_int)
    eigenvalues = torch.linalg.eigvalsh(h)
    hbar_pd = bool((eigenvalues > pd_threshold).all())
    if lambda_int == 0.0:
        return NewtonSummaryStep(_plain_solve(g, h, eigenvalues), StepStatus.PLAIN_SOLVE, hbar_pd)

    d_sq = torch.diag(dvec**2)
    half_lambda = 0.5 * float(lambda_int)

    def f(x: float) -> float:
        return float((dvec * torch.linalg.solve(h + half_lambda * x * d_sq, g)).norm()) - x

    def failed(status: StepStatus, x0: float | None, method: X0Method) -> NewtonSummaryStep:
        return NewtonSummaryStep(torch.zeros_like(g), status, hbar_pd, x0=x0, x0_method=method)

    if hbar_pd:
        x0, method = 0.0, X0Method.POSITIVE_DEFINITE
    elif bool((dvec > d_threshold).all()):
        method = X0Method.ANALYTIC
        d_inv = torch.diag(1.0 / dvec)
        lam_min = float(torch.linalg.eigvalsh(d_inv @ h @ d_inv).min())
        x0 = abs(min(0.0, lam_min)) / half_lambda
    else:
        method = X0Method.NUMERIC
        x0 = _numeric_x0(h, d_sq, half_lambda, maxiter)
        if x0 is None:
            return failed(StepStatus.NO_X0, None, method)

    try:
        f_x0 = f(x0)
    except torch.linalg.LinAlgError:  # exactly singular at x0: step right, as the reference does
        x0 *= 1.001
        f_x0 = f(x0)
    if f_x0 == 0.0:  # x0 is itself the root, e.g. D η = 0 (no third-order information): no cubic term
        eta = torch.linalg.solve(h + half_lambda * x0 * d_sq, g)
        return NewtonSummaryStep(eta, StepStatus.CONVERGED, hbar_pd, float(x0), 0, x0, method)
    if not f_x0 > 0:
        return failed(StepStatus.NO_ROOT, x0, method)

    x1 = x0 + 1.0
    for _ in range(maxiter):
        if f(x1) < 0:
            break
        x1 *= 3.0
    else:
        return failed(StepStatus.NO_BRACKET, x0, method)

    root, info = scipy.optimize.brentq(f, x0, x1, maxiter=maxiter, full_output=True, disp=False)
    if not info.converged:
        return NewtonSummaryStep(
            torch.zeros_like(g), StepStatus.NOT_CONVERGED, hbar_pd, None, info.iterations, x0, method
        )
    eta = torch.linalg.solve(h + half_lambda * root * d_sq, g)
    return NewtonSummaryStep(eta, StepStatus.CONVERGED, hbar_pd, float(root), info.iterations, x0, method)


def _validate(gbar, hbar, d3, lambda_int):
    g = torch.as_tensor(gbar).detach().to("cpu", torch.float64)
    h = torch.as_tensor(hbar).detach().to("cpu", torch.float64)
    if g.ndim != 1:
        raise ValueError(f"gbar must be a vector [S], got shape {tuple(g.shape)}")
    s = g.shape[0]
    if h.shape != (s, s):
        raise ValueError(f"hbar must be [S, S] = [{s}, {s}] to match gbar, got {tuple(h.shape)}")
    if lambda_int < 0:
        raise ValueError(f"lambda_int must be >= 0, got {lambda_int}")
    dvec = None
    if d3 is not None:
        d = torch.as_tensor(d3).detach().to("cpu", torch.float64)
        if d.shape != (s,):
            raise ValueError(f"d3 must be [S] = [{s}] to match gbar, got {tuple(d.shape)}")
        dvec = d.abs().pow(1.0 / 3.0)
    elif lambda_int > 0:
        raise ValueError("lambda_int > 0 needs d3 (the order-3 diagonal): compute the summary with order=3")
    for name, t in (("gbar", g), ("hbar", h), ("d3", dvec)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} holds NaN or inf entries")
    return g, 0.5 * (h + h.T), dvec


def _plain_solve(g: torch.Tensor, h: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
    magnitude = eigenvalues.abs()
    tol = h.shape[0] * torch.finfo(torch.float64).eps * float(magnitude.max())
    if float(magnitude.min()) <= tol:
        raise SingularSummaryError(
            f"hbar is singular: its smallest eigenvalue is {float(eigenvalues[magnitude.argmin()]):.3e} "
            f"(largest magnitude {float(magnitude.max()):.3e}); use lambda_int > 0 with order-3 "
            "information, another partition, or a direction with no vanishing group"
        )
    return torch.linalg.solve(h, g)


def _numeric_x0(h: torch.Tensor, d_sq: torch.Tensor, half_lambda: float, maxiter: int) -> float | None:
    """Root of x ↦ λ_min(H̄ + ½λ_int x D²) on [0, x1], as the reference's numeric branch."""

    def lam_min(x: float) -> float:
        return float(torch.linalg.eigvalsh(h + half_lambda * x * d_sq).min())

    if lam_min(0.0) >= 0:
        return 0.0
    x1, last = 1.0, lam_min(1.0)
    for _ in range(maxiter):
        if last > 0:
            break
        x1 *= 3.0
        current = lam_min(x1)
        if current < last:  # λ_min decreases: some direction with D_ii = 0 stays negative
            return None
        last = current
    else:
        return None
    root, info = scipy.optimize.brentq(lam_min, 0.0, x1, maxiter=2 * maxiter, full_output=True, disp=False)
    return float(root) if info.converged else None

