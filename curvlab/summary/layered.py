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
from torch import nn

from curvlab.autodiff import batch_coupled_modules
from curvlab.summary import layer_rules as rules
from curvlab.summary.problem import SummaryCurvature, SummaryProblem
from curvlab.summary.terms import BatchTerms

__all__ = ["Stage", "generic_stages", "layered_stages", "layered_terms", "unsupported_reason"]


@dataclass(frozen=True)
class Stage:
    """One stage of the flattened Sequential and its trainable parameters: ``(role, index)`` pairs."""

    module: nn.Module
    own: tuple[tuple[str, int], ...]


def layered_stages(problem: SummaryProblem) -> list[Stage]:
    """The leaves of the (nested) ``nn.Sequential`` with the problem's parameter indices they own.

    Example:
        >>> from torch import nn
        >>> from curvlab.losses import loss_adapter
        >>> from curvlab.partition import Partition
        >>> from curvlab.summary.problem import SummaryCurvature, SummaryProblem
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
        >>> part = Partition.from_model(model)
        >>> u = torch.linspace(-1, 1, part.num_params, dtype=torch.float64)
        >>> problem = SummaryProblem.build(model, loss_adapter(nn.MSELoss()), part, u, SummaryCurvature.HESSIAN, 3)
        >>> x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
        >>> [(type(s.module).__name__, s.own) for s in layered_stages(problem)][:2]
        [('Linear', (('weight', 0), ('bias', 1))), ('Tanh', ())]
    """
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
    """Why the layered route's stage form cannot take ``problem`` (``None`` if it can; the hook form,
    :mod:`curvlab.summary.layer_hooks`, takes every model).

    Example:
        >>> from torch import nn
        >>> from curvlab.losses import loss_adapter
        >>> from curvlab.partition import Partition
        >>> from curvlab.summary.problem import SummaryCurvature, SummaryProblem
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
        >>> part = Partition.from_model(model)
        >>> u = torch.linspace(-1, 1, part.num_params, dtype=torch.float64)
        >>> problem = SummaryProblem.build(model, loss_adapter(nn.MSELoss()), part, u, SummaryCurvature.HESSIAN, 3)
        >>> x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
        >>> unsupported_reason(problem) is None
        True
    """
    if not isinstance(problem.model, nn.Sequential):
        return f"the model is a {type(problem.model).__qualname__}, not an nn.Sequential"
    coupled = batch_coupled_modules(problem.model)
    if coupled:
        return f"{', '.join(coupled)} (BatchNorm in training mode) couples the samples"
    if not all(isinstance(g, int) for g in problem.groups):
        return "a group holds part of a parameter tensor (e.g. the 'entries' partition)"
    for stage in layered_stages(problem):
        roles = {role for role, _ in stage.own}
        if stage.own and not (isinstance(stage.module, rules.AFFINE_LAYERS) and roles <= {"weight", "bias"}):
            return f"stage {type(stage.module).__qualname__} has trainable parameters but is not affine"
    return None


def generic_stages(problem: SummaryProblem) -> list[str]:
    """Type names of the parameter-free stages without a closed-form rule (they take ``torch.func``:
    cheap for first-order tangents, but three nested ``jvp`` per group for order 3).

    Example:
        >>> from torch import nn
        >>> from curvlab.losses import loss_adapter
        >>> from curvlab.partition import Partition
        >>> from curvlab.summary.problem import SummaryCurvature, SummaryProblem
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3, 1)).double()
        >>> part = Partition.from_model(model)
        >>> u = torch.ones(part.num_params, dtype=torch.float64)
        >>> generic_stages(SummaryProblem.build(model, loss_adapter(nn.MSELoss()), part, u, SummaryCurvature.HESSIAN, 3))
        ['Flatten']
    """
    return [type(s.module).__name__ for s in layered_stages(problem)
            if not s.own and type(s.module) not in rules.ELEMENTWISE_RULES]


