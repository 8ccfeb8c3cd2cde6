"""The rule for ``nn.Linear`` on inputs [N, I]: y = W x + b, W [O, I], b [O].

Per sample n and factor column k (V_nk ∈ R^O at the output):

* input side:       Jᵀ V = Wᵀ V;  Hessians Wᵀ H W (linear: no residual)
* parameter side:   Jθᵀ V_nk = (V_nk x_nᵀ, V_nk)  (weight flattened row-major, then bias)
* diagonal:         Σ_nk V_nk² x_n²ᵀ (weight), Σ_nk V_nk² (bias)  — no per-sample gradients formed
* Hessian block:    Σ_n (x̃_n x̃_nᵀ) ⊗ H_n  (x̃ = [x; 1]), diagonal Σ_n diag(H_n) x_n²ᵀ
* Kronecker:        A = Σ_n x̃_n x̃_nᵀ (divided by N), G = Σ_nk V_nk V_nkᵀ; bias convention
  "augmented": the bias is the last input column of [W b], weight–bias cross terms included.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.engine.rules.base import ParameterRule, Record
from curvlab.engine.rules.gram import gram
from curvlab.errors import UnsupportedModuleError

__all__ = ["LinearRule"]


class LinearRule(ParameterRule):
    """``nn.Linear`` with 2-D inputs (see the module docstring)."""

    has_kronecker = True
    backprop_allocates = True

    def check_call(self, record: Record) -> None:
        if record.inputs.ndim != 2:
            raise UnsupportedModuleError(
                f"module {record.describe()} got input of shape {tuple(record.inputs.shape)}; only [N, in] "
                "inputs are supported (extra dimensions share the weight across positions)"
            )

    def kronecker_supported(self, module: nn.Module) -> bool:
        return module.weight.requires_grad

    def _augmented(self, record: Record) -> torch.Tensor:
        x = record.inputs
        if "bias" in self.trainable(record.module):
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        return x

    def backprop(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        weight = record.module.weight.detach()
        # one [N·K, O] x [O, I] product (a broadcast batched matmul would run N small products)
        return (factor.reshape(-1, weight.shape[0]) @ weight).reshape(*factor.shape[:-1], weight.shape[1])

    def sandwich(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        weight = record.module.weight.detach()
        return weight.T @ hessian @ weight

    def kfra_backprop(self, record: Record, gbar: torch.Tensor) -> torch.Tensor:
        weight = record.module.weight.detach()
        return weight.T @ gbar @ weight

    def param_factor(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        parts = []
        names = self.trainable(record.module)
        if "weight" in names:
            parts.append((factor[..., :, None] * record.inputs[:, None, None, :]).flatten(2))
        if "bias" in names:
            parts.append(factor)
        return torch.cat(parts, dim=2)

    def outer_factor(self, record, factor):
        names = self.trainable(record.module)
        if "weight" not in names:
            return None
        return factor.reshape(-1, factor.shape[-1]), record.inputs, "bias" in names

    def param_factor_into(self, record: Record, factor: torch.Tensor, out: torch.Tensor) -> None:
        names = self.trainable(record.module)
        num, cols, size = factor.shape[0], factor.shape[1], 0
        if "weight" in names:
            size = factor.shape[2] * record.inputs.shape[1]
            view = out[..., :size].view(num, cols, factor.shape[2], record.inputs.shape[1])
            torch.mul(factor[..., :, None], record.inputs[:, None, None, :], out=view)
        if "bias" in names:
            out[..., size:].copy_(factor)

    def diag(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        squared = factor.pow(2)
        return self._diag_from(record, squared.sum(1), squared.sum((0, 1)))

    def signed_diag(self, record: Record, factor: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        squared = factor.pow(2)
        per_sample = squared.sum(1) if weights is None else torch.einsum("nk,nko->no", weights, squared)
        return self._diag_from(record, per_sample, per_sample.sum(0))

    def diag_from_diagonal(self, record: Record, diag: torch.Tensor) -> torch.Tensor:
        return self._diag_from(record, diag, diag.sum(0))

    def jacobian_rows(self, record: Record) -> torch.Tensor:
        weight = record.module.weight.detach()
        return weight.expand(record.inputs.shape[0], *weight.shape)

    def shared_jacobian_rows(self, record: Record) -> torch.Tensor:
        return record.module.weight.detach()

    def signed_diag_scaled_rows(self, record, rows, scale, weights):
        # Σ_k w_nk (rows_kj scale_nj)² = scale_nj² (w @ rows²)_nj: no [N, K, D] tensor
        per_sample = scale.pow(2) * (weights @ rows.pow(2))
        return self._diag_from(record, per_sample, per_sample.sum(0))

    def _diag_from(self, record: Record, per_sample: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        parts = []
        names = self.trainable(record.module)
        if "weight" in names:
            parts.append((per_sample.T @ record.inputs.pow(2)).flatten())
        if "bias" in names:
            parts.append(bias)
        return torch.cat(parts)

    def hessian_block(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        x = self._augmented(record) if "weight" in self.trainable(record.module) else None
        if x is None:  # bias only
            return hessian.sum(0)
        # [O, I+1, O, I+1] = Σ_n H_n[o, p] x̃_n[i] x̃_n[j]
        full = torch.einsum("nop,ni,nj->oipj", hessian, x, x)
        out, width = full.shape[:2]
        num_inputs = record.inputs.shape[1]
        weight_idx = torch.arange(out * width).reshape(out, width)[:, :num_inputs].flatten()
        order = weight_idx
        if width > num_inputs:  # bias entries last, as in the reference ordering
            order = torch.cat([weight_idx, torch.arange(out) * width + num_inputs])
        block = full.reshape(out * width, out * width)[order][:, order]
        return (block + block.T) / 2

    def diag_hessian(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        diag = hessian.diagonal(dim1=1, dim2=2)  # [N, O]
        return self._diag_from(record, diag, diag.sum(0))

    def kron_input(self, record: Record) -> tuple[torch.Tensor, int]:
        x = record.inputs
        return gram(x, homogeneous="bias" in self.trainable(record.module)), x.shape[0]

    def kron_output(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        return gram(factor.flatten(0, 1))

    def ekfac_scale(self, record, factor, basis_in, basis_out):
        # the per-sample, per-column gradient V_nk x̃_nᵀ is rank one, so its rotation factorises
        rotated_out = (factor @ basis_out).pow(2).sum(1)  # [N, O]
        rotated_in = (self._augmented(record) @ basis_in).pow(2)  # [N, I+1]
        return rotated_out.T @ rotated_in
