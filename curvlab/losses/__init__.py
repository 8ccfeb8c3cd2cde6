"""Loss adapters: per-sample output Hessians, their square roots and predictive sampling.

For a loss ``loss_fn`` with reduction ``r`` on model outputs f ∈ R^{N×C} (C = all non-batch entries,
flattened), every supported loss is

    L = (1/Z) Σ_n ℓ(f_n, y_n),      Z = N (CE mean), N·C (MSE/BCE mean), 1 (sum),

where ℓ sums over the sample's output entries. An adapter gives, per sample and *unscaled by 1/Z*:

* ``output_hessian``   H_n = ∂²ℓ/∂f_n²                                        [N, C, C]
* ``sqrt_hessian``     S_n with S_n S_nᵀ = H_n                                 [N, C, C]
* ``sample_targets``   ŷ ~ p(y | f_n), so that E[∇ℓ(f, ŷ) ∇ℓ(f, ŷ)ᵀ] = H_n      [M, N, ...]
* ``sqrt_hessian_mc``  columns ∇_f ℓ(f_n, ŷ_m)/√M, an unbiased MC square root   [N, C, M]

and ``normalizer(outputs) = Z``. Curvature matrices over several batches are combined as
Σ_b Z_b M_b / Σ_b Z_b (mean) or Σ_b M_b (sum), which is exact: the batches behave as one.

========================  =======================  =====================  ===========================
loss                      H_n                       S_n                    predictive distribution
========================  =======================  =====================  ===========================
``MSELoss``               2 I                       √2 I                   N(f_n, ½ I)
``CrossEntropyLoss``      diag(p) − p pᵀ            diag(√p) − p √pᵀ       Categorical(softmax f_n)
``BCEWithLogitsLoss``     diag(σ(1−σ))              diag(√(σ(1−σ)))        Bernoulli(σ(f_n))
========================  =======================  =====================  ===========================

Because all three are canonical-link (exponential-family) losses, the Fisher equals the GGN.

Example:
    >>> import torch
    >>> adapter = loss_adapter(torch.nn.CrossEntropyLoss())
    >>> f = torch.randn(4, 3, dtype=torch.float64)
    >>> s = adapter.sqrt_hessian(f)
    >>> torch.allclose(s @ s.transpose(1, 2), adapter.output_hessian(f))
    True
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctests below use it)
from torch import nn

from curvlab.errors import UnsupportedLossError
from curvlab.losses.autodiff import AutodiffAdapter, PerSampleLoss
from curvlab.losses.base import LossAdapter
from curvlab.losses.bce import BCEWithLogitsAdapter
from curvlab.losses.cross_entropy import CrossEntropyAdapter, NLLAdapter
from curvlab.losses.mse import MSEAdapter

__all__ = [
    "AutodiffAdapter",
    "BCEWithLogitsAdapter",
    "CrossEntropyAdapter",
    "LossAdapter",
    "MSEAdapter",
    "NLLAdapter",
    "PerSampleLoss",
    "combine_weight",
    "loss_adapter",
    "register_loss",
]


_ADAPTERS: dict[type, type[LossAdapter]] = {
    nn.MSELoss: MSEAdapter,
    nn.CrossEntropyLoss: CrossEntropyAdapter,
    nn.NLLLoss: NLLAdapter,
    nn.BCEWithLogitsLoss: BCEWithLogitsAdapter,
    PerSampleLoss: AutodiffAdapter,
}


def register_loss(loss_type: type, adapter: type[LossAdapter]) -> None:
    """Make :func:`loss_adapter` (and so every curvlab computation) use ``adapter`` for ``loss_type``.

    Example:
        >>> class Twice(MSEAdapter):
        ...     pass
        >>> register_loss(nn.MSELoss, Twice); type(loss_adapter(nn.MSELoss())).__name__
        'Twice'
        >>> register_loss(nn.MSELoss, MSEAdapter)
    """
    if not (isinstance(adapter, type) and issubclass(adapter, LossAdapter)):
        raise TypeError(f"adapter must be a LossAdapter subclass, got {adapter!r}")
    _ADAPTERS[loss_type] = adapter


def loss_adapter(loss_fn: nn.Module | LossAdapter) -> LossAdapter:
    """The adapter for ``loss_fn``; raises :class:`UnsupportedLossError` naming anything unsupported.

    Example:
        >>> loss_adapter(torch.nn.MSELoss(reduction="sum")).normalizer(torch.zeros(5, 2))
        1
        >>> loss_adapter(torch.nn.L1Loss())
        Traceback (most recent call last):
        ...
        curvlab.errors.UnsupportedLossError: torch.nn.modules.loss.L1Loss is not supported: use MSELoss, CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss or curvlab.losses.PerSampleLoss(fn) (any per-sample loss, by autodiff)
    """
    if isinstance(loss_fn, LossAdapter):
        return loss_fn
    adapter = _ADAPTERS.get(type(loss_fn))
    if adapter is None:
        qualname = f"{type(loss_fn).__module__}.{type(loss_fn).__qualname__}"
        raise UnsupportedLossError(
            f"{qualname} is not supported: use MSELoss, CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss or "
            "curvlab.losses.PerSampleLoss(fn) (any per-sample loss, by autodiff)"
        )
    return adapter(loss_fn)


def combine_weight(normalizers: list[int] | tuple[int, ...], reduction: str) -> list[float]:
    """Weights w_b so that Σ_b w_b M_b equals the matrix of all batches as one (see module docstring).

    Example:
        >>> combine_weight([32, 32], "mean"), combine_weight([32, 32], "sum")
        ([0.5, 0.5], [1.0, 1.0])
    """
    if reduction == "sum":
        return [1.0] * len(normalizers)
    total = sum(normalizers)
    return [z / total for z in normalizers]

