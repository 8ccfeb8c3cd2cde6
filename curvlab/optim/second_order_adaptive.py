"""SecondOrderAdaptive: McAllester's speculative "second-order Adam" (EXPERIMENTAL).

McAllester's lecture notes (TTIC 31230, 2017) sketch, without an algorithm box or experiments, an Adam
variant that tracks the *gradient drift* ġ = H(η ⊙ ĝ) — how much the gradient changes per step — with
Hessian-vector products, and uses it to set per-coordinate step sizes η. The slides leave constants and
some symbols ambiguous; this is our exact reading. With g the batch gradient at step t (all operations
per coordinate i):

1. second moment:      s ← β s + (1 − β) g²                       (s₁ = g²)
2. gradient noise:     σ² = max(s − ĝ², 0)                          (variance of the batch gradient)
3. mixing weight:      r = clip(ĝ² / (4σ²), 1 − β₁, 1)              (the slides' B/k with k = (2σ/|ĝ|)²
                                                                     samples needed; B cancels because σ is
                                                                     the batch gradient's spread; r = 1 if σ = 0)
4. gradient estimate:  ĝ ← (1 − r) ĝ + r g                          (ĝ₁ = g)
5. step:               v = η ⊙ ĝ
6. drift:              d = H v  (Hessian-vector product on the batch, at θ before the step)
                       ḋ ← β₂ ḋ + (1 − β₂) d                        (ḋ₁ = d)
7. curvature along v:  L = |ḋ| / |v|                               (= H_ii for a diagonal Hessian)
8. step sizes:         η* = c · r / L,  capped at ``max_growth`` · η;  η ← β₂ η + (1 − β₂) η*
                       (the slides' η = (1/2L)(B/k) with c = ``step_fraction`` = ½; coordinates with
                       v = 0 or L = 0 keep their η)
9. update:             θ ← θ − v

On a full-batch quadratic with diagonal Hessian (σ = 0, r = 1) η → c / H_ii: a damped diagonal Newton
step. The method has no damping: a non-finite loss, gradient or step raises
:class:`~curvlab.errors.NonFiniteError` with the parameters untouched. Cost per step: one gradient with
``create_graph=True`` and one Hessian-vector product (≈ 2–3 gradients).

References:
    D. McAllester. Second order optimization methods. TTIC 31230 lecture notes, 2017.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.optim.base import CurvatureOptimizer, all_finite
from curvlab.optim.hyperparameters import check_range

__all__ = ["SecondOrderAdaptive"]


class SecondOrderAdaptive(CurvatureOptimizer):
    """Experimental second-order Adam of McAllester (see the module docstring for exactly what it computes).

    Args:
        model, loss_fn: the network and a supported loss.
        lr: the initial per-coordinate step size η₀ > 0 (default 0.2, adapted per coordinate from there; 1e-3
            barely moved: 0.9–1.0 of the initial loss after 10–30 steps; ``param_groups[0]["lr"]``; a scheduler changing
            it rescales all η proportionally from the next step on).
        beta: β for the second moment s; beta1: 1 − β₁ is the floor of the mixing weight r;
        beta2: β₂ for the drift and step-size averages.
        step_fraction: c in η* = c r / L (½ in the notes).
        max_growth: η* ≤ max_growth · η.

    ``statistics()`` keys: ``loss``, ``lr_mean``, ``lr_max`` (over η), ``mixing_mean`` (mean r),
    ``drift_norm`` (‖ḋ‖), ``rejected``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 1).double()
        >>> x = torch.randn(40, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64)
        >>> y = x.sum(1, keepdim=True)
        >>> opt = SecondOrderAdaptive(model, nn.MSELoss(), lr=1e-3)
        >>> losses = [float(opt.step(x, y)) for _ in range(40)]
        >>> losses[-1] < 0.1 * losses[0]
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        *,
        lr: float = 0.2,
        beta: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.9,
        step_fraction: float = 0.5,
        max_growth: float = 2.0,
    ) -> None:
        defaults = dict(
            lr=check_range("lr", lr, low=0.0, low_inclusive=False),
            beta=check_range("beta", beta, low=0.0, high=1.0, high_inclusive=False),
            beta1=check_range("beta1", beta1, low=0.0, high=1.0, high_inclusive=False),
            beta2=check_range("beta2", beta2, low=0.0, high=1.0, high_inclusive=False),
            step_fraction=check_range("step_fraction", step_fraction, low=0.0, low_inclusive=False),
            max_growth=check_range("max_growth", max_growth, low=1.0),
        )
        super().__init__(model, loss_fn, defaults)

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self._group()
        state = self.global_state
        loss, grads = self._loss_and_grad(inputs, targets, create_graph=True)
        if not all_finite(loss.detach()):
            return self._reject("loss", loss.detach())
        g = torch.cat([gr.reshape(-1) for gr in grads])
        if not all_finite(g.detach()):
            return self._reject("gradient", loss.detach())
        gd = g.detach()
        first = "g_hat" not in state
        if first:
            s, g_hat, r = gd.pow(2), gd.clone(), torch.ones_like(gd)
            eta = torch.full_like(gd, group["lr"])
        else:
            s = group["beta"] * state["s"] + (1 - group["beta"]) * gd.pow(2)
            g_hat = state["g_hat"]
            var = (s - g_hat.pow(2)).clamp_min(0)
            ratio = torch.where(var > 0, g_hat.pow(2) / (4 * var), torch.ones_like(var))
            r = ratio.clamp(1 - group["beta1"], 1.0)
            g_hat = (1 - r) * g_hat + r * gd
            eta = state["eta"] * (group["lr"] / state["lr"])  # follow a scheduler's change of lr
        v = eta * g_hat
        differentiable = [(gr, vv) for gr, vv in zip(grads, self.partition_like(v), strict=True) if gr.requires_grad]
        if differentiable:
            outs, vecs = zip(*differentiable, strict=True)
            hv = torch.autograd.grad(outs, self.params, grad_outputs=vecs, allow_unused=True)
            d = torch.cat([
                torch.zeros_like(p).reshape(-1) if h is None else h.reshape(-1) for p, h in zip(self.params, hv, strict=True)
            ])
        else:  # the loss is linear in the parameters
            d = torch.zeros_like(v)
        loss = loss.detach()
        drift = d if first else group["beta2"] * state["drift"] + (1 - group["beta2"]) * d
        curvature = drift.abs() / v.abs()
        valid = (v != 0) & (curvature > 0) & torch.isfinite(curvature)
        target = torch.where(valid, group["step_fraction"] * r / curvature, eta)
        target = torch.minimum(target, group["max_growth"] * eta)
        new_eta = group["beta2"] * eta + (1 - group["beta2"]) * target
        if not all_finite([v, new_eta, drift]):
            return self._reject("step", loss)
        offset, updates = 0, []
        for p in self.params:
            updates.append(-v[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        if not self._apply(updates, loss):
            return loss
        state.update(s=s, g_hat=g_hat, drift=drift, eta=new_eta, lr=group["lr"])
        self._statistics.update(
            lr_mean=float(new_eta.mean()), lr_max=float(new_eta.max()), mixing_mean=float(r.mean()),
            drift_norm=float(drift.norm()),
        )
        return loss

    def partition_like(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat [P] vector into tensors shaped like the parameters."""
        out, offset = [], 0
        for p in self.params:
            out.append(vector[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return out
