"""``Collector``: forward hooks on the adapted layers of any model, and batched backward passes of factors.

Usage (one batch)::

    with Collector(model) as col:
        outputs = col.forward(inputs)                 # records X [N, S, I] per adapted layer
        G = col.columns(outputs, seeds)               # {layer: [N, K, S, O]} for seeds [N, K, *out]
        rows, grads = col.rows(outputs, row_seeds, layers, params)

Every adapted module gets a forward hook that stores its input arguments (the normal form is built
from them on access, by its adapter) and the *gradient edge* of its output (the autograd node that
produced it, :func:`torch.autograd.graph.get_gradient_edge`): the gradient of a seed w.r.t. that edge
is the factor G at that call, also after in-place operations downstream (``nn.ReLU(inplace=True)``,
``out += identity``) have rebased the output tensor itself. Nothing is copied and the model's
outputs pass through unchanged. A module called several times (shared
weights) records each call; its positions are concatenated. Glue between layers is arbitrary: autograd
carries the factors through functional ops, attention, branches and reused modules.

Seeds are pushed back by ``torch.autograd.grad(..., is_grads_batched=True)`` (vmap over the backward
pass), in chunks, with a per-seed loop where an op has no batching rule.

On entry: the MHA fast path is switched off and SDPA runs its math kernel (both differentiable);
every buffer (BatchNorm running statistics) is saved. On exit, also after an exception, every hook is
removed and the buffers and kernel settings are restored: the model is never modified.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from curvlab.collector.adapters import ADAPTERS, LayerAdapter
from curvlab.collector.layers import LayerPlan, ModelLayers, plan_layers
from curvlab.collector.use_watch import UseWatch
from curvlab.guards import check_backward_hooks

__all__ = ["Collector", "LayerCalls"]

#: seeds pushed back per vectorised backward pass
CHUNK = 256


@dataclass(frozen=True)
class RecordedOutput:
    """One call's output: its gradient edge and its shape (the values are never needed)."""

    edge: GradientEdge
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, tensor: torch.Tensor) -> RecordedOutput:
        return cls(get_gradient_edge(tensor), tensor.shape, tensor.dtype, tensor.device)

    def numel(self) -> int:
        return self.shape.numel()

    def zeros(self, lead: int) -> torch.Tensor:
        """[lead, *shape] zeros: the factor at a call the seeds do not reach."""
        return torch.zeros(lead, *self.shape, dtype=self.dtype, device=self.device)


@dataclass
class LayerCalls:
    """The recorded calls of one adapted layer in one forward pass.

    The normal form X is built on access from the recorded call arguments (a convolution's unfolded
    patches are S·k times its input: only one layer's exist at a time). An argument modified in place
    after the call (its version counter moved) is an error, never a silently different X.
    """

    plan: LayerPlan
    args: list[tuple] = field(default_factory=list)  # (args, kwargs, versions) per call
    outputs: list[RecordedOutput] = field(default_factory=list)  # per call

    @property
    def inputs(self) -> list[torch.Tensor]:
        """X per call, [N, S_c, I]."""
        out = []
        for (args, kwargs, versions), output in zip(self.args, self.outputs, strict=True):
            now = [a._version if isinstance(a, torch.Tensor) else None for a in args]
            if now != versions:
                from curvlab.errors import UnsupportedModuleError  # noqa: PLC0415

                raise UnsupportedModuleError(
                    f"the input of layer {self.plan.name!r} was modified in place after the layer ran; "
                    "clone it before the in-place operation"
                )
            out.append(self.plan.adapter.inputs(self.plan.module, args, kwargs, output))
        return out

    @property
    def X(self) -> torch.Tensor:
        """[N, S, I], the calls' positions concatenated."""
        inputs = self.inputs
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)


