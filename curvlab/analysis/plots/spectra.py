"""Eigenvalue spectra (sorted magnitudes) and spectral densities (e.g. SLQ), on log scales.

Example:
    >>> import torch
    >>> fig = plot_spectrum({"ggn": torch.tensor([3.0, 1.0, 0.1, 0.0])})
    >>> fig.axes[0].get_yscale(), fig.axes[0].get_xlabel()
    ('log', 'rank')
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import xarray as xr

from curvlab.analysis.plots.figures import new_figure
from curvlab.analysis.plots.style import METHOD_COLOURS, method_style

__all__ = ["plot_density", "plot_spectrum"]


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().to(torch.float64).numpy()
    if isinstance(values, xr.DataArray):
        return np.asarray(values.values, dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


def _ramp(name: str, n: int) -> list:
    """``n`` colours spread over the matplotlib colormap ``name`` (ends trimmed, so none is too pale)."""
    from matplotlib import colormaps

    cmap = colormaps[name]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def plot_spectrum(eigenvalues: Mapping[str, object], *, title: str | None = None, floor: float = 1e-12):
    """Eigenvalues sorted by magnitude on a log axis, one line per matrix; negative ones as hollow markers.

    Pass the exact matrix and its approximations together to see them side by side: each method keeps its
    colour of every other figure (:func:`~curvlab.analysis.plots.style.method_style`); the first entry is
    drawn thick. Several spectra of one method (e.g. ``"ggn, step 0"``, ``"ggn, step 150"``) get a colour ramp
    and a marker and line style each instead. A spectrum known only in part (the top k by Lanczos) is drawn
    as markers.

    Args:
        eigenvalues: name -> [P] eigenvalues (tensor, array or DataArray).
        floor: magnitudes below it (numerical zeros) are left out; the legend counts them.
    """
    fig, (ax,) = new_figure(panel_size=(6.4, 4.4))
    items = [(n, _numpy(v).reshape(-1)) for n, v in eigenvalues.items()]
    items = [(n, v) for n, v in items if np.isfinite(v).any()]
    keys = [str(n).split(",")[0].split(" ")[0] for n, _ in items]
    repeated = len(set(keys)) < len(keys)  # one method at several times: a colour ramp, a marker each
    ramp = _ramp("viridis", len(items))
    for i, (name, lam) in enumerate(items):
        lam = lam[np.isfinite(lam)]
        order = np.argsort(-np.abs(lam))
        lam = lam[order]
        keep = np.abs(lam) > floor
        rank = np.arange(1, lam.size + 1)
        key = str(name).split(",")[0].split(" ")[0]
        style = method_style(key)
        colour = "#000000" if i == 0 else style["color"] if key in METHOD_COLOURS else f"C{i}"
        if repeated:
            colour = ramp[i]
            style = {**style, "marker": "os^Dv<>ph*"[i % 10], "linestyle": ("-", "--", "-.", ":")[i % 4]}
        few = lam.size <= 30
        n_kept = int(keep.sum())
        # sparse, staggered markers: curves that coincide stay distinguishable
        every = np.unique(np.geomspace(1 + i % 4, max(n_kept, 2), 10).astype(int) - 1) if n_kept else None
        ax.plot(rank[keep], np.abs(lam[keep]), color=colour, linewidth=2.4 if i == 0 else 1.2,
                linestyle="none" if few else ("-" if i == 0 else style["linestyle"]),
                marker=style["marker"] if i else ("o" if few else None), markevery=None if few else every,
                markerfacecolor="none", markersize=5, zorder=1 if i == 0 else 2,
                label=f"{name} ({int((~keep).sum())} below {floor:g})" if (~keep).any() else name)
        neg = keep & (lam < 0)
        if neg.any():
            where = np.flatnonzero(neg)
            if where.size > 40:  # a sample, log-spaced in rank, so thousands do not bury the curves
                where = where[np.unique(np.geomspace(1, where.size, 40).astype(int) - 1)]
            ax.scatter(rank[where], -lam[where], facecolors="none", edgecolors=colour, s=12,
                       label=f"{name}: negative ({int(neg.sum())}" + (", some shown)" if where.size < neg.sum()
                                                                        else ")"))
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("|eigenvalue|")
    ax.set_title(title or "eigenvalue spectra")
    ax.legend(fontsize=8)
    return fig


def plot_density(densities: Mapping[str, object], *, eigenvalues: Mapping[str, object] | None = None,
                 title: str | None = None, bins: int = 80, floor: float = 1e-8):
    """Spectral densities on a log density axis, e.g. from stochastic Lanczos quadrature.

    Args:
        densities: name -> ``(grid, density)`` pair of [G] arrays, or a DataArray with one dimension
            whose coordinate is the grid.
        eigenvalues: optional name -> exact eigenvalues [P], drawn as normalised histograms for comparison.
        floor: densities are clipped below it so the log axis stays readable.
    """
    fig, (ax,) = new_figure(panel_size=(6.0, 4.0))
    for i, (name, value) in enumerate(densities.items()):
        if isinstance(value, xr.DataArray):
            grid, density = _numpy(value[value.dims[0]]), _numpy(value)
        else:
            grid, density = (_numpy(v) for v in value)
        ax.plot(grid, np.maximum(density, floor), color=f"C{i}", label=f"{name} (density)")
    for j, (name, values) in enumerate((eigenvalues or {}).items(), start=len(densities)):
        lam = _numpy(values).reshape(-1)
        ax.hist(lam, bins=bins, density=True, histtype="step", color=f"C{j}", label=f"{name} (exact, histogram)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title or "spectral density")
    ax.legend(fontsize=8)
    return fig
