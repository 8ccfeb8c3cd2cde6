"""The reference route: S double-backward Hessian-vector products, as GroupedNewton's ``compute_Hg``.

One backward pass with ``create_graph`` gives ∇L and ḡ_i = Σ_{p∈i} ⟨∂L/∂θ_p, u_p⟩. Row i of H̄ is the
gradient of ḡ_i, taken only with respect to the parameters of groups j ≥ i and dotted per group with u
(H̄_ij = u_iᵀ H_ij u_j), then mirrored: S double-backward HVPs. D³_i differentiates H̄_ii twice more
within group i. The GGN variant obtains the output tangents J u_s by the double-vjp trick
(S extra backward passes) and forms (JU)ᵀ H_out (JU) / Z. Kept for comparison and tests; the other
routes are faster.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curvlab.summary.problem import SummaryCurvature, SummaryProblem
from curvlab.summary.terms import BatchTerms

__all__ = ["double_backward_terms"]


def double_backward_terms(problem: SummaryProblem, inputs: torch.Tensor, targets: torch.Tensor) -> BatchTerms:
    """ḡ_b [S], H̄_b [S, S] (and D³_b [S]) of one batch by repeated backward passes (module docstring).

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
        >>> from curvlab.reference import gradient, hessian
        >>> terms = double_backward_terms(problem, x, y)
        >>> U = torch.zeros(13, 4, dtype=torch.float64)               # U[p, group(p)] = u_p
        >>> U[torch.arange(13), part.group_ids()] = u
        >>> H = hessian(model, nn.MSELoss(), x, y)
        >>> torch.allclose(terms.hbar, U.T @ H @ U), torch.allclose(terms.gbar, U.T @ gradient(model, nn.MSELoss(), x, y))
        (True, True)
    """
    s = problem.num_groups
    leaves = [p.clone().requires_grad_(True) for p in problem.params]
    with torch.enable_grad():
        out = problem.call(dict(zip(problem.names, leaves, strict=True)), inputs)
        loss = problem.adapter(out, targets)
        z = problem.adapter.normalizer(out)
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        gbar = _group_dots(problem, grads, range(len(leaves)))
        hbar = torch.zeros(s, s, dtype=problem.dtype, device=out.device)
        if problem.curvature is SummaryCurvature.GGN:
            hbar = _ggn(problem, leaves, out, z)
        else:
            for i in range(s):
                later = _touching(problem, lambda g, i=i: g >= i)
                row = _group_dots(problem, _grad(gbar[i], [leaves[k] for k in later], False), later)
                values = torch.stack(row[i:]).detach()
                hbar[i, i:] = values
                hbar[i:, i] = values
        d3 = None
        if problem.order == 3:
            d3 = torch.zeros(s, dtype=problem.dtype, device=out.device)
            for i in range(s):
                mine = _touching(problem, lambda g, i=i: g == i)
                own = [leaves[k] for k in mine]
                h_ii = _group_dots(problem, _grad(gbar[i], own, True), mine)[i]
                d3[i] = _group_dots(problem, _grad(h_ii, own, False), mine)[i].detach()
    return BatchTerms(torch.stack(gbar).detach(), hbar, d3, z)


def _touching(problem: SummaryProblem, keep) -> list[int]:
    """Indices of the parameters with at least one entry in a group g where ``keep(g)``."""
    out = []
    for k, g in enumerate(problem.groups):
        ids = [g] if isinstance(g, int) else g.unique().tolist()
        if any(keep(int(i)) for i in ids):
            out.append(k)
    return out


def _grad(value: torch.Tensor, inputs: Sequence[torch.Tensor], create_graph: bool) -> list[torch.Tensor]:
    if not value.requires_grad:  # value does not depend on these parameters (e.g. a quadratic loss)
        return [torch.zeros_like(t) for t in inputs]
    grads = torch.autograd.grad(value, inputs, retain_graph=True, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True)]


def _group_dots(problem: SummaryProblem, tensors: Sequence[torch.Tensor], which: Sequence[int]) -> list[torch.Tensor]:
    """[S] scalars Σ_{entries of group s} tensorᵀ u over the parameters ``which``, kept apart per group.

    Each scalar depends only on its own group's tensors (as GroupedNewton's per-group ``dercon``), so
    differentiating ḡ_i does not backpropagate through the other groups' gradients.
    """
    zero = torch.zeros((), dtype=problem.dtype, device=problem.params[0].device)
    out = [zero] * problem.num_groups
    for t, k in zip(tensors, which, strict=True):
        g, u = problem.groups[k], problem.directions[k]
        if isinstance(g, int):
            out[g] = out[g] + (t * u).sum()
            continue
        products, ids = (t * u).flatten(), g.flatten()
        for s in ids.unique().tolist():
            out[s] = out[s] + products[ids == s].sum()
    return out


def _ggn(problem: SummaryProblem, leaves: list[torch.Tensor], out: torch.Tensor, z: int) -> torch.Tensor:
    """(JU)ᵀ H_out (JU) / Z with J u_s from the double-vjp trick: d/dw ⟨Jᵀw, u_s⟩ = J u_s."""
    w = torch.zeros_like(out, requires_grad=True)
    pulled = torch.autograd.grad(out, leaves, w, create_graph=True)
    projected = _group_dots(problem, pulled, range(len(leaves)))
    tangents = torch.stack([_grad(projected[s], [w], False)[0] for s in range(problem.num_groups)]).flatten(2)
    h_out = problem.adapter.output_hessian(out.detach()) / z
    return torch.einsum("snc,ncd,tnd->st", tangents, h_out, tangents)
