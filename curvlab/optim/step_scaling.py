"""Rescaling a preconditioned direction: the exact quadratic model (Botev et al.) or KL clipping (Martens & Grosse).

For a preconditioned direction d (the step is θ ← θ − α d) and gradient g:

* :func:`quadratic_step_scale` minimises the damped Gauss–Newton model m(−αd) = L − α gᵀd + ½ α² dᵀ(G + γI)d,
  α* = gᵀd / (dᵀGd + γ dᵀd), capped at ``cap`` (1 in Botev et al. 2017) and 0 below;
* :func:`quadratic_momentum_step` minimises the same model over a step α(−d) + μ δ_prev jointly in α and the
  momentum μ (Martens & Grosse 2015, §7): a 2 × 2 linear system in the curvature Gram of (−d, δ_prev);
* :func:`kl_clip_scale` bounds the predicted KL change of the natural-gradient step of length η:
  ν = min(1, sqrt(κ / (η² gᵀd))) (K-FAC implementations of Martens & Grosse 2015).
"""

from __future__ import annotations

import math

import torch

__all__ = ["kl_clip_scale", "quadratic_momentum_step", "quadratic_step_scale"]


def quadratic_step_scale(d: torch.Tensor, g: torch.Tensor, gd: torch.Tensor, damping: float, cap: float = 1.0) -> float:
    """α* = clip(gᵀd / (dᵀGd + γ dᵀd), 0, cap) for [P] vectors d, g and ``gd`` = G d [P] (or dᵀGd, 0-dim).

    Example:
        >>> d, g = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0])
        >>> quadratic_step_scale(d, g, torch.tensor([4.0, 0.0]), damping=0.0, cap=10.0)   # 2 / 4
        0.5
    """
    numerator = float(torch.dot(g, d))
    curvature = float(gd) if gd.ndim == 0 else float(torch.dot(d, gd))
    denominator = curvature + damping * float(torch.dot(d, d))
    if not denominator > 0 or not math.isfinite(numerator):
        return 0.0 if math.isfinite(numerator) and math.isfinite(denominator) else math.nan
    return min(max(numerator / denominator, 0.0), cap)


def kl_clip_scale(d: torch.Tensor, g: torch.Tensor, lr: float, kl_clip: float) -> float:
    """ν = min(1, sqrt(κ / (η² gᵀd))) (1 if gᵀd ≤ 0).

    Example:
        >>> kl_clip_scale(torch.tensor([2.0]), torch.tensor([2.0]), lr=1.0, kl_clip=1.0)   # sqrt(1 / 4)
        0.5
    """
    vg = lr * lr * float(torch.dot(g, d))
    if not math.isfinite(vg):
        return math.nan
    if vg <= 0:
        return 1.0
    return min(1.0, math.sqrt(kl_clip / vg))


def quadratic_momentum_step(gram: torch.Tensor, g_dots: torch.Tensor, damping: float,
                            norms: torch.Tensor) -> tuple[float, float]:
    """(α, μ) minimising m(α u + μ v) = (α, μ)·b + ½ (α, μ)(Γ + γN)(α, μ)ᵀ for u = −d, v = δ_prev.

    Args:
        gram: [2, 2] Γ_ij = u_iᵀ G u_j; g_dots: [2] b = (gᵀu, gᵀv); norms: [2, 2] N_ij = u_iᵀu_j; damping: γ.

    Returns (nan, nan) when the damped system is not positive definite (the caller falls back to α alone).

    Example:
        >>> quadratic_momentum_step(torch.eye(2, dtype=torch.float64), torch.tensor([-1.0, -2.0], dtype=torch.float64),
        ...                         0.0, torch.eye(2, dtype=torch.float64))
        (1.0, 2.0)
    """
    system = (gram + damping * norms).to(torch.float64)
    rhs = -g_dots.to(torch.float64)
    if not (bool(torch.isfinite(system).all()) and bool(torch.isfinite(rhs).all())):
        return math.nan, math.nan
    det = float(system[0, 0] * system[1, 1] - system[0, 1] * system[1, 0])
    if not (float(system[0, 0]) > 0 and det > 1e-12 * float(system[0, 0] * system[1, 1])):
        return math.nan, math.nan
    alpha, mu = torch.linalg.solve(system, rhs).tolist()
    return float(alpha), float(mu)
