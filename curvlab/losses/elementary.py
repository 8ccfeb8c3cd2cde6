"""The supported losses written with elementary analytic operations, for real and complex outputs.

L = (1/Z) Σ_n ℓ_n (see :mod:`curvlab.losses`), with

* MSE:            ℓ_n = Σ_c (f_nc − y_nc)²;
* cross-entropy:  ℓ_n = log Σ_c exp(f_nc − m_n) + m_n − f_{n,y_n}, m_n = max_c Re f_nc (a constant: exact);
* BCE with logits: ℓ_n = Σ_c softplus(f_nc) − y_nc f_nc, softplus(f) = f + log1p(e^{−f}) where Re f > 0,
  else log1p(e^{f}) (both branches are the same analytic function; the choice only avoids overflow).

No fused loss kernels are involved. That matters twice: the complex step needs the holomorphic extension
of the loss (PyTorch's loss kernels have no complex versions), and forward-mode AD and ``linearize``
through the fused ``mse_loss`` backward fail in torch 2.13 (an error, or a crash when tracing).
"""

from __future__ import annotations

import torch

from curvlab.errors import UnsupportedLossError
from curvlab.losses import BCEWithLogitsAdapter, CrossEntropyAdapter, LossAdapter, MSEAdapter

__all__ = ["elementary_loss"]


def elementary_loss(
    adapter: LossAdapter, outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """(1/Z) Σ_n ℓ_n from elementary operations; ``outputs`` [N, ...] real or complex, targets as for the loss.

    Targets are not checked here (check them once with ``adapter.check``): the function stays traceable.

    Example:
        >>> from curvlab.losses import loss_adapter
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> f, y = 30 * torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1])
        >>> torch.allclose(elementary_loss(loss_adapter(loss_fn), f, y), loss_fn(f, y))
        True
    """
    flat = outputs.reshape(outputs.shape[0], -1)
    if isinstance(adapter, MSEAdapter):
        total = (flat - targets.reshape(flat.shape).to(flat.dtype)).square().sum()
    elif isinstance(adapter, CrossEntropyAdapter):
        logits = outputs.reshape(outputs.shape[0], outputs.shape[1], -1)  # [N, C, T]
        shift = logits.real.amax(1, keepdim=True).detach()  # any constant shift is exact
        lse = (logits - shift).exp().sum(1).log() + shift[:, 0]
        picked = logits.gather(1, targets.reshape(outputs.shape[0], 1, -1))[:, 0]
        total = (lse - picked).sum()
    elif isinstance(adapter, BCEWithLogitsAdapter):
        positive = flat.real > 0
        softplus = torch.where(positive, flat, torch.zeros_like(flat)) + (
            torch.where(positive, -flat, flat).exp().log1p()
        )
        total = (softplus - targets.reshape(flat.shape).to(flat.dtype) * flat).sum()
    else:
        raise UnsupportedLossError(f"{adapter.name}: no elementary formula for this loss")
    return total / adapter.normalizer(outputs)
