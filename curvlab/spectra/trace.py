"""Randomised trace and diagonal estimation from matrix-vector products.

* Hutchinson (1989): tr(A) ≈ (1/m) Σ_j z_jᵀ A z_j with Rademacher z_j (unbiased; variance 2‖A‖_F² − 2Σ A_ii²).
* Hutch++ (Meyer, Musco, Musco & Woodruff 2021): with m products, s = m/3 go to a sketch Q = orth(A S),
  s to A Q, the rest to Hutchinson on the deflated remainder:
  tr(A) ≈ tr(QᵀAQ) + (1/r) Σ_j g_jᵀ (I−QQᵀ) A (I−QQᵀ) g_j  (unbiased; error O(1/m) instead of O(1/√m)
  for matrices with decaying spectra).
* Hutchinson's diagonal (Bekas, Kokiopoulou & Saad 2007): diag(A) ≈ (1/m) Σ_j z_j ⊙ A z_j.
* The squared Frobenius norm ‖A‖_F² = tr(AᵀA) = E‖A z‖² (:func:`frobenius_norm`), by Hutchinson or by
  Hutch++ without squared products: with Q = orth(A S) (s products), ‖A‖_F² = ‖A Q‖_F² + ‖A (I − QQᵀ)‖_F²,
  the first exact from s products, the second by Hutchinson on the deflated probes (I − QQᵀ) g.

Standard errors are the sample standard deviation of the random part over √(number of its probes).
"""

from __future__ import annotations

import enum

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from curvlab.spectra._matrix import SymmetricMatrix, as_symmetric_matrix, rademacher

__all__ = ["TraceMethod", "diagonal_estimate", "frobenius_norm", "trace"]

_CHUNK = 16


class TraceMethod(enum.Enum):
    """Estimator used by :func:`trace`."""

    HUTCHINSON = "hutchinson"
    HUTCHPP = "hutchpp"


