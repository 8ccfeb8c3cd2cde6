"""Representations from the combined statistics of the collector route (interface of :mod:`curvlab.repr`).

Blocks, diagonals and full square-root factors use :func:`curvlab.engine.result.assemble` (the same
keys as the rule engine). Kronecker quantities are built here, per layer:

* ``KroneckerFactors(A, G)`` (bias "augmented") for dense layers; ``GroupedKroneckerFactors`` of one
  ``KroneckerFactors(A_j, G_j)`` per group for grouped layers (stacked factors); for ``transposed`` layers
  (``nn.Embedding``, W [V, D]) the input factor is the one over W's rows:
  ``KroneckerFactors(A=G_out, G=A_in)``;
* the exact block (or a diagonal block) where :mod:`curvlab.estimators.tasks` chose one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from curvlab.collector import ModelLayers
from curvlab.engine.quantities import Form, Quantity
from curvlab.engine.result import Curvature, _factor_partition, assemble, model_partition
from curvlab.engine.statistics import BatchStatistics
from curvlab.errors import NonFiniteError
from curvlab.repr import GroupedKroneckerFactors, KroneckerCurvature, KroneckerFactors

__all__ = ["assemble_collected", "structure_note"]


def structure_note(fallbacks: Mapping[str, str], demoted: Mapping[str, str], coupled_by: str,
                   sharing: str, probed: bool = True) -> str:
    """The provenance attribute ``structure`` (JSON): what each Kronecker layer holds instead, and why."""
    note: dict[str, Any] = {"weight_sharing": sharing}
    if fallbacks:
        note["fallbacks"] = dict(fallbacks)
    if demoted:
        note["exact_route"] = dict(demoted)
    if not coupled_by and not probed:
        note["batch_coupled"] = (
            "not probed: only Kronecker (or Hessian) quantities were computed, which take the per-sample "
            "gradients of the batch loss whether or not the model's forward couples samples"
        )
    if coupled_by:
        note["batch_coupled"] = (
            f"samples are coupled by {coupled_by}: ggn, *_block and diag_* are those of the batch function "
            "(cross-sample terms included); Kronecker factors use the per-sample gradients of the batch loss "
            "(the practical convention, not exact)"
        )
    return json.dumps(note, sort_keys=True)


def assemble_collected(model: nn.Module, quantities: Sequence[Quantity], stats: BatchStatistics, partition,
                       attrs: Mapping[str, Any], layers: ModelLayers) -> Curvature:
    """The :class:`~curvlab.engine.result.Curvature` of ``quantities`` (see the module docstring)."""
    layer_part = model_partition(model, "layer")
    plain = [q for q in quantities if q.form not in (Form.KRONECKER, Form.EKFAC)]
    base = assemble(model, plain, stats, partition, attrs, layer_partition=layer_part)
    reps = {}
    plans = {lp.name: lp for lp in layers.layers}
    for q in quantities:
        if q.form in (Form.KRONECKER, Form.EKFAC):
            reps[q.value] = _kronecker(q, stats, layer_part, plans, attrs)
        else:
            reps[q.value] = base[q.value]
    return Curvature(reps, base.partition, attrs)


def _kronecker(q: Quantity, stats: BatchStatistics, layer_part, plans, attrs) -> KroneckerCurvature:
    name = q.value
    layers: dict[str, KroneckerFactors | torch.Tensor] = {}
    for layer in layer_part.group_names:
        if (name, layer, "block") in stats.sums:
            layers[layer] = stats.sums[(name, layer, "block")]
            continue
        if (name, layer, "diag") in stats.sums:
            layers[layer] = torch.diag(stats.sums[(name, layer, "diag")])
            continue
        lp = plans[layer]
        A, G = stats.inputs[layer], stats.sums[(name, layer, "G")]
        scaling = stats.sums.get((name, layer, "scaling"))
        bias = lp.has_bias
        shape = lp.weight_shape
        basis = stats.bases.get(layer) if scaling is not None else None
        if lp.adapter.transposed:
            A, G = G, A
            basis = basis[::-1] if basis is not None else None
        partition = _factor_partition(shape, shape[0] if bias else 0)
        try:
            if A.dim() == 3:  # grouped: [g, ·, ·] factors, group j over output channels j·O_g …
                group_shape = (shape[0] // A.shape[0], *shape[1:])
                groups = [
                    KroneckerFactors(A[j], G[j], bias=bias, bias_convention="augmented",
                                     scaling=None if scaling is None else scaling[j],
                                     eigenbasis=None if basis is None else (basis[0][j], basis[1][j]),
                                     weight_shape=group_shape, quantity=name, validate=False)
                    for j in range(A.shape[0])
                ]
                layers[layer] = GroupedKroneckerFactors(groups, weight_shape=shape, partition=partition, quantity=name)
            else:
                layers[layer] = KroneckerFactors(
                    A, G, bias=bias, bias_convention="augmented", scaling=scaling, eigenbasis=basis,
                    weight_shape=shape, partition=partition, quantity=name, validate=False,
                )
        except NonFiniteError as error:
            raise NonFiniteError(f"{name}: layer {layer!r}: {error}") from None
    return KroneckerCurvature(layers, layer_part, quantity=name, attrs=attrs)
