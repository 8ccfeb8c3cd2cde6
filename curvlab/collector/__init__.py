"""The collector: structured curvature on any architecture.

* :mod:`~curvlab.collector.adapters` — one small file per layer type: a module call in the normal
  form X [N, S, I] (inputs shared by S positions) and G [N, K, S, O] (output-side factors);
* :mod:`~curvlab.collector.layers` — which parameters are adapted and which take the exact
  per-parameter route;
* :mod:`~curvlab.collector.collector` — :class:`Collector`, forward hooks owned by a context manager
  and vectorised backward passes of the factor seeds through the real model.

The estimators (:mod:`curvlab.estimators`) turn its records into representations.
"""

from curvlab.collector.adapters import ADAPTERS, LayerAdapter, adapter_for, register_adapter
from curvlab.collector.collector import Collector, LayerCalls, batched_grad
from curvlab.collector.layers import LayerPlan, ModelLayers, plan_layers

__all__ = ["ADAPTERS", "Collector", "LayerAdapter", "LayerCalls", "LayerPlan", "ModelLayers", "adapter_for",
           "batched_grad", "plan_layers", "register_adapter"]
