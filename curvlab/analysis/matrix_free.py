r"""The comparison dataset of :func:`curvlab.analysis.compare`, from products only, with error bars.

:func:`compare_matrix_free` fills the same variables as the dense :func:`~curvlab.analysis.compare`
(``matrix_quality``, ``step_quality``, ``interaction``, the summary variables) for an exact matrix known
only through ``exact @ v`` (a :mod:`curvlab.operators` operator, a representation or a tensor), and adds
their error bars:

* ``matrix_quality_error`` [approximation, block, metric]: the standard error of the probe estimates
  (relative Frobenius error, cosine: :mod:`~curvlab.analysis.probes`) or the bound of the Lanczos
  estimates (spectral-norm error, eigenspace overlap: :mod:`~curvlab.analysis.lanczos`);
* ``step_quality_error`` [approximation, block, step_metric, damping]: the bounds from the CG residuals
  (:mod:`~curvlab.analysis.free_steps`; NaN for MINRES);
* ``interaction_error`` [group_i, group_j]: the standard error of the interaction strength.

Costs, in products with the exact matrix (S blocks, m probes, D dampings, A approximations):
m·S for the sketch; per block and the whole matrix, about 2·(k+1)·20 Lanczos products for C and for
each C − A; one CG solve per damping and block; D products per approximation and block for the decreases.

Example:
    >>> import torch
    >>> exact = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    >>> ds = compare_matrix_free(exact, {"half": exact / 2}, torch.ones(4), dampings=[0.1], k=1, num_probes=8)
    >>> round(float(ds.matrix_quality.sel(approximation="half", block="all", metric="rel_frobenius_error")), 6)
    0.5
    >>> ds.attrs["method"]
    'matrix-free'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy.sparse.linalg import LinearOperator
from tqdm.auto import tqdm

from curvlab.analysis.free_steps import ExactSteps, approximate_steps
from curvlab.analysis.lanczos import SpectralFacts, overlap, spectral_norm_estimate
from curvlab.analysis.matrices import as_vector, block_indices, group_labels
from curvlab.analysis.probes import BlockSketch, apply
from curvlab.analysis.quality import Metric
from curvlab.spectra import frobenius_norm

__all__ = ["DEFAULT_PROBES", "compare_matrix_free"]

#: Rademacher probes per block.
DEFAULT_PROBES = 30


def _size(matrix) -> int:
    shape = tuple(matrix.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"the exact matrix must be square [P, P], got shape {shape}")
    return int(shape[0])


def compare_matrix_free(
    exact,
    approximations: Mapping[str, Any],
    gradient=None,
    *,
    partition=None,
    dampings: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    k: int = 10,
    metrics: Sequence[Metric] = tuple(Metric),
    summary=None,
    num_probes: int = DEFAULT_PROBES,
    indefinite: bool | None = None,
    seed: int = 0,
    progress: bool = False,
    block_steps: bool = False,
    block_spectra: bool = False,
    frobenius_method: str = "hutchinson",
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Compare approximations with ``exact`` through products (layout: module docstring and ``compare``).

    Args:
        exact: [P, P] operator, representation or tensor with ``@``.
        approximations: name -> representation (or tensor) with ``@`` and ``solve``.
        gradient, partition, dampings, k, metrics, summary, attrs: as for :func:`~curvlab.analysis.compare`.
        num_probes: Rademacher probes per block (≥ 2).
        indefinite: solve exact steps by MINRES; default: when ``exact.quantity`` is ``"hessian"``.
        seed: seeds the probes and the Lanczos start vectors.
        progress: show a tqdm bar over the stages of the measurement.
        block_steps: also the step metrics of each diagonal block (one more CG solve per block and damping);
            by default only the whole matrix's (the per-block rows are NaN).
        block_spectra: also the spectral metrics (Lanczos on C_bb − A_bb and on A_bb) of blocks larger than
            :data:`~curvlab.analysis.lanczos.DENSE_BLOCK`; by default those of the whole matrix and of the small
            blocks (materialised, when their rows add up to at most the sketch's m·S products) only, the
            others NaN.
        frobenius_method: ``"hutchinson"`` (default: every block's relative Frobenius error from the shared
            block probes) or ``"hutchpp"``: the whole matrix's by Hutch++ on C − Ĉ and on C
            (:func:`curvlab.spectra.frobenius_norm`, 3·``num_probes`` products each; far smaller error bars
            when the error matrix is nearly low-rank), the blocks' from the probes as before.
    """
    from curvlab.analysis.comparison import _LONG_NAMES, STEP_METRICS, _summary_variables
    from curvlab.analysis.steps import summary_steps

    size = _size(exact)
    blocks = block_indices(partition, size) if partition is not None else []
    block_names = (group_labels(partition) if partition is not None else []) + ["all"]
    probe_blocks = blocks or [torch.arange(size)]
    all_rows = torch.arange(size)
    if indefinite is None:
        indefinite = getattr(exact, "quantity", None) == "hessian"
    names = list(approximations) + (["summary"] if summary is not None else [])
    metric_list = [Metric(m) for m in metrics]
    lambdas = [float(d) for d in dampings]
    g = as_vector(gradient, size, "gradient") if gradient is not None else None
    shape_mq = (len(names), len(block_names), len(metric_list))
    mq, mq_err = np.full(shape_mq, np.nan), np.full(shape_mq, np.nan)
    shape_sq = (len(names), len(block_names), len(STEP_METRICS), len(lambdas))
    sq, sq_err = np.full(shape_sq, np.nan), np.full(shape_sq, np.nan)
    generator = torch.Generator().manual_seed(seed)
    stages = 1 + len(approximations) + (g is not None)
    bar = tqdm(total=stages, desc="matrix-free metrics", disable=not progress, leave=False)

    bar.set_postfix_str("probes")
    sketch = BlockSketch.draw(exact, probe_blocks, num_probes, generator=generator)
    bar.update()
    rows_of = [*blocks, all_rows]
    spectral = Metric.REL_SPECTRAL_ERROR in metric_list or Metric.EIGENSPACE_OVERLAP in metric_list
    from curvlab.analysis import lanczos

    small = [rows.numel() for rows in blocks if rows.numel() <= lanczos.DENSE_BLOCK]
    # materialising the small blocks costs one product per row: done when it at most doubles the sketch's cost
    small_spectra = block_spectra or sum(small) <= sketch.num_products

    def spectral_block(b: int) -> bool:
        return b == len(rows_of) - 1 or block_spectra or (small_spectra and rows_of[b].numel() <= lanczos.DENSE_BLOCK)

    exact_facts = [SpectralFacts.of(exact, rows, k, size=size, generator=generator) if spectral_block(b) else None
                   for b, rows in enumerate(rows_of)] if spectral else []
    if frobenius_method not in ("hutchinson", "hutchpp"):
        raise ValueError(f"frobenius_method must be 'hutchinson' or 'hutchpp', got {frobenius_method!r}")
    exact_norm = None
    for a, (name, approx) in enumerate(approximations.items()):
        bar.set_postfix_str(name)
        if tuple(approx.shape) != (size, size):
            raise ValueError(f"approximation {name!r} is {tuple(approx.shape)} but the exact matrix is [{size}, {size}]")
        stats = sketch.statistics(approx)
        fro, fro_err = stats.rel_frobenius_error()
        cos, cos_err = stats.cosine_similarity()
        if not blocks:  # one block: it is the whole matrix
            fro, fro_err, cos, cos_err = fro[-1:], fro_err[-1:], cos[-1:], cos_err[-1:]
        if frobenius_method == "hutchpp":
            fro, fro_err = np.array(fro, dtype=float), np.array(fro_err, dtype=float)
            if exact_norm is None:
                exact_norm = frobenius_norm(_operator(exact, size), "hutchpp", 3 * num_probes, generator=generator)
            error = frobenius_norm(_difference(exact, approx, size), "hutchpp", 3 * num_probes, generator=generator)
            fro[-1] = float(error.norm) / float(exact_norm.norm)
            fro_err[-1] = fro[-1] * float(np.hypot(float(error.norm_error) / float(error.norm) if error.norm > 0 else 0.0,
                                                    float(exact_norm.norm_error) / float(exact_norm.norm)))
        for m, metric in enumerate(metric_list):
            if metric is Metric.REL_FROBENIUS_ERROR:
                mq[a, :, m], mq_err[a, :, m] = fro, fro_err
            elif metric is Metric.COSINE_SIMILARITY:
                mq[a, :, m], mq_err[a, :, m] = cos, cos_err
            elif metric is Metric.REL_SPECTRAL_ERROR:
                for b, (rows, facts) in enumerate(zip(rows_of, exact_facts, strict=True)):
                    if facts is None:
                        continue
                    bound = fro[b] + 4 * fro_err[b]
                    if bound < 1e-8:  # ‖D‖₂ ≤ ‖D‖_F ≈ 0: the block is exact (and Lanczos on D would crawl)
                        mq[a, b, m], mq_err[a, b, m] = 0.0, bound * _fro_norm(sketch, b) / facts.norm
                        continue
                    diff, diff_err = spectral_norm_estimate(exact, rows, size, approx, generator=generator)
                    mq[a, b, m] = diff / facts.norm
                    mq_err[a, b, m] = mq[a, b, m] * np.hypot(diff_err / diff if diff > 0 else 0.0,
                                                             facts.norm_error / facts.norm)
            else:
                for b, (rows, facts) in enumerate(zip(rows_of, exact_facts, strict=True)):
                    if facts is None:
                        continue
                    mine = SpectralFacts.of(approx, rows, k, size=size, generator=generator)
                    mq[a, b, m], mq_err[a, b, m] = overlap(facts, mine)
        bar.update()
    ds = xr.Dataset(
        {"matrix_quality": (("approximation", "block", "metric"), mq,
                            {"long_name": "approximation quality against the exact matrix", "units": "1"}),
         "matrix_quality_error": (("approximation", "block", "metric"), mq_err,
                                  {"long_name": "error bar of matrix_quality: standard error (probe metrics) or "
                                                "Lanczos bound (spectral metrics)", "units": "1"})},
        coords={"approximation": names, "block": block_names, "metric": [m.value for m in metric_list],
                "metric_long_name": ("metric", [_LONG_NAMES[m.value] for m in metric_list])},
        attrs={**dict(attrs or {}), "top_k": int(k), "method": "matrix-free", "num_probes": int(num_probes),
               "exact_products_sketch": int(sketch.num_products),
               "step_solver": "minres" if indefinite else "cg", "block_steps": int(block_steps),
               "block_spectra": int(block_spectra), "frobenius_method": frobenius_method},
    )
    if spectral:  # the reference's top k, from the Lanczos run the spectral metrics made anyway
        ds["eigenvalues"] = xr.DataArray(exact_facts[-1].values[::-1].copy(), dims="eigenvalue_index", attrs={
            "long_name": "top eigenvalues of the exact matrix", "units": "1",
            "method": f"top {len(exact_facts[-1].values)} by Lanczos"})
    if g is not None:
        bar.set_postfix_str("steps")
        preconditioner = _preconditioner(approximations)
        ds.attrs["step_preconditioner"] = preconditioner[0] if preconditioner and not indefinite else "none"
        for b, rows in enumerate(rows_of):
            whole = b == len(rows_of) - 1
            if not (whole or block_steps):
                continue
            solver = ExactSteps(exact, g, rows, size, lambdas, indefinite=indefinite,
                                preconditioner=preconditioner[1] if preconditioner else None)
            if whole:
                ds.attrs["step_solver_iterations"] = ",".join(map(str, solver.iterations))
            for a, approx in enumerate(approximations.values()):
                steps = approximate_steps(approx, g, None if whole else rows, size, lambdas)
                sq[a, b], sq_err[a, b] = solver.quality(steps)
            if whole and summary is not None:
                steps = summary_steps(summary.hbar, summary.gbar, summary.direction, summary.partition, lambdas)
                sq[-1, -1], sq_err[-1, -1] = solver.quality(steps)
        bar.update()
        ds["step_quality"] = xr.DataArray(
            sq, dims=("approximation", "block", "step_metric", "damping"),
            coords={"step_metric": list(STEP_METRICS), "damping": lambdas},
            attrs={"long_name": "damped Newton step quality", "units": "1"})
        ds["step_quality_error"] = xr.DataArray(
            sq_err, dims=("approximation", "block", "step_metric", "damping"),
            attrs={"long_name": "error bound of step_quality from the exact solves' residuals", "units": "1"})
        ds["damping"].attrs.update(long_name="damping λ", units="1")
    if partition is not None:
        values, errors = sketch.interaction_strength()
        coords = {"group_i": block_names[:-1], "group_j": block_names[:-1]}
        ds["interaction"] = xr.DataArray(values, dims=("group_i", "group_j"), coords=coords, attrs={
            "long_name": "interaction strength ‖M_ij‖/√(‖M_ii‖‖M_jj‖)", "units": "1"})
        ds["interaction_error"] = xr.DataArray(errors, dims=("group_i", "group_j"), coords=coords, attrs={
            "long_name": "standard error of the interaction strength", "units": "1"})
    if summary is not None:
        ds.update(_summary_variables(summary))
    bar.close()
    return ds


