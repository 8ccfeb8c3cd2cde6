"""Eigenvectors of symmetric Kronecker factors: EKFAC's basis U_A, U_G (George et al. 2018).

A factor A = X̃ᵀX̃ / R built from R rows has rank ≤ R. On one batch of a wide layer R ≪ n (the
2049-wide input factor of a Linear layer after a convolution sees 64 samples), and a full
eigendecomposition spends its time on the null space, where any orthonormal basis is an eigenbasis.
There the range is found exactly from k = R + 8 random probes (Y = A Ω, Q = qr(Y), eig(QᵀAQ)) and
completed to an orthonormal basis of R^n by a complete QR; this is exact up to roundoff, not an
approximation, because A Ω spans the range of A whenever rank A ≤ R < k.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["factor_eigenvectors"]

#: the low-rank route when R + 8 ≤ n / LOW_RANK_RATIO
LOW_RANK_RATIO = 4
#: CPU factors at least this wide use scipy's divide-and-conquer driver
SCIPY_MIN_SIZE = 512


def factor_eigenvectors(matrix: torch.Tensor, rank_bound: int | None = None) -> torch.Tensor:
    """An orthonormal eigenbasis [n, n] of a symmetric PSD factor, in the factor's dtype.

    Args:
        matrix: the factor [n, n].
        rank_bound: R, the number of rows behind the factor (rank ≤ R), when known.

    Routes, in order: the low-rank range (module docstring) where R + 8 ≤ n/4; for CPU factors with
    n ≥ 512, LAPACK's ``syevd`` through scipy, limited to torch's thread count (it deflates on
    rank-deficient factors, where ``torch.linalg.eigh`` can fail to converge in float32);
    ``torch.linalg.eigh`` in the factor's dtype; float64 where that fails or is not finite.

    Example:
        >>> factor_eigenvectors(torch.eye(2)).abs().tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        >>> X = torch.randn(3, 40, dtype=torch.float64)
        >>> U = factor_eigenvectors(X.T @ X, rank_bound=3)
        >>> D = U.T @ (X.T @ X) @ U                          # diagonal in the basis
        >>> bool((D - torch.diag(D.diagonal())).abs().max() < 1e-10)
        True
    """
    n = matrix.shape[0]
    if rank_bound is not None and (rank_bound + 8) * LOW_RANK_RATIO <= n and bool(torch.isfinite(matrix).all()):
        return _low_rank(matrix, rank_bound + 8)
    if matrix.device.type == "cpu" and n >= SCIPY_MIN_SIZE and matrix.dtype in (torch.float32, torch.float64):
        vectors = _scipy(matrix)
        if vectors is not None:
            return vectors
    try:
        vectors = torch.linalg.eigh(matrix).eigenvectors
        if bool(torch.isfinite(vectors).all()):
            return vectors
    except RuntimeError:  # torch.linalg.LinAlgError: no convergence
        pass
    return torch.linalg.eigh(matrix.double()).eigenvectors.to(matrix.dtype)


def _low_rank(matrix: torch.Tensor, k: int) -> torch.Tensor:
    gen = torch.Generator(device=matrix.device).manual_seed(0)
    probes = torch.randn(matrix.shape[0], k, generator=gen, dtype=matrix.dtype, device=matrix.device)
    Q, _ = torch.linalg.qr(matrix @ probes)
    _, W = torch.linalg.eigh(Q.T @ matrix @ Q)
    U = Q @ W
    basis = torch.linalg.qr(U, mode="complete").Q  # its first k columns span range(U); the rest complete it
    basis[:, :k] = U
    return basis


def _scipy(matrix: torch.Tensor) -> torch.Tensor | None:
    import scipy.linalg  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    try:
        with threadpool_limits(torch.get_num_threads()):
            _, vectors = scipy.linalg.eigh(matrix.detach().numpy(), driver="evd", check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return None
    vectors = torch.from_numpy(vectors)
    return vectors if bool(torch.isfinite(vectors).all()) else None
