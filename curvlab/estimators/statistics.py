"""The per-layer statistics each estimator adds from a layer's normal form or its per-row gradients.

Everything is unscaled (no 1/Z), in the keys of :class:`curvlab.engine.statistics.BatchStatistics`
(combined across batches by :class:`curvlab.engine.accumulate.Accumulator`):

* ``block``  sums[(q, layer, "block")] = Σ_r γ_r γ_rᵀ           (γ_r the per-row gradient, [P_l])
* ``diag``   sums[(q, layer, "diag")]  = Σ_r γ_r²
* ``rows``   the layer's columns of the full square-root factor: rows[(q, layer, "S")] and
  stacked[(q, layer, "X")] when γ_nk = s_nk x̃_nᵀ is one outer product, else rows[(q, layer, "F")]
* ``kron``   inputs[layer] = A (see :mod:`curvlab.estimators.config` for expand/reduce),
  sums[(q, layer, "G")] = G; stacked [g, ·, ·] per group for a grouped layer (groups g > 1)
* ``ekfac``  sums[(q, layer, "scaling")] = Σ_nk (U_Gᵀ Γ̃_nk U_A)² in the eigenbasis of the KFLR factors
"""

from __future__ import annotations

import torch

from curvlab.collector import LayerCalls
from curvlab.collector.layers import LayerPlan
from curvlab.engine.rules.gram import gram, homogeneous_gram
from curvlab.engine.statistics import BatchStatistics
from curvlab.estimators.gradients import column_gradients, outer_form
from curvlab.guards import check_dense_allocation

__all__ = ["add_block", "add_diag", "add_ekfac", "add_input_factor", "add_output_factor", "add_rows",
           "augmented", "project_inputs"]


def _columns(calls: LayerCalls, G: torch.Tensor, what: str) -> torch.Tensor:
    plan = calls.plan
    num, cols = G.shape[:2]
    check_dense_allocation((num * cols, plan.size), G.dtype, f"{what} per-sample gradients of layer {plan.name!r}")
    return column_gradients(calls, G).reshape(num * cols, plan.size)


def add_block(stats: BatchStatistics, key: tuple, gamma: torch.Tensor) -> None:
    """Σ_r γ_r γ_rᵀ for per-row gradients γ [R, P_l]."""
    check_dense_allocation((gamma.shape[1],) * 2, gamma.dtype, f"{key[0]} block of layer {key[1]!r}")
    stats.sums[key] = gamma.T @ gamma


def add_diag(stats: BatchStatistics, key: tuple, calls: LayerCalls | None, G=None, gamma=None) -> None:
    """Σ γ², from per-row gradients, or from X, G without them where γ_nk is an outer product."""
    if gamma is None and outer_form(calls.plan, G.shape[2]):
        plan, X = calls.plan, calls.X
        g2 = G[:, :, 0].pow(2).sum(1)  # [N, O]
        parts = [(g2.T @ X[:, 0].pow(2)).flatten()]
        if plan.has_bias:
            parts.append(g2.sum(0))
        stats.sums[key] = torch.cat(parts)
        return
    if gamma is None:
        gamma = _columns(calls, G, key[0])
    stats.sums[key] = gamma.pow(2).sum(0)


def add_rows(stats: BatchStatistics, quantity: str, name: str, calls: LayerCalls | None, G=None,
             gamma=None) -> None:
    """The layer's columns of the full square-root factor (outer-product form where it applies)."""
    if gamma is None and outer_form(calls.plan, G.shape[2]):
        stats.rows[(quantity, name, "S")] = G[:, :, 0].reshape(-1, G.shape[-1])
        stats.stacked[(quantity, name, "X")] = calls.X[:, 0].clone()
        return
    if gamma is None:
        gamma = _columns(calls, G, quantity)
    stats.rows[(quantity, name, "F")] = gamma


def augmented(plan: LayerPlan, X: torch.Tensor) -> torch.Tensor:
    """X̃ = [X, 1] when the layer's bias is trainable (the "augmented" bias convention)."""
    if plan.has_bias:
        return torch.cat([X, X.new_ones(*X.shape[:-1], 1)], -1)
    return X


def groups_of(plan: LayerPlan) -> int:
    """g, the independent groups of a layer's weight (inputs and outputs split into g column blocks)."""
    return plan.adapter.groups(plan.module)


def _per_group(plan: LayerPlan, factor, *tensors: torch.Tensor):
    """``factor`` of the tensors, or stacked over the groups of a grouped layer (their column blocks)."""
    g = groups_of(plan)
    if g == 1:
        return factor(*tensors)
    return torch.stack([factor(*parts) for parts in zip(*(t.chunk(g, -1) for t in tensors), strict=True)])


