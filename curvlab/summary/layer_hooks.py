"""The layered route on any model: dense layers' directions injected at their outputs, derivatives in η.

A dense layer (``nn.Linear`` on [N, *, I], convolutions with any groups, ``nn.Embedding``: every
collector adapter of the "dense" kind whose call is linear in its parameters) changes each call's
output exactly when its weight moves along u_W:

    y(x; W + η_g u_W) = y(x; W) + η_g A(x, u_W),

where x is the call's live input (itself a function of η) and A(x, u_W) is the call with the weight
set to u_W and no bias (:meth:`LayerAdapter.parameter_output`, e.g. ``F.linear(x, u_W)``). A forward
hook adds η_g A(x, u_W), so the weight itself is held fixed and ∂/∂η_g needs no weight-gradient
product. Where that pays: for a layer whose input is η-free (the first layer: no input gradient
through A(·, u_W) either) and for ``nn.Linear``. A convolution deeper in the network would pay the
saved weight gradient again as an input gradient through A(·, u_W), so on the first batch it is moved
to direct perturbation, and the forward is redone once. Every other trainable parameter (biases,
norms, attention, recurrent cells, modules without an adapter, weights that a torch function receives
outside their layer's call, see :class:`~curvlab.collector.use_watch.UseWatch`) enters as
θ_p + u_p η_{g(p)} through ``functional_call``. φ(η) = L(θ + Uη) is the same function of η either way,
so all its derivatives are exact.

Then by plain autograd (exact for every op, in-place ones included; no forward-mode transform):

* ḡ = ∂φ/∂η: one backward pass (``create_graph``) that needs the layers' input gradients and the
  dots ⟨∂L/∂y, y(x; u_p)⟩, but no weight gradient;
* H̄ row i = ∂ḡ_i/∂η_j for j ≥ i, mirrored: η is S scalar leaves, so each row's double backward
  visits only the graph between group i and the loss (GroupedNewton's pruning, without its
  weight-gradient products);
* GGN: the output tangents J u_s = ∂⟨w, J u_s⟩/∂w by the double-vjp trick, each from group s on,
  then H̄ = (JU)ᵀ H_out (JU) / Z with the loss adapter's output-Hessian products;
* D³_i = ∂H̄_ii/∂η_i, one more backward pass within row i's graph.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from curvlab.collector.layers import LayerPlan, plan_layers
from curvlab.collector.use_watch import UseWatch
from curvlab.summary.problem import SummaryCurvature, SummaryProblem
from curvlab.summary.terms import BatchTerms

__all__ = ["HookedRoute"]


@dataclass(frozen=True)
class _Layer:
    """An injected layer: its plan and its weight's problem index."""

    plan: LayerPlan
    weight: int