@dataclass
class _Record:
    """What the adjoint pass needs from the forward pass at one stage."""

    x: torch.Tensor  # stage input
    first: torch.Tensor | None  # first-order input tangents [A, *x.shape] (None: no active group yet)
    groups: list[int]  # the active groups, in the order of ``first``
    derivs: rules.Elementwise | None = None  # derivatives of an elementwise stage


def layered_terms(problem: SummaryProblem, inputs: torch.Tensor, targets: torch.Tensor) -> BatchTerms:
    """ḡ_b [S], H̄_b [S, S] (and D³_b [S]) of one batch through the layers (see the module docstring).

    Example:
        >>> from torch import nn
        >>> from curvlab.losses import loss_adapter
        >>> from curvlab.partition import Partition
        >>> from curvlab.summary.problem import SummaryCurvature, SummaryProblem
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
        >>> part = Partition.from_model(model)
        >>> u = torch.linspace(-1, 1, part.num_params, dtype=torch.float64)
        >>> problem = SummaryProblem.build(model, loss_adapter(nn.MSELoss()), part, u, SummaryCurvature.HESSIAN, 3)
        >>> x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
        >>> from curvlab.summary.double_backward import double_backward_terms
        >>> fast, ref = layered_terms(problem, x, y), double_backward_terms(problem, x, y)
        >>> torch.allclose(fast.hbar, ref.hbar) and torch.allclose(fast.d3, ref.d3), fast.normalizer
        (True, 4)
    """
    with torch.no_grad():
        return _layered_terms(problem, inputs, targets)


def _layered_terms(problem: SummaryProblem, inputs: torch.Tensor, targets: torch.Tensor) -> BatchTerms:
    stages = layered_stages(problem)
    hessian = problem.curvature is SummaryCurvature.HESSIAN
    orders = 3 if problem.order == 3 else 1
    need = 3 if orders == 3 else (2 if hessian else 1)
    records: list[_Record] = []
    x, jets, groups = inputs, None, []
    for stage in stages:
        record = _Record(x, None if jets is None else jets[0], list(groups))
        records.append(record)
        m = stage.module
        if stage.own:
            x, jets = _affine_stage(problem, stage, x, jets, groups, orders)
        elif (rule := rules.ELEMENTWISE_RULES.get(type(m))) is not None:
            x, record.derivs = rule(x, 0 if jets is None else need)
            jets = None if jets is None else rules.elementwise_push(jets, record.derivs)
        else:
            x, jets = rules.generic_push(m, x, jets)

    out, s, adapter = x, problem.num_groups, problem.adapter
    adapter.check(out, targets)
    z = adapter.normalizer(out)
    act = torch.tensor(groups, dtype=torch.long, device=out.device)
    ft = jets[0].flatten(2)  # ∂f/∂η over the active groups, [A, N, C]
    residual = adapter.output_gradient(out, targets) / z  # λ = ∂L/∂f, [N, C]
    sub = torch.einsum("anc,ncd,bnd->ab", ft, adapter.output_hessian(out) / z, ft)
    if hessian:
        lam = residual.reshape(out.shape)
        sub = sub + _adjoint_terms(problem, stages, records, lam, groups, jets[0])
    gbar = out.new_zeros(s).index_copy(0, act, torch.einsum("anc,nc->a", ft, residual))
    hbar = out.new_zeros(s, s)
    hbar[act[:, None], act[None, :]] = 0.5 * (sub + sub.T)
    d3 = None
    if problem.order == 3:
        d3 = out.new_zeros(s).index_copy(0, act, rules.loss_third_order(adapter, out, targets, jets))
    return BatchTerms(gbar, hbar, d3, z)


