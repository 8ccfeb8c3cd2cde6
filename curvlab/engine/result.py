"""``Curvature``: the result of :func:`curvlab.compute`, a mapping quantity name -> representation.

Which representation each quantity gets (all in the reference ordering, zero outside what the
approximation covers):

* ``*_block``: :class:`~curvlab.repr.BlockDiagonalCurvature` over the "layer" partition (one block per
  layer holding all its parameters, weight–bias cross terms included);
* ``diag_*``: :class:`~curvlab.repr.DiagonalCurvature`;
* ``ggn``, ``fisher_mc``, ``empirical_fisher``: :class:`~curvlab.repr.LayeredSquareRootCurvature` (a
  :class:`~curvlab.repr.SquareRootCurvature`) C = Fᵀ F with F [R, P] the stacked backpropagated square
  roots (R = N·C, N·M, N over all batches), kept per layer as S_l ⊗ [X_l; 1] for Linear layers;
* ``hessian``: :class:`~curvlab.repr.DenseCurvature`;
* ``kfac``, ``kflr``, ``kfra``, ``ekfac``: :class:`~curvlab.repr.KroneckerCurvature`, per layer
  ``KroneckerFactors(A, G, bias=..., bias_convention="augmented")`` (bias = last column of [W, b],
  weight–bias cross terms included), ``ekfac`` with ``scaling`` (the refitted eigenvalues); layers
  without a Kronecker rule (BatchNorm) hold their exact dense block of the same source.

Diagonal and square-root results are labelled by the requested ``partition``; block and Kronecker
results always by the "layer" partition (their structure).
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import xarray as xr
from torch import nn

from curvlab.engine.quantities import Form, Quantity
from curvlab.engine.statistics import BatchStatistics
from curvlab.errors import NonFiniteError
from curvlab.partition import ParameterInfo, Partition
from curvlab.repr import (
    BlockDiagonalCurvature,
    CurvatureRepresentation,
    DenseCurvature,
    DiagonalCurvature,
    KroneckerCurvature,
    KroneckerFactors,
    LayeredSquareRootCurvature,
    LayerFactor,
)

__all__ = ["Curvature", "assemble"]


class Curvature(Mapping[str, CurvatureRepresentation]):
    """Curvature quantities of one model and data set: ``curvature["kfac"]`` is a representation.

    Attributes:
        partition: the requested partition (labels of diagonal and full results).
        attrs: provenance (:func:`curvlab.provenance.provenance`), shared by every representation.

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Sequential(nn.Linear(1, 1)), "layer")
        >>> c = Curvature({"diag_ggn": DiagonalCurvature(torch.ones(2), part, quantity="diag_ggn")}, part)
        >>> list(c), c["diag_ggn"].trace().item()
        (['diag_ggn'], 2.0)
        >>> sorted(c.to_xarray().children)
        ['diag_ggn']
    """

    def __init__(
        self,
        representations: Mapping[str, CurvatureRepresentation],
        partition: Partition,
        attrs: Mapping[str, Any] | None = None,
    ):
        self._reps = dict(representations)
        self.partition = partition
        self.attrs = dict(attrs or {})

    def __getitem__(self, name: str) -> CurvatureRepresentation:
        if name not in self._reps:
            raise KeyError(f"{name!r} was not computed; available: {', '.join(self._reps)}")
        return self._reps[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._reps)

    def __len__(self) -> int:
        return len(self._reps)

    def group(self, name: str, group: str | int) -> torch.Tensor:
        """The diagonal block of quantity ``name`` for one group of its partition."""
        return self[name].block(group, group)

    #: ``curvlab_kind`` of the export (``curvlab.load`` dispatches on it once ``curvlab.io.KINDS`` lists it).
    kind = "curvature"

    def to_xarray(self) -> xr.DataTree:
        """An ``xr.DataTree`` with one child per quantity (each its representation's export).

        The root's attrs hold the provenance, ``curvlab_kind = "curvature"`` and the partition (JSON).
        """
        attrs = {k: v for k, v in self.attrs.items() if v is not None}
        attrs.update(curvlab_kind=self.kind, partition=self.partition.to_json(), quantities=",".join(self._reps))
        nodes: dict[str, Any] = {"/": xr.Dataset(attrs=attrs)}
        for name, rep in self._reps.items():
            nodes[name] = rep.to_xarray()
        return xr.DataTree.from_dict(nodes)

    @classmethod
    def from_xarray(cls, tree: xr.DataTree) -> Curvature:
        """Rebuild a :class:`Curvature` written by :meth:`to_xarray` (each child by its ``curvlab_kind``)."""
        from curvlab.io import KINDS  # noqa: PLC0415  (a foundation module; imported on use)

        attrs = dict(tree.attrs)
        if attrs.pop("curvlab_kind", None) != cls.kind:
            raise ValueError("not a curvlab Curvature export (root attribute curvlab_kind != 'curvature')")
        partition = Partition.from_json(attrs.pop("partition"))
        names = [n for n in str(attrs.pop("quantities", "")).split(",") if n]
        reps = {}
        for name in names:  # a hostile file may name the root ("/"), a path, or a kind not in KINDS
            if name not in tree.children or name in reps:
                raise ValueError(f"not a valid curvlab Curvature export: quantity {name!r} is not a child group "
                                 f"of the root (groups: {', '.join(tree.children) or 'none'})")
            child = tree.children[name]
            kind = child.attrs.get("curvlab_kind")
            if not isinstance(kind, str) or kind == cls.kind or kind not in KINDS:
                raise ValueError(f"not a valid curvlab Curvature export: group {name!r} has curvlab_kind={kind!r} "
                                 f"(known: {', '.join(k for k in KINDS if k != cls.kind)})")
            node = child if child.children else child.to_dataset()
            module, _, qualname = KINDS[kind].partition(":")
            reps[name] = getattr(importlib.import_module(module), qualname).from_xarray(node)
        return cls(reps, partition, attrs)

    def __repr__(self) -> str:
        return f"Curvature({', '.join(f'{k}: {type(v).__name__}' for k, v in self._reps.items())})"


@functools.lru_cache(maxsize=64)
def _partition(params: tuple[ParameterInfo, ...], kind: str) -> Partition:
    """Partitions are immutable and cost O(P log P) to build: cache them per parameter layout."""
    return Partition.from_params(params, kind)


def model_partition(model: nn.Module, kind) -> Partition:
    """``Partition.from_model(model, kind)``, cached for string kinds."""
    if isinstance(kind, Partition):
        return kind
    if isinstance(kind, str):
        return _partition(Partition.describe(model), kind)
    return Partition.from_model(model, kind)


@functools.lru_cache(maxsize=256)
def _factor_partition(weight_shape: tuple[int, ...], bias: int) -> Partition:
    """The canonical "weight" (+ "bias") partition of one Kronecker-factored layer."""
    params = [ParameterInfo("weight", "", weight_shape, 0)]
    if bias:
        params.append(ParameterInfo("bias", "", (bias,), math.prod(weight_shape)))
    return Partition(params, {p.name: [(p.name, None)] for p in params}, "canonical")


def _layer_tensors(
    stats: BatchStatistics, quantity: str, part: str, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    return {layer: stats.sums[(quantity, layer, part)] for layer in layers if (quantity, layer, part) in stats.sums}


def assemble(
    model: nn.Module,
    quantities: Sequence[Quantity],
    stats: BatchStatistics,
    partition="layer",
    attrs: Mapping[str, Any] | None = None,
    *,
    layer_partition: Partition | None = None,
) -> Curvature:
    """Build the representations of ``quantities`` from combined, scaled statistics.

    ``layer_partition``: the model's "layer" partition when the caller has it already.
    """
    layer_part = layer_partition if layer_partition is not None else model_partition(model, "layer")
    user_part = layer_part if isinstance(partition, str) and partition == "layer" else model_partition(model, partition)
    modules = dict(model.named_modules())
    reps: dict[str, CurvatureRepresentation] = {}
    common = {"attrs": attrs}
    for q in quantities:
        try:
            reps[q.value] = _representation(q, stats, layer_part, user_part, modules, common)
        except NonFiniteError as error:
            raise NonFiniteError(f"{q.value}: {error}") from None
    return Curvature(reps, user_part, attrs)


def _representation(q: Quantity, stats, layer_part, user_part, modules, common) -> CurvatureRepresentation:
    name = q.value
    if q is Quantity.HESSIAN:
        return DenseCurvature(stats.sums[("hessian", "", "full")], user_part, quantity=name, **common)
    if q.form is Form.BLOCK:
        blocks = _layer_tensors(stats, name, "block", layer_part.group_names)
        return BlockDiagonalCurvature(blocks, layer_part, quantity=name, validate=False, **common)
    if q.form is Form.DIAG:
        diag = torch.cat([stats.sums[(name, layer, "diag")] for layer in layer_part.group_names])
        return DiagonalCurvature(diag, user_part, quantity=name, **common)
    if q.form is Form.FULL:
        return _square_root(name, stats, layer_part, user_part, modules, common)
    return _kronecker(q, stats, layer_part, modules, common)


def _square_root(name: str, stats, layer_part: Partition, user_part: Partition, modules, common):
    """The full factor kept per layer: S ⊗ [X; 1] for outer-product layers, dense columns otherwise."""
    layers = []
    for group in layer_part.groups:
        start = group.contiguous.start
        if (name, group.name, "S") in stats.rows:
            module = modules[group.name]
            bias = getattr(module, "bias", None) is not None and module.bias.requires_grad
            outputs, inputs = stats.rows[(name, group.name, "S")], stats.stacked[(name, group.name, "X")]
            layers.append(LayerFactor(start, outputs, inputs, bias=bias))
        else:
            layers.append(LayerFactor(start, stats.rows[(name, group.name, "F")]))
    return LayeredSquareRootCurvature(layers, user_part, quantity=name, **common)


def kronecker_factors(stats: BatchStatistics, quantity: str, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, G) of a layer: A from the shared inputs, G from ``quantity`` (``ekfac`` carries its own)."""
    if quantity == "ekfac":
        return stats.sums[("ekfac", layer, "A")], stats.sums[("ekfac", layer, "G")]
    return stats.inputs[layer], stats.sums[(quantity, layer, "G")]


def _kronecker(q: Quantity, stats: BatchStatistics, layer_part: Partition, modules, common) -> KroneckerCurvature:
    name = q.value
    layers: dict[str, KroneckerFactors | torch.Tensor] = {}
    for layer in layer_part.group_names:
        if (name, layer, "block") in stats.sums:
            layers[layer] = stats.sums[(name, layer, "block")]
            continue
        A, G = kronecker_factors(stats, name, layer)
        module = modules[layer]
        scaling = stats.sums[(name, layer, "scaling")] if q.form is Form.EKFAC else None
        bias = getattr(module, "bias", None) is not None and module.bias.requires_grad
        shape = tuple(module.weight.shape)
        try:
            layers[layer] = KroneckerFactors(
                A, G, bias=bias, bias_convention="augmented", scaling=scaling,
                eigenbasis=stats.bases.get(layer) if scaling is not None else None, weight_shape=shape,
                partition=_factor_partition(shape, shape[0] if bias else 0), quantity=name,
                validate=False,  # A, G are Gram matrices or symmetric recursions: symmetric by construction
            )
        except NonFiniteError as error:
            raise NonFiniteError(f"layer {layer!r}: {error}") from None
    return KroneckerCurvature(layers, layer_part, quantity=name, **common)
