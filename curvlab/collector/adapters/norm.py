"""Affine parameters of ``nn.LayerNorm``, ``nn.GroupNorm`` and ``nn.BatchNorm1d/2d/3d`` (eval and train).

Each computes y = γ ⊙ x̂ + β with x̂ the normalised input, so the weight use is elementwise:
X = x̂ [N, S, C] (recomputed from the input, detached), G the output gradient [N, K, S, C], and the
per-sample gradient Γ = Σ_s g_s ⊙ x̂_s. In train mode BatchNorm's x̂ uses the batch statistics: x̂
is then a function of the whole batch, but ∂y/∂γ at the recorded input is still x̂ (exact).
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.collector.adapters.base import LayerAdapter, channels_first, tokens_last

__all__ = ["BatchNormAdapter", "GroupNormAdapter", "LayerNormAdapter"]


class _NormAdapter(LayerAdapter):
    kind = "elementwise"

    def parameter_names(self, module):
        return tuple(n for n in ("weight", "bias") if getattr(module, n, None) is not None)



class LayerNormAdapter(_NormAdapter):
    """x̂ normalised over the trailing ``normalized_shape``; S = all leading positions."""

    def matches(self, module):
        return isinstance(module, nn.LayerNorm)

    def inputs(self, module, args, kwargs, output):
        x = args[0].detach()
        dims = tuple(range(-len(module.normalized_shape), 0))
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
        xhat = (x - mean) / torch.sqrt(var + module.eps)
        return xhat.reshape(x.shape[0], -1, module.weight.numel())

    def to_normal(self, module, grad, batch_dims):
        return tokens_last(grad, batch_dims, module.weight.numel())


class GroupNormAdapter(_NormAdapter):
    """x̂ normalised per sample over each group of channels (and all positions)."""

    def matches(self, module):
        return isinstance(module, nn.GroupNorm)

    def inputs(self, module, args, kwargs, output):
        x = args[0].detach()
        grouped = x.reshape(x.shape[0], module.num_groups, -1)
        mean = grouped.mean(2, keepdim=True)
        var = grouped.var(2, unbiased=False, keepdim=True)
        xhat = ((grouped - mean) / torch.sqrt(var + module.eps)).reshape(x.shape)
        return channels_first(xhat, 0)

    def to_normal(self, module, grad, batch_dims):
        return channels_first(grad, batch_dims)


class BatchNormAdapter(_NormAdapter):
    """x̂ from the running statistics (eval) or the batch's biased statistics (train, or no running stats)."""

    def matches(self, module):
        return isinstance(module, nn.modules.batchnorm._BatchNorm)

    def inputs(self, module, args, kwargs, output):
        x = args[0].detach()
        shape = [1, -1] + [1] * (x.ndim - 2)
        if module.training or module.running_mean is None:
            dims = [0, *range(2, x.ndim)]
            mean = x.mean(dims, keepdim=True)
            var = x.var(dims, unbiased=False, keepdim=True)
        else:
            mean, var = module.running_mean.view(shape), module.running_var.view(shape)
        xhat = (x - mean) / torch.sqrt(var + module.eps)
        return channels_first(xhat, 0)

    def to_normal(self, module, grad, batch_dims):
        return channels_first(grad, batch_dims)
