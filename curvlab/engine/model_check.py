"""Up-front check of a model: every module supported, every trainable parameter owned by a rule.

Supported natively: ``nn.Sequential`` containers (nested) of leaf modules that have a rule in
:data:`curvlab.engine.rules.RULES`. The forward pass must be the chain of those leaves; the hooks verify
this at run time. Other containers (custom ``forward``: residual or branching models) raise
:class:`~curvlab.errors.UnsupportedModuleError`; convert them to a graph of supported modules first
(:func:`curvlab.engine.fx.sequential_from_graph` handles graphs that are chains).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from curvlab.engine.rules import RULES, ModuleRule, rule_for
from curvlab.errors import UnsupportedModuleError

__all__ = ["Layer", "supported_layers"]


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
            container with its own ``forward``, or a trainable parameter no rule handles.

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
    layers = []
    for name, module in model.named_modules():
        children = list(module.children())
        if children:
            if type(module) is not nn.Sequential:
                label = repr(name) if name else "the model"
                raise UnsupportedModuleError(
                    f"module {label} ({type(module).__qualname__}) is a container with its own forward; only "
                    "nn.Sequential containers are supported. Convert residual or branching models to a "
                    "chain of supported modules (see curvlab.engine.fx)"
                )
            own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            if own:
                raise UnsupportedModuleError(
                    f"container {name!r} ({type(module).__qualname__}) owns parameters {own} directly; "
                    "no rule handles them"
                )
            continue
        layers.append(Layer(name, module, rule_for(module, name, rules)))
    if not any(layer.rule.has_parameters and layer.rule.trainable(layer.module) for layer in layers):
        raise UnsupportedModuleError(f"{type(model).__qualname__} has no trainable parameters in supported layers")
    return layers
