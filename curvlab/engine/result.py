"""``Curvature``: the result of :func:`curvlab.compute`, a mapping quantity name -> representation.

Which representation each quantity gets (all in the reference ordering, zero outside what the
approximation covers):

* ``*_block``: :class:`~curvlab.repr.BlockDiagonalCurvature` over the "layer" partition (one block per
  layer holding all its parameters, weight–bias cross terms included);
* ``diag_*``: :class:`~curvlab.repr.DiagonalCurvature`;
* ``ggn``, ``fisher_mc``, ``empirical_fisher``: :class:`~curvlab.repr.SquareRootCurvature` C = Fᵀ F with
  F [R, P] the stacked backpropagated square roots (R = N·C, N·M, N over all batches);
* ``hessian``: :class:`~curvlab.repr.DenseCurvature`;
* ``kfac``, ``kflr``, ``kfra``, ``ekfac``: :class:`~curvlab.repr.KroneckerCurvature`, per layer
  ``KroneckerFactors(A, G, bias=..., bias_convention="augmented")`` (bias = last column of [W, b],
  weight–bias cross terms included), ``ekfac`` with ``scaling`` (the refitted eigenvalues); layers
  without a Kronecker rule (BatchNorm) hold their exact dense block of the same source.

Diagonal and square-root results are labelled by the requested ``partition``; block and Kronecker
results always by the "layer" partition (their structure).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import xarray as xr
from torch import nn

from curvlab.engine.quantities import Form, Quantity
from curvlab.engine.statistics import BatchStatistics
from curvlab.guards import check_finite
from curvlab.partition import Partition
from curvlab.repr import (
    BlockDiagonalCurvature,
    CurvatureRepresentation,
    DenseCurvature,
    DiagonalCurvature,
    KroneckerCurvature,
    KroneckerFactors,
    SquareRootCurvature,
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

    def to_xarray(self) -> xr.DataTree:
        """An ``xr.DataTree`` with one child per quantity (each its representation's export)."""
        nodes: dict[str, Any] = {"/": xr.Dataset(attrs={k: v for k, v in self.attrs.items() if v is not None})}
        for name, rep in self._reps.items():
            nodes[name] = rep.to_xarray()
        return xr.DataTree.from_dict(nodes)

    def __repr__(self) -> str:
        return f"Curvature({', '.join(f'{k}: {type(v).__name__}' for k, v in self._reps.items())})"


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
) -> Curvature:
    """Build the representations of ``quantities`` from combined, scaled statistics."""
    layer_part = Partition.from_model(model, "layer")
    user_part = Partition.from_model(model, partition) if not isinstance(partition, Partition) else partition
    layers = layer_part.group_names
    modules = dict(model.named_modules())
    reps: dict[str, CurvatureRepresentation] = {}
    common = {"attrs": attrs}
    for q in quantities:
        name = q.value
        if q is Quantity.HESSIAN:
            matrix = check_finite(stats.sums[("hessian", "", "full")], "hessian")
            reps[name] = DenseCurvature(matrix, user_part, quantity=name, **common)
        elif q.form is Form.BLOCK:
            blocks = {k: check_finite(v, f"{name} block of layer {k!r}") for k, v in _layer_tensors(stats, name, "block", layers).items()}
            reps[name] = BlockDiagonalCurvature(blocks, layer_part, quantity=name, **common)
        elif q.form is Form.DIAG:
            diag = torch.cat([stats.sums[(name, layer, "diag")] for layer in layers])
            reps[name] = DiagonalCurvature(check_finite(diag, name), user_part, quantity=name, **common)
        elif q.form is Form.FULL:
            rows = [stats.rows[(name, layer, "rows")] for layer in layers]
            factor = torch.cat(rows, dim=1)
            reps[name] = SquareRootCurvature(check_finite(factor, name), user_part, quantity=name, **common)
        else:
            reps[name] = _kronecker(q, stats, layer_part, modules, common)
    return Curvature(reps, user_part, attrs)


def kronecker_factors(stats: BatchStatistics, quantity: str, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, G) of a layer: A from the shared inputs, G from ``quantity`` (``ekfac`` reads ``kflr``)."""
    source = "kflr" if quantity == "ekfac" else quantity
    return stats.inputs[layer], stats.sums[(source, layer, "G")]


def _kronecker(q: Quantity, stats: BatchStatistics, layer_part: Partition, modules, common) -> KroneckerCurvature:
    name = q.value
    layers: dict[str, KroneckerFactors | torch.Tensor] = {}
    for layer in layer_part.group_names:
        if (name, layer, "block") in stats.sums:
            layers[layer] = check_finite(stats.sums[(name, layer, "block")], f"{name} block of layer {layer!r}")
            continue
        A, G = kronecker_factors(stats, name, layer)
        module = modules[layer]
        scaling = stats.sums[(name, layer, "scaling")] if q.form is Form.EKFAC else None
        layers[layer] = KroneckerFactors(
            check_finite(A, f"{name} A of layer {layer!r}"),
            check_finite(G, f"{name} G of layer {layer!r}"),
            bias=getattr(module, "bias", None) is not None and module.bias.requires_grad,
            bias_convention="augmented",
            scaling=None if scaling is None else check_finite(scaling, f"{name} scaling of layer {layer!r}"),
            weight_shape=tuple(module.weight.shape),
            quantity=name,
        )
    return KroneckerCurvature(layers, layer_part, quantity=name, **common)
