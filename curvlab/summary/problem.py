"""The normalised inputs of a grouped Newton summary: parameters, direction U, groups, loss and options.

U is the [P, S] block matrix whose column s holds the direction u restricted to group s (zeros
elsewhere); it is never formed. Per trainable parameter p we keep u_p (shaped like p) and the group
of each of its entries: one group index when p lies in a single group (every kind except
``"entries"`` and partial custom groups), else a LongTensor shaped like p. Then

    θ + Uη  =  (θ_p + u_p ⊙ η[group_p])_p,        η ∈ R^S.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from curvlab.autodiff import exact_kernels, random_modules, stateless_copy
from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_backward_hooks
from curvlab.losses import LossAdapter
from curvlab.partition import Partition, trainable_parameters

__all__ = ["SummaryCurvature", "SummaryMethod", "SummaryProblem"]


class SummaryCurvature(enum.Enum):
    """Which second-order matrix H̄ summarises."""

    HESSIAN = "hessian"  #: H̄ = Uᵀ ∇²L U
    GGN = "ggn"  #: H̄ = Uᵀ G U with G = (1/Z) Σ_n J_nᵀ H_n J_n, i.e. (JU)ᵀ H_out (JU)


class SummaryMethod(enum.Enum):
    """How the summary is computed. All are exact; they differ in cost and in the models they take.

    Cost on a layered network (c_l: one product with layer l's weight over the batch): ``layered``
    needs the forward pass, A(x, u_W) per layer and the active groups' tangents through later layers,
    plus one adjoint pass, and no weight-gradient product; on an MLP its first (widest) layer costs
    2 c_1 against 4 c_1 for ``double_backward`` (one backward with ``create_graph``, then S double
    backward passes, each pruned to the groups j ≥ i). ``functional`` costs about S batched
    Hessian-vector products, every direction propagated densely (slowest on wide layers, but generic).
    Order 3 adds per group the Taylor jets (``layered``), S nested third-order ``jvp`` (``functional``)
    or two more backward passes per group (``double_backward``).
    """

    #: ``layered`` on the chains its stage form takes (for order 3: with closed-form rules for every
    #: parameter-free stage), else ``double_backward`` (as fast as the hook form on
    #: convolutional networks, see ``benchmarks/summary.py``, and cheaper than ``functional``)
    AUTO = "auto"
    #: no weight-gradient products: forward tangents and one adjoint pass through an nn.Sequential (cheapest),
    #: or on any other model the directions injected at the layers' outputs (:mod:`curvlab.summary.layer_hooks`)
    LAYERED = "layered"
    FUNCTIONAL = "functional"  #: torch.func forward-over-reverse in η, vmapped over S (any model)
    DOUBLE_BACKWARD = "double_backward"  #: S double-backward HVPs, as GroupedNewton's code (reference)


@dataclass(frozen=True)
class SummaryProblem:
    """Everything the routes need, detached from the user's model.

    Attributes:
        model: the user's model (never modified; evaluated through ``functional_call``).
        adapter: the loss adapter.
        partition: the S groups.
        names: trainable parameter names, reference ordering.
        params: detached trainable parameters, reference ordering.
        directions: u_p per parameter, same dtype as the parameters.
        groups: per parameter, its group index (int) or a LongTensor of group indices shaped like p.
        curvature: Hessian or GGN.
        order: 2 (ḡ, H̄) or 3 (also the order-3 diagonal D³).
    """

    model: nn.Module
    adapter: LossAdapter
    partition: Partition
    names: tuple[str, ...]
    params: tuple[torch.Tensor, ...]
    directions: tuple[torch.Tensor, ...]
    groups: tuple[int | torch.Tensor, ...]
    curvature: SummaryCurvature
    order: int
    function: nn.Module | None = None  # the batch function (curvlab.autodiff.stateless_copy)

    def call(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs with ``params`` as its trainable parameters: the batch function (train-mode
        BatchNorm through batch statistics, no buffer updates) under exact kernels (for order 3 also
        elementary normalisation layers, whose third derivatives torch's kernels get wrong)."""
        with exact_kernels(third_order=self.order == 3):
            return functional_call(self.function or self.model, params, (inputs,))

    @property
    def num_groups(self) -> int:
        """S."""
        return self.partition.num_groups

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def perturbed(self, eta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: θ_p + u_p ⊙ η[group_p]}`` for η [S] (differentiable in η).

        Example:
            >>> from torch import nn
            >>> from curvlab.losses import loss_adapter
            >>> model = nn.Linear(1, 1, bias=False)
            >>> problem = SummaryProblem.build(model, loss_adapter(nn.MSELoss()), Partition.from_model(model),
            ...                                torch.tensor([2.0]), SummaryCurvature.HESSIAN, 2)
            >>> torch.equal(problem.perturbed(torch.tensor([0.5]))["weight"], model.weight.detach() + 1.0)
            True
        """
        out = {}
        for name, p, u, g in zip(self.names, self.params, self.directions, self.groups, strict=True):
            out[name] = p + u * eta[g]
        return out

    @classmethod
    def build(
        cls,
        model: nn.Module,
        adapter: LossAdapter,
        partition: Partition,
        direction: torch.Tensor | Iterable[torch.Tensor],
        curvature: SummaryCurvature,
        order: int,
    ) -> SummaryProblem:
        named = trainable_parameters(model)
        check_model(model, named)
        params = tuple(p.detach() for _, p in named)
        directions = split_direction(direction, model, params, partition)
        groups = _parameter_groups(partition, params)
        return cls(
            model, adapter, partition, tuple(n for n, _ in named), params, directions, tuple(groups),
            curvature, order, stateless_copy(model),
        )


def _parameter_groups(partition: Partition, params: Sequence[torch.Tensor]) -> list[int | torch.Tensor]:
    """Per parameter: its group index if one group holds all of it, else group indices shaped like it."""
    whole: dict[str, int] = {}
    for s, group in enumerate(partition.groups):
        if group.size == sum(info.numel for info in group.params):  # whole tensors only
            whole.update((info.name, s) for info in group.params)
    group_ids = None
    out: list[int | torch.Tensor] = []
    for info, p in zip(partition.params, params, strict=True):
        if info.name in whole:
            out.append(whole[info.name])
            continue
        group_ids = partition.group_ids() if group_ids is None else group_ids
        out.append(group_ids[info.slice].reshape(p.shape).to(p.device))
    return out


def check_model(model: nn.Module, named: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Refuse models the summary cannot evaluate faithfully (naming the culprit).

    Train-mode BatchNorm is fine (the summaries are those of the batch function); train-mode dropout
    makes the model a random function and is refused.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
        >>> check_model(model, trainable_parameters(model))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        curvlab.errors.UnsupportedModuleError: 1 (Dropout) in training mode: ...
    """
    if not named:
        raise UnsupportedModuleError(f"{type(model).__qualname__} has no trainable parameters")
    kinds = {(p.dtype, p.device) for _, p in named}
    if len(kinds) > 1:
        raise UnsupportedModuleError(
            f"{type(model).__qualname__}: trainable parameters must share one dtype and device, got "
            + ", ".join(f"{n}: {p.dtype}/{p.device}" for n, p in named)
        )
    if not named[0][1].is_floating_point():
        raise UnsupportedModuleError(f"{type(model).__qualname__}: parameters must be floating point")
    check_backward_hooks(model, "grouped_newton_summary")
    random = random_modules(model)
    if random:
        raise UnsupportedModuleError(
            f"{', '.join(random)} in training mode: the model is a random function (a new dropout mask "
            "on every call), which has no curvature. Call model.eval(), or set p=0."
        )


def split_direction(
    direction: torch.Tensor | Iterable[torch.Tensor],
    model: nn.Module,
    params: Sequence[torch.Tensor],
    partition: Partition,
) -> tuple[torch.Tensor, ...]:
    """u as one tensor per trainable parameter, from a flat [P] vector or a list like ``parameters()``.

    A list may hold one tensor per trainable parameter, or one per parameter of ``model.parameters()``
    (frozen ones are then dropped).

    Example:
        >>> model = nn.Linear(2, 1)
        >>> params = [p.detach() for p in model.parameters()]
        >>> [t.tolist() for t in split_direction(torch.arange(3.0), model, params, Partition.from_model(model))]
        [[[0.0, 1.0]], [2.0]]
    """
    dtype, device = params[0].dtype, params[0].device
    if isinstance(direction, torch.Tensor):
        if direction.ndim != 1 or direction.numel() != partition.num_params:
            raise ValueError(
                f"direction must be a flat [P] = [{partition.num_params}] vector in the reference ordering "
                f"or a list of tensors like model.parameters(), got a tensor of shape {tuple(direction.shape)}"
            )
        return tuple(t.detach().to(device, dtype) for t in partition.unflatten(direction))
    tensors = [t.detach() if isinstance(t, torch.Tensor) else t for t in direction]
    if len(tensors) != len(params):
        every = [p for p in model.parameters()]
        if len(tensors) == len(every):
            tensors = [t for t, p in zip(tensors, every, strict=True) if p.requires_grad]
        else:
            raise ValueError(
                f"direction holds {len(tensors)} tensors; expected {len(params)} (one per trainable "
                f"parameter) or {len(every)} (one per model.parameters())"
            )
    out = []
    for i, (t, p, info) in enumerate(zip(tensors, params, partition.params, strict=True)):
        if not isinstance(t, torch.Tensor) or t.shape != p.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__qualname__
            raise ValueError(f"direction[{i}] for parameter {info.name!r} must have shape {tuple(p.shape)}, got {got}")
        out.append(t.to(device, dtype))
    return tuple(out)
