"""(Preconditioned) conjugate gradient for symmetric positive-definite matrix-free systems.

Solves (A + λI) x = b with only products A v (Hestenes & Stiefel 1952) and an optional positive diagonal
preconditioner M ≈ (A + λI)⁻¹ ([P], applied as M ⊙ r; M = 1 without one). From x₀ (default 0):

    r₀ = b − (A + λI) x₀,  y₀ = M r₀,  p₀ = y₀;
    αₖ = rₖᵀyₖ / pₖᵀ(A + λI)pₖ,  xₖ₊₁ = xₖ + αₖpₖ,  rₖ₊₁ = rₖ − αₖ(A + λI)pₖ,
    yₖ₊₁ = M rₖ₊₁,  pₖ₊₁ = yₖ₊₁ + (rₖ₊₁ᵀyₖ₊₁ / rₖᵀyₖ) pₖ,

stopping when ‖rₖ‖ ≤ max(rtol·‖b‖, atol) or after ``maxiter`` iterations (default 10·P), with ‖·‖ the
Euclidean norm (:attr:`CGNorm.L2`) or max|·| (:attr:`CGNorm.MAX_ABS`, the SGN reference's criterion).
One product per iteration. In exact arithmetic CG solves a P-dimensional SPD system in at most P iterations.

A direction with pᵀ(A + λI)p ≤ 0 (the matrix is not positive definite) either raises
(:attr:`CGBreakdown.RAISE`, the default) or ends the solve at the current iterate (:attr:`CGBreakdown.STOP`,
as optimisers need). A NaN curvature does neither: it propagates, so callers see a non-finite solution.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from curvlab.errors import CurvlabWarning

__all__ = ["DEFAULT_CG", "CGBreakdown", "CGNorm", "CGResult", "CGSettings", "conjugate_gradient"]


class CGNorm(enum.Enum):
    """The norm of the residual in the stopping rule."""

    L2 = "l2"
    MAX_ABS = "max-abs"


class CGBreakdown(enum.Enum):
    """What :func:`conjugate_gradient` does on a direction with pᵀ(A + λI)p ≤ 0."""

    RAISE = "raise"  # torch.linalg.LinAlgError
    STOP = "stop"  # return the current iterate (not converged unless the residual is small enough)


@dataclass(frozen=True)
class CGSettings:
    """Stopping rule and breakdown behaviour of :func:`conjugate_gradient`.

    Stop when ‖r‖ ≤ max(``rtol``·‖b‖, ``atol``) in the norm ``norm``, or after ``maxiter`` (None: 10·P)
    iterations. ``on_breakdown``: see :class:`CGBreakdown`. ``warn``: warn (:class:`CurvlabWarning`) if
    the solve did not converge.

    Example:
        >>> CGSettings(norm="max-abs", rtol=0.0, atol=1e-6, maxiter=10).norm
        <CGNorm.MAX_ABS: 'max-abs'>
        >>> CGSettings(maxiter=0)
        Traceback (most recent call last):
        ...
        ValueError: CGSettings.maxiter must be an integer >= 1 or None, got 0
    """

    rtol: float = 1e-10
    maxiter: int | None = None
    atol: float = 0.0
    norm: CGNorm = CGNorm.L2
    on_breakdown: CGBreakdown = CGBreakdown.RAISE
    warn: bool = True

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"CGSettings.{name} must be a finite number >= 0, got {value!r}")
        if self.maxiter is not None and (
            isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or self.maxiter < 1
        ):
            raise ValueError(f"CGSettings.maxiter must be an integer >= 1 or None, got {self.maxiter!r}")
        for name, kind in (("norm", CGNorm), ("on_breakdown", CGBreakdown)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = ", ".join(repr(k.value) for k in kind)
                raise ValueError(f"CGSettings.{name} must be one of {choices}, got {getattr(self, name)!r}") from None

    def residual_norm(self, r: torch.Tensor) -> torch.Tensor:
        """‖r‖ in :attr:`norm` (0-dim tensor)."""
        if self.norm is CGNorm.MAX_ABS:
            return r.abs().max() if r.numel() else r.new_zeros(())
        return torch.linalg.vector_norm(r)


#: The default stopping rule (‖r‖₂ ≤ 1e-10·‖b‖₂, at most 10·P iterations, raise on breakdown).
DEFAULT_CG = CGSettings()


@dataclass(frozen=True)
class CGResult:
    """Result of :func:`conjugate_gradient`.

    Attributes:
        solution: [P] (or [P, K]) the approximate solution x.
        iterations: products used by the iteration (the maximum over columns).
        residual_norm: 0-dim (or [K]) ‖r‖ in the settings' norm, r the recursive residual.
        converged: whether every column met the stopping rule.
        residual: [P] (or [P, K]) the recursive residual r ≈ b − (A + λI)x.
    """

    solution: torch.Tensor
    iterations: int
    residual_norm: torch.Tensor
    converged: bool
    residual: torch.Tensor


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    damping: float = 0.0,
    settings: CGSettings = DEFAULT_CG,
    *,
    x0: torch.Tensor | None = None,
    preconditioner: torch.Tensor | None = None,
) -> CGResult:
    """Solve (A + damping·I) x = b by (preconditioned) CG for symmetric positive-definite A given as ``matvec``.

    See the module docstring for the iteration.

    Args:
        matvec: v ↦ A v for v of shape [P].
        b: right-hand side, [P] or [P, K] (columns solved one after another).
        damping: λ ≥ 0 added to the diagonal.
        settings: stopping rule, breakdown behaviour and warning (:class:`CGSettings`).
        x0: starting point shaped like b (default zeros; costs one extra product).
        preconditioner: [P] positive diagonal M ≈ (A + λI)⁻¹, or ``None``.

    Returns:
        A :class:`CGResult`. Warns (:class:`~curvlab.errors.CurvlabWarning`) if it did not converge and
        ``settings.warn``.

    Raises:
        torch.linalg.LinAlgError: with ``on_breakdown=RAISE``, if a search direction has pᵀ(A + λI)p ≤ 0
            (the matrix is not positive definite; add damping).
        ValueError: if ``preconditioner`` is not a positive [P] vector or ``x0`` is not shaped like ``b``.

    Example:
        >>> a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> result = conjugate_gradient(lambda v: a @ v, b)
        >>> torch.allclose(a @ result.solution, b), result.iterations
        (True, 2)
        >>> jacobi = 1 / torch.diagonal(a)
        >>> sgn_rule = CGSettings(norm=CGNorm.MAX_ABS, rtol=0.0, atol=1e-12, maxiter=2, on_breakdown="stop")
        >>> torch.allclose(conjugate_gradient(lambda v: a @ v, b, 0.0, sgn_rule, preconditioner=jacobi).solution,
        ...                result.solution)
        True
    """
    if preconditioner is not None:
        if preconditioner.shape != b.shape[:1]:
            raise ValueError(
                f"conjugate gradient: preconditioner must be a [P] diagonal with P={b.shape[0]}, "
                f"got shape {tuple(preconditioner.shape)}"
            )
        if not bool((preconditioner > 0).all()):
            raise ValueError("conjugate gradient: preconditioner must be a positive diagonal")
    if x0 is not None and x0.shape != b.shape:
        raise ValueError(f"conjugate gradient: x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
    if b.ndim == 2:
        results = [
            _solve_vector(matvec, b[:, k], damping, settings, None if x0 is None else x0[:, k], preconditioner)
            for k in range(b.shape[1])
        ]
        result = CGResult(
            torch.stack([r.solution for r in results], dim=1),
            max((r.iterations for r in results), default=0),
            torch.stack([r.residual_norm for r in results]) if results else b.new_zeros(0),
            all(r.converged for r in results),
            torch.stack([r.residual for r in results], dim=1) if results else b.clone(),
        )
    else:
        result = _solve_vector(matvec, b, damping, settings, x0, preconditioner)
    if settings.warn and not result.converged:
        warnings.warn(
            f"conjugate gradient did not converge in {result.iterations} iterations: residual "
            f"{float(result.residual_norm.max()):.3e} ({settings.norm.value}; rtol={settings.rtol}, "
            f"atol={settings.atol})",
            CurvlabWarning,
            stacklevel=2,
        )
    return result


def _solve_vector(matvec, b, damping, settings, x0, preconditioner) -> CGResult:
    """One right-hand side [P]; see :func:`conjugate_gradient`."""

    def apply(v: torch.Tensor) -> torch.Tensor:
        return matvec(v) + damping * v if damping else matvec(v)

    maxiter = settings.maxiter if settings.maxiter is not None else 10 * b.shape[0]
    target = max(settings.rtol * float(settings.residual_norm(b)), settings.atol)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - apply(x)
    y = r if preconditioner is None else preconditioner * r
    p = y.clone()
    ry = r @ y
    residual = settings.residual_norm(r)
    iterations = 0
    while iterations < maxiter and residual > target:  # False for a NaN residual: the loop ends
        ap = apply(p)
        iterations += 1
        pap = p @ ap
        if pap <= 0:
            if settings.on_breakdown is CGBreakdown.STOP:
                break
            raise torch.linalg.LinAlgError(
                f"conjugate gradient: direction with pᵀ(A + {damping}·I)p = {float(pap):.3e} <= 0 at "
                f"iteration {iterations - 1}; the damped matrix is not positive definite (increase damping)"
            )
        alpha = ry / pap
        x = x + alpha * p
        r = r - alpha * ap
        residual = settings.residual_norm(r)
        y = r if preconditioner is None else preconditioner * r
        ry_new = r @ y
        p = y + (ry_new / ry) * p
        ry = ry_new
    return CGResult(x, iterations, residual, bool(residual <= target), r)
