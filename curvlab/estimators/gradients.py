"""Per-sample, per-column parameter gradients of one adapted layer from its normal form.

With X [N, S, I] and G [N, K, S, O] (:mod:`curvlab.collector.adapters.base`), the gradient of factor
column k of sample n w.r.t. the layer's parameters (weight flattened row-major, then bias) is

* dense:       Γ_nk = Σ_s g_nks x_nsᵀ  [O, I]   (``transposed``: Σ_s x_ns g_nksᵀ, [I, O]);
               with g groups, block j of the rows uses block j of the inputs only;
* elementwise: Γ_nk = Σ_s g_nks ⊙ x_ns  [O];
* bias:        Σ_s g_nks.

In row mode (samples coupled through the batch, e.g. train-mode BatchNorm) a row r is one sample's
column seeded alone, G_r [N, S, O] spans the whole batch, and Γ_r = Σ_{m,s} g_rms x_msᵀ.
"""

from __future__ import annotations

import torch

from curvlab.collector.layers import LayerPlan

__all__ = ["column_gradients", "layer_gradients", "outer_form"]


def _grouped(plan: LayerPlan, X: torch.Tensor, G: torch.Tensor):
    g = plan.adapter.groups(plan.module)
    return X.reshape(*X.shape[:-1], g, -1), G.reshape(*G.shape[:-1], g, -1)


def layer_gradients(plan: LayerPlan, X: torch.Tensor, G: torch.Tensor, rows: bool = False) -> torch.Tensor:
    """Γ flattened over the layer's trainable parameters: [N, K, P_l] (columns) or [R, P_l] (``rows``).

    Example:
        >>> from torch import nn
        >>> from curvlab.collector import plan_layers
        >>> lin = nn.Sequential(nn.Linear(3, 2))
        >>> plan = plan_layers(lin).layers[0]
        >>> X, G = torch.randn(4, 5, 3), torch.randn(4, 1, 5, 2)
        >>> gam = layer_gradients(plan, X, G)
        >>> torch.allclose(gam[:, 0, :6].reshape(4, 2, 3), G[:, 0].transpose(1, 2) @ X, atol=1e-6)
        True
    """
    adapter = plan.adapter
    parts = []
    if plan.has_weight:
        if adapter.kind == "elementwise":
            w = torch.einsum("rnso,nso->ro" if rows else "nkso,nso->nko", G, X)
        elif adapter.transposed:
            w = torch.einsum("rnso,nsi->rio" if rows else "nkso,nsi->nkio", G, X)
        elif adapter.groups(plan.module) > 1:
            Xg, Gg = _grouped(plan, X, G)
            w = torch.einsum("rnsgo,nsgi->rgoi" if rows else "nksgo,nsgi->nkgoi", Gg, Xg)
        else:
            w = torch.einsum("rnso,nsi->roi" if rows else "nkso,nsi->nkoi", G, X)
        parts.append(w.flatten(1 if rows else 2))
    if plan.has_bias:
        parts.append(G.sum((1, 2)) if rows else G.sum(2))
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def column_gradients(calls, G: torch.Tensor) -> torch.Tensor:
    """Γ [N, K, P_l] of a recorded layer (:class:`~curvlab.collector.LayerCalls`) for its G [N, K, S, O]:
    the adapter's own per-sample weight gradients where it has them (convolutions: one grouped
    convolution, no unfolded patches), else :func:`layer_gradients` on the normal form."""
    plan = calls.plan
    fast = None
    if plan.has_weight and len(calls.args) == 1:
        args, kwargs, _ = calls.args[0]
        fast = plan.adapter.weight_gradients(plan.module, args, kwargs, calls.outputs[0], G)
    if fast is None:
        return layer_gradients(plan, calls.X, G)
    parts = [fast.flatten(2)]
    if plan.has_bias:
        parts.append(G.sum(2))
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def outer_form(plan: LayerPlan, positions: int) -> bool:
    """Whether Γ_nk = g_nk x̃_nᵀ is a single outer product (S = 1, dense, ungrouped, weight [O, I] trainable)."""
    adapter = plan.adapter
    return (positions == 1 and adapter.kind == "dense" and not adapter.transposed
            and adapter.groups(plan.module) == 1 and plan.has_weight)
