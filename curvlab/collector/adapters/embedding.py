"""``nn.Embedding``: y_s = W[i_s] = Wᵀ e_{i_s}, a Linear layer on one-hot inputs with W stored [V, D].

X [N, S, V] holds the one-hot rows (so S·V entries per sample: vocabularies beyond a few thousand
tokens make X large; the memory budget guards every allocation downstream). ``max_norm`` (which
renormalises W in place during the forward) is refused by :meth:`inputs`.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from curvlab.collector.adapters.base import LayerAdapter, tokens_last
from curvlab.errors import UnsupportedModuleError

__all__ = ["EmbeddingAdapter"]


class EmbeddingAdapter(LayerAdapter):
    """One-hot inputs, transposed weight [V, D] (see the module docstring)."""

    transposed = True

    def matches(self, module):
        return isinstance(module, nn.Embedding)

    def parameter_names(self, module):
        return ("weight",)

    def linear_in_parameters(self, module):
        return module.max_norm is None

    def inputs(self, module, args, kwargs, output):
        if module.max_norm is not None:
            raise UnsupportedModuleError(
                f"{self.describe(module)} with max_norm={module.max_norm} renormalises its weight in place "
                "during the forward; use max_norm=None"
            )
        idx = args[0]
        onehot = F.one_hot(idx.reshape(idx.shape[0], -1), module.num_embeddings).to(module.weight.dtype)
        if module.padding_idx is not None:  # the padding row gets no gradient
            onehot[..., module.padding_idx] = 0
        return onehot

    def to_normal(self, module, grad, batch_dims):
        return tokens_last(grad, batch_dims, module.embedding_dim)
