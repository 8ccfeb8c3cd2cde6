"""A short Markdown summary of a quality dataset (:func:`curvlab.analysis.compare`, possibly along ``step``).

It states which approximation is closest to the exact matrix (relative Frobenius error, cosine) and which
gives the best damped Newton steps, and how strongly the groups interact (off-diagonal interaction
strength of the exact matrix and of the normalised GroupedNewton H̄ and H̄⁻¹).

Example:
    >>> import torch
    >>> from curvlab.analysis.comparison import compare
    >>> ds = compare(torch.eye(3) * 2, {"half": torch.eye(3)}, torch.ones(3), dampings=[0.1], k=1)
    >>> print(summarize(ds).splitlines()[0])
    ## Approximation quality (step: n/a, block: all)
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["best_approximation", "offdiagonal_stats", "summarize"]


def _last(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(step=-1) if "step" in ds.dims else ds


def best_approximation(ds: xr.Dataset, metric: str = "rel_frobenius_error", *, block: str = "all",
                       damping: float | None = None) -> tuple[str, float]:
    """``(name, value)`` of the best approximation by ``metric`` at the last step (lowest error, highest
    cosine/overlap/ratio). Step metrics use ``damping`` (default: the middle one).

    Example:
        >>> import torch
        >>> from curvlab.analysis.comparison import compare
        >>> ds = compare(torch.eye(2), {"a": 2 * torch.eye(2), "b": torch.eye(2)})
        >>> best_approximation(ds)
        ('b', 0.0)
    """
    ds = _last(ds)
    if metric in ds.metric.values:
        values = ds.matrix_quality.sel(metric=metric, block=block)
    else:
        damping = float(ds.damping.values[len(ds.damping) // 2]) if damping is None else damping
        values = ds.step_quality.sel(step_metric=metric, block=block).sel(damping=damping, method="nearest")
    values = values.dropna("approximation")
    if values.size == 0:
        raise ValueError(f"no approximation has a value for {metric!r} on block {block!r}")
    pick = np.argmin(values.values) if "error" in metric else np.argmax(values.values)
    return str(values.approximation.values[int(pick)]), float(values[int(pick)])


def offdiagonal_stats(matrix: xr.DataArray) -> tuple[float, float]:
    """Mean and maximum of |off-diagonal entries| of an [S, S] interaction matrix (NaN when S = 1)."""
    values = np.abs(np.asarray(matrix.values, dtype=float))
    mask = ~np.eye(values.shape[0], dtype=bool)
    off = values[mask]
    off = off[np.isfinite(off)]
    return (float(off.mean()), float(off.max())) if off.size else (float("nan"), float("nan"))


def _table(frame, floatfmt: str = ".3g", errors=None) -> str:
    cols = list(frame.columns)
    lines = ["| approximation | " + " | ".join(map(str, cols)) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in frame.iterrows():
        cells = []
        for col, v in zip(cols, row.values, strict=True):
            cell = "–" if not np.isfinite(v) else format(v, floatfmt)
            e = errors.loc[name, col] if errors is not None and col in errors.columns else np.nan
            cells.append(cell + (f" ± {e:.2g}" if np.isfinite(v) and np.isfinite(e) and e > 0 else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(ds: xr.Dataset, *, block: str = "all") -> str:
    """Markdown: a metrics table at the last step, the best approximations and the interaction strengths."""
    last = _last(ds)
    step = int(last.step) if "step" in last.coords else "n/a"
    out = [f"## Approximation quality (step: {step}, block: {block})", ""]
    frame = last.matrix_quality.sel(block=block).to_pandas()
    errors = last.matrix_quality_error.sel(block=block).to_pandas() if "matrix_quality_error" in last else None
    if "step_quality" in last:
        damping = float(last.damping.values[len(last.damping) // 2])
        steps = last.step_quality.sel(block=block).sel(damping=damping).to_pandas()
        steps.columns = [f"{c} (λ={damping:g})" for c in steps.columns]
        frame = frame.join(steps)
        if errors is not None and "step_quality_error" in last:
            step_errors = last.step_quality_error.sel(block=block).sel(damping=damping).to_pandas()
            step_errors.columns = list(steps.columns)
            errors = errors.join(step_errors)
    if errors is not None:
        out += [f"Matrix-free ({last.attrs.get('num_probes', '?')} probes per block): values ± their error bars "
                "(standard errors of probe estimates, bounds of Lanczos and CG).", ""]
    out += [_table(frame, errors=errors), ""]
    lines = []
    for metric in ("rel_frobenius_error", "cosine_similarity", "step_cosine", "decrease_ratio"):
        try:
            name, value = best_approximation(ds, metric, block=block)
        except (KeyError, ValueError, AttributeError):
            continue
        lines.append(f"- best by {metric}: **{name}** ({value:.3g})")
    out += lines + [""]
    if "interaction" in last:
        mean, peak = offdiagonal_stats(last.interaction)
        out.append(f"- interaction strength between groups of the exact matrix (off-diagonal "
                   f"‖M_ij‖/√(‖M_ii‖‖M_jj‖)): mean {mean:.3g}, max {peak:.3g}")
    for var, what in (("summary_normalized", "H̄"), ("summary_inverse_normalized", "H̄⁻¹")):
        if var in last:
            mean, peak = offdiagonal_stats(last[var])
            out.append(f"- normalised GroupedNewton {what} off-diagonal |entries|: mean {mean:.3g}, max {peak:.3g}")
    skipped = last.attrs.get("skipped")
    if skipped and skipped != "{}":
        out.append(f"- skipped: {skipped}")
    return "\n".join(out) + "\n"
