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
import seaborn as sns
import torch
import xarray as xr

from curvlab.analysis.interactions import block_norms, interaction_strength, normalized_summary
from curvlab.analysis.matrices import as_dense, block_indices, group_labels, sub_block
from curvlab.analysis.plots.figures import new_figure

__all__ = ["plot_block_comparison", "plot_block_norms", "plot_summary"]


def _annotate(size: int) -> bool:
    return size <= 12


def plot_block_norms(matrix, partition=None, *, interaction: bool = False, title: str | None = None):
    """Heatmap of log₁₀ ‖M_ij‖_F per pair of groups (or the interaction strength with ``interaction=True``).

    Args:
        matrix: [P, P] tensor or representation, or an [S, S] ``DataArray`` from
            :func:`~curvlab.analysis.block_norms` / :func:`~curvlab.analysis.interaction_strength`.
        partition: the groups (needed unless ``matrix`` is a DataArray); labels come from its group names.
    """
    if isinstance(matrix, xr.DataArray):
        values = matrix
    else:
        values = interaction_strength(matrix, partition) if interaction else block_norms(matrix, partition)
    names = [str(n) for n in values.group_i.values]
    fig, (ax,) = new_figure(panel_size=(1.2 + 0.55 * max(len(names), 4), 0.9 + 0.5 * max(len(names), 4)))
    if interaction:
        data, label, kwargs = values.values, "interaction strength", {"vmin": 0.0, "vmax": 1.0, "cmap": "viridis"}
    else:
        with np.errstate(divide="ignore"):
            data = np.log10(values.values)
        label, kwargs = "log₁₀ ‖block‖_F", {"cmap": "magma"}
    sns.heatmap(data, ax=ax, xticklabels=names, yticklabels=names, square=True, annot=_annotate(len(names)),
                fmt=".2f", cbar_kws={"label": label}, **kwargs)
    ax.set_xlabel("column group")
    ax.set_ylabel("row group")
    ax.set_title(title or ("interaction strength between groups" if interaction else "block norms"))
    ax.tick_params(axis="x", labelrotation=45)
    ax.tick_params(axis="y", labelrotation=0)
    return fig


def _role_split(names: Sequence[str]) -> tuple[list[int], list[int]] | None:
    weights = [i for i, n in enumerate(names) if n.rsplit(".", 1)[-1] == "weight"]
    biases = [i for i, n in enumerate(names) if n.rsplit(".", 1)[-1] == "bias"]
    if weights and biases and len(weights) + len(biases) == len(names):
        return weights, biases
    return None


def plot_summary(hbar, names: Sequence[str] | None = None, *, title: str | None = None, split_roles: bool = True):
    """GroupedNewton's Figure 1: normalised H̄ (top) and H̄⁻¹ (bottom), H̄_ij/√(|H̄_ii||H̄_jj|) in [−1, 1].

    With ``split_roles`` and groups named ``<layer>.weight``/``<layer>.bias`` (canonical partition), each row
    shows the weight–weight, bias–bias and weight–bias sub-matrices, labelled by layer; otherwise the full
    [S, S] matrices. Entries beyond ±1 (possible in H̄⁻¹ or for an indefinite H̄) are clipped in colour only.

    Args:
        hbar: [S, S] tensor or the ``summary_hbar`` DataArray of a quality dataset.
        names: group names (taken from the DataArray if omitted).
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
    fig, axes = new_figure(2, len(panels), panel_size=(1.4 + 0.5 * max(size, 4), 0.9 + 0.45 * max(size, 4)))
    for row, (what, matrix) in enumerate(mats.items()):
        for col, (label, rows, cols) in enumerate(panels):
            ax = axes[row * len(panels) + col]
            strip = (lambda n: n.rsplit(".", 1)[0]) if split is not None else (lambda n: n)
            sns.heatmap(matrix[np.ix_(rows, cols)], ax=ax, vmin=-1.0, vmax=1.0, cmap="RdBu_r", center=0.0,
                        square=True, annot=_annotate(size), fmt=".2f", annot_kws={"fontsize": 7},
                        xticklabels=[strip(names[j]) for j in cols], yticklabels=[strip(names[i]) for i in rows],
                        cbar_kws={"label": f"normalised {what}"})
            ax.set_title(f"{what} {label}".strip())
            ax.set_xlabel("layer" if split is not None else "group")
            ax.set_ylabel("layer" if split is not None else "group")
            ax.tick_params(axis="x", labelrotation=45)
            ax.tick_params(axis="y", labelrotation=0)
    if title:
        fig.suptitle(title)
    return fig


def plot_block_comparison(exact, approximations: Mapping[str, object], partition, group_i: str | int,
                          group_j: str | int | None = None, *, max_entries: int = 120, title: str | None = None):
    """The exact block (group_i, group_j) beside the same block of each approximation, on one colour scale.

    Blocks larger than ``max_entries`` show their leading ``max_entries × max_entries`` corner.
    The colour scale is symmetric, ±max|exact block|.
    """
    group_j = group_i if group_j is None else group_j
    e = as_dense(exact, "exact")
    blocks, names = block_indices(partition, e.shape[0]), group_labels(partition)
    index = {n: i for i, n in enumerate(names)}
    pick = [b if isinstance(b, int) else index.get(b) for b in (group_i, group_j)]
    if None in pick:
        raise KeyError(f"no group {group_i!r} or {group_j!r}; groups are {', '.join(names)}")
    rows, cols = blocks[pick[0]][:max_entries], blocks[pick[1]][:max_entries]
    shown = {"exact": sub_block(e, rows, cols)}
    shown.update({n: sub_block(as_dense(a, n), rows, cols) for n, a in approximations.items()})
    vmax = float(shown["exact"].abs().max()) or 1.0
    ncols = min(len(shown), 4)
    nrows = -(-len(shown) // ncols)
    fig, axes = new_figure(nrows, ncols, panel_size=(3.6, 3.2))
    for ax, (name, block) in zip(axes, shown.items(), strict=False):
        sns.heatmap(block.numpy(), ax=ax, vmin=-vmax, vmax=vmax, cmap="RdBu_r", center=0.0, square=True,
                    xticklabels=False, yticklabels=False, cbar=ax is axes[ncols - 1])
        ax.set_title(name)
        ax.set_xlabel(f"entries of group {names[pick[1]]}")
        ax.set_ylabel(f"entries of group {names[pick[0]]}")
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    cropped = len(blocks[pick[0]]) > max_entries or len(blocks[pick[1]]) > max_entries
    fig.suptitle(title or f"block ({names[pick[0]]}, {names[pick[1]]})"
                 + (f", leading {max_entries}×{max_entries} corner" if cropped else ""))
    return fig
