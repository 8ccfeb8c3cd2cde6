"""Extreme eigenvalues by Lanczos (``scipy.sparse.linalg.eigsh``, ARPACK) and exact dense spectra.

Every function accepts a :class:`~curvlab.repr.base.CurvatureRepresentation` (e.g. a matrix-free
operator), a ``scipy.sparse.linalg.LinearOperator`` or a dense [P, P] matrix, and returns an
``xarray.Dataset`` whose ``eigenvalue`` dimension indexes the eigenpairs, with an honest convergence
report: ARPACK's own verdict is confirmed by the residual norms ‖A v − λ v‖ of the returned pairs (k
extra products) and by a symmetry probe |xᵀ(A y) − yᵀ(A x)| on two random vectors (2 products). A
pair counts as converged when its residual is at most ``max(tol, 1e-6) · max|λ|``; an operator whose
products are not those of one symmetric matrix (a wrong or random operator) fails the probe. Either
failure sets ``converged = 0`` and issues a :class:`~curvlab.errors.CurvlabWarning`. If ARPACK stops
before convergence, the converged pairs are kept and the rest are NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import xarray as xr
from scipy.sparse.linalg import ArpackNoConvergence, eigsh

from curvlab.errors import CurvlabWarning
from curvlab.spectra._matrix import as_symmetric_matrix

__all__ = ["bottom_eigenvalues", "eigvalsh", "extreme_eigenvalues", "top_eigenvalues"]


def top_eigenvalues(
    op,
    k: int = 1,
    *,
    return_eigenvectors: bool = False,
    tol: float = 0.0,
    maxiter: int | None = None,
    ncv: int | None = None,
    generator: torch.Generator | None = None,
) -> xr.Dataset:
    """The k largest (algebraic) eigenvalues, descending, by Lanczos.

    Args:
        op: [P, P] symmetric: representation, scipy ``LinearOperator`` or dense matrix.
        k: number of eigenpairs, 1 ≤ k < P.
        return_eigenvectors: add ``eigenvectors`` [P, k] (dims ``param``, ``eigenvalue``).
        tol, maxiter, ncv: passed to ``eigsh`` (tol=0: machine precision).
        generator: draws the Lanczos start vector (reproducible runs).

    Returns:
        Dataset with ``eigenvalues`` [k] and ``residual_norms`` [k] (dim ``eigenvalue``), attrs ``which``,
        ``converged`` (1/0), ``num_matvecs`` (products used, residual check included).

    Example:
        >>> a = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
        >>> top_eigenvalues(a, 3)["eigenvalues"].values.round(8).tolist()
        [10.0, 9.0, 8.0]
    """
    return _lanczos(op, k, "LA", return_eigenvectors, tol, maxiter, ncv, generator)


def bottom_eigenvalues(op, k: int = 1, **kwargs) -> xr.Dataset:
    """The k smallest (algebraic) eigenvalues, ascending; arguments and result as :func:`top_eigenvalues`.

    Example:
        >>> a = torch.diag(torch.arange(-2.0, 8.0, dtype=torch.float64))
        >>> bottom_eigenvalues(a, 2)["eigenvalues"].values.round(8).tolist()
        [-2.0, -1.0]
    """
    return _lanczos(op, k, "SA", kwargs.pop("return_eigenvectors", False), **_options(kwargs))


def extreme_eigenvalues(op, k: int = 2, **kwargs) -> xr.Dataset:
    """k eigenvalues from both ends of the spectrum (⌈k/2⌉ largest, ⌊k/2⌋ smallest), descending.

    The coordinate ``end`` says which end each one comes from. Arguments as :func:`top_eigenvalues`.

    Example:
        >>> a = torch.diag(torch.arange(-2.0, 8.0, dtype=torch.float64))
        >>> ds = extreme_eigenvalues(a, 4)
        >>> ds["eigenvalues"].values.round(8).tolist(), ds["end"].values.tolist()
        ([7.0, 6.0, -1.0, -2.0], ['top', 'top', 'bottom', 'bottom'])
    """
    if k < 2:
        raise ValueError(f"extreme_eigenvalues needs k >= 2 (one from each end), got {k}")
    ds = _lanczos(op, k, "BE", kwargs.pop("return_eigenvectors", False), **_options(kwargs))
    num_top = (k + 1) // 2
    return ds.assign_coords(end=("eigenvalue", ["top"] * num_top + ["bottom"] * (k - num_top)))


def eigvalsh(representation) -> xr.DataArray:
    """All eigenvalues of the dense matrix, ascending, exactly (``torch.linalg.eigvalsh``, float64).

    A representation uses its own ``eigvalsh()`` (an operator materialises itself: P products,
    memory-budget guarded).

    Example:
        >>> eigvalsh(torch.tensor([[2.0, 1.0], [1.0, 2.0]])).values.round(8).tolist()
        [1.0, 3.0]
    """
    if hasattr(representation, "eigvalsh") and not isinstance(
        representation, (torch.Tensor, np.ndarray)
    ):
        values = representation.eigvalsh().to(torch.float64).cpu()
    else:
        values = torch.linalg.eigvalsh(as_symmetric_matrix(representation).dense())
    return xr.DataArray(
        values.numpy(),
        dims=("eigenvalue",),
        coords={"eigenvalue": np.arange(values.numel())},
        name="eigenvalues",
        attrs={"long_name": "eigenvalue", "method": "dense eigvalsh", "order": "ascending"},
    )


def _options(kwargs):
    unknown = set(kwargs) - {"tol", "maxiter", "ncv", "generator"}
    if unknown:
        raise TypeError(f"unexpected arguments {sorted(unknown)}")
    return {
        "tol": kwargs.get("tol", 0.0),
        "maxiter": kwargs.get("maxiter"),
        "ncv": kwargs.get("ncv"),
        "generator": kwargs.get("generator"),
    }


def _lanczos(
    op, k, which, return_eigenvectors=False, tol=0.0, maxiter=None, ncv=None, generator=None
) -> xr.Dataset:
    matrix = as_symmetric_matrix(op)
    p = matrix.size
    if not 1 <= k < p:
        raise ValueError(
            f"Lanczos needs 1 <= k < P = {p}, got k={k}; use eigvalsh for the whole spectrum"
        )
    v0 = torch.randn(p, dtype=torch.float64, generator=generator).numpy()
    converged = True
    try:
        values, vectors = eigsh(
            matrix.to_scipy(), k=k, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0
        )
    except ArpackNoConvergence as err:
        converged = False
        values, vectors = err.eigenvalues, err.eigenvectors
        warnings.warn(
            f"Lanczos (eigsh, which={which!r}) converged for {len(values)} of {k} eigenpairs after "
            f"{matrix.num_matvecs} products; the others are NaN (raise maxiter or tol)",
            CurvlabWarning,
            stacklevel=3,
        )
    order = np.argsort(values)
    if which != "SA":
        order = order[::-1]
    values, vectors = np.asarray(values)[order], np.asarray(vectors)[:, order]
    residuals = np.full(k, np.nan)
    if len(values):
        av = matrix.matmat(torch.from_numpy(np.ascontiguousarray(vectors))).numpy()
        residuals[: len(values)] = np.linalg.norm(av - vectors * values, axis=0)
    scale = float(np.abs(values).max()) if len(values) else 0.0
    threshold = max(tol, _RESIDUAL_RTOL) * scale
    asymmetry = _asymmetry(matrix, p, generator)
    unconfirmed = [
        i for i, r in enumerate(residuals[: len(values)]) if not r <= threshold
    ]  # NaN fails too
    if converged and (unconfirmed or asymmetry > _RESIDUAL_RTOL * max(scale, np.finfo(float).tiny)):
        converged = False
        warnings.warn(
            f"Lanczos (eigsh, which={which!r}): ARPACK reported convergence, but the check of the "
            f"returned pairs failed (pairs {unconfirmed} have residual ‖Av − λv‖ > {threshold:.2e}; "
            f"symmetry probe |xᵀAy − yᵀAx| = {asymmetry:.2e}): the products do not behave as one "
            "symmetric matrix, or more iterations are needed",
            CurvlabWarning,
            stacklevel=3,
        )
    pad = k - len(values)
    values = np.concatenate([values, np.full(pad, np.nan)])
    data = {
        "eigenvalues": ("eigenvalue", values, {"long_name": "eigenvalue"}),
        "residual_norms": ("eigenvalue", residuals, {"long_name": "residual norm ‖Av − λv‖"}),
    }
    if return_eigenvectors:
        vectors = np.concatenate([vectors, np.full((p, pad), np.nan)], axis=1)
        data["eigenvectors"] = (
            ("param", "eigenvalue"),
            vectors,
            {"long_name": "eigenvector (unit norm)"},
        )
    coords = {"eigenvalue": np.arange(k)}
    if return_eigenvectors and matrix.partition is not None:
        coords["group"] = ("param", matrix.partition.flat_labels()["group"])
    return xr.Dataset(
        data,
        coords=coords,
        attrs={
            "method": "lanczos (scipy eigsh, ARPACK)",
            "which": which,
            "converged": int(converged),
            "num_matvecs": matrix.num_matvecs,
            "tol": float(tol),
            "residual_threshold": float(threshold),
            "symmetry_error": float(asymmetry),
        },
    )


#: A returned pair is confirmed when ‖Av − λv‖ ≤ max(tol, this) · max|λ|.
_RESIDUAL_RTOL = 1e-6


def _asymmetry(matrix, p: int, generator) -> float:
    """|xᵀ(A y) − yᵀ(A x)| for unit random x, y: 0 up to rounding for one symmetric matrix."""
    probes = torch.randn(p, 2, dtype=torch.float64, generator=generator)
    probes /= probes.norm(dim=0, keepdim=True)
    images = matrix.matmat(probes).numpy()
    x, y = probes.numpy().T
    return float(abs(x @ images[:, 1] - y @ images[:, 0]))