def _affine_stage(problem, stage, x, jets, groups, orders):
    """z = A(x, W) + b and its jets: A(x⁽ʲ⁾, W), plus the stage's own terms
    j A(x⁽ʲ⁻¹⁾, u_W) (x⁽⁰⁾ = x) and u_b (order 1) for the groups owning W and b."""
    m = stage.module
    params = {role: problem.params[k] for role, k in stage.own}
    weight, bias = params.get("weight", m.weight), params.get("bias", m.bias)
    y = rules.affine_forward(m, x, weight, bias)
    before = list(groups)
    old = [None] * orders if jets is None else [
        None if j is None else rules.affine_linear_part(m, j, weight) for j in jets
    ]
    fresh: dict[int, list] = {}
    for role, k in stage.own:
        g, u = problem.groups[k], problem.directions[k]
        terms = [rules.bias_term(m, u, y) if role == "bias" else rules.affine_linear_part(m, x, u)]
        terms += [None] * (orders - 1)
        if role == "weight" and orders == 3 and g in before:  # d^j/dt^j [t A(x(t), u)] = j A(x^(j-1), u)
            for j in (1, 2):
                if jets[j - 1] is not None:
                    terms[j] = (j + 1) * rules.affine_linear_part(m, jets[j - 1][before.index(g)], u)
        if g in before:
            row = before.index(g)
            for j, term in enumerate(terms):
                if term is not None:
                    if old[j] is None:
                        old[j] = y.new_zeros(len(before), *y.shape)
                    old[j][row] += term
        else:
            slot = fresh.setdefault(g, [None] * orders)
            for j, term in enumerate(terms):
                if term is not None:
                    slot[j] = term if slot[j] is None else slot[j] + term
    groups.extend(fresh)
    out = []
    for j in range(orders):
        new = [slot[j] for slot in fresh.values()]
        if jets is not None and not fresh:
            out.append(old[j])
        elif all(t is None for t in new) and (jets is None or old[j] is None):
            out.append(None)
        else:
            rows = [y.new_zeros(y.shape) if t is None else t.expand_as(y) for t in new]
            if jets is not None:
                rows = [y.new_zeros(len(before), *y.shape) if old[j] is None else old[j],
                        torch.stack(rows)]
                out.append(torch.cat(rows))
            else:
                out.append(torch.stack(rows))
    return y, out


def _adjoint_terms(problem, stages, records, lam, groups, final) -> torch.Tensor:
    """Σ_k ⟨λ_k, D²F_k[ẋ^s, ẋ^t]⟩ over the active groups, [A, A] in the order of ``groups``.

    ``final``: the first-order tangents of the output, [A, *f.shape].
    """
    position = {g: i for i, g in enumerate(groups)}
    total = lam.new_zeros(len(groups), len(groups))
    for k in range(len(stages) - 1, -1, -1):
        stage, record = stages[k], records[k]
        if record.first is None:  # no group is active before this stage: nothing further back
            break
        rows = torch.tensor([position[g] for g in record.groups], device=lam.device)
        flat = record.first.flatten(1)
        wanted = k > 0 and records[k - 1].first is not None  # is λ needed further back?
        m = stage.module
        if stage.own:
            for role, idx in stage.own:
                if role == "weight":  # ⟨λ, A(ẋ^s, u_W)⟩ + (s ↔ t), t the group of W
                    pulled = rules.affine_pullback(m, record.x, problem.directions[idx], lam)
                    cross = flat @ pulled.flatten()
                    t = position[problem.groups[idx]]
                    total[rows, t] += cross
                    total[t, rows] += cross
            if wanted:
                weight = {r: problem.params[i] for r, i in stage.own}.get("weight", m.weight)
                lam = rules.affine_pullback(m, record.x, weight, lam)
        elif record.derivs is not None:  # elementwise: Σ λσ'' ẋ^s ẋ^t = c Σ (λg)(σ'ẋ^s) ẋ^t, and λσ'
            if record.derivs.curvature is not None:
                scaled, c = record.derivs.curvature(lam)
                pushed = (records[k + 1].first if k + 1 < len(records) else final).flatten(1)
                total[rows[:, None], rows[None, :]] += c * ((pushed * scaled.flatten()) @ flat.T)
            lam = lam * record.derivs.d1 if wanted else lam
        else:
            lam_in, second = rules.generic_pullback(m, record.x, record.first, lam)
            total[rows[:, None], rows[None, :]] += second.flatten(1) @ flat.T
            lam = lam_in
    return total
