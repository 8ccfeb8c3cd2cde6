"""Line plots of a quality dataset (:func:`curvlab.analysis.compare`): metrics across training or damping.

Example:
    >>> import torch
    >>> from curvlab.analysis.comparison import compare
    >>> ds = compare(torch.eye(3), {"half": torch.eye(3) / 2}, torch.ones(3), dampings=[0.1, 1.0], k=1)
    >>> fig = plot_damping_curves(ds)
    >>> fig.axes[0].get_xlabel(), fig.axes[0].get_xscale()
    ('damping λ', 'log')
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.ticker import MaxNLocator

from curvlab.analysis.plots.figures import new_figure
from curvlab.analysis.plots.style import method_style

__all__ = ["plot_damping_curves", "plot_metric_curves", "plot_training"]



def _style(name) -> dict:
    """The method's colour, marker and line style (the same in every figure), so coinciding curves stay visible."""
    return method_style(str(name))


def _error(ds: xr.Dataset, metric: str, block: str, damping: float | None):
    """The error bar of a series (matrix-free datasets), or None."""
    if "metric" in ds.dims and metric in ds.metric.values and "matrix_quality_error" in ds:
        return ds.matrix_quality_error.sel(metric=metric, block=block)
    if "step_quality_error" in ds and "step_metric" in ds.dims and metric in ds.step_metric.values:
        series = ds.step_quality_error.sel(step_metric=metric, block=block)
        return series.sel(damping=damping, method="nearest") if damping is not None else series
    return None


def _dodge(x, index: int, count: int, log: bool) -> np.ndarray:
    """Shift series ``index`` of ``count`` sideways by a few per cent of the axis, so coinciding curves stay
    visible (the legend and the data keep the true positions)."""
    x = np.asarray(x, dtype=np.float64)
    if count < 2 or x.size < 2:
        return x
    width = 0.25 if log else 0.012 * (np.nanmax(x) - np.nanmin(x))
    offset = (index - (count - 1) / 2) * width / max(count - 1, 1)
    return x * 10 ** offset if log else x + offset


def _plot(ax, x, y, err, name, index: int = 0, count: int = 1, log: bool = False):
    style = _style(name)
    x = _dodge(x, index, count, log)
    ax.plot(x, y, label=str(name), **style)
    if err is not None and np.isfinite(err).any() and np.nanmax(err) > 0:
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="none", ecolor=style["color"], elinewidth=0.8, capsize=2)


_LOG_METRICS = {"rel_frobenius_error", "rel_spectral_error"}
_LABELS = {
    "rel_frobenius_error": "relative Frobenius error",
    "rel_spectral_error": "relative spectral-norm error",
    "cosine_similarity": "matrix cosine similarity",
    "eigenspace_overlap": "top-k eigenspace overlap",
    "step_cosine": "cosine to exact damped step",
    "decrease_ratio": "decrease ratio",
}


def _axis_scale(ax, metric: str, values=None) -> None:
    """Log axis for errors; for the decrease ratio (1 is perfect, unbounded below) a symlog axis that stays
    linear in [−1, 1], with the perfect value marked."""
    if metric in _LOG_METRICS:
        ax.set_yscale("log")
    elif metric == "decrease_ratio":
        ax.set_yscale("symlog", linthresh=1.0)
        top = float(np.nanmax(values)) if values is not None and np.isfinite(values).any() else 1.0
        ax.set_ylim(top=max(1.5, 1.2 * top))
    if metric in ("decrease_ratio", "step_cosine", "cosine_similarity", "eigenspace_overlap"):
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")


def _series(ds: xr.Dataset, metric: str, block: str, damping: float | None) -> xr.DataArray:
    if "metric" in ds.dims and metric in ds.metric.values:
        return ds.matrix_quality.sel(metric=metric, block=block)
    if "step_quality" in ds and metric in ds.step_metric.values:
        series = ds.step_quality.sel(step_metric=metric, block=block)
        return series.sel(damping=damping, method="nearest") if damping is not None else series
    raise KeyError(f"no metric {metric!r} in the dataset")


def block_name(ds: xr.Dataset, block: str) -> str:
    """How a figure names ``block``: ``"whole matrix"`` for ``"all"``, else its label from the dataset's
    ``group_labels`` attribute (qualified name, type, shape), else ``"block <name>"``.

    Example:
        >>> ds = xr.Dataset(attrs={"group_labels": '{"1": "1 Linear (16×64 + 16)"}'})
        >>> block_name(ds, "1"), block_name(ds, "all"), block_name(xr.Dataset(), "2")
        ('1 Linear (16×64 + 16)', 'whole matrix', 'block 2')
    """
    if block == "all":
        return "whole matrix"
    try:
        labels = json.loads(ds.attrs.get("group_labels", "{}"))
    except (TypeError, ValueError):
        labels = {}
    return labels.get(block, f"block {block}")


