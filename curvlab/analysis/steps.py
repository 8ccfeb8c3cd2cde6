r"""Step quality: how good a damped approximate Newton step is for the exact quadratic model.

For an exact curvature E [P, P], a gradient g [P] and a damping λ ≥ 0, the damped quadratic model is

    m_λ(d) = gᵀd + ½ dᵀ (E + λI) d,

whose minimiser (when E + λI is positive definite) is the exact damped Newton step d* = −(E + λI)⁻¹ g,
with decrease m_λ(0) − m_λ(d*) = ½ gᵀ(E + λI)⁻¹g. An approximation A gives d̃ = −(A + λI)⁻¹ g. Step quality is

* ``step_cosine``     cos∠(d̃, d*) = d̃ᵀd* / (‖d̃‖ ‖d*‖)  (1 for the exact step);
* ``decrease_ratio``  [m_λ(0) − m_λ(d̃)] / [m_λ(0) − m_λ(d*)]  (1 for the exact step, ≤ 1 whenever E + λI ≻ 0,
  negative when d̃ increases the model).

When E + λI is indefinite (a Hessian with negative curvature and small λ), d* is a saddle point of m_λ
and the ratio can exceed 1: read those values with care.

Example:
    >>> import torch
    >>> e, g = torch.diag(torch.tensor([2.0, 1.0])), torch.tensor([1.0, 1.0])
    >>> q = step_quality(e, damped_steps(e, g, [0.0, 1.0]), g, [0.0, 1.0])
    >>> q.cosine.round(decimals=12).tolist(), q.decrease_ratio.round(decimals=12).tolist()
    ([1.0, 1.0], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from curvlab.analysis.matrices import as_dense, as_vector, block_indices

__all__ = [
    "StepQuality",
    "damped_steps",
    "eigen_steps",
    "quadratic_decrease",
    "step_quality",
    "summary_steps",
]


@dataclass(frozen=True)
class StepQuality:
    """Step metrics per damping: ``cosine`` [D] and ``decrease_ratio`` [D] for ``dampings`` [D]."""

    dampings: torch.Tensor
    cosine: torch.Tensor
    decrease_ratio: torch.Tensor


def _dampings(dampings: Sequence[float]) -> torch.Tensor:
    d = torch.as_tensor(list(dampings), dtype=torch.float64).reshape(-1)
    if d.numel() == 0 or bool((d < 0).any()):
        raise ValueError(f"dampings must be a non-empty list of values >= 0, got {list(dampings)}")
    return d


def damped_steps(matrix, gradient, dampings: Sequence[float]) -> torch.Tensor:
    """Damped Newton steps −(M + λI)⁻¹ g for every λ in ``dampings``: [D, P] float64.

    ``matrix`` is a [P, P] tensor or a representation. A representation with its own ``solve`` (Kronecker,
    diagonal, block-diagonal) is used through it; a dense matrix is solved (LU) once per damping
    (see :func:`eigen_steps` for many dampings). A damped matrix that is singular gives a row of NaN.

    Example:
        >>> damped_steps(torch.diag(torch.tensor([1.0, 3.0])), torch.tensor([2.0, 2.0]), [1.0])
        tensor([[-1.0000, -0.5000]], dtype=torch.float64)
    """
    lambdas = _dampings(dampings)
    if hasattr(matrix, "solve") and not isinstance(matrix, torch.Tensor):
        g = as_vector(gradient, matrix.shape[0], "gradient")
        rows = []
        for lam in lambdas.tolist():
            try:
                rows.append(-matrix.solve(g.to(matrix.dtype), lam).to(torch.float64))
            except (torch.linalg.LinAlgError, FloatingPointError, ArithmeticError):
                rows.append(torch.full_like(g, float("nan")))
        return torch.stack(rows)
    m = as_dense(matrix, "matrix")
    g = as_vector(gradient, m.shape[0], "gradient")
    eye = torch.eye(m.shape[0], dtype=torch.float64)
    rows = []
    for lam in lambdas.tolist():
        try:
            rows.append(-torch.linalg.solve(m + lam * eye, g))
        except torch.linalg.LinAlgError:
            rows.append(torch.full_like(g, float("nan")))
    return torch.stack(rows)


def eigen_steps(values: torch.Tensor, vectors: torch.Tensor, gradient: torch.Tensor,
                dampings: Sequence[float]) -> torch.Tensor:
    """:func:`damped_steps` from an eigendecomposition M = V diag(values) Vᵀ: [D, P] (cheap for many λ).

    A damped matrix with an eigenvalue within 1e-12·max|values| of zero gives a row of NaN.

    Example:
        >>> eigen_steps(torch.tensor([1.0, 3.0]), torch.eye(2), torch.tensor([2.0, 2.0]), [1.0])
        tensor([[-1.0000, -0.5000]], dtype=torch.float64)
    """
    lambdas = _dampings(dampings)
    values, vectors = values.to(torch.float64), vectors.to(torch.float64)
    coeffs = vectors.T @ gradient.to(torch.float64)
    shifted = values[None, :] + lambdas[:, None]  # [D, P]
    singular = shifted.abs() <= 1e-12 * max(float(values.abs().max()), 1.0)
    steps = -(coeffs[None, :] / shifted) @ vectors.T
    steps[singular.any(1)] = float("nan")
    return steps


def quadratic_decrease(matrix, gradient, steps: torch.Tensor, dampings: Sequence[float]) -> torch.Tensor:
    """m_λ(0) − m_λ(d) = −(gᵀd + ½ dᵀ(M + λI)d) for each row d of ``steps`` [D, P] and its λ: [D].

    Example:
        >>> m, g = torch.eye(2), torch.tensor([1.0, 0.0])
        >>> quadratic_decrease(m, g, torch.tensor([[-1.0, 0.0]]), [0.0])
        tensor([0.5000], dtype=torch.float64)
    """
    m = as_dense(matrix, "matrix")
    g = as_vector(gradient, m.shape[0], "gradient")
    lambdas = _dampings(dampings)
    steps = steps.detach().to(torch.float64).reshape(len(lambdas), -1)
    curvature = ((steps @ m) * steps).sum(1) + lambdas * steps.pow(2).sum(1)
    return -(steps @ g + 0.5 * curvature)


def step_quality(exact, steps: torch.Tensor, gradient, dampings: Sequence[float], *,
                 exact_steps: torch.Tensor | None = None) -> StepQuality:
    """Cosine to the exact damped Newton step and decrease ratio of the given ``steps`` [D, P].

    ``steps[i]`` is the approximate step for damping ``dampings[i]`` (see :func:`damped_steps` and
    :func:`summary_steps`). ``exact_steps`` [D, P] may be passed when already computed (it must equal
    ``damped_steps(exact, gradient, dampings)``). Returns a :class:`StepQuality`; NaN where a step or the
    exact step is undefined.
    """
    e = as_dense(exact, "exact")
    g = as_vector(gradient, e.shape[0], "gradient")
    lambdas = _dampings(dampings)
    steps = steps.detach().to(torch.float64)
    if steps.shape != (len(lambdas), e.shape[0]):
        raise ValueError(f"steps must be [{len(lambdas)}, {e.shape[0]}] (dampings × P), got {tuple(steps.shape)}")
    if exact_steps is None:
        exact_steps = eigen_steps(*torch.linalg.eigh(e), g, lambdas.tolist())
    dot = (steps * exact_steps).sum(1)
    norms = steps.norm(dim=1) * exact_steps.norm(dim=1)
    cosine = torch.where(norms > 0, dot / norms, torch.full_like(dot, float("nan")))
    best = quadratic_decrease(e, g, exact_steps, lambdas.tolist())
    achieved = quadratic_decrease(e, g, steps, lambdas.tolist())
    ratio = torch.where(best.abs() > 0, achieved / best, torch.full_like(best, float("nan")))
    return StepQuality(lambdas, cosine, ratio)


def summary_steps(hbar, gbar, direction, partition, dampings: Sequence[float]) -> torch.Tensor:
    """GroupedNewton steps d = −U η with η = (H̄ + λ·diag(‖u_s‖²))⁻¹ ḡ: [D, P].

    U [P, S] holds the direction ``u`` restricted to each group s of ``partition`` in column s, so that
    H̄ = UᵀEU and ḡ = Uᵀg. The damping term λ·UᵀU = λ·diag(‖u_s‖²) makes d the minimiser of m_λ over
    the S-dimensional subspace span(U) (the best step the summary can express).

    Args:
        hbar: [S, S] summary matrix; gbar: [S]; direction: [P]; partition: the summary's partition.

    Example:
        >>> from curvlab.partition import Partition
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(1, 1), "canonical")   # groups weight, bias
        >>> summary_steps(torch.eye(2), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), part, [0.0])
        tensor([[-1., -2.]], dtype=torch.float64)
    """
    lambdas = _dampings(dampings)
    h = as_dense(hbar, "hbar")
    s = h.shape[0]
    blocks = block_indices(partition, partition.num_params)
    if len(blocks) != s:
        raise ValueError(f"hbar is [{s}, {s}] but the partition has {len(blocks)} groups")
    u = as_vector(direction, partition.num_params, "direction")
    gb = as_vector(gbar, s, "gbar")
    basis = torch.zeros(u.numel(), s, dtype=torch.float64)
    for j, idx in enumerate(blocks):
        basis[idx, j] = u[idx]
    norms = basis.pow(2).sum(0)
    rows = []
    for lam in lambdas.tolist():
        try:
            eta = torch.linalg.solve(h + lam * torch.diag(norms), gb)
        except torch.linalg.LinAlgError:
            eta = torch.full_like(gb, float("nan"))
        rows.append(-(basis @ eta))
    return torch.stack(rows)
