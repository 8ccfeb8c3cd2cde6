r"""How close an approximate curvature matrix A is to an exact one E (both symmetric [P, P]).

========================  ===================================================  ==========  =========
metric                    definition                                           perfect     worst
========================  ===================================================  ==========  =========
``rel_frobenius_error``   ‖A − E‖_F / ‖E‖_F                                    0           ∞
``rel_spectral_error``    ‖A − E‖₂ / ‖E‖₂   (‖·‖₂ = largest |eigenvalue|)      0           ∞
``cosine_similarity``     ⟨A, E⟩_F / (‖A‖_F ‖E‖_F)                              1           −1
``eigenspace_overlap``    ‖V_kᵀ W_k‖_F² / k, V_k, W_k the top-k eigenvectors    1           0
                          of E and A (largest eigenvalues, orthonormal)
========================  ===================================================  ==========  =========

The overlap is the mean squared cosine of the principal angles between the two k-dimensional top
eigenspaces. A metric that divides by a zero norm is NaN. Everything is computed in float64.

Example:
    >>> import torch
    >>> e = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    >>> float(relative_frobenius_error(e, e)), float(cosine_similarity(e, 2 * e))
    (0.0, 1.0)
    >>> float(eigenspace_overlap(e, torch.diag(torch.tensor([1.0, 2.0, 3.0])), k=1))
    0.0
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
import torch

from curvlab.analysis.matrices import as_dense, block_indices, group_labels, sub_block

__all__ = [
    "Metric",
    "cosine_similarity",
    "eigenspace_overlap",
    "matrix_quality",
    "relative_frobenius_error",
    "relative_spectral_error",
    "spectral_norm",
    "top_eigenvectors",
]

#: Above this size, spectral norms and top eigenvectors use Lanczos (scipy ``eigsh``) instead of ``eigh``.
LANCZOS_THRESHOLD = 1500


class Metric(enum.Enum):
    """The matrix metrics; ``value`` is the name used as a coordinate on export."""

    REL_FROBENIUS_ERROR = "rel_frobenius_error"
    REL_SPECTRAL_ERROR = "rel_spectral_error"
    COSINE_SIMILARITY = "cosine_similarity"
    EIGENSPACE_OVERLAP = "eigenspace_overlap"


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / den if float(den) > 0 else torch.tensor(float("nan"), dtype=torch.float64)


def spectral_norm(matrix) -> torch.Tensor:
    """‖M‖₂ = max |λ_i| of a symmetric matrix (tensor or representation), a 0-d float64 tensor.

    Example:
        >>> float(spectral_norm(torch.diag(torch.tensor([1.0, -4.0]))))
        4.0
    """
    m = as_dense(matrix, "matrix")
    if m.shape[0] == 0:
        return torch.zeros((), dtype=torch.float64)
    if m.shape[0] <= LANCZOS_THRESHOLD:
        return torch.linalg.eigvalsh(m).abs().max()
    from scipy.sparse.linalg import eigsh

    values = eigsh(m.numpy(), k=1, which="LM", return_eigenvectors=False, tol=1e-10)
    return torch.tensor(float(np.abs(values).max()), dtype=torch.float64)


def top_eigenvectors(matrix, k: int) -> torch.Tensor:
    """Orthonormal eigenvectors [P, k] of the k largest eigenvalues (largest first).

    Example:
        >>> top_eigenvectors(torch.diag(torch.tensor([1.0, 5.0, 3.0])), 2).abs()
        tensor([[0., 0.],
                [1., 0.],
                [0., 1.]], dtype=torch.float64)
    """
    m = as_dense(matrix, "matrix")
    if not 1 <= k <= m.shape[0]:
        raise ValueError(f"k must be between 1 and {m.shape[0]}, got {k}")
    if m.shape[0] <= LANCZOS_THRESHOLD or k >= m.shape[0] // 2:
        return torch.linalg.eigh(m).eigenvectors[:, -k:].flip(1)
    from scipy.sparse.linalg import eigsh

    values, vectors = eigsh(m.numpy(), k=k, which="LA", tol=1e-10)
    order = np.argsort(values)[::-1]
    return torch.from_numpy(np.ascontiguousarray(vectors[:, order]))


def relative_frobenius_error(exact, approx) -> torch.Tensor:
    """‖A − E‖_F / ‖E‖_F, a 0-d float64 tensor (NaN if E = 0).

    ``exact`` E and ``approx`` A are [n, n] tensors or representations (``dense()`` is used).

    Example:
        >>> E = torch.diag(torch.tensor([3.0, 4.0]))
        >>> float(relative_frobenius_error(E, torch.zeros(2, 2))), float(relative_frobenius_error(E, E))
        (1.0, 0.0)
    """
    e, a = _pair(exact, approx)
    return _ratio(torch.linalg.matrix_norm(a - e), torch.linalg.matrix_norm(e))


def relative_spectral_error(exact, approx) -> torch.Tensor:
    """‖A − E‖₂ / ‖E‖₂, a 0-d float64 tensor (NaN if E = 0).

    Example:
        >>> E = torch.diag(torch.tensor([2.0, 1.0]))
        >>> float(relative_spectral_error(E, torch.diag(torch.tensor([2.0, 0.0]))))
        0.5
    """
    e, a = _pair(exact, approx)
    return _ratio(spectral_norm(a - e), spectral_norm(e))


def cosine_similarity(exact, approx) -> torch.Tensor:
    """⟨A, E⟩_F / (‖A‖_F ‖E‖_F) ∈ [−1, 1], a 0-d float64 tensor (NaN if either is 0).

    Example:
        >>> E = torch.eye(2)
        >>> round(float(cosine_similarity(E, 5 * E)), 12), float(cosine_similarity(E, torch.tensor([[0.0, 1.0], [1.0, 0.0]])))
        (1.0, 0.0)
    """
    e, a = _pair(exact, approx)
    return _ratio((a * e).sum(), torch.linalg.matrix_norm(a) * torch.linalg.matrix_norm(e))


def eigenspace_overlap(exact, approx, k: int) -> torch.Tensor:
    """‖V_kᵀ W_k‖_F² / k ∈ [0, 1] between the top-k eigenspaces of E and A (0-d float64 tensor).

    With tied eigenvalues at the cut the top-k space is not unique; the value then depends on the solver.

    Example:
        >>> E, A = torch.diag(torch.tensor([3.0, 2.0, 1.0])), torch.diag(torch.tensor([1.0, 2.0, 3.0]))
        >>> float(eigenspace_overlap(E, E, 2)), float(eigenspace_overlap(E, A, 1))
        (1.0, 0.0)
    """
    e, a = _pair(exact, approx)
    v, w = top_eigenvectors(e, k), top_eigenvectors(a, k)
    return (v.T @ w).pow(2).sum() / k


def matrix_quality(
    exact,
    approx,
    partition=None,
    *,
    metrics: Sequence[Metric] = tuple(Metric),
    k: int = 10,
) -> tuple[list[str], np.ndarray]:
    """Every metric on every diagonal block of ``partition`` and on the whole matrix.

    Args:
        exact, approx: [P, P] tensors or representations.
        partition: a :class:`~curvlab.partition.Partition`, a list of index tensors, or ``None``.
        metrics: which metrics, in order.
        k: eigenspace size; blocks smaller than ``k`` use their own size.

    Returns:
        ``(blocks, values)``: block names (the partition's groups, then ``"all"``) and a float64
        array [len(blocks), len(metrics)].

    Example:
        >>> names, values = matrix_quality(torch.eye(3), torch.eye(3), [torch.tensor([0]), torch.tensor([1, 2])], k=1)
        >>> names, values[:, 0].tolist(), values[:, 2].round(12).tolist()
        (['block0', 'block1', 'all'], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    """
    e, a = _pair(exact, approx)
    blocks = block_indices(partition, e.shape[0]) if partition is not None else []
    names = (group_labels(partition) if partition is not None else []) + ["all"]
    pairs = [(sub_block(e, idx), sub_block(a, idx)) for idx in blocks] + [(e, a)]
    values = np.full((len(pairs), len(metrics)), np.nan)
    for b, (eb, ab) in enumerate(pairs):
        for m, metric in enumerate(metrics):
            values[b, m] = float(_METRIC_FUNCTIONS[Metric(metric)](eb, ab, min(k, eb.shape[0])))
    return names, values


_METRIC_FUNCTIONS = {
    Metric.REL_FROBENIUS_ERROR: lambda e, a, k: relative_frobenius_error(e, a),
    Metric.REL_SPECTRAL_ERROR: lambda e, a, k: relative_spectral_error(e, a),
    Metric.COSINE_SIMILARITY: lambda e, a, k: cosine_similarity(e, a),
    Metric.EIGENSPACE_OVERLAP: lambda e, a, k: eigenspace_overlap(e, a, k),
}


def _pair(exact, approx) -> tuple[torch.Tensor, torch.Tensor]:
    e, a = as_dense(exact, "exact"), as_dense(approx, "approximation")
    if e.shape != a.shape:
        raise ValueError(f"exact matrix is {tuple(e.shape)} but the approximation is {tuple(a.shape)}")
    return e, a
