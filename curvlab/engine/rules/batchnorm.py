"""The rule for ``nn.BatchNorm1d``/``nn.BatchNorm2d`` in eval mode: a per-channel affine map.

With running statistics μ, σ² and x̂ = (x − μ)/√(σ² + ε), the layer is y = γ ⊙ x̂ + β (channel dim 1):

* input side:      Jᵀ V = (γ/√(σ² + ε)) ⊙ V; affine, so Hessians have no residual
* parameter side:  Jθᵀ V_nk = (Σ_positions V_nk ⊙ x̂_n, Σ_positions V_nk)   (γ, then β)

There is no Kronecker rule: Kronecker quantities give BatchNorm layers their exact dense block.
Training mode is refused: the batch statistics couple the samples, so per-sample curvature is not
defined by the rules (and the running statistics would be updated as a side effect).
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.engine.rules.base import ParameterRule, Record
from curvlab.errors import UnsupportedModuleError

__all__ = ["BatchNormRule"]


class BatchNormRule(ParameterRule):
    """Eval-mode batch normalisation (see the module docstring)."""

    input_independent_jacobian = True

    def check(self, name: str, module: nn.Module) -> None:
        super().check(name, module)
        if module.training:
            raise UnsupportedModuleError(
                f"module {name!r} ({type(module).__qualname__}) is in training mode: batch statistics couple "
                "the samples; call model.eval() (curvature is computed with the running statistics)"
            )
        if module.running_mean is None:
            raise UnsupportedModuleError(
                f"module {name!r} ({type(module).__qualname__}) has track_running_stats=False, so it "
                "normalises with batch statistics even in eval mode; this is not supported"
            )

    def _shape(self, record: Record) -> tuple[int, ...]:
        return (-1,) + (1,) * (record.inputs.ndim - 2)

    def _scale(self, record: Record) -> torch.Tensor:
        m = record.module
        scale = (m.running_var.detach() + m.eps).rsqrt()
        if m.weight is not None:
            scale = scale * m.weight.detach()
        return scale.reshape(self._shape(record))

    def _normalised(self, record: Record) -> torch.Tensor:
        m, shape = record.module, self._shape(record)
        inv_std = (m.running_var.detach() + m.eps).rsqrt().reshape(shape)
        return (record.inputs - m.running_mean.detach().reshape(shape)) * inv_std

    def backprop(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        return factor * self._scale(record)

    def backprop_diagonal(self, record: Record, diag: torch.Tensor) -> torch.Tensor:
        return diag * self._scale(record).pow(2)

    def backprop_scaled_rows(self, record, rows, scale):
        return rows, scale * self._scale(record)

    def param_factor(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        positions = tuple(range(3, factor.ndim))
        parts = []
        names = self.trainable(record.module)
        if "weight" in names:
            weighted = factor * self._normalised(record).unsqueeze(1)
            parts.append(weighted.sum(positions) if positions else weighted)
        if "bias" in names:
            parts.append(factor.sum(positions) if positions else factor)
        return torch.cat(parts, dim=2)