#: Approximations tried, in order, as the preconditioner (A + λI)⁻¹ of the exact step solves. MC-sampled
#: ones (kfac, diag_ggn_mc, fisher_mc_block) are left out: on the ResNet-20 preset (32 samples, λ = 0.1, 1)
#: they made CG slower, 241/300+ iterations with kfac and 103/300+ with diag_ggn_mc against 45/51 without.
PRECONDITIONERS = ("kflr", "ekfac", "kfra", "ggn_block", "diag_ggn")


def _preconditioner(approximations: Mapping[str, Any]):
    for name in PRECONDITIONERS:
        rep = approximations.get(name)
        if rep is not None and not isinstance(rep, torch.Tensor) and hasattr(rep, "solve"):
            return name, rep
    return None


def _operator(matrix, size: int) -> LinearOperator:
    return LinearOperator((size, size), matvec=lambda v: apply(matrix, torch.from_numpy(v)).numpy(),
                          matmat=lambda v: apply(matrix, torch.from_numpy(v)).numpy(), dtype=np.float64)


def _difference(exact, approx, size: int) -> LinearOperator:
    """C − Ĉ through products."""
    def product(v):
        v = torch.from_numpy(v)
        return (apply(exact, v) - apply(approx, v)).numpy()

    return LinearOperator((size, size), matvec=product, matmat=product, dtype=np.float64)


def _fro_norm(sketch: BlockSketch, b: int) -> float:
    """Estimated ‖C_bb‖_F (``b`` past the blocks: the whole matrix) from the sketch."""
    mean, _ = sketch.block_norms()
    return float(np.sqrt(max(mean.sum() if b >= len(sketch.blocks) else mean[b, b], 0.0)))