def add_input_factor(stats: BatchStatistics, plan: LayerPlan, X: torch.Tensor, sharing: str) -> None:
    """A (unscaled: the accumulator divides by N): expand Σ_{n,s} x̃ x̃ᵀ / S, reduce Σ_n x̄̃ x̄̃ᵀ."""
    if plan.name in stats.inputs:
        return
    bias = plan.has_bias
    if sharing == "reduce" or X.shape[1] == 1:
        stats.inputs[plan.name] = _per_group(plan, lambda x: gram(x, homogeneous=bias), X.mean(1))
        stats.input_rows[plan.name] = X.shape[0]
    else:
        stats.input_rows[plan.name] = X.shape[0] * X.shape[1]
        stats.inputs[plan.name] = _per_group(plan, lambda x: _position_gram(x, bias), X).div_(X.shape[1])


def _position_gram(X: torch.Tensor, homogeneous: bool) -> torch.Tensor:
    """Σ_{n,s} x̃_ns x̃_nsᵀ for X [N, S, I]. A convolution's patches (and its output gradients) are
    transposed views of [N, I, S] tensors: there Σ_n X_nᵀ X_n as one batched product reads them in
    place (flattening them to [N·S, I] would copy them first), when its [N, I, I] result is no larger
    than X."""
    num, positions, width = X.shape
    if X.is_contiguous() or width > positions:
        return gram(X.reshape(-1, width), homogeneous=homogeneous)
    A = torch.bmm(X.mT, X).sum(0)
    return homogeneous_gram(A, X.sum((0, 1)), num * positions) if homogeneous else A


def add_output_factor(stats: BatchStatistics, key: tuple, plan: LayerPlan, G: torch.Tensor, sharing: str) -> None:
    """G: expand Σ_{n,k,s} g gᵀ, reduce Σ_{n,k} ĝ ĝᵀ with ĝ = Σ_s g."""
    if sharing == "reduce" or G.shape[2] == 1:
        stats.sums[key] = _per_group(plan, gram, G.sum(2).reshape(-1, G.shape[-1]))
    else:  # the columns lead in memory (G is a view of the backward pass's [K, N, ...] gradients)
        rows = G.transpose(0, 1).reshape(-1, *G.shape[2:])
        stats.sums[key] = _per_group(plan, lambda g: _position_gram(g, False), rows)


def project_inputs(plan: LayerPlan, X: torch.Tensor, basis_in: torch.Tensor) -> list[torch.Tensor]:
    """[X̃_j U_in,j] per group j (one entry if ungrouped), [N, S, I_g(+1)]: the layer inputs in the
    eigenbasis of its input factor (shared by all columns)."""
    g = groups_of(plan)
    bases = [basis_in] if g == 1 else list(basis_in)
    return [augmented(plan, x) @ u for x, u in zip(X.chunk(g, -1), bases, strict=True)]


def add_ekfac(stats: BatchStatistics, key: tuple, plan: LayerPlan, Xr: torch.Tensor, G: torch.Tensor,
              basis_out: torch.Tensor) -> None:
    """Σ_nk (U_outᵀ Γ̃_nk U_in)² in the weight layout ([O, I(+1)]; [V, D] for transposed layers;
    [g, O_g, I_g(+1)] for a grouped layer), for ``Xr`` = :func:`project_inputs`."""
    g = len(Xr)
    bases = [basis_out] if g == 1 else list(basis_out)
    parts = [_scaling(x, G_j @ u) for x, G_j, u in zip(Xr, G.chunk(g, -1), bases, strict=True)]
    scaling = parts[0] if g == 1 else torch.stack(parts)
    stats.sums[key] = scaling.T if plan.adapter.transposed else scaling


def _scaling(Xr: torch.Tensor, Gr: torch.Tensor) -> torch.Tensor:
    """Σ_nk (Σ_s g_nks x_nsᵀ)² for rotated Xr [N, S, I'] and Gr [N, K, S, O]: [O, I']."""
    num, cols, positions, out = Gr.shape
    if positions == 1:
        return Gr[:, :, 0].pow(2).sum(1).T @ Xr[:, 0].pow(2)
    # per-sample Γ̃_nk = Σ_s g_nks x_nsᵀ as one batched product over samples
    rotated = torch.bmm(Gr.transpose(2, 3).reshape(num, cols * out, positions), Xr)  # [N, K·O, I']
    rotated.mul_(rotated)
    return rotated.view(num * cols, out * Xr.shape[-1]).sum(0).view(out, Xr.shape[-1])
