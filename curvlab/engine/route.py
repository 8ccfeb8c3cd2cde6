"""Which engine :func:`curvlab.compute` runs: the hand-written rules where they apply, else the collector.

The rule engine (:class:`~curvlab.engine.hooks.CurvatureHooks`) propagates factors by per-module rules
and is the faster route on the chains of modules it supports (``benchmarks/engine.py``). The
collector (:mod:`curvlab.collector`, :mod:`curvlab.estimators`) works on any model. :func:`rules_support`
is the static part of the rule engine's check, plus what it checks only at run time and can be seen
up front: train-mode BatchNorm, ``nn.Linear`` on inputs with extra dimensions (unknown before the
forward: the collector is then chosen only if the rule engine refuses the first batch).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from curvlab.engine.quantities import Quantity
from curvlab.errors import UnsupportedModuleError

__all__ = ["prefer_rules", "rules_support"]


def prefer_rules(model: nn.Module, quantities: Sequence[Quantity]) -> bool:
    """The ``route="auto"`` choice: the rule engine where it supports the model and is the faster one.

    ``benchmarks/engine.py`` (CIFAR CNN, 3×32×32, N = 64, 1 thread) has the collector ahead on
    convolutional models for kfac / kflr / diag_ggn, and the rule engine ahead on MLPs; the Hessian
    recursion and KFRA exist only in the rule engine.

    Example:
        >>> prefer_rules(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), [Quantity.KFLR])
        True
        >>> prefer_rules(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 1)), [Quantity.KFLR])
        False
    """
    from curvlab.engine.quantities import Source  # noqa: PLC0415

    signature = (tuple(quantities), tuple((id(m), type(m), m.training) for m in model.modules()),
                 tuple((id(p), p.requires_grad) for p in model.parameters()))
    cached = _DECISIONS.get(id(model))
    if cached is not None and cached[0] == signature:
        return cached[1]
    decision = _prefer_rules(model, quantities, Source)
    if len(_DECISIONS) > 64:
        _DECISIONS.clear()
    _DECISIONS[id(model)] = (signature, decision)
    return decision


#: id(model) -> (signature, decision): the check costs a rule-engine construction (~0.4 ms on an MLP)
_DECISIONS: dict[int, tuple] = {}


def _prefer_rules(model: nn.Module, quantities: Sequence[Quantity], Source) -> bool:  # noqa: N803
    if not rules_support(model, quantities):
        return False
    if any(q.source in (Source.HESSIAN, Source.KFRA) for q in quantities):
        return True
    return not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def rules_support(model: nn.Module, quantities: Sequence[Quantity]) -> bool:
    """Whether the rule engine accepts ``model`` for ``quantities`` (its up-front checks only).

    Example:
        >>> rules_support(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), [Quantity.KFLR])
        True
        >>> rules_support(nn.Sequential(nn.Embedding(5, 2), nn.Linear(2, 1)), [Quantity.KFLR])
        False
    """
    from curvlab.engine.hooks import CurvatureHooks  # noqa: PLC0415

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__qualname__}")
    try:
        CurvatureHooks(model, nn.MSELoss(), quantities)
    except UnsupportedModuleError:
        return False
    return True
