"""First derivatives by torch.func: the loss, its gradient, per-sample gradients and the model Jacobian.

Notation (see :mod:`curvlab.losses`): L = (1/Z) Σ_n ℓ_n with ℓ_n the *unscaled* per-sample loss,
f_n = f(x_n; θ) ∈ R^C the flattened output of sample n, θ ∈ R^P in the reference ordering.

* :func:`loss_value`            L                                   scalar
* :func:`gradient`              ∇_θ L                               [P]
* :func:`per_sample_gradients`  ∇_θ ℓ_n (unscaled)                  [N, P]
* :func:`jacobian`              J_n = ∂f_n/∂θ                       [N, C, P]

The functions taking ``(model, loss_fn, data_or_inputs, targets=None)`` accept either an inputs tensor
with its targets, or ``data``: an ``(inputs, targets)`` pair or an iterable of pairs, combined exactly as
one batch. Jacobians and per-sample gradients are those of the model as a function of the whole
batch, by reverse mode (exact for every op, in-place ones included); where samples interact inside the
model (train-mode BatchNorm) they include the cross-sample terms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from curvlab.autodiff import reverse_jacobian
from curvlab.guards import check_dense_allocation, check_finite
from curvlab.losses import LossAdapter
from curvlab.reference.functional import BatchSum, FlatModel, checked_outputs, reference_batches

__all__ = ["gradient", "jacobian", "loss_value", "per_sample_gradients"]


def loss_value(
    model: nn.Module, loss_fn: nn.Module, data_or_inputs: Any, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """L = ``loss_fn(model(inputs), targets)``, over several batches as if they were one (no graph).

    Example:
        >>> model, loss_fn = torch.nn.Linear(3, 2), torch.nn.MSELoss()
        >>> x, y = torch.randn(6, 3), torch.randn(6, 2)
        >>> whole = loss_value(model, loss_fn, x, y)
        >>> split = loss_value(model, loss_fn, [(x[:2], y[:2]), (x[2:], y[2:])])
        >>> torch.allclose(whole, loss_fn(model(x), y)), torch.allclose(whole, split)
        (True, True)
    """
    flat, adapter, batches = reference_batches(model, loss_fn, data_or_inputs, targets)
    acc = BatchSum(adapter.reduction)
    for inputs, batch_targets in batches:
        outputs = checked_outputs(flat, adapter, inputs, batch_targets, "loss")
        z = adapter.normalizer(outputs)
        acc.add(z * loss_fn(outputs, batch_targets), z)
    return acc.result("loss")


def gradient(
    model: nn.Module, loss_fn: nn.Module, data_or_inputs: Any, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """∇_θ L, [P] in the reference ordering, over several batches as if they were one.

    Example:
        >>> model, loss_fn = torch.nn.Linear(3, 2), torch.nn.MSELoss()
        >>> x, y = torch.randn(6, 3), torch.randn(6, 2)
        >>> loss_fn(model(x), y).backward()
        >>> expected = torch.cat([model.weight.grad.flatten(), model.bias.grad])
        >>> torch.allclose(gradient(model, loss_fn, x, y), expected)
        True
    """
    flat, adapter, batches = reference_batches(model, loss_fn, data_or_inputs, targets)
    acc = BatchSum(adapter.reduction)
    for inputs, batch_targets in batches:
        z = adapter.normalizer(checked_outputs(flat, adapter, inputs, batch_targets, "gradient"))

        def scaled_loss(theta, inputs=inputs, batch_targets=batch_targets, z=z):
            return z * loss_fn(flat(theta, inputs), batch_targets)

        acc.add(reverse_jacobian(scaled_loss, flat.theta)[0], z)
    return acc.result("gradient")


def per_sample_gradients(
    model: nn.Module, loss_fn: nn.Module, data_or_inputs: Any, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """G with rows g_n = ∇_θ ℓ_n, [N, P]: gradients of the *unscaled* per-sample losses.

    ℓ_n = Z₁ · ``loss_fn(model(x_n[None]), y_n[None])`` with Z₁ the normalizer of a batch of one, so that
    ∇_θ L = (1/Z) Σ_n g_n. Several batches are stacked in order.

    Example:
        >>> model, loss_fn = torch.nn.Linear(3, 2), torch.nn.MSELoss()
        >>> x, y = torch.randn(6, 3), torch.randn(6, 2)
        >>> g = per_sample_gradients(model, loss_fn, x, y)
        >>> g.shape, torch.allclose(g.sum(0) / 12, gradient(model, loss_fn, x, y))  # Z = N·C = 12
        (torch.Size([6, 8]), True)
    """
    flat, adapter, batches = reference_batches(model, loss_fn, data_or_inputs, targets)
    rows = []
    for inputs, batch_targets in batches:
        outputs = checked_outputs(flat, adapter, inputs, batch_targets, "per_sample_gradients")
        rows.append(
            sample_gradients(flat, adapter, inputs, batch_targets, outputs, "per_sample_gradients")
        )
    return check_finite(torch.cat(rows), "per_sample_gradients")


def sample_gradients(
    flat: FlatModel,
    adapter: LossAdapter,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    outputs: torch.Tensor,
    what: str,
) -> torch.Tensor:
    """[N, P] unscaled per-sample gradients g_n = ∇_θ ℓ_n of one checked batch.

    The rows of the Jacobian of the vector (ℓ_1, …, ℓ_N) of the *batch* function, by reverse mode: for
    independent samples these are the usual per-sample gradients; where samples interact (train-mode
    BatchNorm) they are the gradients of each sample's loss term through the whole batch.
    """
    check_dense_allocation(
        (outputs.shape[0], flat.num_params), flat.dtype, f"{what}: per-sample gradients"
    )

    def sample_losses(theta):
        return adapter.per_sample_loss(flat(theta, inputs), targets)

    return reverse_jacobian(sample_losses, flat.theta)


def jacobian(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """J with J_n = ∂f_n/∂θ, [N, C, P], where f_n is the flattened output of sample n (C entries).

    The Jacobian of the model as a function of the whole batch (samples coupled through train-mode
    BatchNorm are differentiated through the batch statistics), by reverse mode.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> x = torch.randn(4, 3)
        >>> J = jacobian(model, x)
        >>> J.shape, torch.allclose(J[:, 0, :3], x)  # ∂f_n0/∂W_0: = x_n
        (torch.Size([4, 2, 8]), True)
    """
    flat = FlatModel(model)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor, got {type(inputs).__qualname__}")
    return check_finite(sample_jacobians(flat, inputs, "jacobian"), "jacobian")


def sample_jacobians(flat: FlatModel, inputs: torch.Tensor, what: str) -> torch.Tensor:
    """[N, C, P] Jacobians of the flattened outputs of the batch function, guarded by the memory budget."""
    with torch.no_grad():
        outputs = flat(flat.theta, inputs)
    check_dense_allocation((outputs.numel(), flat.num_params), flat.dtype, f"{what}: Jacobian")
    rows = reverse_jacobian(lambda theta: flat(theta, inputs), flat.theta)
    return rows.view(outputs.shape[0], -1, flat.num_params)
