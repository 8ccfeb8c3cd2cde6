"""The empirical Fisher: outer products of the per-sample gradients at the observed targets.

    E = (1/Z) Σ_n g_n g_nᵀ,   g_n = ∇_θ ℓ(f_n, y_n)   [P, P],

with ℓ_n the unscaled per-sample loss and Z the loss's normalizer, so E has the scaling of :func:`fisher`
(it is its plug-in version, with the observed y_n in place of samples from the model).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from curvlab.guards import check_dense_allocation
from curvlab.reference.derivatives import sample_gradients
from curvlab.reference.functional import (
    BatchSum,
    checked_outputs,
    reference_batches,
    symmetric_product,
)

__all__ = ["empirical_fisher"]


def empirical_fisher(
    model: nn.Module, loss_fn: nn.Module, data_or_inputs: Any, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """The empirical Fisher E = (1/Z) Σ_n ∇_θ ℓ_n ∇_θ ℓ_nᵀ, [P, P]; arguments as for ``hessian``.

    Example:
        >>> model, loss_fn = torch.nn.Linear(3, 2).double(), torch.nn.CrossEntropyLoss()
        >>> x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
        >>> from curvlab.reference import per_sample_gradients
        >>> g = per_sample_gradients(model, loss_fn, x, y)  # [4, 8]
        >>> torch.allclose(empirical_fisher(model, loss_fn, x, y), g.T @ g / 4)
        True
    """
    flat, adapter, batches = reference_batches(model, loss_fn, data_or_inputs, targets)
    num_params = flat.num_params
    check_dense_allocation((num_params, num_params), flat.dtype, "empirical_fisher")
    acc = BatchSum(adapter.reduction)
    for inputs, batch_targets in batches:
        outputs = checked_outputs(flat, adapter, inputs, batch_targets, "empirical_fisher")
        grads = sample_gradients(flat, adapter, inputs, batch_targets, outputs, "empirical_fisher")
        acc.add(symmetric_product(grads, grads), adapter.normalizer(outputs))
    return acc.result("empirical_fisher")
