"""Analysis: how good approximations are, how strongly layers interact, and how both evolve in training.

Modules (one concept each):

* :mod:`~curvlab.analysis.quality` – matrix metrics (relative Frobenius / spectral errors, cosine,
  top-k eigenspace overlap);
* :mod:`~curvlab.analysis.steps` – damped Newton step quality (cosine, quadratic-model decrease ratio);
* :mod:`~curvlab.analysis.interactions` – block norms, interaction strength, GroupedNewton H̄ / H̄⁻¹;
* :mod:`~curvlab.analysis.comparison` – all of the above in one ``xarray.Dataset``, dense or matrix-free;
* :mod:`~curvlab.analysis.matrix_free` – the same dataset from products only, with error bars, built on
  :mod:`~curvlab.analysis.probes` (Hutchinson block sketches), :mod:`~curvlab.analysis.lanczos` (spectral
  norms, eigenspaces) and :mod:`~curvlab.analysis.free_steps` (exact steps by CG / MINRES);
* :mod:`~curvlab.analysis.measurement` – reference + approximations of a model, compared in one call;
* :mod:`~curvlab.analysis.tracking` – a callback recording quantities along training, saved as it goes;
* :mod:`~curvlab.analysis.plots` – figures;
* :mod:`~curvlab.analysis.report` – a Markdown summary of a quality dataset;
* :mod:`~curvlab.analysis.netcdf` – writing/reading these files with whichever netCDF backend is installed.

Inputs are plain tensors or curvature representations; computations run in float64.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "Metric": "quality",
    "cosine_similarity": "quality",
    "eigenspace_overlap": "quality",
    "matrix_quality": "quality",
    "relative_frobenius_error": "quality",
    "relative_spectral_error": "quality",
    "spectral_norm": "quality",
    "top_eigenvectors": "quality",
    "StepQuality": "steps",
    "damped_steps": "steps",
    "eigen_steps": "steps",
    "quadratic_decrease": "steps",
    "step_quality": "steps",
    "summary_steps": "steps",
    "block_norms": "interactions",
    "interaction_strength": "interactions",
    "normalized_summary": "interactions",
    "summary_matrix": "interactions",
    "DEFAULT_DAMPINGS": "comparison",
    "SummaryInput": "comparison",
    "compare": "comparison",
    "choose_method": "comparison",
    "DENSE_LIMIT": "comparison",
    "compare_matrix_free": "matrix_free",
    "exact_operator": "measurement",
    "APPROXIMATIONS": "measurement",
    "REFERENCES": "measurement",
    "Measurement": "measurement",
    "measure": "measurement",
    "Tracker": "tracking",
    "best_approximation": "report",
    "offdiagonal_stats": "report",
    "summarize": "report",
    "netcdf": None,
    "report": None,
    "plots": None,
    "group_labels_of": "plots",
    "plot_block_comparison": "plots",
    "plot_block_norms": "plots",
    "plot_damping_curves": "plots",
    "plot_density": "plots",
    "plot_metric_curves": "plots",
    "plot_spectrum": "plots",
    "plot_summary": "plots",
    "save_figure": "plots",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    # Lazy, so that importing the metrics does not import matplotlib/seaborn.
    if name not in _NAMES:
        raise AttributeError(f"module 'curvlab.analysis' has no attribute {name!r}")
    module = importlib.import_module(f"curvlab.analysis.{_NAMES[name] or name}")
    value = module if _NAMES[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
