"""Estimators: normal-form records of the collector (:mod:`curvlab.collector`) -> curvature statistics.

One file per approximation step:

* :mod:`~curvlab.estimators.gradients` — per-sample (or per-row) parameter gradients Γ of a layer;
* :mod:`~curvlab.estimators.statistics` — block, diagonal, full square-root rows, Kronecker factors
  (KFAC-expand / KFAC-reduce) and the EKFAC scaling from X, G or Γ;
* :mod:`~curvlab.estimators.hessian` — exact Hessian blocks / diagonal / full by restricted HVPs;
* :mod:`~curvlab.estimators.sources` — the GGN / MC / empirical seeds at the output;
* :mod:`~curvlab.estimators.tasks` — which statistic each quantity needs at each layer;
* :mod:`~curvlab.estimators.config` — the layer-to-approximation map and the weight-sharing convention;
* :mod:`~curvlab.estimators.batch`, :mod:`~curvlab.estimators.run` — one batch, all batches;
* :mod:`~curvlab.estimators.assemble` — the representations (:mod:`curvlab.repr`).
"""

from curvlab.estimators.config import APPROXIMATIONS, EstimatorConfig

__all__ = ["APPROXIMATIONS", "EstimatorConfig"]
