"""``CurvatureHooks``: the context manager that records a normal forward+backward and owns every hook.

Usage (one or more batches)::

    with CurvatureHooks(model, loss_fn, ["kflr", "diag_ggn"]) as hooks:
        for x, y in loader:
            loss_fn(model(x), y).backward()
    curvature = hooks.result()

On entry it registers a forward pre-hook and a forward hook on the model and a forward hook on every
supported leaf module; each forward hook stores the (detached) input and output of its module in the
context, never on the module, and hooks the output tensor to catch ∂L/∂y during backward. When the
next forward starts (or the context exits, or :meth:`result` is called) the recorded batch is turned
into statistics (:mod:`curvlab.engine.statistics`) and dropped, so memory stays at one batch.
On exit every hook is removed, also when an exception is raised inside the block; the model is never
modified, so ``torch.func`` and :mod:`curvlab.reference` work on it afterwards.

The backward pass must be of ``loss_fn(model(x), y)`` itself (the recorded gradients are those of
that loss); only the Hessian and empirical-Fisher sources use them, and GGN/MC/KFRA quantities need
no backward at all. Modules are checked before any forward (:func:`curvlab.engine.model_check.supported_layers`);
at run time the hooks verify that the forward pass is the chain of the model's leaf modules (or, for
models with a custom ``forward``, that modules run in the order of their ``torch.fx`` graph).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from curvlab.engine.accumulate import Accumulator
from curvlab.engine.eigenbasis import factor_eigenvectors
from curvlab.engine.hessian import full_hessian
from curvlab.engine.model_check import Layer, graph_of, supported_layers
from curvlab.engine.quantities import Quantity, Source, parse_quantities
from curvlab.engine.result import model_partition
from curvlab.engine.rules import RULES, ModuleRule, Record
from curvlab.engine.statistics import EngineConfig, batch_statistics, has_trainable
from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_finite
from curvlab.losses import loss_adapter
from curvlab.partition import Partition

__all__ = ["CurvatureHooks"]


@dataclass
class _Trace:
    """What one forward pass recorded."""

    inputs: torch.Tensor
    records: list[Record] = field(default_factory=list)
    last_output: torch.Tensor | None = None  # the live (not detached) output of the last record
    outputs: torch.Tensor | None = None
    problem: str | None = None


class CurvatureHooks:
    """Record forward/backward passes of ``model`` and turn them into curvature statistics.

    Args:
        model: an ``nn.Sequential`` (nested allowed) of supported modules; not modified.
        loss_fn: the loss module the backward pass differentiates (see :mod:`curvlab.losses`).
        quantities: names or :class:`~curvlab.engine.quantities.Quantity` members.
        mc_samples: M for the MC quantities; generator: their random source.
        ekfac_factors: ``{layer: (A, G)}`` KFLR factors of the data (from an earlier ``kflr`` result),
            needed for ``ekfac``: its eigenvalues are refitted in their eigenbasis (``curvlab.compute``
            makes the two passes itself).
        ekfac_rank_bounds: ``{layer: R}``, rows behind each A (a rank bound that lets the eigenbasis of a
            wide, rank-deficient factor skip its null space: :func:`curvlab.engine.eigenbasis.factor_eigenvectors`).
        rules: module type -> rule mapping (default :data:`curvlab.engine.rules.RULES`).
        layer_partition: ``Partition.from_model(model, "layer")`` when the caller has it already.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
        >>> with CurvatureHooks(model, nn.CrossEntropyLoss(), ["diag_ggn", "kflr"]) as hooks:
        ...     nn.CrossEntropyLoss()(model(x), y).backward()
        >>> result = hooks.result()
        >>> from curvlab.reference import ggn
        >>> torch.allclose(result["diag_ggn"].diagonal(), ggn(model, nn.CrossEntropyLoss(), x, y).diagonal())
        True
        >>> len(model._forward_hooks), len(model[0]._forward_hooks)   # all hooks gone
        (0, 0)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        quantities: str | Quantity | Iterable[str | Quantity],
        *,
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
        ekfac_factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        ekfac_rank_bounds: Mapping[str, int] | None = None,
        rules: Mapping[type, ModuleRule] = RULES,
        layer_partition: Partition | None = None,
    ):
        self.model = model
        self.adapter = loss_adapter(loss_fn)
        self.quantities = parse_quantities(quantities)
        self.ekfac_factors = dict(ekfac_factors or {})
        bounds = dict(ekfac_rank_bounds or {})
        basis = {
            layer: (factor_eigenvectors(A, bounds.get(layer)), factor_eigenvectors(G))
            for layer, (A, G) in self.ekfac_factors.items()
        }
        self.config = EngineConfig(mc_samples, generator, basis or None)
        self.layers: list[Layer] = supported_layers(model, rules)
        graph = graph_of(model)
        #: the module graph of a branching model (``None`` for chains: nested Sequential or fx-verified)
        self.graph = None if graph is None or graph.is_chain else graph
        if self.graph is not None:
            chain_only = [q.value for q in self.quantities
                          if q.source in (Source.HESSIAN, Source.KFRA) and q is not Quantity.HESSIAN]
            if chain_only:
                raise UnsupportedModuleError(
                    f"{', '.join(chain_only)} need a chain of modules, but {self.graph.model_name} branches at "
                    f"node {self.graph.first_branch()!r}; GGN, Fisher and full Hessian quantities work on it"
                )
        self._by_module = {id(layer.module): layer for layer in self.layers}
        #: the model's "layer" partition (its groups are the parameterised layers)
        self.layer_partition = layer_partition if layer_partition is not None else model_partition(model, "layer")
        self._layout = {g.name: g.contiguous for g in self.layer_partition.groups}
        self.accumulator = Accumulator(self.adapter.reduction)
        self._handles: list[Any] = []
        self._tensor_handles: list[Any] = []
        self._trace: _Trace | None = None
        self._suspended = False
        self._active = False

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> CurvatureHooks:
        if self._active:
            raise RuntimeError("CurvatureHooks is not re-entrant")
        self._active = True
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._begin))
            for layer in self.layers:
                self._handles.append(layer.module.register_forward_hook(self._record))
            self._handles.append(self.model.register_forward_hook(self._end))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._remove()
        if exc_type is not None:
            self._trace = None
            return
        self._flush()

    def _remove(self) -> None:
        for handle in self._handles + self._tensor_handles:
            handle.remove()
        self._handles.clear()
        self._tensor_handles.clear()
        self._active = False

    # ------------------------------------------------------------------ results
    def statistics(self) -> Accumulator:
        """The accumulated statistics so far (processes a pending batch first)."""
        self._flush()
        return self.accumulator

    def result(self, partition="layer", attrs: Mapping[str, Any] | None = None):
        """The :class:`~curvlab.engine.result.Curvature` of all recorded batches."""
        from curvlab.engine.result import assemble  # noqa: PLC0415

        self._flush()
        return assemble(self.model, self.quantities, self.combined(), partition, attrs)

    def combined(self):
        """The combined statistics (:class:`~curvlab.engine.statistics.BatchStatistics`), after all-reducing
        across processes when ``torch.distributed`` is initialised; with ``ekfac`` they carry its factors."""
        self._flush()
        self.accumulator.all_reduce([*self.model.parameters(), *self.model.buffers()])  # agree, then reduce
        stats = self.accumulator.result()
        for layer, (A, G) in self.ekfac_factors.items():
            stats.sums[("ekfac", layer, "A")], stats.sums[("ekfac", layer, "G")] = A, G
        stats.bases = dict(self.config.ekfac_basis or {})
        return stats

    # ------------------------------------------------------------------ hooks
    def _begin(self, module, args) -> None:
        if self._suspended:
            return
        self._flush()
        if not args or not isinstance(args[0], torch.Tensor):
            raise UnsupportedModuleError("the model's forward must take one input tensor")
        self._trace = _Trace(inputs=args[0].detach())
        self._trace.last_output = args[0]

    def _record(self, module, args, output) -> None:
        trace = self._trace
        if self._suspended or trace is None:
            return
        layer = self._by_module[id(module)]
        if trace.problem is None:
            if any(r.module is module for r in trace.records):
                trace.problem = f"module {layer.name!r} is called twice (shared weights)"
            elif self.graph is None and (not args or args[0] is not trace.last_output):
                trace.problem = (
                    f"the input of module {layer.name!r} is not the output of the module before it "
                    "(a functional operation, branch or skip connection)"
                )
        record = Record(layer.name, module, layer.rule, args[0].detach(), output.detach())
        trace.records.append(record)
        trace.last_output = output
        if output.requires_grad:
            self._tensor_handles.append(output.register_hook(_grad_catcher(record)))

    def _end(self, module, args, output) -> None:
        trace = self._trace
        if self._suspended or trace is None:
            return
        if not isinstance(output, torch.Tensor):
            trace.problem = f"the model returned a {type(output).__qualname__}, not a tensor"
        elif self.graph is None and output is not trace.last_output:
            trace.problem = "the model's output is not the output of its last module"
        elif self.graph is not None and [r.name for r in trace.records] != self.graph.modules:
            trace.problem = f"the modules ran in an order other than {self.graph.model_name}'s traced graph"
        trace.outputs = output.detach() if isinstance(output, torch.Tensor) else None

    # ------------------------------------------------------------------ processing
    def _flush(self) -> None:
        trace, self._trace = self._trace, None
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles.clear()
        if trace is None or trace.outputs is None:
            return
        self._suspended = True
        try:
            self.accumulator.add(self._statistics(trace))
        finally:
            self._suspended = False

    def _statistics(self, trace: _Trace):
        if trace.problem is not None:
            raise UnsupportedModuleError(
                f"{trace.problem}: the hook engine supports nn.Sequential models and custom models whose "
                "torch.fx graph calls each supported module once (see curvlab.engine.fx_check)"
            )
        called = {r.name for r in trace.records}
        for layer in self.layers:
            if layer.rule.has_parameters and layer.rule.trainable(layer.module) and layer.name not in called:
                raise UnsupportedModuleError(
                    f"module {layer.name!r} ({type(layer.module).__qualname__}) has trainable parameters but "
                    "was not called in the forward pass; its curvature would be skipped"
                )
        records = trace.records
        first = next(i for i, r in enumerate(records) if has_trainable(r))
        for record in records[first:]:
            record.rule.check_call(record)
        outputs = check_finite(trace.outputs, "model output")
        if trace.inputs.is_floating_point():
            check_finite(trace.inputs, "model input")
        z = self.adapter.normalizer(outputs)
        needs_grad = any(q.source in (Source.EMPIRICAL, Source.HESSIAN) for q in self.quantities)
        if needs_grad:
            for record in records[first:]:
                if record.grad is None:
                    raise RuntimeError(
                        f"no gradient reached module {record.describe()}: call loss.backward() on "
                        f"loss_fn(model(x), y) inside the context ({', '.join(q.value for q in self.quantities)} "
                        "need it)"
                    )
                record.grad = record.grad * z
        stats = batch_statistics(records, outputs, self.adapter, self.quantities, self.config, self._layout,
                                 self.graph)
        if Quantity.HESSIAN in self.quantities:
            stats.sums[("hessian", "", "full")] = full_hessian(
                self.model, trace.inputs, outputs, records[-1].grad.flatten(1),
                self.adapter.output_hessian(outputs),
            )
        return stats


def _grad_catcher(record: Record):
    def hook(grad: torch.Tensor) -> None:
        record.grad = grad.detach()

    return hook
