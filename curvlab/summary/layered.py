"""The fast route for layered networks: forward tangents per group and one adjoint pass.

For an ``nn.Sequential`` whose parameterised stages are affine layers (``nn.Linear``, ``nn.Conv1d/2d/3d``:
z = A(x, W) + b with A bilinear) and whose other stages have no trainable parameters, and a partition
into whole tensors, write x_k(η) for the input of stage k at θ + Uη. Then

* **forward**: the tangents ẋ_k^s = ∂x_k/∂η_s are zero until the first stage of group s, and
  ż^s = A(ẋ^s, W) + [W ∈ s] A(x, u_W) + [b ∈ s] u_b at an affine stage, ż^s = Dσ(x) ẋ^s otherwise
  (``jvp``, vmapped over the active groups). Only groups already active are propagated, so the
  expensive first layer costs two products, A(x, W) and A(x, u_W);
* **gradient and GGN**: with λ = ∂L/∂f and H_out = ∂²L/∂f² at the output f, ḡ_s = ⟨λ, ḟ^s⟩ and
  H̄_GGN = (ḟ)ᵀ H_out (ḟ) (loss adapter, scaled by 1/Z);
* **Hessian**: by the second-order adjoint identity, H̄ = H̄_GGN + Σ_k ⟨λ_k, D²F_k[·, ·]⟩ where λ_k is
  the adjoint (backpropagated gradient) at the output of stage k: for an affine stage the only second
  derivative is the bilinear cross term, ⟨λ, A(ẋ^s, u_W)⟩ + ⟨λ, A(ẋ^t, u_W)⟩ for the group t of W, i.e.
  the pullback P = A(·, u_W)ᵀλ dotted with the input tangents; for a parameter-free stage it is
  ⟨λ, D²σ(x)[ẋ^s, ẋ^t]⟩, the forward-over-reverse ``jvp(vjp)`` of the stage dotted with ẋ^t;
* **order 3**: the same forward pass carries the first three Taylor derivatives of every x_k along
  t ↦ θ + t u^{(s)} (affine: z⁽ʲ⁾ = A(x⁽ʲ⁾, W) + j A(x⁽ʲ⁻¹⁾, u_W) + [j = 1] u_b; otherwise three nested
  ``jvp`` of the stage on the Taylor polynomial), and D³_s is the third derivative of the loss.

On the MNIST MLP 784-1024-200-100-10 this needs no product with the first layer's weight gradient,
which the double-backward reference computes several times (see ``benchmarks/summary.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vjp, vmap

from curvlab.summary.problem import SummaryCurvature, SummaryProblem
from curvlab.summary.terms import BatchTerms

__all__ = ["AFFINE_LAYERS", "layered_stages", "layered_terms", "unsupported_reason"]

#: Module types treated as affine stages z = A(x, W) + b.
AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Stage:
    """One stage of the flattened Sequential and its trainable parameters: ``(role, index)`` pairs."""

    module: nn.Module
    own: tuple[tuple[str, int], ...]


def layered_stages(problem: SummaryProblem) -> list[Stage]:
    """The leaves of the (nested) ``nn.Sequential`` with the problem's parameter indices they own."""
    index = {name: k for k, name in enumerate(problem.names)}
    stages: list[Stage] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                walk(child, full + ".")
                continue
            own = tuple(
                (pname.rsplit(".", 1)[-1], index[f"{full}.{pname}"])
                for pname, p in child.named_parameters()
                if f"{full}.{pname}" in index
            )
            stages.append(Stage(child, own))

    walk(problem.model, "")
    return stages


def unsupported_reason(problem: SummaryProblem) -> str | None:
    """Why the layered route cannot take ``problem`` (``None`` if it can)."""
    if not isinstance(problem.model, nn.Sequential):
        return f"the model is a {type(problem.model).__qualname__}, not an nn.Sequential"
    if not all(isinstance(g, int) for g in problem.groups):
        return "a group holds part of a parameter tensor (e.g. the 'entries' partition)"
    for stage in layered_stages(problem):
        roles = {role for role, _ in stage.own}
        if stage.own and not (isinstance(stage.module, AFFINE_LAYERS) and roles <= {"weight", "bias"}):
            return f"stage {type(stage.module).__qualname__} has trainable parameters but is not affine"
    return None


