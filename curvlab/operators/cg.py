"""Conjugate gradient for symmetric positive-definite matrix-free systems.

Solves (A + λI) x = b with only products A v, as in Hestenes & Stiefel (1952):

    r₀ = b − (A + λI) x₀,  p₀ = r₀;   αₖ = rₖᵀrₖ / pₖᵀ(A + λI)pₖ;
    xₖ₊₁ = xₖ + αₖpₖ,  rₖ₊₁ = rₖ − αₖ(A + λI)pₖ,  pₖ₊₁ = rₖ₊₁ + (rₖ₊₁ᵀrₖ₊₁ / rₖᵀrₖ) pₖ,

stopping when ‖rₖ‖ ≤ rtol·‖b‖ or after ``maxiter`` iterations (default 10·P). One product per iteration.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvlab.errors import CurvlabWarning

__all__ = ["DEFAULT_CG", "CGResult", "CGSettings", "conjugate_gradient"]


@dataclass(frozen=True)
class CGSettings:
    """Stopping rule of :func:`conjugate_gradient`: ‖r‖ ≤ ``rtol``·‖b‖, at most ``maxiter`` (None: 10·P) steps."""

    rtol: float = 1e-10
    maxiter: int | None = None


#: The default stopping rule (rtol 1e-10, at most 10·P iterations).
DEFAULT_CG = CGSettings()


@dataclass(frozen=True)
class CGResult:
    """Solution [P] (or [P, K]), iterations used, final residual norms ‖b − (A+λI)x‖ and convergence per column."""

    solution: torch.Tensor
    iterations: int
    residual_norm: torch.Tensor
    converged: bool


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    damping: float = 0.0,
    settings: CGSettings = DEFAULT_CG,
) -> CGResult:
    """Solve (A + damping·I) x = b by CG for symmetric positive-definite A given as ``matvec``.

    Args:
        matvec: v ↦ A v for v of shape [P].
        b: right-hand side, [P] or [P, K] (columns solved one after another).
        damping: λ ≥ 0 added to the diagonal.
        settings: tolerance and iteration cap.

    Returns:
        A :class:`CGResult`. Warns (:class:`~curvlab.errors.CurvlabWarning`) if it did not converge.

    Raises:
        torch.linalg.LinAlgError: if a search direction has pᵀ(A + λI)p ≤ 0 (the matrix is not positive
            definite; add damping).

    Example:
        >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> result = conjugate_gradient(lambda v: a @ v, torch.tensor([1.0, 2.0], dtype=torch.float64))
        >>> torch.allclose(a @ result.solution, torch.tensor([1.0, 2.0], dtype=torch.float64)), result.iterations
        (True, 2)
    """
    if b.ndim == 2:
        results = [
            conjugate_gradient(matvec, b[:, k], damping, settings) for k in range(b.shape[1])
        ]
        return CGResult(
            torch.stack([r.solution for r in results], dim=1),
            max((r.iterations for r in results), default=0),
            torch.stack([r.residual_norm for r in results]),
            all(r.converged for r in results),
        )
    maxiter = settings.maxiter if settings.maxiter is not None else 10 * b.shape[0]
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    target = settings.rtol * torch.linalg.vector_norm(b)
    iterations = 0
    while iterations < maxiter and rr.sqrt() > target:
        ap = matvec(p) + damping * p
        pap = p @ ap
        if pap <= 0:
            raise torch.linalg.LinAlgError(
                f"conjugate gradient: direction with pᵀ(A + {damping}·I)p = {float(pap):.3e} <= 0 at "
                f"iteration {iterations}; the damped matrix is not positive definite (increase damping)"
            )
        alpha = rr / pap
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
        iterations += 1
    residual = torch.linalg.vector_norm(r)
    converged = bool(residual <= target)
    if not converged:
        warnings.warn(
            f"conjugate gradient did not converge in {iterations} iterations: residual {float(residual):.3e} "
            f"> {float(target):.3e} (rtol={settings.rtol})",
            CurvlabWarning,
            stacklevel=2,
        )
    return CGResult(x, iterations, residual, converged)
