"""Shared figure conventions: one colour and marker per method everywhere, robust colour limits, layer labels.

* :func:`method_style` gives every approximation the same colour, marker and line style in every figure
  (the exact reference is black);
* :func:`robust_limit` / :func:`diverging_heatmap` draw signed maps centred at 0 with symmetric limits
  from a percentile of |values| (not a fixed scale), mark clipped entries and say so on the colour bar;
* :func:`group_labels_of` labels groups by qualified name and shape, e.g. ``layer1.conv2 (16×16×3×3)``.

Example:
    >>> method_style("kfac")["color"] == method_style("kfac")["color"]
    True
    >>> robust_limit([0.1, -0.2, 5.0], percentile=100)
    5.0
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["METHOD_COLOURS", "diverging_heatmap", "group_labels_of", "method_style", "robust_limit",
           "sequential_heatmap", "shape_text"]

#: Fixed colours (Okabe–Ito and Tol's palettes, colour-blind safe) of the methods curvlab knows.
METHOD_COLOURS = {
    "exact": "#000000", "ggn": "#000000", "hessian": "#000000", "fisher": "#000000", "empirical_fisher": "#000000",
    "kfac": "#E69F00", "kflr": "#56B4E9", "kfra": "#009E73", "ekfac": "#CC79A7",
    "diag_ggn": "#0072B2", "diag_ggn_mc": "#332288", "diag_hessian": "#D55E00", "diag_empirical_fisher": "#882255",
    "ggn_block": "#117733", "hessian_block": "#AA4499", "fisher_mc_block": "#44AA99",
    "empirical_fisher_block": "#999933", "summary": "#A50026",
}
_EXTRA = ("#661100", "#6699CC", "#888888", "#BB5566", "#004488", "#997700")
_MARKERS = {"kfac": "o", "kflr": "s", "kfra": "D", "ekfac": "^", "diag_ggn": "v", "diag_hessian": "<",
            "ggn_block": ">", "hessian_block": "p", "summary": "*", "diag_ggn_mc": "h", "fisher_mc_block": "X",
            "diag_empirical_fisher": "P", "empirical_fisher_block": "d"}
_LINES = ("-", "--", "-.", ":")


def _hash(name: str) -> int:
    return zlib.crc32(name.encode())


def method_style(name: str) -> dict:
    """Colour, marker and line style of a method; the same in every figure (unknown names hash stably).

    Example:
        >>> method_style("ggn")["color"]
        '#000000'
    """
    name = str(name)
    colour = METHOD_COLOURS.get(name, _EXTRA[_hash(name) % len(_EXTRA)])
    marker = _MARKERS.get(name, "osD^v<>ph*X"[_hash(name) % 11])
    keys = list(_MARKERS)
    line = _LINES[(keys.index(name) if name in keys else _hash(name)) % len(_LINES)]
    return {"color": colour, "marker": marker, "linestyle": line, "markersize": 5, "markerfacecolor": "none"}


def robust_limit(values, percentile: float = 99.0) -> float:
    """The ``percentile`` of |finite values| (a symmetric colour limit that a few outliers do not set); 1 if none."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 1.0
    limit = float(np.percentile(v, percentile))
    return limit if limit > 0 else (float(v.max()) or 1.0)


def _mark_clipped(ax, data: np.ndarray, limit: float, low: float | None = None) -> int:
    clipped = np.isfinite(data) & ((data > limit) | ((data < -limit) if low is None else (data < low)))
    rows, cols = np.nonzero(clipped)
    if rows.size and rows.size <= 400:
        ax.scatter(cols + 0.5, rows + 0.5, marker="x", s=14 if data.shape[0] <= 30 else 4, color="#FFD700",
                   linewidths=0.8, zorder=3)
    return int(clipped.sum())