def trace(
    op,
    method: TraceMethod | str = TraceMethod.HUTCHINSON,
    num_matvecs: int = 100,
    *,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Estimate tr(A) with ``num_matvecs`` products (see the module docstring).

    Args:
        op: [P, P] symmetric: representation, scipy ``LinearOperator`` or dense matrix.
        method: ``"hutchinson"`` or ``"hutchpp"`` (:class:`TraceMethod`).
        num_matvecs: m, products to spend (Hutch++ needs m ≥ 3).
        generator: for the Rademacher probes.
        progress: show a tqdm bar.

    Returns:
        Dataset with scalars ``estimate`` and ``standard_error`` and the per-probe ``samples`` z_jᵀAz_j
        (dim ``probe``; for Hutch++ those of the deflated remainder), attrs ``method``, ``num_matvecs``.

    Example:
        >>> a = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
        >>> float(trace(a, "hutchinson", 10)["estimate"])  # exact for a diagonal matrix
        210.0
    """
    method = TraceMethod(method)
    matrix = as_symmetric_matrix(op)
    if num_matvecs < (3 if method is TraceMethod.HUTCHPP else 1):
        raise ValueError(
            f"{method.value} needs num_matvecs >= {3 if method is TraceMethod.HUTCHPP else 1}, got {num_matvecs}"
        )
    bar = tqdm(total=num_matvecs, disable=not progress, desc=f"trace ({method.value})")
    exact_part = 0.0
    if method is TraceMethod.HUTCHPP:
        s = num_matvecs // 3
        sketch = _products(matrix, rademacher(matrix.size, s, generator), bar)
        q = torch.linalg.qr(sketch).Q
        exact_part = float(torch.sum(q * _products(matrix, q, bar)))
        probes = rademacher(matrix.size, num_matvecs - 2 * s, generator)
        probes = probes - q @ (q.T @ probes)
    else:
        probes = rademacher(matrix.size, num_matvecs, generator)
    samples = (probes * _products(matrix, probes, bar)).sum(0)
    bar.close()
    estimate = exact_part + float(samples.mean())
    stderr = (
        float(samples.std(unbiased=True) / samples.numel() ** 0.5)
        if samples.numel() > 1
        else float("nan")
    )
    return xr.Dataset(
        {
            "estimate": ((), estimate, {"long_name": "trace estimate"}),
            "standard_error": ((), stderr, {"long_name": "standard error of the trace estimate"}),
            "samples": ("probe", samples.numpy(), {"long_name": "quadratic form zᵀAz per probe"}),
        },
        coords={"probe": np.arange(samples.numel())},
        attrs={
            "method": method.value,
            "num_matvecs": matrix.num_matvecs,
            "deflated_trace": exact_part,
        },
    )


def frobenius_norm(
    op,
    method: TraceMethod | str = TraceMethod.HUTCHPP,
    num_matvecs: int = 60,
    *,
    generator: torch.Generator | None = None,
) -> xr.Dataset:
    """Estimate ‖A‖_F² (and ‖A‖_F) of a square A from ``num_matvecs`` products (see the module docstring).

    Hutch++ spends s = m/3 products on the sketch, s on A Q and the rest on the deflated remainder; its
    error falls like 1/m instead of 1/√m when the spectrum decays (a low-rank error matrix, as an
    approximation's error often is).

    Args:
        op: [P, P]: representation, scipy ``LinearOperator`` or dense matrix (symmetry is not needed).
        method: ``"hutchpp"`` (default) or ``"hutchinson"``; num_matvecs: m (Hutch++ needs m ≥ 3).
        generator: for the Rademacher probes.

    Returns:
        Dataset with scalars ``squared`` (the ‖A‖_F² estimate), ``squared_error`` (its standard error, from
        the random part's probes; the sketch part is exact given the sketch), ``norm`` = √squared and
        ``norm_error`` (delta method), the per-probe ``samples`` ‖A g_j‖², attrs ``method``,
        ``num_matvecs``, ``deflated_part``.

    Example:
        >>> a = torch.outer(torch.arange(1.0, 9.0), torch.arange(1.0, 9.0)).double()   # rank one
        >>> ds = frobenius_norm(a, "hutchpp", 9, generator=torch.Generator().manual_seed(0))
        >>> round(float(ds.squared), 6) == round(float(a.pow(2).sum()), 6)   # exact: the sketch holds A
        True
    """
    method = TraceMethod(method)
    matrix = as_symmetric_matrix(op)
    if num_matvecs < (3 if method is TraceMethod.HUTCHPP else 2):
        raise ValueError(f"{method.value} needs num_matvecs >= {3 if method is TraceMethod.HUTCHPP else 2}, "
                         f"got {num_matvecs}")
    bar = tqdm(total=num_matvecs, disable=True)
    deflated = 0.0
    probes = rademacher(matrix.size, num_matvecs, generator)
    if method is TraceMethod.HUTCHPP:
        s = num_matvecs // 3
        q = torch.linalg.qr(_products(matrix, probes[:, :s], bar)).Q
        deflated = float(_products(matrix, q, bar).pow(2).sum())
        probes = probes[:, 2 * s:]
        probes = probes - q @ (q.T @ probes)
    samples = _products(matrix, probes, bar).pow(2).sum(0)
    squared = deflated + float(samples.mean())
    error = float(samples.std(unbiased=True) / samples.numel() ** 0.5) if samples.numel() > 1 else float("nan")
    norm = squared ** 0.5 if squared > 0 else 0.0
    return xr.Dataset(
        {"squared": ((), squared, {"long_name": "squared Frobenius norm estimate"}),
         "squared_error": ((), error, {"long_name": "standard error of the squared Frobenius norm"}),
         "norm": ((), norm, {"long_name": "Frobenius norm estimate"}),
         "norm_error": ((), error / (2 * norm) if norm > 0 else float("nan"),
                        {"long_name": "standard error of the Frobenius norm (delta method)"}),
         "samples": ("probe", samples.numpy(), {"long_name": "‖A g‖² per (deflated) probe"})},
        coords={"probe": np.arange(samples.numel())},
        attrs={"method": method.value, "num_matvecs": int(num_matvecs), "deflated_part": deflated},
    )


def diagonal_estimate(
    op, num_matvecs: int = 100, *, generator: torch.Generator | None = None, progress: bool = False
) -> xr.Dataset:
    """Hutchinson's estimate of diag(A), [P], with ``num_matvecs`` Rademacher probes.

    Returns:
        Dataset with ``estimate`` and ``standard_error`` (dim ``param``; coordinate ``group`` when the
        operator has a partition), attr ``num_matvecs``.

    Example:
        >>> a = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
        >>> diagonal_estimate(a, 4)["estimate"].values.tolist()  # exact without off-diagonal terms
        [2.0, 3.0]
    """
    if num_matvecs < 1:
        raise ValueError(f"num_matvecs must be >= 1, got {num_matvecs}")
    matrix = as_symmetric_matrix(op)
    bar = tqdm(total=num_matvecs, disable=not progress, desc="diagonal (hutchinson)")
    probes = rademacher(matrix.size, num_matvecs, generator)
    samples = probes * _products(matrix, probes, bar)  # [P, m]
    bar.close()
    stderr = (
        samples.std(1, unbiased=True) / num_matvecs**0.5
        if num_matvecs > 1
        else torch.full((matrix.size,), float("nan"))
    )
    coords = (
        {"group": ("param", matrix.partition.flat_labels()["group"])}
        if matrix.partition is not None
        else {}
    )
    return xr.Dataset(
        {
            "estimate": ("param", samples.mean(1).numpy(), {"long_name": "diagonal estimate"}),
            "standard_error": (
                "param",
                stderr.numpy(),
                {"long_name": "standard error of the diagonal estimate"},
            ),
        },
        coords=coords,
        attrs={"method": "hutchinson", "num_matvecs": matrix.num_matvecs},
    )


def _products(matrix: SymmetricMatrix, vectors: torch.Tensor, bar) -> torch.Tensor:
    out = torch.empty_like(vectors)
    for start in range(0, vectors.shape[1], _CHUNK):
        cols = slice(start, start + _CHUNK)
        out[:, cols] = matrix.matmat(vectors[:, cols])
        bar.update(out[:, cols].shape[1])
    return out
