"""``grouped_newton_summary``: gradient, Hessian (or GGN) and order-3 summaries over parameter groups.

Given a direction u ∈ R^P and a partition of the parameters into S groups, let U ∈ R^{P×S} hold u
restricted to group s in column s, and φ(η) = L(θ + Uη). The GroupedNewton summaries are

    ḡ = ∇φ(0) = Uᵀg,  ḡ_s = Σ_{p∈s} g_p u_p                                [S]
    H̄ = ∇²φ(0) = UᵀHU, H̄_ij = u_iᵀ H_ij u_j  (H: Hessian, or the GGN)      [S, S]
    D³_s = ∂³φ/∂η_s³(0) = Σ_{a,b,c∈s} ∂³L/∂θ_a∂θ_b∂θ_c u_a u_b u_c         [S]

(Wolinski, *GroupedNewton*). With the trivial partition H̄ is the scalar uᵀHu (Cauchy's steepest
descent); with ``"entries"`` and u = 1, H̄ = H (Newton's method).

Routes (:class:`SummaryMethod`), all exact: ``layered`` (no weight-gradient products: on an
``nn.Sequential`` of affine and parameter-free layers forward tangents + one adjoint pass, the default
there; on any other model the dense layers' directions injected at their outputs by forward hooks,
:mod:`curvlab.summary.layer_hooks`),
``double_backward`` (S double-backward HVPs as GroupedNewton's code; the reference, and the default
elsewhere) and ``functional`` (torch.func forward-over-reverse vmapped over the S directions; any
model, but every direction is propagated densely, so it is the slowest on wide networks).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call, grad

from curvlab.autodiff import exact_kernels, stateless_copy
from curvlab.data import Data, iter_batches
from curvlab.guards import check_dense_allocation, check_finite
from curvlab.losses import LossAdapter, loss_adapter
from curvlab.partition import Partition, PartitionSpec, trainable_parameters
from curvlab.provenance import provenance
from curvlab.summary.double_backward import double_backward_terms
from curvlab.summary.functional import functional_terms
from curvlab.summary.layer_hooks import HookedRoute
from curvlab.summary.layered import generic_stages, layered_terms, unsupported_reason
from curvlab.summary.problem import SummaryCurvature, SummaryMethod, SummaryProblem, check_model
from curvlab.summary.result import GroupedNewtonSummary
from curvlab.summary.terms import TermsSum

__all__ = ["gradient_direction", "grouped_newton_summary"]

_ROUTES = {
    SummaryMethod.FUNCTIONAL: functional_terms,
    SummaryMethod.DOUBLE_BACKWARD: double_backward_terms,
}


def _route(method: SummaryMethod, problem: SummaryProblem):
    """``(batch → BatchTerms, form)``: the layered route's stage form where the model is a chain it takes,
    else its hook form (state shared across batches); the other routes as they are."""
    if method is not SummaryMethod.LAYERED:
        return (lambda inputs, targets: _ROUTES[method](problem, inputs, targets)), None
    if unsupported_reason(problem) is None:
        return (lambda inputs, targets: layered_terms(problem, inputs, targets)), "stages"
    return HookedRoute(problem), "hooks"


def grouped_newton_summary(
    model: nn.Module,
    loss_fn: nn.Module | LossAdapter,
    data: Data,
    *,
    direction: torch.Tensor | Iterable[torch.Tensor] | None = None,
    partition: PartitionSpec | Partition = "canonical",
    curvature: SummaryCurvature | str = "hessian",
    order: int = 3,
    method: SummaryMethod | str = "auto",
) -> GroupedNewtonSummary:
    """ḡ [S], H̄ [S, S] and (order 3) D³ [S] of φ(η) = L(θ + Uη) at η = 0 (see the module docstring).

    Args:
        model: the network; its trainable parameters (``requires_grad``) define θ. Not modified.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (reduction mean or sum).
        data: one ``(inputs, targets)`` batch or an iterable of batches, combined exactly as one batch.
            Floating inputs/targets are cast to the parameters' dtype and device.
        direction: u, a flat [P] tensor in the reference ordering or a list of tensors like
            ``model.parameters()``; default: the gradient of L on ``data``.
        partition: a kind of :class:`curvlab.partition.Partition` (``"canonical"``, ``"layer"``,
            ``"trivial"``, ``"blocks-k"``, ``"entries"``), a mapping, or a ``Partition``.
        curvature: ``"hessian"`` or ``"ggn"`` (H̄ = (JU)ᵀ H_out (JU) / Z). ḡ and D³ are always the
            loss's own derivatives.
        order: 2 (ḡ, H̄) or 3 (also D³).
        method: ``"auto"``, ``"layered"``, ``"functional"`` or ``"double_backward"`` (:class:`SummaryMethod`).

    Returns:
        :class:`GroupedNewtonSummary` in the parameters' dtype, with provenance attributes.

    Raises:
        UnsupportedModuleError: a model the summary cannot evaluate (train-mode dropout, mixed dtypes,
            backward hooks; the message names the module).
        ValueError: a bad ``order``, ``curvature``, ``method`` or ``direction`` shape.
        MemoryBudgetError: H̄ [S, S] would exceed the memory budget (checked before any pass).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
        >>> s = grouped_newton_summary(model, nn.CrossEntropyLoss(), (x, y))
        >>> s.group_names, tuple(s.hbar.shape), tuple(s.d3.shape)
        (('0.weight', '0.bias', '2.weight', '2.bias'), (4, 4), (4,))
        >>> ref = grouped_newton_summary(model, nn.CrossEntropyLoss(), (x, y), method="double_backward")
        >>> torch.allclose(s.hbar, ref.hbar) and torch.allclose(s.d3, ref.d3)
        True
    """
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order!r}")
    curvature, method = SummaryCurvature(curvature), SummaryMethod(method)
    adapter = loss_adapter(loss_fn)
    named = trainable_parameters(model)
    check_model(model, named)
    part = Partition.from_model(model, partition)
    if part.params != Partition.describe(model):
        raise ValueError("the given Partition was built for another model: its parameters differ")
    ref = named[0][1]
    s = part.num_groups  # H̄ is [S, S] (and each route keeps S tangents): refused before any pass
    check_dense_allocation((s, s), ref.dtype, f"hbar over the S={s} groups of partition {part.kind!r}")
    batches: Iterable = iter_batches(data)
    given = direction is not None
    if not given:
        batches = [_cast(b, ref) for b in batches]
        direction = gradient_direction(model, adapter, batches)
    problem = SummaryProblem.build(model, adapter, part, direction, curvature, order)
    if method is SummaryMethod.AUTO:  # the measured fastest (benchmarks/summary.py)
        layered = unsupported_reason(problem) is None and not (order == 3 and generic_stages(problem))
        method = SummaryMethod.LAYERED if layered else SummaryMethod.DOUBLE_BACKWARD
    route, form = _route(method, problem)
    acc = TermsSum(adapter.reduction)
    samples = 0
    for batch in batches:
        inputs, targets = _cast(batch, ref)
        acc.add(route(inputs, targets))
        samples += inputs.shape[0]
    gbar, hbar, d3 = acc.result()
    check_finite(gbar, "gbar")
    check_finite(hbar, "hbar")
    if d3 is not None:
        check_finite(d3, "d3")
    config = {
        "partition": part.kind, "curvature": curvature.value, "order": order, "method": method.value,
        "direction": "given" if given else "gradient", "batches": acc.batches,
    }
    if form is not None:
        config["layered_form"] = form
    if isinstance(route, HookedRoute) and route.demoted:
        config["directly_perturbed"] = dict(route.demoted)
    attrs = provenance(model=model, loss_fn=adapter.loss_fn, batch_size=samples, dtype=ref.dtype, config=config)
    return GroupedNewtonSummary(gbar, hbar, d3, part, curvature, attrs)


def gradient_direction(model: nn.Module, adapter: LossAdapter, batches: Iterable) -> list[torch.Tensor]:
    """∇L over all batches (combined exactly), one tensor per trainable parameter.

    Example:
        >>> model = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad(): _ = model.weight.fill_(1.0)
        >>> x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]])
        >>> gradient_direction(model, loss_adapter(nn.MSELoss()), [(x, y)])[0]   # 2 (wᵀx − y) x
        tensor([[ 6., 12.]])
    """
    named = trainable_parameters(model)
    params = {n: p.detach() for n, p in named}

    function = stateless_copy(model)  # the batch function: no buffer updates

    def forward(p, inputs):
        with exact_kernels():
            return functional_call(function, p, (inputs,))

    def loss(p, inputs, targets):
        return adapter.loss_fn(forward(p, inputs), targets)

    total, normalizer = None, 0
    for inputs, targets in batches:
        inputs, targets = _cast((inputs, targets), named[0][1])
        with torch.no_grad():
            outputs = forward(params, inputs)
            adapter.check(outputs, targets)  # before the loss sees the targets
            z = adapter.normalizer(outputs)
        g = grad(loss)(params, inputs, targets)
        w = float(z) if adapter.reduction == "mean" else 1.0
        g = [w * g[n] for n, _ in named]
        total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
        normalizer += z
    if total is None:
        raise ValueError("data holds no batches")
    scale = 1.0 / normalizer if adapter.reduction == "mean" else 1.0
    return [t * scale for t in total]


def _cast(batch, like: torch.Tensor):
    inputs, targets = batch
    inputs = inputs.to(like.device, like.dtype) if inputs.is_floating_point() else inputs.to(like.device)
    targets = targets.to(like.device, like.dtype) if targets.is_floating_point() else targets.to(like.device)
    return inputs, targets
