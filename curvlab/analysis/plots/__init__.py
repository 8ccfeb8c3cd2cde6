"""Figures for curvature analysis (matplotlib/seaborn). Every function returns a ``Figure``.

* :mod:`~curvlab.analysis.plots.heatmaps` – block norms with layer labels, GroupedNewton H̄/H̄⁻¹, an exact
  block beside its approximations;
* :mod:`~curvlab.analysis.plots.spectra` – eigenvalue spectra and SLQ densities on log scales;
* :mod:`~curvlab.analysis.plots.curves` – metrics across training and across damping.

:func:`save_figure` writes PNG, SVG or PDF by the file suffix; :func:`group_labels_of` labels groups by
qualified name, module type and shape (``"layer1.conv2 Conv2d (16×16×3×3)"``) for every heatmap's ``labels``; :mod:`~curvlab.analysis.plots.style` keeps
one colour per method across figures and the colour-limit conventions.
"""

from __future__ import annotations

from curvlab.analysis.plots.curves import plot_damping_curves, plot_metric_curves, plot_training
from curvlab.analysis.plots.figures import save_figure
from curvlab.analysis.plots.heatmaps import plot_block_comparison, plot_block_norms, plot_summary
from curvlab.analysis.plots.spectra import plot_density, plot_spectrum
from curvlab.analysis.plots.style import group_labels_of

__all__ = [
    "group_labels_of",
    "plot_block_comparison",
    "plot_block_norms",
    "plot_damping_curves",
    "plot_density",
    "plot_metric_curves",
    "plot_spectrum",
    "plot_summary",
    "plot_training",
    "save_figure",
]
