"""``nn.MSELoss``: ℓ_n = ‖f_n − y_n‖², H_n = 2I, Gaussian predictive N(f_n, ½ I)."""

from __future__ import annotations

import torch

from curvlab.errors import UnsupportedLossError
from curvlab.losses.base import LossAdapter


class MSEAdapter(LossAdapter):
    """``nn.MSELoss``: ℓ_n = ‖f_n − y_n‖², H_n = 2I."""

    def check(self, outputs, targets):
        super().check(outputs, targets)
        if targets.shape != outputs.shape:
            raise UnsupportedLossError(
                f"{self.name}: targets {tuple(targets.shape)} must match outputs {tuple(outputs.shape)} "
                "(no broadcasting)"
            )

    def _per_sample_loss(self, outputs, targets):
        return (outputs - targets).pow(2).sum(1)

    def _output_gradient(self, outputs, targets):
        return 2 * (outputs - targets)

    def output_hessian(self, outputs):
        n, c = outputs.shape[0], self.num_outputs(outputs)
        eye = torch.eye(c, dtype=outputs.dtype, device=outputs.device)
        return (2 * eye).expand(n, c, c).clone()

    def shared_sqrt_hessian(self, outputs):
        c = self.num_outputs(outputs)
        return 2**0.5 * torch.eye(c, dtype=outputs.dtype, device=outputs.device)

    def output_hessian_sum(self, outputs):
        c = self.num_outputs(outputs)
        return 2.0 * outputs.shape[0] * torch.eye(c, dtype=outputs.dtype, device=outputs.device)

    def output_hessian_product(self, outputs, u):
        return 2 * u

    def sqrt_hessian(self, outputs):
        return self.output_hessian(outputs) / 2**0.5

    symmetric_sqrt_hessian = sqrt_hessian

    def sample_targets(self, outputs, mc_samples=1, generator=None):
        noise = torch.randn(
            (mc_samples, *outputs.shape), dtype=outputs.dtype, device=outputs.device, generator=generator
        )
        return outputs.detach() + noise * 0.5**0.5