def _heatmap(ax, data, vmin, vmax, cmap, label, clipped, extend, xticklabels, yticklabels, annot, cbar=True):
    import seaborn as sns

    text = label + (f"\n(clipped to [{vmin:.3g}, {vmax:.3g}]: {clipped} entries marked ×)" if clipped else "")
    annotate = annot and data.shape[0] <= 12 and data.shape[1] <= 12
    sns.heatmap(data, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, square=data.shape[0] == data.shape[1],
                annot=annotate, fmt=".2g", annot_kws={"fontsize": 7},
                xticklabels=xticklabels, yticklabels=yticklabels, cbar=cbar,
                cbar_kws={"label": text, "extend": extend if clipped else "neither"} if cbar else None)
    if max(data.shape) > 24:  # many groups: smaller tick labels, so that each stays readable
        ax.tick_params(labelsize=max(3.0, 8.0 * 24 / max(data.shape)))


def diverging_heatmap(ax, data, *, label: str, percentile: float = 99.0, limit: float | None = None,
                      xticklabels="auto", yticklabels="auto", annot: bool = True, cbar: bool = True,
                      clipped: int | None = None) -> float:
    """A signed heatmap centred at 0 with symmetric limits ±``limit`` (default: :func:`robust_limit`).

    Entries beyond the limits are drawn in the end colours, marked × and counted on the colour bar
    (``clipped`` overrides the count, e.g. with the total of several panels sharing the bar).
    Returns the limit used.
    """
    data = np.asarray(data, dtype=np.float64)
    limit = robust_limit(data, percentile) if limit is None else float(limit)
    if clipped is None:
        clipped = int((np.isfinite(data) & (np.abs(data) > limit)).sum())
    _heatmap(ax, data, -limit, limit, "RdBu_r", label, clipped, "both", xticklabels, yticklabels, annot, cbar)
    _mark_clipped(ax, data, limit)
    return limit


def sequential_heatmap(ax, data, *, label: str, percentile: float = 99.0, cmap: str = "viridis",
                       low: float | None = 0.0, xticklabels="auto", yticklabels="auto", annot: bool = True) -> float:
    """A heatmap of a non-negative, unbounded quantity: [low, robust upper percentile], clipped entries marked."""
    data = np.asarray(data, dtype=np.float64)
    finite = data[np.isfinite(data)]
    low = float(finite.min()) if low is None and finite.size else (low or 0.0)
    high = float(np.percentile(finite, percentile)) if finite.size else 1.0
    high = high if high > low else low + 1.0
    _heatmap(ax, data, low, high, cmap, label, int((np.isfinite(data) & (data > high)).sum()), "max",
             xticklabels, yticklabels, annot)
    _mark_clipped(ax, data, high, low=low)
    return high


def shape_text(shape: Sequence[int]) -> str:
    """``(16, 16, 3, 3)`` -> ``"16×16×3×3"``."""
    return "×".join(str(int(s)) for s in shape)


def group_labels_of(partition, model=None) -> dict[str, str]:
    """Group name -> ``"<qualified name> <Module type> (<weight shape> + <bias size>)"`` labels.

    The module type is added when ``model`` is given (a bare ``nn.Sequential`` index is then readable).

    Example:
        >>> import torch.nn as nn
        >>> from curvlab.partition import Partition
        >>> model = nn.Sequential(nn.Linear(3, 2))
        >>> group_labels_of(Partition.from_model(model, "layer"), model)
        {'0': '0 Linear (2×3 + 2)'}
    """
    modules = dict(model.named_modules()) if model is not None else {}
    out = {}
    for group in partition.groups:
        params = group.params
        layers = {p.layer for p in params}
        kind = ""
        if len(layers) == 1:
            module = modules.get(next(iter(layers)))
            kind = f" {type(module).__name__}" if module is not None else ""
        if len(params) == 1:
            shapes = shape_text(params[0].shape)
        else:
            shapes = " + ".join(shape_text(p.shape) for p in params[:3]) + (" + …" if len(params) > 3 else "")
        out[group.name] = f"{group.name}{kind} ({shapes})"
    return out


def labels_from(obj, names: Sequence[str]) -> list[str]:
    """Display labels of ``names`` from a dataset's / DataArray's ``group_labels`` attribute (JSON), else the names."""
    raw = getattr(obj, "attrs", {}).get("group_labels") if obj is not None else None
    mapping: Mapping[str, str] = json.loads(raw) if isinstance(raw, str) else (raw or {})
    return [mapping.get(str(n), str(n)) for n in names]
