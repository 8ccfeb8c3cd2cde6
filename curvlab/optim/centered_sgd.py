"""Centred gradient descent (George, master's thesis, §6.3.1, algorithm 3).

For every linear layer a = W h + b the weight update is the gradient with the layer input centred on
the batch mean h̄; the bias takes the plain gradient step:

    ΔW = −λ E_n[g_n (h_n − h̄)ᵀ] = −λ (∇_W L − ḡ h̄ᵀ),    ḡ = Σ_n ∂L/∂a_n  (= ∇_b L with a bias)
    Δb = −λ ∇_b L

This is ACP (:class:`~curvlab.optim.ACP`) without the inverse covariance, isolating the centring trick.
Layers: ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, zero padding; h is a receptive-field
patch, the means run over samples and output locations); normalisation layers' affine parameters take the
plain step; other modules are refused. There is no damping, so a non-finite loss, gradient or step
raises :class:`~curvlab.errors.NonFiniteError` with the parameters untouched.

References:
    T. George. Factorized second order methods in neural networks. Master's thesis, 2017.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.optim.base import CurvatureOptimizer
from curvlab.optim.hyperparameters import check_range
from curvlab.optim.linear_layers import LinearRecorder, linear_layers, weight_matrix

__all__ = ["CenteredSGD"]


class CenteredSGD(CurvatureOptimizer):
    """Gradient descent with input-centred weight updates (see the module docstring).

    Args:
        model, loss_fn: a network of linear and convolutional layers (see the module docstring) and a
            supported loss.
        lr: λ > 0 (default 0.3: 0.01 barely moved, 0.86–0.98 of the initial loss after 10–30 steps).

    ``statistics()`` keys: ``loss``, ``input_mean_norm`` [layers] (‖h̄‖), ``rejected``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
        >>> x = torch.randn(32, 2) + 1.0; y = x.prod(1, keepdim=True)
        >>> opt = CenteredSGD(model, nn.MSELoss(), lr=0.1)
        >>> losses = [float(opt.step(x, y)) for _ in range(30)]
        >>> losses[-1] < losses[0]
        True
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, *, lr: float = 0.3) -> None:
        defaults = dict(lr=check_range("lr", lr, low=0.0, low_inclusive=False))
        self.layers = linear_layers(model, type(self).__name__)
        super().__init__(model, loss_fn, defaults)
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self._group()
        with LinearRecorder(self.layers) as rec:
            _, loss, grads = self._forward_backward(inputs, targets)
        loss = loss.detach()
        rejected = self._rejected_unless_finite(loss, grads)
        if rejected is not None:
            return rejected
        updates = [-group["lr"] * g for g in grads]
        norms = []
        for name, layer in self.layers:
            h_mean = rec.inputs[name].mean(0)
            g_sum = rec.output_grads[name].sum(0)
            w = self._index[id(layer.weight)]
            centred = weight_matrix(layer, grads[w]) - torch.outer(g_sum, h_mean)
            updates[w] = -group["lr"] * centred.reshape(layer.weight.shape)
            norms.append(float(h_mean.norm()))
        self._statistics["input_mean_norm"] = torch.tensor(norms)
        self._apply(updates, loss)
        return loss
