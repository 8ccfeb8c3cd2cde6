"""Spectral density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019).

For a unit probe v and m Lanczos steps, A's Krylov tridiagonal T_m = U diag(θ) Uᵀ gives the Gauss
quadrature vᵀ f(A) v ≈ Σ_j τ_j f(θ_j), τ_j = U_{0j}², exact for polynomials of degree ≤ 2m − 1. With
Rademacher probes v = z/√P, E[vᵀ f(A) v] = tr f(A) / P, so the nodes θ_j with weights τ_j (averaged over
probes) approximate the normalised spectral measure (1/P) Σ_i δ(λ − λ_i); the density is that measure
smoothed by a Gaussian of width σ (integral 1). Lanczos uses full reorthogonalisation and stops early on
an invariant subspace (then the missing nodes are NaN with weight 0).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from curvlab.spectra._matrix import as_symmetric_matrix, rademacher

__all__ = ["density", "lanczos_tridiagonal", "quadrature_moments"]


def lanczos_tridiagonal(matvec, v0: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """m steps of Lanczos from v0 (normalised here), with full reorthogonalisation.

    Returns:
        ``(alpha [m'], beta [m' − 1])``: diagonal and off-diagonal of T (m' ≤ m if a Krylov space closes).

    Example:
        >>> a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> alpha, beta = lanczos_tridiagonal(lambda v: a @ v, torch.ones(3, dtype=torch.float64), 5)
        >>> torch.linalg.eigvalsh(torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)).round(decimals=8).tolist()
        [1.0, 2.0, 3.0]
    """
    v = v0 / torch.linalg.vector_norm(v0)
    basis = [v]
    alphas, betas = [], []
    for j in range(steps):
        w = matvec(basis[-1])
        alpha = torch.dot(w, basis[-1])
        alphas.append(alpha)
        q = torch.stack(basis, dim=1)
        w = w - q @ (q.T @ w)
        w = w - q @ (q.T @ w)  # twice is enough (Kahan)
        beta = torch.linalg.vector_norm(w)
        if j == steps - 1 or beta <= 1e-10 * max(1.0, float(torch.stack(alphas).abs().max())):
            break
        betas.append(beta)
        basis.append(w / beta)
    return torch.stack(alphas), (torch.stack(betas) if betas else torch.zeros(0, dtype=v.dtype))


def density(
    op,
    num_probes: int = 10,
    lanczos_steps: int = 50,
    *,
    grid: int | np.ndarray | torch.Tensor = 1000,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Spectral density of a symmetric [P, P] operator by stochastic Lanczos quadrature.

    Args:
        op: representation, scipy ``LinearOperator`` or dense matrix.
        num_probes: independent Rademacher probes.
        lanczos_steps: m ≤ P Lanczos steps per probe (products per probe).
        grid: number of points of an even grid covering the nodes ± 5σ, or the grid itself.
        sigma: Gaussian width (default 1% of the node range).
        generator: for the probes.

    Returns:
        Dataset with ``nodes`` and ``weights`` (dims ``probe``, ``node``) and ``density`` (dim ``grid``,
        ∫ density = 1), attrs ``sigma``, ``lanczos_steps``, ``num_probes``, ``num_matvecs``.

    Example:
        >>> a = torch.diag(torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64))
        >>> ds = density(a, num_probes=3, lanczos_steps=4, generator=torch.Generator().manual_seed(0))
        >>> quadrature_moments(ds, [0, 1]).values.round(8).tolist()  # 1 and tr(A)/P
        [1.0, 2.0]
    """
    matrix = as_symmetric_matrix(op)
    steps = min(lanczos_steps, matrix.size)
    if num_probes < 1 or steps < 1:
        raise ValueError(
            f"density needs num_probes >= 1 and lanczos_steps >= 1, got {num_probes}, {lanczos_steps}"
        )
    nodes = np.full((num_probes, steps), np.nan)
    weights = np.zeros((num_probes, steps))
    probes = rademacher(matrix.size, num_probes, generator)
    for i in tqdm(range(num_probes), disable=not progress, desc="SLQ probes"):
        alpha, beta = lanczos_tridiagonal(matrix.matmat, probes[:, i], steps)
        t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
        theta, u = torch.linalg.eigh(t)
        nodes[i, : theta.numel()] = theta.numpy()
        weights[i, : theta.numel()] = (u[0] ** 2).numpy()
    finite = nodes[np.isfinite(nodes)]
    lo, hi = float(finite.min()), float(finite.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else max(1e-3 * abs(hi), 1e-12)
    if isinstance(grid, int):
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid)
    grid = np.asarray(grid, dtype=np.float64)
    safe_nodes = np.where(np.isfinite(nodes), nodes, 0.0)
    kernel = np.exp(-0.5 * ((grid[:, None, None] - safe_nodes[None]) / sigma) ** 2) / (
        sigma * np.sqrt(2 * np.pi)
    )
    values = (kernel * weights[None]).sum(axis=(1, 2)) / num_probes
    return xr.Dataset(
        {
            "nodes": (("probe", "node"), nodes, {"long_name": "quadrature node (Ritz value)"}),
            "weights": (("probe", "node"), weights, {"long_name": "quadrature weight"}),
            "density": ("grid", values, {"long_name": "spectral density", "units": "1/eigenvalue"}),
        },
        coords={
            "probe": np.arange(num_probes),
            "node": np.arange(steps),
            "grid": ("grid", grid, {"long_name": "eigenvalue"}),
        },
        attrs={
            "method": "stochastic Lanczos quadrature",
            "sigma": float(sigma),
            "lanczos_steps": steps,
            "num_probes": num_probes,
            "num_matvecs": matrix.num_matvecs,
        },
    )


def quadrature_moments(result: xr.Dataset, orders) -> xr.DataArray:
    """Spectral moments tr(A^k)/P ≈ mean over probes of Σ_j τ_j θ_j^k from a :func:`density` result.

    Returns a DataArray with dim ``order``. (Example: see :func:`density`.)
    """
    orders = np.asarray(list(orders))
    nodes = np.nan_to_num(result["nodes"].values)
    weights = result["weights"].values
    values = np.array([(weights * nodes**k).sum(1).mean() for k in orders])
    return xr.DataArray(
        values,
        dims=("order",),
        coords={"order": orders},
        name="moments",
        attrs={"long_name": "normalised spectral moment tr(A^k)/P"},
    )
