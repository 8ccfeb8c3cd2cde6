"""Preconditioned conjugate gradient for symmetric positive-definite systems given by a matrix-vector product.

Solves A x = b with A given as ``matvec(v) = A v`` ([P] → [P]) and an optional diagonal preconditioner
M ≈ A⁻¹ ([P], applied as M ⊙ r). From x₀ (default 0):

    r₀ = b − A x₀,  y₀ = M r₀,  p₀ = y₀
    αₖ = rₖᵀyₖ / pₖᵀA pₖ,  xₖ₊₁ = xₖ + αₖ pₖ,  rₖ₊₁ = rₖ − αₖ A pₖ
    yₖ₊₁ = M rₖ₊₁,  βₖ = rₖ₊₁ᵀyₖ₊₁ / rₖᵀyₖ,  pₖ₊₁ = yₖ₊₁ + βₖ pₖ

and stops when max|rₖ| ≤ ``tol`` (the SGN reference's criterion) or after ``max_iters`` iterations.
In exact arithmetic CG solves a P-dimensional SPD system in at most P iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvlab.optim.hyperparameters import check_int, check_range

__all__ = ["CGResult", "conjugate_gradient"]


@dataclass(frozen=True)
class CGResult:
    """Result of :func:`conjugate_gradient`.

    Attributes:
        x: [P] the approximate solution.
        residual: [P] the recursive residual r = b − A x.
        iterations: matrix-vector products used.
        converged: whether max|r| ≤ tol was reached.
    """

    x: torch.Tensor
    residual: torch.Tensor
    iterations: int
    converged: bool

    @property
    def residual_max(self) -> float:
        """max|r|, the quantity compared with the tolerance."""
        return float(self.residual.abs().max()) if self.residual.numel() else 0.0


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    max_iters: int,
    tol: float = 1e-6,
    x0: torch.Tensor | None = None,
    preconditioner: torch.Tensor | None = None,
) -> CGResult:
    """Approximately solve A x = b by (preconditioned) conjugate gradient; see the module docstring.

    Args:
        matvec: v ↦ A v for [P] vectors, A symmetric positive definite.
        b: [P] right-hand side.
        max_iters: at most this many iterations (≥ 1).
        tol: stop when max|r| ≤ tol (≥ 0).
        x0: [P] starting point (default zeros).
        preconditioner: [P] positive diagonal M ≈ diag(A)⁻¹, or ``None``.

    Returns:
        :class:`CGResult`.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> res = conjugate_gradient(lambda v: A @ v, b, max_iters=2, tol=0.0)
        >>> torch.allclose(A @ res.x, b), res.iterations
        (True, 2)
    """
    check_int("max_iters", max_iters)
    check_range("tol", tol, low=0.0)
    if preconditioner is not None and not bool((preconditioner > 0).all()):
        raise ValueError("preconditioner must be a positive diagonal")
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    if float(r.abs().max()) <= tol:
        return CGResult(x, r, 0, True)
    y = r if preconditioner is None else preconditioner * r
    p = y.clone()
    ry = torch.dot(r, y)
    iterations = 0
    while iterations < max_iters:
        ap = matvec(p)
        iterations += 1
        curvature = torch.dot(p, ap)
        if bool(curvature <= 0):  # breakdown (zero or negative curvature): keep the current iterate
            break  # (a NaN curvature falls through and makes x NaN, so callers see it)
        alpha = ry / curvature
        x = x + alpha * p
        r = r - alpha * ap
        if float(r.abs().max()) <= tol:
            return CGResult(x, r, iterations, True)
        y = r if preconditioner is None else preconditioner * r
        ry_new = torch.dot(r, y)
        p = y + (ry_new / ry) * p
        ry = ry_new
    return CGResult(x, r, iterations, float(r.abs().max()) <= tol)
