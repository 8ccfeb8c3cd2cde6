"""Heatmaps: block norms of a curvature matrix, GroupedNewton H̄ and H̄⁻¹, an exact block beside its approximations.

Example:
    >>> import torch
    >>> fig = plot_block_norms(torch.eye(4), [torch.tensor([0, 1]), torch.tensor([2, 3])])
    >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
    ('column group', 'row group')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from curvlab.analysis.interactions import block_norms, interaction_strength, normalized_summary
from curvlab.analysis.matrices import as_dense, block_indices, group_labels, sub_block
from curvlab.analysis.plots.figures import new_figure
from curvlab.analysis.plots.style import (
    diverging_heatmap,
    labels_from,
    method_style,
    robust_limit,
    sequential_heatmap,
)

__all__ = ["plot_block_comparison", "plot_block_norms", "plot_summary"]


def _annotate(size: int) -> bool:
    return size <= 12


def plot_block_norms(matrix, partition=None, *, interaction: bool = False, title: str | None = None,
                     labels: Mapping[str, str] | None = None, errors: xr.DataArray | None = None):
    """Heatmap of log₁₀ ‖M_ij‖_F per pair of groups, or of the interaction strength with ``interaction=True``.

    The interaction strength is not bounded by 1 (Hessian blocks can couple more strongly than they act on
    their own), so its colour scale runs from 0 to a robust upper percentile of the data, with clipped
    entries marked; the block norms use the data's own range.

    Args:
        matrix: [P, P] tensor or representation, or an [S, S] ``DataArray`` from
            :func:`~curvlab.analysis.block_norms` / :func:`~curvlab.analysis.interaction_strength` (or the
            ``interaction`` variable of a quality dataset).
        partition: the groups (needed unless ``matrix`` is a DataArray).
        labels: group name -> display label (default: the ``group_labels`` attribute, else the names).
        errors: [S, S] standard errors (matrix-free estimates), noted in the title.
    """
    if isinstance(matrix, xr.DataArray):
        values = matrix
    else:
        values = interaction_strength(matrix, partition) if interaction else block_norms(matrix, partition)
    names = [str(n) for n in values.group_i.values]
    ticks = [labels.get(n, n) for n in names] if labels else labels_from(values, names)
    n = max(len(names), 4)
    fig, (ax,) = new_figure(panel_size=(3.2 + 0.55 * n, 2.2 + 0.5 * n))
    if interaction:
        sequential_heatmap(ax, values.values, label="interaction strength",
                           xticklabels=ticks, yticklabels=ticks)
    else:
        with np.errstate(divide="ignore"):
            data = np.log10(values.values)
        sequential_heatmap(ax, data, label="log₁₀ ‖M_ij‖_F", cmap="magma", low=None, percentile=100,
                           xticklabels=ticks, yticklabels=ticks)
    ax.set_xlabel("column group")
    ax.set_ylabel("row group")
    note = ""
    if errors is not None and np.isfinite(errors.values).any():
        note = f"\n(matrix-free estimate, standard error ≤ {float(np.nanmax(errors.values)):.2g})"
    formula = "\n‖M_ij‖_F / √(‖M_ii‖_F ‖M_jj‖_F)" if interaction else ""
    ax.set_title((title or ("interaction strength between groups" if interaction else "block norms")) + formula
                 + note, fontsize=10)
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    return fig


def _role_split(names: Sequence[str]) -> tuple[list[int], list[int]] | None:
    weights = [i for i, n in enumerate(names) if n.rsplit(".", 1)[-1] == "weight"]
    biases = [i for i, n in enumerate(names) if n.rsplit(".", 1)[-1] == "bias"]
    if weights and biases and len(weights) + len(biases) == len(names):
        return weights, biases
    return None


def plot_summary(hbar, names: Sequence[str] | None = None, *, title: str | None = None, split_roles: bool = True,
                 labels: Mapping[str, str] | None = None):
    """GroupedNewton's Figure 1: normalised H̄ (top) and H̄⁻¹ (bottom), H̄_ij/√(|H̄_ii||H̄_jj|) in [−1, 1].

    With ``split_roles`` and groups named ``<layer>.weight``/``<layer>.bias`` (canonical partition), each row
    shows the weight–weight, bias–bias and weight–bias sub-matrices, labelled by layer; otherwise the full
    [S, S] matrices. Each matrix is drawn centred at 0 with symmetric limits from a robust percentile of its
    entries (normalised H̄⁻¹ entries exceed 1 in magnitude, and so do those of an indefinite H̄); clipped
    entries are marked × and the colour bar says so.

    Args:
        hbar: [S, S] tensor or the ``summary_hbar`` DataArray of a quality dataset.
        names: group names (taken from the DataArray if omitted).
        labels: layer (or group) name -> display label, e.g. ``{"1": "1 Linear (16×64 + 16)"}``.
    """
    if isinstance(hbar, xr.DataArray):
        names = [str(n) for n in hbar[hbar.dims[0]].values] if names is None else names
        hbar = torch.from_numpy(np.asarray(hbar.values, dtype=np.float64))
    h = as_dense(hbar, "hbar")
    names = [str(i) for i in range(h.shape[0])] if names is None else list(names)
    mats = {"H̄": normalized_summary(h, names).values, "H̄⁻¹": normalized_summary(h, names, inverse=True).values}
    split = _role_split(names) if split_roles else None
    if split is None:
        panels = [("", list(range(len(names))), list(range(len(names))))]
    else:
        w, b = split
        panels = [("weight–weight", w, w), ("bias–bias", b, b), ("weight–bias", w, b)]
    size = max(max(len(r), len(c)) for _, r, c in panels)
    fig, axes = new_figure(2, len(panels), panel_size=(2.2 + 0.5 * max(size, 4), 1.8 + 0.45 * max(size, 4)))

    def strip(n):
        layer = n.rsplit(".", 1)[0] if split is not None else n
        return (labels or {}).get(layer, layer)

    def short(n):  # "1 Linear (16×64 + 16)" -> "1 Linear": column ticks stay narrow
        return strip(n).split(" (")[0]

    for row, (what, matrix) in enumerate(mats.items()):
        offdiag = matrix[~np.eye(len(names), dtype=bool)]
        for col, (label, rows, cols) in enumerate(panels):
            ax = axes[row * len(panels) + col]
            diverging_heatmap(ax, matrix[np.ix_(rows, cols)], label=f"normalised {what}",
                              limit=max(robust_limit(offdiag, 98.0), 1.0),
                              xticklabels=[short(names[j]) for j in cols],
                              yticklabels=[strip(names[i]) for i in rows] if col == 0 else False)
            ax.set_title(f"{what} {label}".strip())
            ax.set_xlabel("layer" if split is not None else "group")
            if col == 0:
                ax.set_ylabel("layer" if split is not None else "group")
                ax.tick_params(axis="y", labelrotation=0)
            ax.tick_params(axis="x", labelrotation=45)
    if title:
        fig.suptitle(title)
    return fig


def _layout(partition, group: int, max_entries: int):
    """Entries of a group to show (positions within the group), unit/parameter boundaries and tick labels.

    A parameter of shape [O, ...] is a sequence of O output units of prod(...) entries each (row-major);
    when the group is too large, the first u units of every parameter are kept (u as large as fits).
    """
    params = partition.groups[group].params if hasattr(partition, "groups") else ()
    size = int(block_indices(partition, partition.num_params)[group].numel()) if params else None
    if not params or sum(p.numel for p in params) != size:
        n = min(size or max_entries, max_entries)
        return list(range(n)), [], [], []
    units = max(p.shape[0] if len(p.shape) else 1 for p in params)
    per_unit = sum((p.numel // (p.shape[0] if len(p.shape) else 1)) for p in params)
    keep = max(1, min(units, max_entries // max(per_unit, 1)))
    positions, unit_lines, param_lines, ticks = [], [], [], []
    start = 0
    for p in params:
        n_units = p.shape[0] if len(p.shape) else 1
        width = p.numel // n_units
        if positions:
            param_lines.append(len(positions))
        for u in range(min(n_units, keep)):
            if u and width > 1:
                unit_lines.append(len(positions))
            if width > 1 or u == 0:
                ticks.append((len(positions) + (width if width > 1 else min(n_units, keep)) / 2,
                              f"{p.role} u{u}" if width > 1 else f"{p.role} ({min(n_units, keep)})"))
            positions.extend(range(start + u * width, start + (u + 1) * width))
        start += p.numel
    return positions, unit_lines, param_lines, ticks


def plot_block_comparison(exact, approximations: Mapping[str, object], partition, group_i: str | int,
                          group_j: str | int | None = None, *, max_entries: int = 200, title: str | None = None,
                          labels: Mapping[str, str] | None = None):
    """The exact block (group_i, group_j) beside the same block of each approximation, on one colour scale.

    Rows and columns are the group's entries in the reference ordering: each weight row (one output unit)
    in turn, then the biases. Thin lines separate output units, thick lines weights from biases; when the
    block is larger than ``max_entries``, the first output units of each parameter are shown. The colour
    scale is symmetric about 0 with limits from the 99.9th percentile of |exact block|; clipped entries are
    marked × and counted on the colour bar. Blocks are read with ``block()``, so an exact matrix-free
    operator costs one product per column.
    """
    group_j = group_i if group_j is None else group_j
    names = group_labels(partition)
    index = {n: i for i, n in enumerate(names)}
    pick = [b if isinstance(b, int) else index.get(b) for b in (group_i, group_j)]
    if None in pick:
        raise KeyError(f"no group {group_i!r} or {group_j!r}; groups are {', '.join(names)}")
    rows_at, r_units, r_params, r_ticks = _layout(partition, pick[0], max_entries)
    cols_at, c_units, c_params, c_ticks = _layout(partition, pick[1], max_entries)

    def block_of(matrix, what):
        if hasattr(matrix, "block") and not isinstance(matrix, torch.Tensor):
            full = matrix.block(names[pick[0]], names[pick[1]]).detach().to(torch.float64).cpu()
        else:
            blocks = block_indices(partition, as_dense(matrix, what).shape[0])
            full = sub_block(as_dense(matrix, what), blocks[pick[0]], blocks[pick[1]])
        return full[rows_at][:, cols_at].numpy()

    shown = {"exact": block_of(exact, "exact")}
    shown.update({n: block_of(a, n) for n, a in approximations.items()})
    limit = robust_limit(shown["exact"], 99.9)
    ncols = min(len(shown), 4)
    nrows = -(-len(shown) // ncols)
    fig, axes = new_figure(nrows, ncols, panel_size=(3.9, 3.5))
    total = sum(int((np.isfinite(b) & (np.abs(b) > limit)).sum()) for b in shown.values())
    label = labels or {}
    row_name, col_name = (label.get(names[b], names[b]) for b in pick)
    for ax, (name, block) in zip(axes, shown.items(), strict=False):
        diverging_heatmap(ax, block, label="", limit=limit, xticklabels=False, yticklabels=False, annot=False,
                          cbar=False)
        for pos in r_units:
            ax.axhline(pos, color="0.6", linewidth=0.3)
        for pos in c_units:
            ax.axvline(pos, color="0.6", linewidth=0.3)
        for pos in r_params:
            ax.axhline(pos, color="black", linewidth=1.2)
        for pos in c_params:
            ax.axvline(pos, color="black", linewidth=1.2)
        if r_ticks and len(r_ticks) <= 24:
            ax.set_yticks([t for t, _ in r_ticks], [lab for _, lab in r_ticks], fontsize=5)
        if c_ticks and len(c_ticks) <= 24:
            ax.set_xticks([t for t, _ in c_ticks], [lab for _, lab in c_ticks], fontsize=5, rotation=90)
        ax.set_title(name, color=method_style(name)["color"] if name != "exact" else "black")
        ax.set_xlabel(f"entries of {col_name}", fontsize=8)
        ax.set_ylabel(f"entries of {row_name}", fontsize=8)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    bar_text = "block entry (all panels)" + (f"\nclipped to ±{limit:.3g}: {total} entries marked ×" if total else "")
    fig.colorbar(axes[0].collections[0], ax=axes[: len(shown)], label=bar_text, shrink=0.6,
                 extend="both" if total else "neither")
    cropped = len(rows_at) < int(block_indices(partition, partition.num_params)[pick[0]].numel())
    which = label.get(names[pick[0]], names[pick[0]])
    if pick[1] != pick[0]:
        which = f"({which}, {label.get(names[pick[1]], names[pick[1]])})"
    fig.suptitle(title or f"exact block {which} beside its approximations"
                 + (", first output units" if cropped else "") + "; thin lines: output units, thick: weight | bias")
    return fig
