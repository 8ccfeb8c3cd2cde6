r"""Spectral-norm errors and top-k eigenspace overlaps of curvature blocks by Lanczos, from products only.

For a diagonal block M_bb = R_b M R_bᵀ (R_b selects the rows of block b) of the exact matrix C, of an
approximation A, or of their difference D = C − A:

* ‖D_bb‖₂ = |λ| of largest magnitude, by Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LM"``);
  its error bar is the residual norm ‖D v − λ v‖, which bounds the distance from λ to the spectrum;
* the top-k eigenvectors V (of C_bb) and W (of A_bb) by Lanczos with k+1 pairs; by the sin Θ theorem
  (Davis & Kahan 1970), ‖sin Θ‖_F ≤ ‖R‖_F / gap with R the residuals and gap = λ_k − λ_{k+1}; the overlap
  ‖VᵀW‖_F²/k is then within (2√2·s·√k + 2s²)/k of the exact one, s = s_V + s_W.

Blocks of at most :data:`DENSE_BLOCK` rows are materialised instead (n_b products) and decomposed exactly.

Example:
    >>> import torch
    >>> c = torch.diag(torch.arange(1.0, 301.0, dtype=torch.float64))
    >>> facts = SpectralFacts.of(c, torch.arange(300), k=2, generator=torch.Generator().manual_seed(0))
    >>> abs(facts.norm - 300.0) <= facts.norm_error, round(facts.norm), facts.vectors.shape  # within its bound
    (True, 300, torch.Size([300, 2]))
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from curvlab.analysis.probes import apply
from curvlab.errors import CurvlabWarning

__all__ = ["DENSE_BLOCK", "SpectralFacts", "restricted_operator", "spectral_norm_estimate"]

#: Blocks with at most this many rows are materialised and decomposed densely.
DENSE_BLOCK = 256
#: Relative accuracy asked of Lanczos (``eigsh`` tol); the reported error bars come from the residuals.
LANCZOS_TOL = 1e-6
#: The same for spectral norms (their residual bound is reported beside them).
NORM_TOL = 1e-3


def restricted_operator(matrix, rows: torch.Tensor, size: int, minus=None) -> LinearOperator:
    """The scipy float64 operator v ↦ R (M − N) Rᵀ v of the diagonal block ``rows`` (``N = minus`` or 0)."""
    n = rows.numel()

    def matmat(v):
        v = torch.as_tensor(np.asarray(v, dtype=np.float64)).reshape(n, -1)
        full = torch.zeros(size, v.shape[1], dtype=torch.float64)
        full[rows] = v
        out = apply(matrix, full)
        if minus is not None:
            out = out - apply(minus, full)
        return out[rows].numpy()

    return LinearOperator((n, n), matvec=lambda v: matmat(v)[:, 0], matmat=matmat, rmatvec=lambda v: matmat(v)[:, 0],
                          dtype=np.float64)


def _dense_block(matrix, rows: torch.Tensor, size: int, minus=None) -> torch.Tensor:
    block = torch.from_numpy(restricted_operator(matrix, rows, size, minus).matmat(np.eye(rows.numel())))
    return (block + block.T) / 2


def spectral_norm_estimate(matrix, rows: torch.Tensor, size: int, minus=None, *,
                           generator: torch.Generator | None = None) -> tuple[float, float]:
    """‖R(M − N)Rᵀ‖₂ and its error bound (Lanczos residual; 0 for dense blocks)."""
    n = rows.numel()
    if n <= DENSE_BLOCK:
        values = torch.linalg.eigvalsh(_dense_block(matrix, rows, size, minus))
        return float(values.abs().max()), 0.0
    operator = restricted_operator(matrix, rows, size, minus)
    v0 = torch.randn(n, dtype=torch.float64, generator=generator).numpy()
    try:
        values, vectors = eigsh(operator, k=1, which="LM", tol=NORM_TOL, v0=v0, maxiter=max(20 * n, 1000))
    except ArpackNoConvergence:
        return float("nan"), float("nan")
    residual = np.linalg.norm(operator.matmat(vectors) - vectors * values)
    return float(np.abs(values).max()), float(residual)


@dataclass
class SpectralFacts:
    """Spectral norm (with error bound), top-k eigenvalues (descending), eigenvectors [n, k] and their sin Θ
    bound of one block."""

    norm: float
    norm_error: float
    vectors: torch.Tensor
    angle_bound: float
    values: np.ndarray

    @classmethod
    def of(cls, matrix, rows: torch.Tensor, k: int, *, size: int | None = None,
           generator: torch.Generator | None = None) -> SpectralFacts:
        """Facts of the diagonal block ``rows`` of ``matrix`` (``size`` = P, default the number of rows)."""
        from curvlab import spectra

        size = rows.numel() if size is None else size
        n, k = rows.numel(), min(k, rows.numel())
        if n <= DENSE_BLOCK or k + 1 >= n:
            values, vectors = torch.linalg.eigh(_dense_block(matrix, rows, size))
            return cls(float(values.abs().max()), 0.0, vectors[:, -k:].flip(1), 0.0,
                       values[-k:].flip(0).to(torch.float64).cpu().numpy())
        norm, norm_error = spectral_norm_estimate(matrix, rows, size, generator=generator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CurvlabWarning)
            ds = spectra.top_eigenvalues(restricted_operator(matrix, rows, size), k + 1, return_eigenvectors=True,
                                         tol=LANCZOS_TOL, generator=generator)
        values, residuals = ds["eigenvalues"].values, ds["residual_norms"].values
        vectors = torch.from_numpy(np.ascontiguousarray(ds["eigenvectors"].values[:, :k]))
        gap = values[k - 1] - values[k]
        bound = float(np.linalg.norm(residuals[:k]) / gap) if gap > 0 else float("inf")
        return cls(norm, norm_error, vectors, bound if np.isfinite(bound) else float("inf"), values[:k].copy())


def overlap(exact: SpectralFacts, approx: SpectralFacts) -> tuple[float, float]:
    """‖VᵀW‖_F²/k and its error bound from the two sin Θ bounds (capped at 1)."""
    k = exact.vectors.shape[1]
    value = float((exact.vectors.T @ approx.vectors).pow(2).sum() / k)
    s = exact.angle_bound + approx.angle_bound
    bound = (2 * math.sqrt(2) * s * math.sqrt(k) + 2 * s * s) / k
    return value, float(min(bound, 1.0))
