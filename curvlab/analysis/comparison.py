"""One ``xarray.Dataset`` comparing approximations with an exact curvature matrix.

Layout of the dataset :func:`compare` returns (dims in brackets):

* ``matrix_quality`` [approximation, block, metric]: the :mod:`~curvlab.analysis.quality` metrics per
  diagonal block of the partition and on the whole matrix (``block = "all"``);
* ``step_quality`` [approximation, block, step_metric, damping]: ``step_cosine`` and ``decrease_ratio``
  (:mod:`~curvlab.analysis.steps`) with the gradient restricted to each block, and overall;
* ``interaction`` [group_i, group_j]: interaction strength of the exact matrix
  (:mod:`~curvlab.analysis.interactions`);
* with a GroupedNewton summary: ``summary_hbar``, ``summary_normalized`` and ``summary_inverse_normalized``
  [summary_i, summary_j]; its step quality is the row ``approximation = "summary"`` (overall only;
  the summary has no P×P matrix, so its matrix metrics and per-block values are NaN).

Tracking across training concatenates these datasets along a ``step`` dimension.

Example:
    >>> import torch
    >>> exact = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    >>> ds = compare(exact, {"exact copy": exact, "diag*2": 2 * exact}, torch.ones(4),
    ...              partition=[torch.tensor([0, 1]), torch.tensor([2, 3])], dampings=[0.1], k=1)
    >>> ds.matrix_quality.sel(approximation="exact copy", metric="rel_frobenius_error").values.tolist()
    [0.0, 0.0, 0.0]
    >>> ds.step_quality.sel(approximation="exact copy", block="all").round(12).values.tolist()
    [[1.0], [1.0]]
    >>> ds.step_quality.sel(approximation="diag*2", block="all", step_metric="decrease_ratio").round(3).values
    array([0.766])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from curvlab.analysis.interactions import interaction_strength, normalized_summary
from curvlab.analysis.matrices import as_dense, as_vector, block_indices, group_labels, sub_block
from curvlab.analysis.quality import Metric, spectral_norm, top_eigenvectors
from curvlab.analysis.steps import damped_steps, eigen_steps, step_quality, summary_steps

__all__ = ["DEFAULT_DAMPINGS", "DENSE_LIMIT", "STEP_METRICS", "SummaryInput", "choose_method", "compare"]

DEFAULT_DAMPINGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: ``method="auto"`` compares densely up to this many parameters, matrix-free above.
DENSE_LIMIT = 6000
METHODS = ("auto", "dense", "matrix-free")


def choose_method(size: int, method: str = "auto", dense_limit: int = DENSE_LIMIT) -> str:
    """``"dense"`` or ``"matrix-free"``: ``method`` itself, or for ``"auto"`` dense iff ``size <= dense_limit``.

    Example:
        >>> choose_method(13002), choose_method(1000), choose_method(10, "matrix-free")
        ('matrix-free', 'dense', 'matrix-free')
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method == "auto":
        return "dense" if size <= dense_limit else "matrix-free"
    return method
STEP_METRICS = ("step_cosine", "decrease_ratio")

_LONG_NAMES = {
    "rel_frobenius_error": "relative Frobenius error",
    "rel_spectral_error": "relative spectral-norm error",
    "cosine_similarity": "matrix cosine similarity",
    "eigenspace_overlap": "top-k eigenspace overlap",
    "step_cosine": "cosine to exact damped Newton step",
    "decrease_ratio": "quadratic-model decrease ratio",
}


class SummaryInput:
    """A GroupedNewton summary to compare: ``hbar`` [S, S], ``gbar`` [S], the ``direction`` [P] it was
    taken along and its ``partition``. ``from_object`` reads ``.hbar``/``.gbar`` from a summary result."""

    def __init__(self, hbar, gbar, direction, partition):
        self.hbar = as_dense(hbar, "summary hbar")
        self.gbar = as_vector(gbar, self.hbar.shape[0], "summary gbar")
        self.direction = as_vector(direction, partition.num_params, "summary direction")
        self.partition = partition

    @classmethod
    def from_object(cls, summary, direction, partition) -> SummaryInput:
        return cls(summary.hbar, summary.gbar, direction, partition)


