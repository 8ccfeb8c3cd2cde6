"""``nn.BCEWithLogitsLoss``: ℓ_n = Σ_d softplus(f_nd) − y_nd f_nd, H_n = diag(σ(1−σ)), Bernoulli predictive."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.errors import UnsupportedLossError
from curvlab.losses.base import LossAdapter


class BCEWithLogitsAdapter(LossAdapter):
    """``nn.BCEWithLogitsLoss``: ℓ_n = Σ_d softplus(f_nd) − y_nd f_nd, H_n = diag(σ(1−σ))."""

    def __init__(self, loss_fn: nn.BCEWithLogitsLoss):
        super().__init__(loss_fn)
        if loss_fn.weight is not None:
            raise UnsupportedLossError(f"{self.name}: weight=... is not supported")
        if loss_fn.pos_weight is not None:
            raise UnsupportedLossError(f"{self.name}: pos_weight=... is not supported")

    def check(self, outputs, targets):
        super().check(outputs, targets)
        if targets.shape != outputs.shape:
            raise UnsupportedLossError(
                f"{self.name}: targets {tuple(targets.shape)} must match outputs {tuple(outputs.shape)}"
            )
        if targets.numel() and not bool(((targets >= 0) & (targets <= 1)).all()):
            raise UnsupportedLossError(
                f"{self.name}: targets must be probabilities in [0, 1], got values from "
                f"{float(targets.min()):g} to {float(targets.max()):g}" + (" and NaN" if bool(targets.isnan().any()) else "")
            )

    def _per_sample_loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), reduction="none").sum(1)

    def _output_gradient(self, outputs, targets):
        return outputs.sigmoid() - targets.to(outputs.dtype)

    def output_hessian(self, outputs):
        s = outputs.flatten(1).sigmoid()
        return torch.diag_embed(s * (1 - s))

    def output_hessian_sum(self, outputs):
        s = outputs.flatten(1).sigmoid()
        return torch.diag((s * (1 - s)).sum(0))

    def output_hessian_product(self, outputs, u):
        s = outputs.flatten(1).sigmoid()
        return s * (1 - s) * u

    def sqrt_hessian(self, outputs):
        s = outputs.flatten(1).sigmoid()
        return torch.diag_embed((s * (1 - s)).sqrt())

    symmetric_sqrt_hessian = sqrt_hessian

    def sample_targets(self, outputs, mc_samples=1, generator=None):
        p = outputs.detach().sigmoid().expand(mc_samples, *outputs.shape)
        return torch.bernoulli(p, generator=generator)
