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

Only ``nn.Linear`` layers are supported. Cost per step: one forward/backward plus, per layer, an
[in, in] product; every ``period`` steps an [in, in] inverse per layer.

References:
    T. George. Factorized second order methods in neural networks. Master's thesis, Université de
    Montréal, 2017.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.guards import check_dense_allocation
from curvlab.optim.base import CurvatureOptimizer, all_finite
from curvlab.optim.hyperparameters import HyperparameterError, check_int, check_range
from curvlab.optim.linear_layers import LinearRecorder, linear_layers

__all__ = ["ACP"]


class ACP(CurvatureOptimizer):
    """Amortised centred covariance preconditioner for MLPs (see the module docstring).

    Args:
        model, loss_fn: an MLP (trainable parameters in ``nn.Linear`` only) and a supported loss.
        lr: λ > 0.
        alpha: a positive float, or ``"heuristic"``.
        eps: Tikhonov ε > 0 (``param_groups[0]["eps"]``; multiplied by 10 after a rejected step).
        period: recompute C⁻¹ every ``period`` steps.

    ``statistics()`` keys: ``loss``, ``alpha`` [layers], ``eps``, ``recomputed``, ``rejected``.

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
        lr: float = 0.1,
        alpha: float | str = "heuristic",
        eps: float = 1e-3,
        period: int = 100,
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
        )
        self.layers = linear_layers(model, type(self).__name__)
        super().__init__(model, loss_fn, defaults)
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def _raise_damping(self) -> str:
        group = self._group()
        group["eps"] *= 10.0
        return f"eps raised to {group['eps']:.3g}"

    def _alpha(self, group, output_grad: torch.Tensor, normalizer: int) -> float:
        if group["alpha"] != "heuristic":
            return float(group["alpha"])
        n = output_grad.shape[0]
        per_sample = output_grad * normalizer  # ∂ℓ_n/∂a_n
        return float(per_sample.pow(2).max()) * n / normalizer

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self._group()
        step = self.global_state["step"] + 1
        with LinearRecorder(self.layers) as rec:
            outputs = self.model(inputs)
            loss = self.adapter(outputs, targets)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        loss = loss.detach()
        if not all_finite(loss):
            return self._reject("loss", loss)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        if not all_finite(grads):
            return self._reject("gradient", loss)
        normalizer = self.adapter.normalizer(outputs)
        recompute = "inverses" not in self.global_state or (step - 1) % group["period"] == 0
        inverses = list(self.global_state.get("inverses", [None] * len(self.layers)))
        alphas = []
        updates = [torch.zeros_like(p) for p in self.params]
        for i, (name, layer) in enumerate(self.layers):
            h = rec.inputs[name]
            alpha = self._alpha(group, rec.output_grads[name], normalizer)
            alphas.append(alpha)
            if recompute:
                inverses[i] = self._covariance_inverse(h, layer.bias is not None, group["eps"] / alpha)
            scale = group["lr"] / alpha
            gw = grads[self._index[id(layer.weight)]]
            if layer.bias is not None:
                h_mean = h.mean(0)
                gb = grads[self._index[id(layer.bias)]]
                dw = -scale * (gw - torch.outer(gb, h_mean)) @ inverses[i]
                updates[self._index[id(layer.bias)]] = -scale * gb - dw @ h_mean
            else:
                dw = -scale * gw @ inverses[i]
            updates[self._index[id(layer.weight)]] = dw
        self._statistics.update(
            alpha=torch.tensor(alphas), eps=group["eps"], recomputed=float(recompute)
        )
        if not self._apply(updates, loss):
            return loss
        self.global_state["inverses"] = inverses
        return loss

    @staticmethod
    def _covariance_inverse(h: torch.Tensor, centred: bool, shift: float) -> torch.Tensor:
        """(cov(h) + shift·I)⁻¹ (centred) or (E[hhᵀ] + shift·I)⁻¹, [in, in]."""
        d = h.shape[1]
        check_dense_allocation((d, d), h.dtype, "ACP input covariance")
        z = h - h.mean(0) if centred else h
        cov = z.T @ z / h.shape[0] + shift * torch.eye(d, dtype=h.dtype, device=h.device)
        return torch.linalg.inv(cov)