@contextlib.contextmanager
def _exact_kernels():
    """No MHA fast path, math SDPA (both have the derivatives the collector needs); restored afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


class Collector:
    """Record adapted layers' normal forms and push factor seeds back through the real model.

    Args:
        model: any ``nn.Module`` taking one input tensor; not modified.
        adapters: the layer adapters (default :data:`curvlab.collector.adapters.ADAPTERS`).
        layers: a precomputed :func:`~curvlab.collector.layers.plan_layers` result.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> with Collector(net) as col:
        ...     out = col.forward(x)
        ...     G = col.columns(out, torch.randn(5, 2, 2, dtype=torch.float64))
        ...     X = col.calls["0"].X
        >>> G["0"].shape, X.shape              # [N, K, S, O], [N, S, I]
        (torch.Size([5, 2, 1, 4]), torch.Size([5, 1, 3]))
        >>> len(net[0]._forward_hooks)
        0
    """

    def __init__(self, model: nn.Module, adapters: Sequence[LayerAdapter] = ADAPTERS,
                 layers: ModelLayers | None = None):
        self.model = model
        self.layers = layers if layers is not None else plan_layers(model, adapters)
        self.calls: dict[str, LayerCalls] = {}
        self._handles: list = []
        self._stack: contextlib.ExitStack | None = None
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._recording = False
        owners, delegates = {}, {}
        for plan in self.layers.adapted():
            for n in plan.names:
                owners[id(getattr(plan.module, n))] = plan.name
            delegates[plan.name] = {f"{plan.name}.{child}" for child in plan.adapter.delegates(plan.module)}
        self._watch = UseWatch(owners, delegates)

    @property
    def used_outside(self) -> dict[str, str]:
        """{layer: torch function} for adapted layers whose parameters a function got outside the layer's call."""
        return dict(self._watch.outside)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Collector:
        if self._stack is not None:
            raise RuntimeError("Collector is not re-entrant")
        check_backward_hooks(self.model, "curvlab's collector")  # they would run once per vectorised seed
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(_exact_kernels())
            self._buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
            for plan in self.layers.adapted():
                self._handles.append(plan.module.register_forward_pre_hook(self._enter_hook(plan)))
                self._handles.append(plan.module.register_forward_hook(self._hook(plan), with_kwargs=True))
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        with torch.no_grad():
            for buffer, saved in self._buffers:
                buffer.copy_(saved)
        self._buffers = []
        self.calls = {}
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def _enter_hook(self, plan: LayerPlan):
        def pre_hook(module, args):
            if self._recording:
                self._watch.stack.append(plan.name)

        return pre_hook

    def _hook(self, plan: LayerPlan):
        def hook(module, args, kwargs, output):
            if not self._recording:
                return None
            watch = self._watch
            recorded = output
            if plan.adapter.replays:
                output, recorded = self._replay(plan, module, args, kwargs, output)
            if watch.stack and watch.stack[-1] == plan.name:
                watch.stack.pop()
            if recorded is None:
                return None
            if not isinstance(recorded, torch.Tensor):
                watch.outside.setdefault(plan.name, f"{type(module).__qualname__} returning a non-tensor")
                return None
            if not recorded.requires_grad:  # run under no_grad: no gradient reaches its parameters
                return None
            watch.paused = True
            try:
                calls = self.calls.setdefault(plan.name, LayerCalls(plan))
                detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
                versions = [a._version if isinstance(a, torch.Tensor) else None for a in detached]
                calls.args.append((detached, dict(kwargs), versions))
                calls.outputs.append(RecordedOutput.of(recorded))
            finally:
                watch.paused = False
            return output if plan.adapter.replays else None

        return hook

    def _replay(self, plan: LayerPlan, module, args, kwargs, output):
        """(output, recorded) of a replaying adapter, or (output, None) after flagging the layer and
        its delegates for the exact route (a call it cannot replay, or a replay that differs)."""
        from curvlab.errors import UnsupportedModuleError  # noqa: PLC0415

        delegates = self._watch.delegates.get(plan.name, set())
        try:
            replayed, recorded = plan.adapter.replay(module, args, kwargs, output)
            reason = _mismatch(replayed, output)
        except UnsupportedModuleError as error:
            reason = str(error)
        if reason is None:
            return replayed, recorded
        for name in (plan.name, *sorted(delegates)):
            self._watch.outside.setdefault(name, f"{plan.adapter.describe(module)}'s replay: {reason}")
        return output, None

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``model(inputs)`` with grad enabled, recording every adapted layer's calls."""
        if self._stack is None:
            raise RuntimeError("use the Collector as a context manager")
        self.calls = {}
        self._watch.stack.clear()
        self._recording = True
        try:
            with torch.enable_grad(), self._watch:
                outputs = self.model(inputs)
        finally:
            self._recording = False
        if not isinstance(outputs, torch.Tensor):
            from curvlab.errors import UnsupportedModuleError  # noqa: PLC0415

            raise UnsupportedModuleError(
                f"{type(self.model).__qualname__} returned a {type(outputs).__qualname__}, not a tensor"
            )
        return outputs

    # ------------------------------------------------------------------ backward
    def columns(self, outputs: torch.Tensor, seeds: torch.Tensor,
                layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """G [N, K, S, O] per recorded layer (or per one of ``layers``) for seeds [N, K, *outputs.shape[1:]]."""
        names = list(self.calls) if layers is None else list(layers)
        edges = [t.edge for name in names for t in self.calls[name].outputs]
        batched = seeds.transpose(0, 1)  # [K, N, ...]
        grads = batched_grad(outputs, edges, batched)
        out, i = {}, 0
        for name in names:
            calls = self.calls[name]
            parts = []
            for t in calls.outputs:
                g = grads[i] if grads[i] is not None else t.zeros(batched.shape[0])
                parts.append(calls.plan.adapter.to_normal(calls.plan.module, g, 1))  # [K, N, S, O]
                i += 1
            G = parts[0] if len(parts) == 1 else torch.cat(parts, 2)
            out[name] = G.transpose(0, 1)
        return out

    def rows(self, outputs: torch.Tensor, seeds: torch.Tensor, layers: Sequence[str],
             params: Sequence[torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Per-row factors for row seeds [R, *outputs.shape] (each row one sample's column, zero elsewhere).

        Returns ({layer: G [R, N, S, O]} for ``layers``, [R, *p.shape] gradients of ``params``).
        """
        edges = [t.edge for name in layers for t in self.calls[name].outputs]
        grads = batched_grad(outputs, edges + list(params), seeds)
        out, i = {}, 0
        for name in layers:
            calls = self.calls[name]
            parts = []
            for t in calls.outputs:
                g = grads[i] if grads[i] is not None else t.zeros(seeds.shape[0])
                parts.append(calls.plan.adapter.to_normal(calls.plan.module, g, 1))  # [R, N, S, O]
                i += 1
            out[name] = parts[0] if len(parts) == 1 else torch.cat(parts, 2)
        param_grads = [g if g is not None else torch.zeros(seeds.shape[0], *p.shape, dtype=p.dtype)
                       for g, p in zip(grads[i:], params, strict=True)]
        return out, param_grads


def _mismatch(replayed, output) -> str | None:
    """Why a replayed output differs from the module's (``None``: it is the same, to roundoff)."""
    pairs = list(zip(replayed, output, strict=True)) if isinstance(output, tuple) else [(replayed, output)]
    for new, old in pairs:
        if (new is None) != (old is None):
            return "it returns a different structure"
        if old is None:
            continue
        tol = 1e-4 if old.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
        if new.shape != old.shape or not torch.allclose(new.detach(), old.detach(), rtol=tol, atol=tol):
            return "the recomputed output differs from the module's"
    return None


def batched_grad(outputs: torch.Tensor, inputs: Sequence[torch.Tensor | GradientEdge], seeds: torch.Tensor,
                 chunk: int = CHUNK) -> list[torch.Tensor | None]:
    """[B, *input.shape] gradients of ⟨seeds_b, outputs⟩ w.r.t. each input (``None`` where unused).

    Vectorised (``is_grads_batched``) in chunks of ``chunk`` seeds; a per-seed loop where torch has
    no batching rule for an op of the backward pass.
    """
    if not inputs:
        return []
    results: list[list[torch.Tensor | None]] = [[] for _ in inputs]
    for start in range(0, seeds.shape[0], chunk):
        part = seeds[start:start + chunk]
        if part.shape[0] == 1:  # one seed: a plain backward pass (vmap only adds overhead)
            grads = torch.autograd.grad(outputs, inputs, part[0], retain_graph=True, allow_unused=True)
            for j, g in enumerate(grads):
                results[j].append(None if g is None else g.unsqueeze(0))
            continue
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                grads = torch.autograd.grad(outputs, inputs, part, retain_graph=True, allow_unused=True,
                                            is_grads_batched=True)
        except RuntimeError:
            singles = [torch.autograd.grad(outputs, inputs, s, retain_graph=True, allow_unused=True) for s in part]
            grads = tuple(
                None if singles[0][j] is None else torch.stack([s[j] for s in singles]) for j in range(len(inputs))
            )
        for j, g in enumerate(grads):
            results[j].append(g)
    return [None if r[0] is None else (r[0] if len(r) == 1 else torch.cat(r)) for r in results]
