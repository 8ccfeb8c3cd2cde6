"""Closed-form second moments of the output gradient under the model's predictive distribution.

Each supported loss is a negative log-likelihood, ℓ(f, y) = −log p(y | f) + const, and the Fisher
needs, per sample,

    F_n = E_{ŷ ~ p(y | f_n)} [ g(ŷ) g(ŷ)ᵀ ],      g(ŷ) = ∂ℓ(f_n, ŷ)/∂f_n ∈ R^C        [N, C, C]

computed here from the distribution itself, *not* from the loss Hessian (so the reference tests of
``fisher == ggn`` compare two different computations):

* ``CrossEntropyLoss``: ŷ ~ Categorical(p), p = softmax(f_n), g(c) = p − e_c. The expectation is the
  finite sum Σ_c p_c g(c) g(c)ᵀ over all C classes.
* ``BCEWithLogitsLoss``: independent ŷ_i ~ Bernoulli(σ_i), g_i(ŷ) = σ_i − ŷ_i. Independence gives
  E[g_i g_j] = E[g_i] E[g_j] for i ≠ j, and E[g_i²] = σ_i (σ_i − 1)² + (1 − σ_i) σ_i² on the diagonal,
  both by summing over the two outcomes.
* ``MSELoss``: ℓ = ‖f_n − ŷ‖² = −log N(ŷ; f_n, ½ I) + const, so g = 2 (f_n − ŷ) ~ N(0, 4 · ½ I) and
  F_n = 4 Cov(ŷ) = 2 I.

Example:
    >>> from curvlab.losses import loss_adapter
    >>> adapter = loss_adapter(torch.nn.CrossEntropyLoss())
    >>> f = torch.randn(2, 4, dtype=torch.float64)
    >>> torch.allclose(gradient_second_moment(adapter, f), adapter.output_hessian(f))
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from curvlab.errors import UnsupportedLossError
from curvlab.losses import BCEWithLogitsAdapter, CrossEntropyAdapter, LossAdapter, MSEAdapter

__all__ = ["MSE_PREDICTIVE_VARIANCE", "gradient_second_moment"]

#: Variance of the Gaussian predictive distribution for which ‖f − y‖² is the negative log-likelihood.
MSE_PREDICTIVE_VARIANCE = 0.5


def _categorical(outputs: torch.Tensor) -> torch.Tensor:
    p = outputs.reshape(outputs.shape[0], outputs.shape[1], -1).softmax(1)  # [N, C, T]
    n, c, t = p.shape
    classes = torch.eye(c, dtype=p.dtype, device=p.device)  # e_c, [C, C]
    g = p[:, None, :, :] - classes[None, :, :, None]  # g(ĉ) per position, [N, C(ĉ), C, T]
    # E[g_t g_uᵀ] = E[g_t] E[g_u]ᵀ = 0 for t ≠ u: positions draw independently and E[g] = 0.
    moment = torch.einsum("nkt,nkit,nkjt->nijt", p, g, g)  # [N, C, C, T]
    eye_t = torch.eye(t, dtype=p.dtype, device=p.device)
    return torch.einsum("nijt,tu->nitju", moment, eye_t).reshape(n, c * t, c * t)


def _bernoulli(outputs: torch.Tensor) -> torch.Tensor:
    s = outputs.flatten(1).sigmoid()  # P(ŷ_i = 1), [N, C]
    g_one, g_zero = s - 1, s  # g_i at ŷ_i = 1 and ŷ_i = 0
    mean = s * g_one + (1 - s) * g_zero
    second = s * g_one**2 + (1 - s) * g_zero**2
    moment = mean[:, :, None] * mean[:, None, :]
    return moment - torch.diag_embed(moment.diagonal(dim1=1, dim2=2)) + torch.diag_embed(second)


def _gaussian(outputs: torch.Tensor) -> torch.Tensor:
    n, c = outputs.shape[0], outputs[0].numel()
    covariance = MSE_PREDICTIVE_VARIANCE * torch.eye(c, dtype=outputs.dtype, device=outputs.device)
    return (4 * covariance).expand(n, c, c).clone()  # g = 2 (f − ŷ): Cov(g) = 4 Cov(ŷ), E[g] = 0


_MOMENTS: dict[type[LossAdapter], Callable[[torch.Tensor], torch.Tensor]] = {
    CrossEntropyAdapter: _categorical,
    BCEWithLogitsAdapter: _bernoulli,
    MSEAdapter: _gaussian,
}


def gradient_second_moment(adapter: LossAdapter, outputs: torch.Tensor) -> torch.Tensor:
    """F_n = E_{ŷ ~ p(y|f_n)}[g gᵀ], [N, C, C], unscaled by 1/Z (see the module docstring).

    Args:
        adapter: the loss adapter (:func:`curvlab.losses.loss_adapter`).
        outputs: model outputs f, [N, ...]; C is the number of entries per sample.
    """
    moment = _MOMENTS.get(type(adapter))
    if moment is None:
        raise UnsupportedLossError(
            f"{adapter.name}: no closed-form predictive distribution is known"
        )
    return moment(outputs.detach())
