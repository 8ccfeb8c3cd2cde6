"""Which parameters of a model take which route: a layer adapter, or the exact per-parameter route.

A *layer* is a group of the "layer" partition (the module that owns the parameters). It is *adapted*
when an adapter matches its module and describes every one of its trainable parameters, and none of
them is shared with another module (tied weights). Every other trainable parameter is *generic*: its
blocks and diagonals come from per-row vector–Jacobian products of the same factors, and Kronecker
quantities fall back to its exact block (recorded in the result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from curvlab.collector.adapters import ADAPTERS, LayerAdapter, adapter_for
from curvlab.partition import trainable_parameters

__all__ = ["LayerPlan", "ModelLayers", "group_of", "plan_layers"]


def group_of(name: str) -> str:
    """The "layer" partition group of a qualified parameter name (its module; itself at the top level)."""
    return name.rsplit(".", 1)[0] if "." in name else name


@dataclass(frozen=True)
class LayerPlan:
    """One layer: its name (partition group), module, trainable parameter names, adapter (or ``None``)."""

    name: str
    module: nn.Module | None
    names: tuple[str, ...]
    adapter: LayerAdapter | None
    reason: str = ""

    @property
    def size(self) -> int:
        return sum(getattr(self.module, n).numel() for n in self.names) if self.module is not None else 0

    @property
    def has_weight(self) -> bool:
        """Whether the adapted weight (``adapter.weight_name``) is trainable."""
        return self.adapter is not None and self.adapter.weight_name in self.names

    @property
    def has_bias(self) -> bool:
        """Whether the adapted bias (``adapter.bias_name``) is trainable."""
        return self.adapter is not None and self.adapter.bias_name in self.names

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(getattr(self.module, self.adapter.weight_name).shape)


@dataclass(frozen=True)
class ModelLayers:
    """Every layer of a model in the reference ordering (adapted and generic)."""

    layers: tuple[LayerPlan, ...]
    params: tuple[tuple[str, nn.Parameter], ...]  # trainable (qualified name, parameter)

    def adapted(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.adapter is not None]

    def generic(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.adapter is None]

    def parameters_of(self, layer: str) -> list[tuple[str, nn.Parameter]]:
        """The trainable (qualified name, parameter) pairs of one layer, in the reference ordering."""
        return [(n, p) for n, p in self.params if group_of(n) == layer]

    def demote(self, name: str, reason: str) -> ModelLayers:
        """The same layers with ``name`` moved to the generic route."""
        layers = tuple(
            LayerPlan(lp.name, lp.module, lp.names, None, reason) if lp.name == name else lp for lp in self.layers
        )
        return ModelLayers(layers, self.params)


def plan_layers(model: nn.Module, adapters: Sequence[LayerAdapter] = ADAPTERS) -> ModelLayers:
    """The layers of ``model`` and their routes (see the module docstring).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.LSTM(3, 2))
        >>> [(lp.name, type(lp.adapter).__name__ if lp.adapter else None) for lp in plan_layers(net).layers]
        [('0', 'LinearAdapter'), ('1', None)]
    """
    params = tuple(trainable_parameters(model))
    modules = dict(model.named_modules())
    owners: dict[int, int] = {}
    for module in modules.values():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    grouped: dict[str, list[str]] = {}
    for name, _ in params:
        grouped.setdefault(group_of(name), []).append(name.rsplit(".", 1)[-1])
    layers = []
    for layer, names in grouped.items():
        if "." not in f"{layer}" and layer == names[0] and layer not in modules:
            layers.append(LayerPlan(layer, None, tuple(names), None, "a parameter of the model itself"))
            continue
        module = modules[layer]
        adapter = adapter_for(module, adapters)
        reason = ""
        if adapter is None:
            reason = f"no layer adapter for {type(module).__qualname__}"
        elif not set(names) <= set(adapter.parameter_names(module)):
            reason = f"{type(module).__qualname__} has parameters its adapter does not describe"
            adapter = None
        elif any(owners[id(getattr(module, n))] > 1 for n in names):
            reason = "its weight is shared with another module (tied weights)"
            adapter = None
        layers.append(LayerPlan(layer, module, tuple(names), adapter, reason))
    return ModelLayers(tuple(layers), params)
