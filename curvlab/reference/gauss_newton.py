"""The generalised Gauss-Newton matrix and the Fisher, exact and Monte Carlo, as dense [P, P] matrices.

All three share one form, with J_n = ∂f_n/∂θ [C, P] the per-sample Jacobian (:func:`jacobian`):

    M = (1/Z) Σ_n J_nᵀ A_n J_n,

and differ only in the per-sample [C, C] matrix A_n:

* :func:`ggn`        A_n = H_n = ∂²ℓ_n/∂f_n², the output Hessian of the loss (``adapter.output_hessian``);
* :func:`fisher`     A_n = E_{ŷ ~ p(y|f_n)}[g gᵀ], g = ∂ℓ(f_n, ŷ)/∂f_n, in closed form
  (:func:`curvlab.reference.predictive.gradient_second_moment`);
* :func:`fisher_mc`  A_n = (1/M) Σ_m g_m g_mᵀ with ŷ_m sampled from p(y | f_n) (``adapter.sqrt_hessian_mc``).

For the three supported (canonical-link) losses E[g gᵀ] = H_n, so ``fisher == ggn`` and ``fisher_mc``
is an unbiased estimate of both. Scaling follows the loss: 1/Z with Z = N (CrossEntropy, mean), N·C
(MSE and BCE, mean) or 1 (sum); several batches combine exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from curvlab.guards import check_dense_allocation
from curvlab.losses import LossAdapter
from curvlab.reference.derivatives import sample_jacobians
from curvlab.reference.functional import (
    BatchSum,
    checked_outputs,
    reference_batches,
    symmetric_product,
)
from curvlab.reference.predictive import gradient_second_moment

__all__ = ["fisher", "fisher_mc", "ggn"]

#: (adapter, outputs [N, ...]) -> A [N, C, C], the per-sample output-space matrix.
OutputMatrix = Callable[[LossAdapter, torch.Tensor], torch.Tensor]


def _jacobian_sandwich(
    model: nn.Module,
    loss_fn: nn.Module,
    data_or_inputs: Any,
    targets: torch.Tensor | None,
    output_matrix: OutputMatrix,
    what: str,
) -> torch.Tensor:
    """(1/Z) Σ_n J_nᵀ A_n J_n over all batches (A_n symmetric, so the result is too)."""
    flat, adapter, batches = reference_batches(model, loss_fn, data_or_inputs, targets)
    num_params = flat.num_params
    check_dense_allocation((num_params, num_params), flat.dtype, what)
    acc = BatchSum(adapter.reduction)
    for inputs, batch_targets in batches:
        outputs = checked_outputs(flat, adapter, inputs, batch_targets, what)
        jac = sample_jacobians(flat, inputs, what).flatten(0, 1)  # [N·C, P]
        blocks = output_matrix(adapter, outputs)  # [N, C, C]
        weighted = torch.bmm(blocks, jac.view(*blocks.shape[:2], num_params)).flatten(0, 1)
        acc.add(symmetric_product(jac, weighted), adapter.normalizer(outputs))
    return acc.result(what)


def ggn(
    model: nn.Module, loss_fn: nn.Module, data_or_inputs: Any, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """The generalised Gauss-Newton matrix G = (1/Z) Σ_n J_nᵀ H_n J_n, [P, P].

    It is the Hessian of the loss with the model linearised in θ: the Gauss-Newton part of
    :func:`~curvlab.reference.hessian`. Arguments as for :func:`~curvlab.reference.hessian`.

    Example:
        >>> model, loss_fn = torch.nn.Linear(3, 2).double(), torch.nn.CrossEntropyLoss()
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
        >>> from curvlab.reference import hessian
        >>> torch.allclose(ggn(model, loss_fn, x, y), hessian(model, loss_fn, x, y))  # linear model
        True
    """
    return _jacobian_sandwich(
        model, loss_fn, data_or_inputs, targets, lambda a, f: a.output_hessian(f.detach()), "ggn"
    )


def fisher(
    model: nn.Module, loss_fn: nn.Module, data_or_inputs: Any, targets: torch.Tensor | None = None
) -> torch.Tensor:
    """The exact Fisher F = (1/Z) Σ_n E_{ŷ ~ p(y|f_n)}[∇_θ ℓ(f_n, ŷ) ∇_θ ℓ(f_n, ŷ)ᵀ], [P, P].

    The expectation over the model's predictive distribution is taken in closed form (see
    :mod:`curvlab.reference.predictive`); the targets only select the samples' normalisation and are
    checked, not used. Equals :func:`ggn` for the supported losses.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> loss_fn = nn.BCEWithLogitsLoss()
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.rand(5, 2, dtype=torch.float64).round()
        >>> torch.allclose(fisher(model, loss_fn, x, y), ggn(model, loss_fn, x, y))
        True
    """
    return _jacobian_sandwich(
        model, loss_fn, data_or_inputs, targets, gradient_second_moment, "fisher"
    )


def fisher_mc(
    model: nn.Module,
    loss_fn: nn.Module,
    data_or_inputs: Any,
    targets: torch.Tensor | None = None,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte Carlo Fisher (1/Z) Σ_n (1/M) Σ_m ∇_θ ℓ(f_n, ŷ_nm) ∇_θ ℓ(f_n, ŷ_nm)ᵀ, ŷ_nm ~ p(y | f_n), [P, P].

    Unbiased for :func:`fisher`; its error shrinks as 1/√M. The per-sample parameter gradients are
    J_nᵀ g_nm (chain rule), with g_nm = ∂ℓ(f_n, ŷ_nm)/∂f_n. Batches draw from ``generator`` in order.

    Args:
        mc_samples: M ≥ 1, targets drawn per sample.
        generator: the random source (``None``: torch's global generator).
        Others as for :func:`~curvlab.reference.hessian`.

    Example:
        >>> model, loss_fn = torch.nn.Linear(3, 2).double(), torch.nn.MSELoss(reduction="sum")
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
        >>> gen = torch.Generator().manual_seed(0)
        >>> F = fisher_mc(model, loss_fn, x, y, mc_samples=20000, generator=gen)
        >>> exact = fisher(model, loss_fn, x, y)
        >>> bool((F - exact).abs().max() < 0.1 * exact.abs().max())
        True
    """
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive int, got {mc_samples!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__qualname__}"
        )

    def sampled_moment(adapter: LossAdapter, outputs: torch.Tensor) -> torch.Tensor:
        sqrt = adapter.sqrt_hessian_mc(outputs, mc_samples, generator)  # [N, C, M]
        return sqrt @ sqrt.transpose(1, 2)

    return _jacobian_sandwich(model, loss_fn, data_or_inputs, targets, sampled_moment, "fisher_mc")
