"""The collector route of :func:`curvlab.compute`: every batch through the collector and the estimators.

Per batch: one forward pass with the collector's hooks, :func:`~curvlab.estimators.batch.settle` (first
batch: coupling and layer routes), the statistics of every task, restricted Hessian–vector products for
the Hessian quantities; batches are combined exactly (:class:`~curvlab.engine.accumulate.Accumulator`).
``ekfac`` refits its eigenvalues in a second pass over the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from curvlab.collector import Collector, plan_layers
from curvlab.data import Data, is_single_batch, iter_batches
from curvlab.distributed import shared_failure
from curvlab.engine.accumulate import Accumulator
from curvlab.engine.eigenbasis import factor_eigenvectors
from curvlab.engine.quantities import Form, Quantity, Source
from curvlab.engine.statistics import BatchStatistics
from curvlab.errors import UnsupportedModuleError
from curvlab.estimators.batch import RunState, batch_statistics, settle
from curvlab.estimators.config import EstimatorConfig
from curvlab.estimators.hessian import restricted_hessian
from curvlab.estimators.tasks import plan_tasks
from curvlab.guards import check_finite
from curvlab.losses import LossAdapter

__all__ = ["collect"]


def collect(model: nn.Module, loss: LossAdapter, data: Data, quantities: Sequence[Quantity],
            config: EstimatorConfig, progress: bool = False) -> tuple[BatchStatistics, dict[str, Any]]:
    """Combined, scaled statistics of ``quantities`` over ``data``, and run information
    (``batches``, ``batch_size``, ``layers`` (the :class:`~curvlab.collector.ModelLayers`), ``structure``)."""
    if Quantity.KFRA in quantities:
        reason = "it runs through the collector"
        try:
            from curvlab.engine.hooks import CurvatureHooks  # noqa: PLC0415

            CurvatureHooks(model, nn.MSELoss(), ["kfra"])
        except UnsupportedModuleError as error:
            reason = str(error)
        raise UnsupportedModuleError(
            f"kfra needs the rule engine (its batch-averaged recursion passes through every module by a "
            f"hand-written rule), which refuses {type(model).__qualname__}: {reason}; use kflr or kfac"
        )
    layers = plan_layers(model)
    config.check_patterns([lp.name for lp in layers.layers])
    state = RunState(layers)
    info: dict[str, Any] = {"batches": 0, "batch_size": None}
    first = [q for q in quantities]
    stats, plan = _pass(model, loss, data, first, config, state, info, progress, None)
    if Quantity.EKFAC in quantities:
        basis = {}
        for lp in state.layers.adapted():
            if ("ekfac", lp.name, "G") in stats.sums:
                A, G = stats.inputs[lp.name], stats.sums[("ekfac", lp.name, "G")]
                rows = stats.input_rows.get(lp.name)
                if A.dim() == 3:  # a grouped layer: one basis per group
                    basis[lp.name] = (torch.stack([factor_eigenvectors(a, rows) for a in A]),
                                      torch.stack([factor_eigenvectors(g) for g in G]))
                else:
                    basis[lp.name] = (factor_eigenvectors(A, rows), factor_eigenvectors(G))
        refit, _ = _pass(model, loss, data, [Quantity.EKFAC], config, state, {"batches": 0, "batch_size": None},
                         progress, basis)
        stats.sums.update({k: v for k, v in refit.sums.items() if k[2] == "scaling"})
        stats.bases = basis
    info.update(layers=state.layers, plan=plan, state=state)
    return stats, info


@shared_failure("curvlab.compute")  # under torch.distributed: a rank that raises tells the others
def _pass(model, loss, data, quantities, config, state, info, progress, basis):
    total = 1 if is_single_batch(data) else (len(data) if hasattr(data, "__len__") else None)
    accumulator = Accumulator(loss.reduction)
    tasks = plan = None
    factor_qs = [q for q in quantities if q.source is not Source.HESSIAN]
    hessian_qs = [q for q in quantities if q.source is Source.HESSIAN]
    with Collector(model, layers=state.layers) as col:
        batches = iter_batches(data)
        if progress:
            batches = tqdm(batches, total=total, desc="curvlab", unit="batch")
        for inputs, targets in batches:
            info["batches"] += 1
            info["batch_size"] = info["batch_size"] or int(inputs.shape[0])
            outputs = col.forward(inputs)
            check_finite(outputs.detach(), "model output")
            loss.check(outputs, targets)
            settle(col, state, outputs)
            if tasks is None:
                plan = plan_tasks(factor_qs, state.layers, config, second_pass=basis is not None)
                tasks = plan.tasks
            stats = batch_statistics(col, state, outputs, targets, loss, tasks, config, basis)
            if hessian_qs:
                _hessian(stats, state, loss, outputs, targets, hessian_qs)
            accumulator.add(stats)
    accumulator.all_reduce([*model.parameters(), *model.buffers()])  # the ranks agree, then reduce
    return accumulator.result(), plan


def _hessian(stats, state, loss, outputs, targets, quantities) -> None:
    loss_sum = loss(outputs, targets) * loss.normalizer_for(outputs, targets)  # unscaled: Σ_n ℓ_n
    forms = {q.form for q in quantities}
    if Form.FULL in forms:
        params = [p for _, p in state.layers.params]
        stats.sums[("hessian", "", "full")] = restricted_hessian(loss_sum, params, "hessian").detach()
    if forms & {Form.BLOCK, Form.DIAG}:
        for lp in state.layers.layers:
            params = [p for _, p in state.layers.parameters_of(lp.name)]
            block = restricted_hessian(loss_sum, params, f"hessian block of layer {lp.name!r}").detach()
            if Form.BLOCK in forms:
                stats.sums[("hessian_block", lp.name, "block")] = block
            if Form.DIAG in forms:
                stats.sums[("diag_hessian", lp.name, "diag")] = block.diagonal().clone()
