"""Exact Hessian blocks, diagonals and the full Hessian on any model, by restricted Hessian–vector products.

Where Botev's per-module recursion (:mod:`curvlab.engine.statistics`) does not apply (functional
glue, branches, attention, recurrent cells, train-mode BatchNorm), the block of layer l is

    H_ll = ∂/∂θ_l (∂L_b/∂θ_l)ᵀ,   one double-backward Hessian–vector product per unit vector e_i, i ∈ l,

vectorised over chunks of unit vectors (``is_grads_batched``). Cost: P_l products per layer (Σ_l P_l
= P for all blocks, which also give the diagonal); memory: the [P_l, P_l] block (checked against the
memory budget first) plus one chunk of backward intermediates. Double backward is exact for every op
in torch (``jvp(jacrev(·))`` is not through LayerNorm in torch 2.13, so it is not used). The loss is
that of the batch function: train-mode BatchNorm couples the samples and the result includes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curvlab.guards import check_dense_allocation

__all__ = ["restricted_hessian"]

CHUNK = 64


def restricted_hessian(loss_sum: torch.Tensor, params: Sequence[torch.Tensor], what: str,
                       chunk: int = CHUNK) -> torch.Tensor:
    """∇²_θ L restricted to ``params`` (flattened, in order), [P_l, P_l], from a scalar with a graph.

    Example:
        >>> w = torch.randn(3, dtype=torch.float64, requires_grad=True)
        >>> H = restricted_hessian((w ** 3).sum(), [w], "demo")
        >>> torch.allclose(H, torch.diag(6 * w.detach()))
        True
    """
    size = sum(p.numel() for p in params)
    check_dense_allocation((size, size), params[0].dtype, what)
    grads = torch.autograd.grad(loss_sum, list(params), create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    flat = torch.cat([g.reshape(-1) for g in grads])
    if not flat.requires_grad:  # the loss is linear in these parameters
        return flat.new_zeros(size, size)
    eye = torch.eye(size, dtype=flat.dtype, device=flat.device)
    rows = []
    for start in range(0, size, chunk):
        seeds = eye[start:start + chunk]
        try:
            hv = torch.autograd.grad(flat, list(params), seeds, retain_graph=True, allow_unused=True,
                                     is_grads_batched=True)
        except RuntimeError:
            hv = [torch.stack(parts) if parts[0] is not None else None for parts in zip(*[
                torch.autograd.grad(flat, list(params), s, retain_graph=True, allow_unused=True) for s in seeds
            ], strict=True)]
        hv = [torch.zeros(seeds.shape[0], *p.shape, dtype=flat.dtype) if h is None else h
              for h, p in zip(hv, params, strict=True)]
        rows.append(torch.cat([h.reshape(seeds.shape[0], -1) for h in hv], 1))
    block = torch.cat(rows)
    return (block + block.T) / 2
