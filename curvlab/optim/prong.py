"""PRONG: projected natural gradient descent on whitened layer inputs (Desjardins et al. 2015).

Natural neural networks reparametrise every linear layer a = W h + b as

    a = V U (h − μ) + d,        U = (Σ + εI)^(−1/2),  μ = E[h],  Σ = cov(h),

so the layer's effective input h_e = U (h − μ) is centred with (nearly) identity covariance and the
input factor of the layer's Fisher block is (nearly) the identity: plain SGD on (V, d) approximates the
natural gradient. Every ``period`` steps (the amortisation T) μ and U are re-estimated from the current
batch and (V, d) are re-solved so that the network computes the same function (the "projection"); in
between, (V, d) take SGD steps of length η.

curvlab never changes the model: it keeps W = V U and b = d − W μ and takes the same steps in these
coordinates. With μ and U fixed, ∂L/∂V = C Uᵀ and ∂L/∂d = ∇_b L, where C = ∇_W L − ∇_b L μᵀ
= E_n[g_n (h_n − μ)ᵀ], so one SGD step on (V, d) is, exactly,

    ΔW = −η C (Σ + εI)⁻¹,        Δb = −η ∇_b L − ΔW μ

(U² = (Σ + εI)⁻¹: no matrix square root is needed). A layer without a bias is whitened without
centring: U = (E[hhᵀ] + εI)^(−1/2), ΔW = −η ∇_W L (E[hhᵀ] + εI)⁻¹. The difference from
:class:`~curvlab.optim.ACP` (George §6.4.2 compares the two): μ is the mean of the last
reparametrisation, not the current batch's, there is no output-gradient scale α, and ε is added to the
covariance itself.

Layers: ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, zero padding), whose whitened input is
the receptive-field patch, with μ and Σ over samples and output locations (the paper's whitened
convolutions; :mod:`~curvlab.optim.linear_layers`); normalisation layers' affine parameters take the plain
step −η∇; other modules are refused. Cost per step: one forward/backward and an [out, in] × [in, in]
product per layer; every ``period`` steps an [in, in] inverse per layer.

References:
    G. Desjardins, K. Simonyan, R. Pascanu, K. Kavukcuoglu. Natural neural networks. NeurIPS 2015.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.optim.base import CurvatureOptimizer
from curvlab.optim.hyperparameters import check_int, check_range
from curvlab.optim.linear_layers import (
    LinearRecorder,
    centred_update,
    input_covariance_inverse,
    linear_layers,
)

__all__ = ["PRONG"]


class PRONG(CurvatureOptimizer):
    """Natural neural networks' projected natural gradient for MLPs (see the module docstring).

    Args:
        model, loss_fn: a network of linear and convolutional layers (see the module docstring) and a
            supported loss.
        lr: η > 0, the SGD step on the whitened parameters (default 0.3: with ε = 0.1 it decreases the loss on
            the tiny regression, the MNIST MLP and the MNIST autoencoder; 1.0 diverges on the tiny regression,
            0.1 barely moves the autoencoder).
        eps: ε > 0, the whitening's regulariser (``param_groups[0]["eps"]``; ×10 after a rejected step;
            0.01 with η = 0.3 diverges on the tiny regression).
        period: re-estimate μ and U (reparametrise) every ``period`` steps (T).

    ``statistics()`` keys: ``loss``, ``eps``, ``reparametrised``, ``rejected``, ``rolled_back``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 1).double()
        >>> x = torch.randn(200, 3, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1]) + 5.0
        >>> y = x @ torch.tensor([[1.0], [0.1], [10.0]], dtype=torch.float64)
        >>> opt = PRONG(model, nn.MSELoss(), lr=0.5, eps=1e-9)       # whitened: one scale fits all
        >>> losses = [float(opt.step(x, y)) for _ in range(10)]
        >>> losses[-1] < 1e-6 * losses[0]
        True
    """

    has_damping = True

    def __init__(self, model: nn.Module, loss_fn: nn.Module, *, lr: float = 0.3, eps: float = 0.1,
                 period: int = 100) -> None:
        defaults = dict(
            lr=check_range("lr", lr, low=0.0, low_inclusive=False),
            eps=check_range("eps", eps, low=0.0, low_inclusive=False),
            period=check_int("period", period),
        )
        self.layers = linear_layers(model, type(self).__name__)
        super().__init__(model, loss_fn, defaults)
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def _raise_damping(self) -> str:
        group = self._group()
        group["eps"] *= 10.0
        self.global_state.pop("whitening", None)  # reparametrise with the larger ε at the next step
        return f"eps raised to {group['eps']:.3g}"

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self._group()
        step = self.global_state["step"] + 1
        with LinearRecorder(self.layers, record_grads=False) as rec:
            _, loss, grads = self._forward_backward(inputs, targets)
        loss = loss.detach()
        rejected = self._rejected_unless_finite(loss, grads)
        if rejected is not None:
            return rejected
        reparametrise = "whitening" not in self.global_state or (step - 1) % group["period"] == 0
        whitening = list(self.global_state.get("whitening", [None] * len(self.layers)))
        updates = [-group["lr"] * g for g in grads]  # normalisation layers: the plain gradient step
        for i, (name, layer) in enumerate(self.layers):
            h, centred = rec.inputs[name], layer.bias is not None
            if reparametrise:
                mean = h.mean(0) if centred else None
                whitening[i] = (mean, input_covariance_inverse(h, centred, group["eps"], "PRONG input covariance"))
            centred_update(layer, grads, updates, self._index, *whitening[i], group["lr"])
        self._statistics.update(eps=group["eps"], reparametrised=float(reparametrise))
        if not self._apply(updates, loss):
            return loss
        self.global_state["whitening"] = whitening
        return loss
