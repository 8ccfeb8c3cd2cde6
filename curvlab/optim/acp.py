"""ACP: the amortised, centred input-covariance preconditioner (George, master's thesis, §6.2–6.3).

For a linear layer a = W h + b the Gauss–Newton block is approximated by G ≈ A ⊗ αI with
A = E_n[[h; 1][h; 1]ᵀ] (the layer's input statistics) and a scalar α in place of the back-propagated
curvature. Tikhonov damping εI on G becomes ε/α on the input covariance, and inverting A blockwise gives

    C   = cov(h) + (ε/α) I                                   (centred covariance, [in, in])
    ΔW  = −(λ/α) (∇_W L − ∇_b L h̄ᵀ) C⁻¹                     (= −(λ/α) E_n[g_n (h_n − h̄)ᵀ] C⁻¹)
    Δb  = −(λ/α) ∇_b L − ΔW h̄

with h̄ the batch mean of h and g_n = ∂L/∂a_n. (The thesis prints some of these signs wrongly; these are
the signs of the blockwise inverse, as in the reference notes.) Without a bias, C is the uncentred second
moment E[hhᵀ] + ε/α and ΔW = −(λ/α) ∇_W L C⁻¹. C⁻¹ is recomputed every ``period`` steps (amortisation,
N = 100 in the thesis) from the current batch; h̄ is the current batch's.

α is either a fixed number, in curvlab's scaling (L = (1/Z) Σ ℓ_n, so for one linear layer with
'mean' MSE on C outputs the exact value is 2/C), or ``"heuristic"``: the thesis' maximum squared
per-sample output gradient of the layer, rescaled to the loss, α = (N/Z) max_{n,j} (∂ℓ_n/∂a_nj)², per
layer and per batch.

**α floor.** The heuristic α collapses where the output gradients are small (deep layers, a nearly or
exactly fitted batch: α = 0, or 1e-31 on the MNIST autoencoder at λ = 0.3), and then ε/α swamps the
covariance (ACP degrades into centred SGD) or the step divides by zero. curvlab floors the heuristic α
per layer at

    α_l ≥ max(α_min, ρ · max_k α_k),     α_min = 1e-12 (``alpha_min``),  ρ = 1e-6 (``alpha_ratio``)

so no layer's curvature scale falls more than six orders of magnitude below the largest layer's, and an
exactly fitted batch (all α = 0, zero gradients) takes a zero step instead of raising. A fixed α is the
user's choice and is used as given. ``statistics()["alpha_floored"]`` counts the layers floored. (A
floor tied to the input variance, ε/α ≤ v̄, was tried and rejected: it stalls ACP on the MNIST
autoencoder, whose well-behaved α are ~1e-5.)

Layers: ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` (``groups=1``, zero padding; h is then a receptive-field
patch and the statistics run over samples and output locations, :mod:`~curvlab.optim.linear_layers`); the
affine parameters of normalisation layers take the plain step −λ∇; other modules are refused. Cost per
step: one forward/backward plus, per layer, an [in, in] product; every ``period`` steps an [in, in]
inverse per layer.

References:
    T. George. Factorized second order methods in neural networks. Master's thesis, Université de
    Montréal, 2017.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from curvlab.optim.base import CurvatureOptimizer
from curvlab.optim.hyperparameters import HyperparameterError, check_int, check_range
from curvlab.optim.linear_layers import (
    LinearRecorder,
    centred_update,
    input_covariance_inverse,
    linear_layers,
)

__all__ = ["ACP"]


class ACP(CurvatureOptimizer):
    """Amortised centred covariance preconditioner for MLPs (see the module docstring).

    Args:
        model, loss_fn: a network of linear and convolutional layers (see the module docstring) and a
            supported loss.
        lr: λ > 0 (default 0.05; with ε = 1e-2 it decreases the loss on the tiny regression, the MNIST MLP
            and the MNIST autoencoder; 0.1 oscillates on the tiny regression).
        alpha: a positive float, or ``"heuristic"``.
        eps: Tikhonov ε > 0 (``param_groups[0]["eps"]``; multiplied by 10 after a rejected step).
        period: recompute C⁻¹ every ``period`` steps.
        alpha_min, alpha_ratio: the floor of the heuristic α (see the module docstring).

    ``statistics()`` keys: ``loss``, ``alpha`` [layers] (after the floor), ``alpha_floored`` (layers floored),
    ``eps``, ``recomputed``, ``rejected``, ``rolled_back``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 1).double()
        >>> x = torch.randn(50, 3, dtype=torch.float64) + 2.0; y = x.sum(1, keepdim=True)
        >>> opt = ACP(model, nn.MSELoss(), lr=1.0, alpha=2.0, eps=1e-12)
        >>> _ = opt.step(x, y)
        >>> bool(nn.functional.mse_loss(model(x), y) < 1e-12)       # exact Gauss-Newton step
        True
    """

    has_damping = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        *,
        lr: float = 0.05,
        alpha: float | str = "heuristic",
        eps: float = 1e-2,
        period: int = 100,
        alpha_min: float = 1e-12,
        alpha_ratio: float = 1e-6,
    ) -> None:
        if alpha != "heuristic":
            if isinstance(alpha, str):
                raise HyperparameterError(f"alpha must be a positive number or 'heuristic', got {alpha!r}")
            alpha = check_range("alpha", alpha, low=0.0, low_inclusive=False)
        defaults = dict(
            lr=check_range("lr", lr, low=0.0, low_inclusive=False),
            alpha=alpha,
            eps=check_range("eps", eps, low=0.0, low_inclusive=False),
            period=check_int("period", period),
            alpha_min=check_range("alpha_min", alpha_min, low=0.0, low_inclusive=False),
            alpha_ratio=check_range("alpha_ratio", alpha_ratio, low=0.0, high=1.0),
        )
        self.layers = linear_layers(model, type(self).__name__)
        super().__init__(model, loss_fn, defaults)
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def _raise_damping(self) -> str:
        group = self._group()
        group["eps"] *= 10.0
        return f"eps raised to {group['eps']:.3g}"

    def _alpha(self, group, output_grad: torch.Tensor | None, normalizer: int) -> float:
        if group["alpha"] != "heuristic":
            return float(group["alpha"])
        if output_grad is None:  # the layer's output does not reach the loss
            return 0.0
        n = output_grad.shape[0]
        per_sample = output_grad * normalizer  # ∂ℓ_n/∂a_n
        return float(per_sample.pow(2).max()) * n / normalizer

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self._group()
        step = self.global_state["step"] + 1
        with LinearRecorder(self.layers) as rec:
            outputs, loss, grads = self._forward_backward(inputs, targets)
        loss = loss.detach()
        rejected = self._rejected_unless_finite(loss, grads)
        if rejected is not None:
            return rejected
        normalizer = self.adapter.normalizer(outputs)
        recompute = "inverses" not in self.global_state or (step - 1) % group["period"] == 0
        inverses = list(self.global_state.get("inverses", [None] * len(self.layers)))
        alphas, raws, floored = [], [], 0
        updates = [-group["lr"] * g for g in grads]  # normalisation layers: the plain gradient step
        for name, _ in self.layers:
            raws.append(self._alpha(group, rec.output_grads.get(name), normalizer))
        finite = [a for a in raws if math.isfinite(a)]
        floor = max(group["alpha_min"], group["alpha_ratio"] * max(finite, default=0.0))
        if group["alpha"] != "heuristic":
            floor = 0.0
        for i, (name, layer) in enumerate(self.layers):
            h, raw = rec.inputs[name], raws[i]
            alpha = max(raw, floor) if math.isfinite(raw) else floor
            floored += int(alpha > raw)
            alphas.append(alpha)
            if recompute:
                inverses[i] = input_covariance_inverse(h, layer.bias is not None, group["eps"] / alpha,
                                                       "ACP input covariance")
            mean = h.mean(0) if layer.bias is not None else None
            centred_update(layer, grads, updates, self._index, mean, inverses[i], group["lr"] / alpha)
        self._statistics.update(
            alpha=torch.tensor(alphas), eps=group["eps"], recomputed=float(recompute), alpha_floored=float(floored)
        )
        if not self._apply(updates, loss):
            return loss
        self.global_state["inverses"] = inverses
        return loss
