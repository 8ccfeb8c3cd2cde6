"""The full Hessian ∇²_θ L of a recorded batch, cross-layer blocks included (quantity ``hessian``).

Route: with f = f(x; θ) the model outputs of the batch, g_n = ∂ℓ_n/∂f_n (recorded by the backward
pass) and H_n = ∂²ℓ_n/∂f_n² (from the loss adapter), the function

    φ(θ) = Σ_n ½ (f_n(θ) − f_n)ᵀ H_n (f_n(θ) − f_n) + g_nᵀ f_n(θ)

has ∇²φ = Σ_n J_nᵀ H_n J_n + Σ_{n,c} g_nc ∇²f_nc, the unscaled Hessian of the loss, exactly (the loss
enters only through its first two derivatives at f). No targets are needed, so the hooks can compute
it from what they recorded. ∇²φ is formed by reverse-over-reverse differentiation vmapped over
``chunk_size`` unit vectors: cost ≈ P Hessian-vector products (each ≈ 2–3 forward+backward passes,
vectorised), memory P² for the result (checked against the memory budget first) plus ``chunk_size``
copies of the backward pass's intermediates. This is the fastest exact route for a general
cross-layer Hessian short of structure-specific recursions; per-layer blocks and the diagonal are
far cheaper (``hessian_block``, ``diag_hessian``: Botev's recursion).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev

from curvlab.guards import check_dense_allocation
from curvlab.partition import trainable_parameters

__all__ = ["full_hessian"]

DEFAULT_CHUNK_SIZE = 64


def full_hessian(
    model: nn.Module,
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    output_grad: torch.Tensor,
    output_hessian: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Unscaled batch Hessian Σ_n ∇²_θ ℓ_n, [P, P] in the reference ordering.

    Args:
        model: evaluated with ``torch.func.functional_call`` (not modified).
        inputs: the batch's model inputs [N, ...]; outputs: f [N, ...] at the current θ.
        output_grad: g = ∂ℓ_n/∂f_n, unscaled, [N, C]; output_hessian: H_n, unscaled, [N, C, C].

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 1)).double()
        >>> x = torch.randn(3, 2, dtype=torch.float64)
        >>> f = model(x).detach()
        >>> H = full_hessian(model, x, f, torch.ones(3, 1, dtype=torch.float64), 2 * torch.ones(3, 1, 1, dtype=torch.float64))
        >>> X = torch.cat([x, torch.ones(3, 1, dtype=torch.float64)], 1)
        >>> torch.allclose(H, 2 * X.T @ X)   # a linear model: only the Gauss-Newton part
        True
    """
    named = trainable_parameters(model)
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    theta = torch.cat([p.detach().flatten() for _, p in named])
    check_dense_allocation((theta.numel(), theta.numel()), theta.dtype, "hessian")
    f0 = outputs.detach().flatten(1)
    grad, hess = output_grad.detach().flatten(1), output_hessian.detach()

    def phi(flat: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, flat.split([s.numel() for s in shapes]), shapes, strict=True)}
        f = functional_call(model, params, (inputs,)).flatten(1)
        d = f - f0
        return 0.5 * torch.einsum("nc,ncd,nd->", d, hess, d) + (grad * f).sum()

    with torch.enable_grad():
        result = jacrev(jacrev(phi), chunk_size=chunk_size)(theta)
    return (result + result.T) / 2