class HookedRoute:
    """The per-batch terms of the layered route on any model (see the module docstring).

    Layers found to use their parameters outside their own call are moved to direct perturbation
    (``demoted``, with the reason) for this and every later batch.

    Example:
        >>> from torch import nn
        >>> from curvlab.losses import loss_adapter
        >>> from curvlab.partition import Partition
        >>> from curvlab.summary.problem import SummaryCurvature, SummaryProblem
        >>> from curvlab.summary.double_backward import double_backward_terms
        >>> class Net(nn.Module):                                 # functional glue: not a chain
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        ...     def forward(self, x):
        ...         return self.b(torch.tanh(self.a(x)) + x.sum(1, keepdim=True))
        >>> model = Net().double()
        >>> part = Partition.from_model(model)
        >>> u = torch.linspace(-1, 1, part.num_params, dtype=torch.float64)
        >>> problem = SummaryProblem.build(model, loss_adapter(nn.MSELoss()), part, u, SummaryCurvature.HESSIAN, 3)
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
        >>> fast, ref = HookedRoute(problem)(x, y), double_backward_terms(problem, x, y)
        >>> torch.allclose(fast.hbar, ref.hbar) and torch.allclose(fast.d3, ref.d3)
        True
    """

    def __init__(self, problem: SummaryProblem):
        self.problem = problem
        function = problem.function or problem.model
        index = {name: k for k, name in enumerate(problem.names)}
        self.layers: dict[str, _Layer] = {}
        self.demoted: dict[str, str] = {}
        self.first_order = problem.curvature is SummaryCurvature.GGN and problem.order == 2
        for plan in plan_layers(function).layers:
            if plan.adapter is None or plan.adapter.kind != "dense" or not plan.has_weight:
                continue
            if not plan.adapter.linear_in_parameters(plan.module):
                self.demoted[plan.name] = f"{plan.adapter.describe(plan.module)} is not linear in its parameters"
                continue
            k = index[f"{plan.name}.{plan.adapter.weight_name}"]
            if isinstance(problem.groups[k], int):
                self.layers[plan.name] = _Layer(plan, k)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> BatchTerms:
        problem = self.problem
        adapter, s = problem.adapter, problem.num_groups
        zero = torch.zeros((), dtype=problem.dtype, device=problem.params[0].device)
        leaves = [zero.clone().requires_grad_(True) for _ in range(s)]
        with torch.enable_grad():
            out = self._forward(inputs, leaves)
            adapter.check(out.detach(), targets)
            z = adapter.normalizer(out)
            loss = adapter(out, targets)
            gbar = _grads(loss, leaves, create_graph=True)
            hbar = zero.new_zeros(s, s)
            d3 = zero.new_zeros(s) if problem.order == 3 else None
            if problem.curvature is SummaryCurvature.GGN:
                hbar = self._ggn(out, leaves, z)
            for i in range(s):
                if problem.curvature is SummaryCurvature.HESSIAN:
                    row = torch.stack(_grads(gbar[i], leaves[i:], create_graph=False))
                    hbar[i, i:] = row
                    hbar[i:, i] = row
                if d3 is not None:  # ∂³φ/∂η_i³ = ∂H̄_ii/∂η_i, within group i's part of the graph
                    h_ii = _grads(gbar[i], leaves[i:i + 1], create_graph=True)[0]
                    d3[i] = _grads(h_ii, leaves[i:i + 1], create_graph=False)[0]
        return BatchTerms(torch.stack(gbar).detach(), hbar, d3, z)

    # ------------------------------------------------------------------ forward
    def _forward(self, inputs: torch.Tensor, leaves: list[torch.Tensor]) -> torch.Tensor:
        """The model's output as a function of η (hooks on the injected layers, the rest perturbed);
        redone without any layer the watch finds used outside its call."""
        while True:
            watch = UseWatch(
                {id(self.problem.params[layer.weight]): name for name, layer in self.layers.items()}, {}
            )
            costly: set[str] = set()
            out = self._evaluate(inputs, leaves, watch, costly)
            if not watch.outside and not costly:
                return out
            for name, func in watch.outside.items():
                self.demoted[name] = f"its parameters are used outside its call (by {func})"
                del self.layers[name]
            for name in costly - set(watch.outside):
                self.demoted[name] = "its input depends on η (the weight gradient is cheaper than its input's)"
                del self.layers[name]

    def _evaluate(self, inputs: torch.Tensor, leaves: list[torch.Tensor], watch: UseWatch,
                  costly: set[str]) -> torch.Tensor:
        problem = self.problem
        eta = torch.stack(leaves)
        injected = {layer.weight for layer in self.layers.values()}
        params = {}
        for k, (name, p, u, g) in enumerate(zip(problem.names, problem.params, problem.directions, problem.groups,
                                                strict=True)):
            if k in injected:
                params[name] = p
            else:  # a scalar leaf per group keeps each row's double backward to its own part of the graph
                params[name] = p + u * (leaves[g] if isinstance(g, int) else eta[g])
        with contextlib.ExitStack() as stack:
            for name, layer in self.layers.items():
                module = layer.plan.module
                stack.callback(module.register_forward_pre_hook(_enter(watch, name)).remove)
                stack.callback(module.register_forward_hook(_inject(watch, name, layer, problem, leaves, self.first_order, costly),
                                                            with_kwargs=True).remove)
            with watch:
                return problem.call(params, inputs)

    # ------------------------------------------------------------------ GGN
    def _ggn(self, out: torch.Tensor, leaves: list[torch.Tensor], z: int) -> torch.Tensor:
        """(JU)ᵀ H_out (JU) / Z with J u_s = ∂⟨w, J u_s⟩/∂w (double vjp), [S, S]."""
        w = torch.zeros_like(out, requires_grad=True)
        pulled = _grads(out, leaves, create_graph=True, seed=w)
        tangents = torch.stack([_grads(p, [w], create_graph=False)[0] for p in pulled]).flatten(2)  # [S, N, C]
        products = torch.stack([self.problem.adapter.output_hessian_product(out.detach(), t) for t in tangents])
        return torch.einsum("snc,tnc->st", tangents, products) / z


def _grads(value: torch.Tensor, inputs: list[torch.Tensor], create_graph: bool,
           seed: torch.Tensor | None = None) -> list[torch.Tensor]:
    """∂value/∂inputs with zeros where ``value`` does not depend on an input."""
    if not value.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    grads = torch.autograd.grad(value, inputs, seed, retain_graph=True, create_graph=create_graph,
                                allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]


def _enter(watch: UseWatch, name: str):
    def pre_hook(module, args):
        if not watch.paused:
            watch.stack.append(name)

    return pre_hook


def _inject(watch: UseWatch, name: str, layer: _Layer, problem: SummaryProblem, leaves, first_order: bool,
            costly: set[str]):
    """The forward hook adding η_g A(x, u_W) to the call's output (x: the call's input)."""
    adapter, module = layer.plan.adapter, layer.plan.module
    attr, g, u = adapter.weight_name, problem.groups[layer.weight], problem.directions[layer.weight]

    def hook(module_, args, kwargs, output):
        if watch.paused:  # the hook's own calls of the module (parameter_output's default)
            return None
        if watch.stack and watch.stack[-1] == name:
            watch.stack.pop()
        if not isinstance(output, torch.Tensor):
            watch.outside.setdefault(name, f"{type(module).__qualname__} returning a non-tensor")
            return None
        if first_order:  # ∂y/∂η at η = 0 does not depend on the injected term's input
            args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        elif not isinstance(module, nn.Linear) and any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values())):
            costly.add(name)
        watch.paused = True
        try:  # the product A(x, u) is η-free, so ∂/∂η needs no weight gradient
            return torch.addcmul(output, leaves[g], adapter.parameter_output(module, args, kwargs, output, attr, u))
        finally:
            watch.paused = False

    return hook
