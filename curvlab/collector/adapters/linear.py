"""``nn.Linear`` on [N, *, I] inputs: every position shares W, X [N, S, I] with S = ∏ middle dims."""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from curvlab.collector.adapters.base import LayerAdapter, tokens_last

__all__ = ["LinearAdapter"]


class LinearAdapter(LayerAdapter):
    """y_s = W x_s + b for every position s of [N, *, I] inputs."""

    def matches(self, module):
        return isinstance(module, nn.Linear)

    def inputs(self, module, args, kwargs, output):
        x = args[0].detach()
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def parameter_output(self, module, args, kwargs, output, name, value):
        if name == "weight":
            return F.linear(args[0], value)
        return super().parameter_output(module, args, kwargs, output, name, value)

    def to_normal(self, module, grad, batch_dims):
        return tokens_last(grad, batch_dims, module.out_features)
