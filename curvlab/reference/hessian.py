"""The dense Hessian of the loss with respect to the flat trainable parameters.

    H = ∇²_θ L(θ),   L = ``loss_fn(model(inputs), targets)``,   [P, P] in the reference ordering.

Computed column block by column block as Hessian-vector products with unit vectors, forward-over-reverse
(``jvp`` of the reverse-mode gradient), vmapped over ``chunk_size`` columns at a time. Over several batches the unscaled
Hessians Z_b H_b are summed and divided by Σ_b Z_b (reduction 'mean'), which is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import jacrev, jvp, vmap

from curvlab.guards import check_dense_allocation
from curvlab.reference.functional import BatchSum, checked_outputs, reference_batches

__all__ = ["hessian"]

#: Hessian columns computed together; bounds the extra memory to about this many copies of the
#: backward pass's intermediate values.
DEFAULT_CHUNK_SIZE = 32


def hessian(
    model: nn.Module,
    loss_fn: nn.Module,
    data_or_inputs: Any,
    targets: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """H = ∇²_θ ``loss_fn(model(inputs), targets)``, [P, P], symmetrised as (H + Hᵀ)/2.

    Args:
        model: any ``nn.Module`` torch.func can evaluate; it is not modified.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (reduction 'mean'/'sum').
        data_or_inputs: inputs [N, ...] (with ``targets``), or an ``(inputs, targets)`` pair or an
            iterable of pairs, combined as one batch.
        targets: targets of ``inputs``, or ``None`` when ``data_or_inputs`` holds them.
        chunk_size: Hessian columns per vmapped batch of Hessian-vector products (memory vs. speed).

    Example:
        >>> model, loss_fn = torch.nn.Linear(3, 1).double(), torch.nn.MSELoss(reduction="sum")
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
        >>> H = hessian(model, loss_fn, x, y)  # linear least squares: H = 2 [x 1]ᵀ[x 1]
        >>> X = torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], 1)
        >>> torch.allclose(H, 2 * X.T @ X)
        True
    """
    flat, adapter, batches = reference_batches(model, loss_fn, data_or_inputs, targets)
    num_params = flat.num_params
    check_dense_allocation((num_params, num_params), flat.dtype, "hessian")
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    acc = BatchSum(adapter.reduction)
    for inputs, batch_targets in batches:
        z = adapter.normalizer(checked_outputs(flat, adapter, inputs, batch_targets, "hessian"))

        def scaled_loss(theta, inputs=inputs, batch_targets=batch_targets, z=z):
            return z * loss_fn(flat(theta, inputs), batch_targets)

        def hvp(v, scaled_loss=scaled_loss):
            # jacrev, not grad: jvp(grad(mse_loss)) fails in torch 2.13 ("ZeroTensors are immutable").
            return jvp(jacrev(scaled_loss), (flat.theta,), (v,))[1]

        unscaled = torch.empty(num_params, num_params, dtype=flat.dtype, device=flat.theta.device)
        for start in range(0, num_params, chunk):
            stop = min(start + chunk, num_params)
            basis = torch.zeros(
                stop - start, num_params, dtype=flat.dtype, device=flat.theta.device
            )
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1
            unscaled[start:stop] = vmap(hvp)(basis)
        acc.add(unscaled, z)
    return acc.result("hessian", symmetrize=True)