def compare(
    exact,
    approximations: Mapping[str, Any],
    gradient=None,
    *,
    partition=None,
    dampings: Sequence[float] = DEFAULT_DAMPINGS,
    k: int = 10,
    metrics: Sequence[Metric] = tuple(Metric),
    summary: SummaryInput | None = None,
    attrs: Mapping[str, Any] | None = None,
    method: str = "auto",
    dense_limit: int = DENSE_LIMIT,
    num_probes: int | None = None,
    seed: int = 0,
    progress: bool = False,
    block_steps: bool = False,
    block_spectra: bool = False,
) -> xr.Dataset:
    """Compare every approximation with ``exact`` (see the module docstring for the layout).

    Args:
        exact: [P, P] tensor or representation (Hessian, GGN or Fisher).
        approximations: name -> [P, P] tensor or representation.
        gradient: [P] gradient for the step metrics; without it ``step_quality`` is left out.
        partition: :class:`~curvlab.partition.Partition` or list of index tensors defining the blocks.
        dampings: λ values for the step metrics.
        k: size of the top eigenspace compared.
        metrics: matrix metrics, in order.
        summary: optional GroupedNewton summary (needs ``gradient``).
        attrs: provenance attributes for the dataset.
        method: ``"dense"`` (exact metrics from the [P, P] matrices), ``"matrix-free"`` (products only, with
            error bars: :func:`~curvlab.analysis.matrix_free.compare_matrix_free`) or ``"auto"``: dense up to
            ``dense_limit`` parameters. The dataset's ``method`` attribute says which was used.
        num_probes, seed, progress, block_steps, block_spectra: of the matrix-free metrics (probes per block, default 30;
            per-block step metrics, off by default: see :func:`~curvlab.analysis.matrix_free.compare_matrix_free`).
    """
    size = int(exact.shape[0])
    if choose_method(size, method, dense_limit) == "matrix-free":
        from curvlab.analysis.matrix_free import DEFAULT_PROBES, compare_matrix_free

        return compare_matrix_free(exact, approximations, gradient, partition=partition, dampings=dampings, k=k,
                                   metrics=metrics, summary=summary, num_probes=num_probes or DEFAULT_PROBES,
                                   seed=seed, progress=progress, block_steps=block_steps,
                                   block_spectra=block_spectra, attrs=attrs)
    e = as_dense(exact, "exact")
    size = e.shape[0]
    blocks = block_indices(partition, size) if partition is not None else []
    block_names = (group_labels(partition) if partition is not None else []) + ["all"]
    names = list(approximations) + (["summary"] if summary is not None else [])
    metric_list = [Metric(m) for m in metrics]
    metric_names = [m.value for m in metric_list]
    lambdas = [float(d) for d in dampings]
    mq = np.full((len(names), len(block_names), len(metric_list)), np.nan)
    sq = np.full((len(names), len(block_names), len(STEP_METRICS), len(lambdas)), np.nan)
    g = as_vector(gradient, size, "gradient") if gradient is not None else None
    exact_blocks = [_ExactBlock(e if idx is None else sub_block(e, idx), None if g is None else
                                (g if idx is None else g[idx]), lambdas, k) for idx in [*blocks, None]]
    for a, (name, approx) in enumerate(approximations.items()):
        dense = as_dense(approx, f"approximation {name!r}")
        if dense.shape != e.shape:
            raise ValueError(f"approximation {name!r} is {tuple(dense.shape)} but the exact matrix is {tuple(e.shape)}")
        for b, (idx, cached) in enumerate(zip([*blocks, None], exact_blocks, strict=True)):
            block = dense if idx is None else sub_block(dense, idx)
            # the whole matrix's eigenvectors come from the representation when it has a cheap eigh
            rep = approx if idx is None and not isinstance(approx, torch.Tensor) and hasattr(approx, "eigh") else None
            mq[a, b] = cached.matrix_metrics(block, metric_list, rep)
            if g is not None:
                # the whole matrix goes through the representation's own solve when it has one
                source = approx if idx is None and not isinstance(approx, torch.Tensor) else block
                sq[a, b] = cached.step_metrics(source, lambdas)
    ds = xr.Dataset(
        {"matrix_quality": (("approximation", "block", "metric"), mq,
                            {"long_name": "approximation quality against the exact matrix", "units": "1"})},
        coords={"approximation": names, "block": block_names, "metric": metric_names,
                "metric_long_name": ("metric", [_LONG_NAMES[m] for m in metric_names])},
        attrs={**dict(attrs or {}), "top_k": int(k), "method": "dense"},
    )
    if g is not None:
        if summary is not None:
            steps = summary_steps(summary.hbar, summary.gbar, summary.direction, summary.partition, lambdas)
            quality = step_quality(e, steps, g, lambdas)
            sq[-1, -1, 0], sq[-1, -1, 1] = quality.cosine.numpy(), quality.decrease_ratio.numpy()
        ds["step_quality"] = xr.DataArray(
            sq, dims=("approximation", "block", "step_metric", "damping"),
            coords={"step_metric": list(STEP_METRICS), "damping": lambdas},
            attrs={"long_name": "damped Newton step quality", "units": "1"})
        ds["damping"].attrs.update(long_name="damping λ", units="1")
    if partition is not None:
        ds["interaction"] = interaction_strength(e, partition)
    if summary is not None:
        ds.update(_summary_variables(summary))
    return ds


