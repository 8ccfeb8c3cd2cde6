"""One batch through the collector: seeds, vectorised backward passes, per-layer statistics.

For each factor source the seeds V [N, K, *out] (:mod:`curvlab.estimators.sources`) are pushed back
once as *columns* (G [N, K, S, O] at every adapted layer: per-sample gradients when samples are
independent) and, where needed, once as *rows* (one sample's column each: exact per-sample gradients
of a batch function, and of parameters no adapter describes). Rows are used for

* generic layers (no adapter): their parameters' gradients directly, [N·K, P_l];
* every exact quantity (blocks, diagonals, full factors) when the samples are coupled
  (train-mode BatchNorm, or a probe finds a sample's seed reaching other samples' layer outputs).

Kronecker factors always use the columns: for coupled samples this is the usual practical
convention (per-sample gradients of the batch loss), recorded in the result as not exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from curvlab.collector import Collector, ModelLayers
from curvlab.engine.statistics import BatchStatistics
from curvlab.errors import UnsupportedModuleError
from curvlab.estimators.config import EstimatorConfig
from curvlab.estimators.gradients import layer_gradients
from curvlab.estimators.sources import column_seeds, row_seeds
from curvlab.estimators.statistics import (
    _columns,
    add_block,
    add_diag,
    add_ekfac,
    add_input_factor,
    add_output_factor,
    add_rows,
    project_inputs,
)
from curvlab.estimators.tasks import Task
from curvlab.guards import check_dense_allocation
from curvlab.losses import LossAdapter

__all__ = ["RunState", "batch_statistics", "settle"]

_EXACT = ("block", "diag", "diagblock", "rows")


@dataclass
class RunState:
    """What the first batch decides for all (coupling, layers demoted to the exact route)."""

    layers: ModelLayers
    coupled: bool | None = None
    coupled_by: str = ""
    probed: bool = False  # the coupling was probed (only exact quantities need it)
    demoted: dict[str, str] = field(default_factory=dict)


def _batch_coupled(model) -> list[str]:
    from torch import nn  # noqa: PLC0415

    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)]


def settle(col: Collector, state: RunState, outputs: torch.Tensor) -> None:
    """First batch: demote adapted layers not called or used outside their call; detect coupling."""
    if state.coupled is not None:
        missing = [lp.name for lp in state.layers.adapted() if lp.name not in col.calls]
        if missing:
            raise UnsupportedModuleError(
                f"layer {missing[0]!r} was called in the first batch but not in this one: data-dependent control "
                "flow over parameterised layers is not supported"
            )
        outside = [lp.name for lp in state.layers.adapted() if lp.name in col.used_outside]
        if outside:
            raise UnsupportedModuleError(
                f"layer {outside[0]!r} took its normal form in the first batch but not in this one "
                f"({col.used_outside[outside[0]]}); pass batches the layer handles alike"
            )
        return
    for lp in state.layers.adapted():
        reason = None
        if lp.name in col.used_outside:
            reason = f"its parameters are also used outside its call (by {col.used_outside[lp.name]})"
        elif lp.name not in col.calls:
            reason = f"{type(lp.module).__qualname__} whose forward is not called (its weights are used functionally)"
        elif any(o.shape[0] != outputs.shape[0] for o in col.calls[lp.name].outputs):
            shape = next(tuple(o.shape) for o in col.calls[lp.name].outputs if o.shape[0] != outputs.shape[0])
            reason = f"a call without the batch dimension (output {shape}, batch {outputs.shape[0]})"
        if reason is not None:
            state.demoted[lp.name] = reason
            state.layers = state.layers.demote(lp.name, reason)
    coupled = _batch_coupled(col.model)
    if coupled:
        state.coupled, state.coupled_by = True, f"module {coupled[0]!r} (BatchNorm with batch statistics)"
    elif outputs.shape[0] == 1 or not state.layers.adapted():
        state.coupled = False


def _probe(outputs: torch.Tensor) -> torch.Tensor:
    """A random seed at sample 0 only, [N, 1, *out]: it reaches other samples' layer outputs iff they are coupled."""
    gen = torch.Generator(device=outputs.device).manual_seed(0)
    probe = torch.zeros_like(outputs)
    probe[0] = torch.randn(outputs.shape[1:], dtype=outputs.dtype, generator=gen, device=outputs.device)
    return probe.unsqueeze(1)


