"""Rules for parameter-free structural modules: Flatten, Identity, Dropout (eval), pooling.

* Identity and eval-mode Dropout: J = I.
* Flatten: J = I up to a reshape of the features.
* MaxPool2d, AvgPool2d, AdaptiveAvgPool2d: Jᵀ V by ``torch.func.vjp`` of ``module.forward`` (which
  bypasses hooks), vmapped over the K columns. Average pooling is linear and max pooling piecewise
  linear, so ∇²y = 0 almost everywhere: Hessians propagate as Jᵀ H J with no residual, exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.engine.rules.base import ModuleRule, Record
from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_dense_allocation

__all__ = ["FlattenRule", "IdentityRule", "PoolingRule"]


class IdentityRule(ModuleRule):
    """``nn.Identity`` and ``nn.Dropout`` in eval mode: y = x."""

    input_independent_jacobian = True

    def check(self, name: str, module: nn.Module) -> None:
        if module.training and getattr(module, "p", 0.0) > 0:
            raise UnsupportedModuleError(
                f"module {name!r} ({type(module).__qualname__}) is in training mode with p={module.p}: its "
                "random mask changes every call, so curvature is not defined; call model.eval()"
            )

    def backprop(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        return factor

    def sandwich(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        return hessian

    def backprop_diagonal(self, record: Record, diag: torch.Tensor) -> torch.Tensor:
        return diag.reshape(diag.shape[0], *record.in_shape)

    def backprop_scaled_rows(self, record, rows, scale):
        return rows.reshape(rows.shape[0], *record.in_shape), scale.reshape(scale.shape[0], *record.in_shape)

    def kfra_backprop(self, record: Record, gbar: torch.Tensor) -> torch.Tensor:
        return gbar


class FlattenRule(IdentityRule):
    """``nn.Flatten`` that keeps the batch dimension: a reshape of the features."""

    def check(self, name: str, module: nn.Module) -> None:
        if module.start_dim == 0:
            raise UnsupportedModuleError(
                f"module {name!r} (Flatten) has start_dim=0 and merges the batch dimension; use start_dim >= 1"
            )

    def backprop(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        return factor.reshape(*factor.shape[:2], *record.in_shape)


class PoolingRule(ModuleRule):
    """Pooling modules through ``torch.func.vjp`` (exact: linear or piecewise linear)."""

    def __init__(self, linear: bool):
        self.input_independent_jacobian = linear

    def check(self, name: str, module: nn.Module) -> None:
        if getattr(module, "return_indices", False):
            raise UnsupportedModuleError(
                f"module {name!r} ({type(module).__qualname__}) has return_indices=True; use False"
            )

    def backprop(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        if self._non_overlapping_max(record):  # Jᵀ v puts v at each window's argmax: one unpooling
            index = self._max_indices(record)
            num, cols = factor.shape[:2]
            flat = factor.reshape(num * cols, *record.out_shape)
            spread = index.unsqueeze(1).expand(num, cols, *index.shape[1:]).reshape(flat.shape)
            result = F.max_unpool2d(flat, spread, record.module.kernel_size, record.module.stride,
                                    output_size=record.in_shape[-2:])
            return result.reshape(num, cols, *record.in_shape)
        key = ("vjp", record.inputs.shape[0])
        if key not in record.cache:
            record.cache[key] = torch.func.vjp(record.module.forward, record.inputs)[1]
        vjp_fn = record.cache[key]
        return torch.func.vmap(lambda v: vjp_fn(v)[0], in_dims=1, out_dims=1)(factor)

    @staticmethod
    def _non_overlapping_max(record: Record) -> bool:
        m = record.module
        if not isinstance(m, nn.MaxPool2d) or record.inputs.dim() != 4:
            return False
        pair = nn.modules.utils._pair
        return (pair(m.kernel_size) == pair(m.stride if m.stride is not None else m.kernel_size)
                and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode)

    @staticmethod
    def _max_indices(record: Record) -> torch.Tensor:
        if "max_indices" not in record.cache:
            m = record.module
            record.cache["max_indices"] = F.max_pool2d(record.inputs, m.kernel_size, m.stride, m.padding, m.dilation,
                                                       m.ceil_mode, return_indices=True)[1]
        return record.cache["max_indices"]

    def kfra_backprop(self, record: Record, gbar: torch.Tensor) -> torch.Tensor:
        """E_n[J_nᵀ Ḡ J_n]. Max pooling selects inputs, y_o = x_{π_n(o)}, so J_nᵀ Ḡ J_n adds Ḡ[o, o'] at
        (π_n(o), π_n(o')): scatter-adds of Ḡ (Do² per sample), never a per-sample [Di, Di] sandwich."""
        module = record.module
        if not isinstance(module, nn.MaxPool2d) or record.inputs.dim() != 4:
            return super().kfra_backprop(record, gbar)
        index = self._max_indices(record)
        num, channels = record.inputs.shape[:2]
        plane, features = record.inputs[0, 0].numel(), record.inputs[0].numel()
        offsets = torch.arange(channels, device=index.device).view(1, channels, 1, 1) * plane
        selected = (index + offsets).reshape(num, -1)  # [N, Do]: the input each output copies
        check_dense_allocation((features, features), gbar.dtype, f"kfra E_n[J_nᵀ Ḡ J_n] of layer {record.name!r}")
        out = gbar.new_zeros(features * features)
        chunk = max(1, (1 << 22) // gbar.numel())
        for start in range(0, num, chunk):
            rows = selected[start:start + chunk]
            flat = (rows[:, :, None] * features + rows[:, None, :]).reshape(-1)
            out.index_add_(0, flat, gbar.expand(rows.shape[0], *gbar.shape).reshape(-1))
        return out.view(features, features).div_(num)