def _linear_part(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A(x, W): the layer without its bias; x may carry extra leading dimensions (folded into N)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    lead = x.shape[: x.ndim - module.weight.ndim + 1]  # conv input is [N, C, *spatial]
    y = module._conv_forward(x.reshape(-1, *x.shape[len(lead):]), weight, None)
    return y.reshape(*lead, *y.shape[1:])


def _bias_shape(module: nn.Module, bias: torch.Tensor) -> torch.Tensor:
    return bias if isinstance(module, nn.Linear) else bias.reshape(-1, *[1] * (module.weight.ndim - 2))


def _taylor3(fn, x: torch.Tensor, jets: torch.Tensor) -> torch.Tensor:
    """The first three derivatives of fn(x + t j₁ + t²/2 j₂ + t³/6 j₃) at t = 0, stacked [3, ...]."""
    t0 = x.new_zeros(())
    one = torch.ones_like(t0)

    def path(t):
        return fn(x + t * jets[0] + (t * t / 2) * jets[1] + (t**3 / 6) * jets[2])

    def first(t):
        return jvp(path, (t,), (one,))[1]

    def second(t):
        return jvp(first, (t,), (one,))

    (y1, y2), (_, y3) = jvp(second, (t0,), (one,))
    return torch.stack([y1, y2, y3])


class _Tangents:
    """The active groups and their tangents (or Taylor jets) [A, K, *x.shape], K = 1 or 3."""

    def __init__(self, orders: int):
        self.orders, self.groups, self.values = orders, [], None

    def push(self, fn, x: torch.Tensor) -> torch.Tensor:
        """Apply a parameter-free stage; returns its output and moves the tangents through it."""
        if self.values is None:
            return fn(x)
        if self.orders == 1:
            y, t = vmap(lambda v: jvp(fn, (x,), (v[0],)), out_dims=(None, 0))(self.values)
            self.values = t.unsqueeze(1)
            return y
        self.values = vmap(lambda v: _taylor3(fn, x, v))(self.values)
        return fn(x)

    def add(self, group: int, order: int, term: torch.Tensor, like: torch.Tensor) -> None:
        """values[group, order] += term, activating ``group`` (with zero tangents) if needed."""
        if group not in self.groups:
            fresh = like.new_zeros((1, self.orders, *like.shape))
            self.values = fresh if self.values is None else torch.cat([self.values, fresh])
            self.groups.append(group)
        self.values[self.groups.index(group), order] += term


def layered_terms(problem: SummaryProblem, inputs: torch.Tensor, targets: torch.Tensor) -> BatchTerms:
    """ḡ_b, H̄_b (and D³_b) of one batch through the layers (see the module docstring)."""
    with torch.no_grad():
        return _layered_terms(problem, inputs, targets)


def _layered_terms(problem: SummaryProblem, inputs: torch.Tensor, targets: torch.Tensor) -> BatchTerms:
    stages = layered_stages(problem)
    tangents = _Tangents(3 if problem.order == 3 else 1)
    saved = []  # per stage: (input, first-order input tangents [A, ...] or None, active groups)
    x = inputs
    for stage in stages:
        first = None if tangents.values is None else tangents.values[:, 0]
        saved.append((x, first, list(tangents.groups)))
        if not stage.own:
            x = tangents.push(stage.module, x)
            continue
        m = stage.module
        params = {role: problem.params[k] for role, k in stage.own}
        weight = params.get("weight", m.weight)
        bias = params.get("bias", m.bias)
        y = _linear_part(m, x, weight)
        if bias is not None:
            y = y + _bias_shape(m, bias)
        previous = tangents.values
        if previous is not None:
            tangents.values = _linear_part(m, previous, weight)
        for role, k in stage.own:
            g, u = problem.groups[k], problem.directions[k]
            if role == "bias":
                tangents.add(g, 0, _bias_shape(m, u), y)
                continue
            tangents.add(g, 0, _linear_part(m, x, u), y)
            if tangents.orders == 3 and previous is not None and g in saved[-1][2]:
                jets = previous[saved[-1][2].index(g)]
                for j in (1, 2):
                    tangents.add(g, j, (j + 1) * _linear_part(m, jets[j - 1], u), y)
        x = y

    out, s = x, problem.num_groups
    adapter = problem.adapter
    adapter.check(out, targets)
    z = adapter.normalizer(out)
    act = torch.tensor(tangents.groups, dtype=torch.long, device=out.device)
    ft = tangents.values[:, 0].flatten(2)  # [A, N, C]
    residual = adapter.output_gradient(out, targets) / z  # λ at the output, [N, C]
    h_out = adapter.output_hessian(out) / z
    sub = torch.einsum("anc,ncd,bnd->ab", ft, h_out, ft)
    if problem.curvature is SummaryCurvature.HESSIAN:
        sub = sub + _adjoint_terms(problem, stages, saved, residual.reshape(out.shape), act)
    gbar = out.new_zeros(s).index_copy(0, act, torch.einsum("anc,nc->a", ft, residual))
    hbar = out.new_zeros(s, s)
    hbar[act[:, None], act[None, :]] = 0.5 * (sub + sub.T)
    d3 = None
    if problem.order == 3:
        loss = lambda f: adapter.loss_fn(f, targets)  # noqa: E731
        third = vmap(lambda v: _taylor3(loss, out, v)[2])(tangents.values)
        d3 = out.new_zeros(s).index_copy(0, act, third)
    return BatchTerms(gbar, hbar, d3, z)


def _adjoint_terms(problem, stages, saved, lam, act) -> torch.Tensor:
    """Σ_k ⟨λ_k, D²F_k[ẋ^s, ẋ^t]⟩ over the active groups [A, A] (indexed like ``act``)."""
    position = {int(g): i for i, g in enumerate(act.tolist())}
    total = lam.new_zeros(len(position), len(position))
    for stage, (x, first, groups) in zip(reversed(stages), reversed(saved)):
        if first is None:  # no group is active before this stage: nothing further back contributes
            break
        rows = torch.tensor([position[g] for g in groups], device=lam.device)
        flat = first.flatten(1)
        m = stage.module
        if not stage.own:
            def pull(xx, fn=m, cot=lam):
                return vjp(fn, xx)[1](cot)[0]

            lam, second = vmap(lambda v: jvp(pull, (x,), (v,)), out_dims=(None, 0))(first)
            total[rows[:, None], rows[None, :]] += second.flatten(1) @ flat.T
            continue
        for role, k in stage.own:
            if role != "weight":
                continue
            u, t = problem.directions[k], position[problem.groups[k]]
            cross = flat @ _pullback(m, x, u, lam).flatten()  # ⟨λ, A(ẋ^s, u_W)⟩ per active s
            total[rows, t] += cross
            total[t, rows] += cross
        weight = dict((role, problem.params[k]) for role, k in stage.own).get("weight", m.weight)
        lam = _pullback(m, x, weight, lam)
    return total


def _pullback(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    """A(·, W)ᵀ λ, the adjoint of the layer's linear part in its input, shaped like x."""
    if isinstance(module, nn.Linear):
        return cotangent @ weight
    return vjp(lambda xx: _linear_part(module, xx, weight), x)[1](cotangent)[0]