def plot_metric_curves(ds: xr.Dataset, metrics: Sequence[str] = ("rel_frobenius_error", "step_cosine"), *,
                       block: str = "all", damping: float | None = None, title: str | None = None):
    """One panel per metric: the metric against training ``step``, one line per approximation.

    Step metrics are shown at ``damping`` (default: the middle damping of the dataset).
    """
    if "step" not in ds.dims:
        raise ValueError("the dataset has no 'step' dimension; track it across training first")
    if damping is None and "damping" in ds.dims:
        damping = float(ds.damping.values[len(ds.damping) // 2])
    fig, axes = new_figure(1, len(metrics), panel_size=(4.6, 3.6))
    for ax, metric in zip(axes, metrics, strict=False):
        series = _series(ds, metric, block, damping)
        errors = _error(ds, metric, block, damping)
        drawn = [n for n in series.approximation.values if bool(series.sel(approximation=n).notnull().any())]
        for i, name in enumerate(drawn):
            line = series.sel(approximation=name)
            err = None if errors is None else errors.sel(approximation=name).values
            _plot(ax, line.step.values, line.values, err, name, i, len(drawn))
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_LABELS.get(metric, metric))
        _axis_scale(ax, metric, series.values)
        ax.set_title(f"{metric} ({block_name(ds, block)}" + (f", λ={damping:g})" if metric in (
            "step_cosine", "decrease_ratio") and damping is not None else ")"))
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title)
    return fig


def plot_damping_curves(ds: xr.Dataset, metrics: Sequence[str] = ("step_cosine", "decrease_ratio"), *,
                        block: str = "all", step: int | None = None, title: str | None = None):
    """One panel per step metric: the metric against the damping λ (log axis), one line per approximation.

    With a ``step`` dimension, ``step`` picks the measurement (default: the last).
    """
    if "step_quality" not in ds:
        raise ValueError("the dataset has no step_quality; compare with a gradient first")
    if "step" in ds.dims:
        ds = ds.sel(step=ds.step.values[-1] if step is None else step)
    fig, axes = new_figure(1, len(metrics), panel_size=(4.6, 3.6))
    for ax, metric in zip(axes, metrics, strict=False):
        series = ds.step_quality.sel(step_metric=metric, block=block)
        errors = _error(ds, metric, block, None)
        drawn = [n for n in series.approximation.values if bool(series.sel(approximation=n).notnull().any())]
        for i, name in enumerate(drawn):
            line = series.sel(approximation=name)
            err = None if errors is None else errors.sel(approximation=name).values
            _plot(ax, line.damping.values, line.values, err, name, i, len(drawn), log=True)
        ax.set_xscale("log")
        ax.set_xlabel("damping λ")
        ax.set_ylabel(_LABELS.get(metric, metric))
        _axis_scale(ax, metric, series.values)
        ax.set_title(f"{metric} ({block_name(ds, block)})")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title)
    return fig


def plot_training(ds: xr.Dataset, *, title: str | None = None):
    """Train and test loss (left) and accuracy (right, classification only) against the training step.

    Reads the variables ``train_loss``, ``test_loss``, ``train_accuracy``, ``test_accuracy`` of a tracked
    dataset (those present).
    """
    if "step" not in ds.dims:
        raise ValueError("the dataset has no 'step' dimension; track it across training first")
    panels = [("loss", ["train_loss", "test_loss"]), ("accuracy", ["train_accuracy", "test_accuracy"])]
    panels = [(what, [v for v in names if v in ds]) for what, names in panels]
    panels = [(what, names) for what, names in panels if names]
    if not panels:
        raise ValueError("the dataset has none of train_loss, test_loss, train_accuracy, test_accuracy")
    fig, axes = new_figure(1, len(panels), panel_size=(4.4, 3.4))
    for ax, (what, names) in zip(axes, panels, strict=True):
        for name in names:
            split = name.split("_")[0]
            ax.plot(ds.step.values, ds[name].values, label=split, color="#0072B2" if split == "train" else "#D55E00",
                    marker="o" if split == "train" else "s", linestyle="-" if split == "train" else "--",
                    markerfacecolor="none", markersize=5)
        ax.set_xlabel("training step")
        ax.set_ylabel(what)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if what == "loss":
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        ax.set_title(f"{what} at the measurement steps")
    if title:
        fig.suptitle(title)
    return fig
