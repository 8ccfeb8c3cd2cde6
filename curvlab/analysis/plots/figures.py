"""Creating and saving figures without touching global matplotlib state.

Example:
    >>> fig, axes = new_figure(1, 2)
    >>> len(axes), type(fig).__name__
    (2, 'Figure')
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["FORMATS", "new_figure", "save_figure"]

FORMATS = (".png", ".svg", ".pdf")
#: the largest side of a figure, in inches (seaborn's heatmaps take memory in proportion to the area: 4.5 GB at 30 in)
MAX_INCHES = 14.0


def new_figure(nrows: int = 1, ncols: int = 1, *, panel_size: tuple[float, float] = (4.2, 3.6), **kwargs):
    """A ``Figure`` (not registered with pyplot, so nothing leaks) and a flat list of its axes.

    Figures are capped at :data:`MAX_INCHES` a side (panels sized by many groups shrink to fit a page).
    """
    width, height = panel_size[0] * ncols, panel_size[1] * nrows
    scale = min(1.0, MAX_INCHES / width, MAX_INCHES / height)
    fig = Figure(figsize=(width * scale, height * scale), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, list(axes.flat)


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save ``fig`` as PNG, SVG or PDF (chosen by the suffix of ``path``); returns the path.

    Example:
        >>> save_figure(new_figure()[0], "figure.eps")
        Traceback (most recent call last):
        ...
        ValueError: figure.eps: save figures as .png, .svg or .pdf
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: save figures as .png, .svg or .pdf")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
