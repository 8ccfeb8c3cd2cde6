"""The dense Hessian of the loss with respect to the flat trainable parameters.

    H = ∇²_θ L(θ),   L = ``loss_fn(model(inputs), targets)``,   [P, P] in the reference ordering.

Computed column block by column block as Hessian–vector products with unit vectors, by one of two
independent routes (:data:`METHODS`):

* ``"double_backward"`` (default): the gradient is taken once with ``create_graph=True`` and every
  column is a backward pass through it (reverse over reverse, batched over ``chunk_size`` columns with
  ``is_grads_batched``; one by one where an op has no batching rule). Plain autograd: exact for every
  op torch can differentiate twice, in-place ops included.
* ``"forward_over_reverse"``: ``jvp`` of ``torch.func.grad`` of the loss written with elementary
  operations, vmapped over columns. An independent second route for cross-checks. (``jvp(jacrev(L))``
  is *not* used: in torch 2.13 it is wrong through LayerNorm.)

The model is the batch function of :class:`~curvlab.reference.functional.FlatModel` (train-mode
BatchNorm through its batch statistics, no buffer updates; fused kernels off). Over several batches the
unscaled Hessians Z_b H_b are summed and divided by Σ_b Z_b (reduction 'mean'), which is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from curvlab.autodiff import quiet_forward_ad
from curvlab.guards import check_dense_allocation
from curvlab.losses.elementary import elementary_loss
from curvlab.reference.functional import BatchSum, checked_outputs, reference_batches

__all__ = ["METHODS", "hessian"]

#: Hessian columns computed together; bounds the extra memory to about this many copies of the
#: backward pass's intermediate values.
DEFAULT_CHUNK_SIZE = 32

#: The two independent routes to the Hessian's columns.
METHODS = ("double_backward", "forward_over_reverse")


def hessian(
    model: nn.Module,
    loss_fn: nn.Module,
    data_or_inputs: Any,
    targets: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    method: str = "double_backward",
) -> torch.Tensor:
    """H = ∇²_θ ``loss_fn(model(inputs), targets)``, [P, P], symmetrised as (H + Hᵀ)/2.

    Args:
        model: any ``nn.Module`` autograd can differentiate twice; it is not modified.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (reduction 'mean'/'sum').
        data_or_inputs: inputs [N, ...] (with ``targets``), or an ``(inputs, targets)`` pair or an
            iterable of pairs, combined as one batch.
        targets: targets of ``inputs``, or ``None`` when ``data_or_inputs`` holds them.
        chunk_size: Hessian columns per batched product (memory vs. speed).
        method: ``"double_backward"`` or ``"forward_over_reverse"`` (see the module docstring).

    Example:
        >>> model, loss_fn = torch.nn.Linear(3, 1).double(), torch.nn.MSELoss(reduction="sum")
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
        >>> H = hessian(model, loss_fn, x, y)  # linear least squares: H = 2 [x 1]ᵀ[x 1]
        >>> X = torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], 1)
        >>> torch.allclose(H, 2 * X.T @ X)
        True
        >>> torch.allclose(H, hessian(model, loss_fn, x, y, method="forward_over_reverse"))
        True
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    flat, adapter, batches = reference_batches(model, loss_fn, data_or_inputs, targets)
    num_params = flat.num_params
    check_dense_allocation((num_params, num_params), flat.dtype, "hessian")
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    columns = _double_backward_columns if method == "double_backward" else _forward_columns
    acc = BatchSum(adapter.reduction)
    for inputs, batch_targets in batches:
        z = adapter.normalizer(checked_outputs(flat, adapter, inputs, batch_targets, "hessian"))
        unscaled = columns(flat, adapter, loss_fn, inputs, batch_targets, z, chunk)
        acc.add(unscaled, z)
    return acc.result("hessian", symmetrize=True)


def _unit_rows(start: int, stop: int, size: int, like: torch.Tensor) -> torch.Tensor:
    basis = torch.zeros(stop - start, size, dtype=like.dtype, device=like.device)
    basis[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return basis


def _double_backward_columns(flat, adapter, loss_fn, inputs, targets, z, chunk) -> torch.Tensor:
    num_params = flat.num_params
    out = torch.zeros(num_params, num_params, dtype=flat.dtype, device=flat.theta.device)
    leaf = flat.theta.clone().requires_grad_()
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(
            z * loss_fn(flat(leaf, inputs), targets), leaf, create_graph=True
        )
    if not gradient.requires_grad:  # the gradient does not depend on θ: H = 0
        return out
    batched = True
    for start in range(0, num_params, chunk):
        stop = min(start + chunk, num_params)
        basis = _unit_rows(start, stop, num_params, leaf)
        if batched:
            try:
                (rows,) = torch.autograd.grad(
                    gradient, leaf, basis, retain_graph=True, is_grads_batched=True,
                    allow_unused=True, materialize_grads=True,
                )  # fmt: skip
                out[start:stop] = rows
                continue
            except (RuntimeError, NotImplementedError):
                batched = False  # no batching rule for some double-backward op: one column at a time
        for k in range(stop - start):
            (row,) = torch.autograd.grad(
                gradient, leaf, basis[k], retain_graph=True, allow_unused=True, materialize_grads=True
            )
            out[start + k] = row
    return out


def _forward_columns(flat, adapter, loss_fn, inputs, targets, z, chunk) -> torch.Tensor:
    num_params = flat.num_params

    def scaled_loss(theta):
        outputs = flat(theta, inputs)
        return z * elementary_loss(adapter, outputs, targets)

    def hvp(v):
        return jvp(grad(scaled_loss), (flat.theta,), (v,))[1]

    out = torch.empty(num_params, num_params, dtype=flat.dtype, device=flat.theta.device)
    with quiet_forward_ad():
        for start in range(0, num_params, chunk):
            stop = min(start + chunk, num_params)
            out[start:stop] = vmap(hvp)(_unit_rows(start, stop, num_params, flat.theta))
    return out
