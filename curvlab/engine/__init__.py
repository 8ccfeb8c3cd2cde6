"""The statistics engine: curvature from extension hooks on a normal forward+backward pass.

Layers of the package (imports go downwards):

* :mod:`~curvlab.engine.rules` — one rule object per module type (configuration, not subclassing):
  how factors, per-sample Hessians and KFRA matrices pass backwards through it, and the statistics a
  parameterised layer builds from them;
* :mod:`~curvlab.engine.quantities` — the quantities as (source, form) data;
* :mod:`~curvlab.engine.model_check`, :mod:`~curvlab.engine.fx_check` — which models are supported:
  nested ``nn.Sequential`` natively, other models through their ``torch.fx`` graph (residual
  additions included, for the GGN/Fisher quantities);
* :mod:`~curvlab.engine.statistics` — one batch: propagate the sources, collect unscaled statistics;
* :mod:`~curvlab.engine.hessian` — the full cross-layer Hessian;
* :mod:`~curvlab.engine.accumulate` — combining batches and processes exactly;
* :mod:`~curvlab.engine.hooks` — :class:`CurvatureHooks`, the context manager owning every hook;
* :mod:`~curvlab.engine.result` — :class:`Curvature` and the representations;
* :mod:`~curvlab.engine.compute` — :func:`compute`.

Scaling follows the loss (L = (1/Z) Σ_n ℓ_n): every quantity carries the same 1/Z.
"""

from curvlab.engine.compute import compute
from curvlab.engine.hooks import CurvatureHooks
from curvlab.engine.quantities import Quantity
from curvlab.engine.result import Curvature

__all__ = ["Curvature", "CurvatureHooks", "Quantity", "compute"]
