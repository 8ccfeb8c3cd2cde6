"""Up-front check of a model: every module supported, every trainable parameter owned by a rule.

Supported natively: ``nn.Sequential`` containers (nested) of leaf modules that have a rule in
:data:`curvlab.engine.rules.RULES`. Models with other containers (a custom ``forward``) go through
``torch.fx`` (:func:`curvlab.engine.fx_check.model_graph`): graphs of module calls and additions
(residual connections) are accepted, anything else raises :class:`~curvlab.errors.UnsupportedModuleError`
naming the node. The hooks re-check at run time that the modules run as the graph says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from curvlab.engine.fx_check import ModelGraph, model_graph
from curvlab.engine.rules import RULES, ModuleRule, rule_for
from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_backward_hooks

__all__ = ["Layer", "graph_of", "supported_layers"]


@dataclass(frozen=True)
class Layer:
    """A supported leaf module: qualified name, module and rule."""

    name: str
    module: nn.Module
    rule: ModuleRule


def supported_layers(model: nn.Module, rules: Mapping[type, ModuleRule] = RULES) -> list[Layer]:
    """The leaf modules of ``model`` in definition order, each checked against its rule.

    Raises:
        UnsupportedModuleError: naming the first unsupported module (qualified name and type), a
            forward that is not a chain of modules (with the offending ``torch.fx`` node), or a
            trainable parameter no rule handles.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Tanh(), nn.Linear(3, 1)))
        >>> [layer.name for layer in supported_layers(model)]
        ['0', '1.0', '1.1']
        >>> supported_layers(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
        Traceback (most recent call last):
        ...
        curvlab.errors.UnsupportedModuleError: module '1' (BatchNorm1d) is in training mode: ...
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__qualname__}")
    if not list(model.children()):
        raise UnsupportedModuleError(
            f"the model is a single {type(model).__qualname__}; wrap it in nn.Sequential(...) so that its "
            "layer has a name"
        )
    check_backward_hooks(model, "curvlab's hook engine")
    modules = dict(model.named_modules())
    leaf_rules = {}  # checked once: the module's own error comes first
    for name, module in modules.items():
        if not list(module.children()):
            leaf_rules[name] = rule_for(module, name, rules)
    graph = graph_of(model)
    chain = None if graph is None else set(graph.modules)
    layers = []
    for name, module in modules.items():
        if name not in leaf_rules:
            own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            if own:
                raise UnsupportedModuleError(
                    f"container {name or 'the model'!r} ({type(module).__qualname__}) owns parameters {own} "
                    "directly; no rule handles them"
                )
            continue
        if chain is not None and name not in chain:
            if any(p.requires_grad for p in module.parameters()):
                raise UnsupportedModuleError(
                    f"module {name!r} ({type(module).__qualname__}) has trainable parameters but the model's "
                    "forward does not call it; its curvature would be skipped"
                )
            continue
        layers.append(Layer(name, module, leaf_rules[name]))
    if not any(layer.rule.has_parameters and layer.rule.trainable(layer.module) for layer in layers):
        raise UnsupportedModuleError(f"{type(model).__qualname__} has no trainable parameters in supported layers")
    return layers


def graph_of(model: nn.Module) -> ModelGraph | None:
    """``None`` for a model of nested ``nn.Sequential`` (a chain by construction), else its traced
    module graph (:func:`curvlab.engine.fx_check.model_graph`, which raises for unsupported nodes)."""
    if all(type(m) is nn.Sequential for m in model.modules() if list(m.children())):
        return None
    return model_graph(model)