class _ExactBlock:
    """Spectral facts of one exact block, computed once for all approximations."""

    def __init__(self, e: torch.Tensor, g: torch.Tensor | None, lambdas: list[float], k: int):
        self.e, self.g, self.k = e, g, min(k, e.shape[0])
        self.fro = torch.linalg.matrix_norm(e)
        values, vectors = torch.linalg.eigh(e)
        self.norm2 = values.abs().max()
        self.top = vectors[:, -self.k:].flip(1)
        if g is not None:
            self.steps = eigen_steps(values, vectors, g, lambdas)

    def matrix_metrics(self, a: torch.Tensor, metrics: list[Metric], rep=None) -> list[float]:
        out = []
        for metric in metrics:
            if metric is Metric.REL_FROBENIUS_ERROR:
                value = torch.linalg.matrix_norm(a - self.e) / self.fro
            elif metric is Metric.REL_SPECTRAL_ERROR:
                value = spectral_norm(a - self.e) / self.norm2
            elif metric is Metric.COSINE_SIMILARITY:
                value = (a * self.e).sum() / (torch.linalg.matrix_norm(a) * self.fro)
            else:
                top = (rep.eigh()[1][:, -self.k:].flip(1).to(torch.float64) if rep is not None
                       else top_eigenvectors(a, self.k))
                value = (self.top.T @ top).pow(2).sum() / self.k
            out.append(float(value) if np.isfinite(float(value)) else np.nan)
        return out

    def step_metrics(self, approx, lambdas: list[float]) -> np.ndarray:
        quality = step_quality(self.e, damped_steps(approx, self.g, lambdas), self.g, lambdas,
                               exact_steps=self.steps)
        return np.stack([quality.cosine.numpy(), quality.decrease_ratio.numpy()])


def _summary_variables(summary: SummaryInput) -> dict[str, xr.DataArray]:
    names = list(summary.partition.group_names) if hasattr(summary.partition, "group_names") else None
    dims = {"group_i": "summary_i", "group_j": "summary_j"}
    hbar = normalized_summary(summary.hbar, names)
    raw = hbar.copy(data=summary.hbar.numpy())
    raw.attrs = {"long_name": "GroupedNewton summary H̄_ij = u_iᵀH_ij u_j", "units": "loss"}
    return {
        "summary_hbar": raw.rename(dims),
        "summary_normalized": hbar.rename(dims),
        "summary_inverse_normalized": normalized_summary(summary.hbar, names, inverse=True).rename(dims),
    }