def _decide_coupling(state: RunState, probes: Mapping[str, torch.Tensor]) -> None:
    state.coupled, state.probed = False, True
    for name, g in probes.items():
        if bool(g[1:].abs().amax() > 0):
            state.coupled, state.coupled_by = True, f"the model's forward (sample 0 reaches other samples at {name!r})"
            return


def batch_statistics(col: Collector, state: RunState, outputs: torch.Tensor, targets: torch.Tensor,
                     loss: LossAdapter, tasks: Sequence[Task], config: EstimatorConfig,
                     basis: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> BatchStatistics:
    """Unscaled statistics of one recorded batch for ``tasks`` (see the module docstring; :func:`settle` first)."""
    stats = BatchStatistics(loss.normalizer_for(outputs, targets), outputs.shape[0])
    mask = loss.entry_mask(outputs, targets)  # ignored targets (ignore_index): their seeds are zero
    plans = {lp.name: lp for lp in state.layers.layers}
    by_source: dict = {}
    for task in tasks:
        by_source.setdefault(task.source, []).append(task)
    for source, group in by_source.items():
        reduce_rank = all(t.kind != "rows" for t in group)
        V = column_seeds(source, loss, outputs, targets, config.mc_samples, config.generator, reduce_rank)
        if mask is not None:
            V = V * mask.unsqueeze(1)
        adapted = {t.layer for t in group if plans[t.layer].adapter is not None}
        first = None
        # first batch: the probe (rides along with the first chunk of columns) decides how exact quantities
        # are computed; Kronecker factors take the columns either way, so they alone need no probe
        if state.coupled is None and any(t.kind in _EXACT for t in group if t.layer in adapted):
            first = _probe_and_first_chunk(col, state, outputs, V, group)
        as_rows = {t.layer for t in group if t.layer in adapted and state.coupled and t.kind in _EXACT}
        column_tasks = [t for t in group if t.layer in adapted and not (t.layer in as_rows and t.kind in _EXACT)]
        generic = sorted({t.layer for t in group if t.layer not in adapted})
        _column_tasks(col, outputs, V, column_tasks, sorted({t.layer for t in column_tasks}), plans,
                      stats, config, basis, first)
        if as_rows or generic:
            gammas: dict[str, torch.Tensor] = {}
            params = [p for layer in generic for _, p in state.layers.parameters_of(layer)]
            rows = V.shape[0] * V.shape[1]
            check_dense_allocation(  # the row seeds, and as many per-row gradients of the same size at least
                (2 * rows, outputs.numel()), outputs.dtype,
                f"{', '.join(sorted({t.quantity for t in group}))} needs one backward pass per sample and output "
                f"column ({rows:,} rows, at layers {', '.join(sorted(as_rows) + generic)}); use the MC "
                f"quantities (kfac, diag_ggn_mc) or fewer samples, or")
            Gr, grads = col.rows(outputs, row_seeds(V), sorted(as_rows), params)
            i = 0
            for layer in generic:
                count = len(state.layers.parameters_of(layer))
                gammas[layer] = torch.cat([g.flatten(1) for g in grads[i:i + count]], 1)
                i += count
            for layer, g in Gr.items():
                gammas[layer] = layer_gradients(plans[layer], col.calls[layer].X, g, rows=True)
            for task in group:
                if task.layer in generic or (task.layer in as_rows and task.kind in _EXACT):
                    _run_task(task, plans[task.layer], col, {}, gammas, stats, config, basis, {})
    if state.coupled is None:
        state.coupled = False  # not probed: Kronecker or Hessian quantities only
    return stats


#: bytes of output-side factors G (all column-mode layers) per vectorised backward pass
CHUNK_BYTES = 8 * 2**20


def _chunk_size(col: Collector, outputs, V, layers, exact_rows: bool) -> int:
    """Columns per backward pass: all where a task needs them together (the full factor's rows), else
    as many as keep G of ``layers`` under :data:`CHUNK_BYTES`."""
    per_column = sum(t.numel() for name in layers for t in col.calls[name].outputs) * outputs.element_size()
    cols = V.shape[1]
    return cols if exact_rows else max(1, min(cols, CHUNK_BYTES // max(per_column, 1)))


def _probe_and_first_chunk(col: Collector, state: RunState, outputs, V, group) -> dict[str, torch.Tensor] | None:
    """One backward pass of the probe column and the first chunk of V at every adapted layer: decides
    the coupling, and returns G of that chunk ([N, c, S, O] per layer) for the column tasks."""
    layers = sorted(lp.name for lp in state.layers.adapted())
    if not layers:
        return None
    rows = any(t.kind == "rows" for t in group)
    chunk = _chunk_size(col, outputs, V, layers, rows) - (0 if rows else 1)  # the probe takes one column's room
    G = col.columns(outputs, torch.cat([_probe(outputs), V[:, :chunk]], 1), layers)
    _decide_coupling(state, {name: g[:, 0] for name, g in G.items()})
    return {name: g[:, 1:] for name, g in G.items()} if chunk > 0 else None


def _column_tasks(col: Collector, outputs, V, tasks, layers, plans, stats, config, basis, first=None) -> None:
    """Run column-mode ``tasks`` on G of ``layers``, in chunks of columns where the statistics are sums
    over columns (everything but the full factor's rows), so that G of all layers never exists at once.
    ``first``: G of the first chunk, already computed (with the probe)."""
    if not layers or not tasks:
        return
    projected: dict[str, torch.Tensor] = {}  # EKFAC's rotated inputs, once for all chunks
    cols = V.shape[1]
    chunk = _chunk_size(col, outputs, V, layers, any(t.kind == "rows" for t in tasks))
    done = 0 if first is None else next(iter(first.values())).shape[1]
    pieces = ([first] if first is not None else []) + [None] * len(range(done, cols, chunk))
    starts = iter(range(done, cols, chunk))
    for G in pieces:
        if G is None:
            start = next(starts)
            G = col.columns(outputs, V[:, start:start + chunk], layers)
        if len(pieces) == 1:  # every column at once: straight into the statistics
            for task in tasks:
                _run_task(task, plans[task.layer], col, G, {}, stats, config, basis, projected)
            return
        part = BatchStatistics(stats.normalizer, stats.count)
        part.inputs, part.input_rows = stats.inputs, stats.input_rows  # input factors once, shared by all chunks
        for task in tasks:
            _run_task(task, plans[task.layer], col, G, {}, part, config, basis, projected)
        for key, value in part.sums.items():
            stats.sums[key] = value if key not in stats.sums else stats.sums[key] + value
        del G, part


def _run_task(task: Task, lp, col: Collector, G, gammas, stats: BatchStatistics, config, basis,
              projected: dict[str, torch.Tensor]) -> None:
    key_name, layer = task.quantity, task.layer
    if task.kind in ("kron", "ekfac"):
        g = G[layer]
        if task.kind == "kron":
            if layer not in stats.inputs:  # X (a convolution's patches) only when needed
                add_input_factor(stats, lp, col.calls[layer].X, config.weight_sharing)
            add_output_factor(stats, (key_name, layer, "G"), lp, g, config.weight_sharing)
        else:
            if basis is None or layer not in basis:
                raise ValueError(f"ekfac needs the KFLR eigenbasis of layer {layer!r} (a first pass)")
            if layer not in projected:
                projected[layer] = project_inputs(lp, col.calls[layer].X, basis[layer][0])
            add_ekfac(stats, (key_name, layer, "scaling"), lp, projected[layer], g, basis[layer][1])
        return
    gamma = gammas.get(layer)
    calls = col.calls.get(layer) if lp.adapter is not None else None
    g = G.get(layer)
    if task.kind == "block":
        if gamma is None:
            gamma = gammas[layer] = _columns(calls, g, key_name)
        add_block(stats, (key_name, layer, "block"), gamma)
    elif task.kind in ("diag", "diagblock"):
        add_diag(stats, (key_name, layer, "diag"), calls, g, gamma)
    else:
        add_rows(stats, key_name, layer, calls, g, gamma)
