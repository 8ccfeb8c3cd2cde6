"""``nn.MultiheadAttention``'s input projection, whose weight torch uses functionally.

For self-attention (``query is key is value``, one packed ``in_proj_weight`` [3E, E]) the projection
[q, k, v] = x W_inᵀ + b_in is a token-wise Linear layer: X = x [N, L, E] (batch-first), G the
gradient w.r.t. the projection [N, K, L, 3E].

``F.multi_head_attention_forward`` never exposes that projection, so the adapter *replays* the call
(:meth:`MultiheadAttentionAdapter.replay`): it recomputes the output from a live projection tensor
(attention in plain ops, the ``out_proj`` submodule called as a module, so that its own Linear adapter
records it) and the collector checks the replay against the module's output before using it. Masks
(``attn_mask`` bool or float, [L, S] or [N·H, L, S]; ``key_padding_mask``), ``is_causal``,
``batch_first`` and the returned attention weights are handled. Cross-attention, separate q/k/v
weights (``kdim``/``vdim``), ``add_bias_kv``, ``add_zero_attn`` and training-mode dropout are refused
by the replay: the layer then takes the exact per-parameter route, with the reason in the result.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.collector.adapters.base import LayerAdapter, tokens_last
from curvlab.errors import UnsupportedModuleError

__all__ = ["MultiheadAttentionAdapter"]

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttentionAdapter(LayerAdapter):
    """Self-attention's packed input projection as a token-wise Linear layer (see the module docstring)."""

    weight_name = "in_proj_weight"
    bias_name = "in_proj_bias"
    replays = True

    def matches(self, module):
        return isinstance(module, nn.MultiheadAttention)

    def delegates(self, module):
        return ("out_proj",)

    def _bind(self, args, kwargs) -> dict:
        bound = _SIGNATURE.bind(None, *args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def _check(self, module: nn.MultiheadAttention, call: dict) -> None:
        reason = None
        if not module._qkv_same_embed_dim:
            reason = "separate q/k/v projection weights (kdim or vdim differs from embed_dim)"
        elif module.bias_k is not None or module.add_zero_attn:
            reason = "add_bias_kv or add_zero_attn"
        elif module.training and module.dropout > 0:
            reason = f"attention dropout {module.dropout} in training mode (a random function)"
        elif not (call["query"] is call["key"] is call["value"]):
            reason = "cross-attention (key or value is not the query tensor)"
        elif call["query"].dim() != 3:
            reason = f"an unbatched {call['query'].dim()}-D query"
        if reason is not None:
            raise UnsupportedModuleError(f"nn.MultiheadAttention with {reason}")

    def inputs(self, module, args, kwargs, output):
        query = self._bind(args, kwargs)["query"].detach()
        return query if module.batch_first else query.transpose(0, 1)

    def to_normal(self, module, grad, batch_dims):
        return tokens_last(grad, batch_dims, 3 * module.embed_dim)

    def replay(self, module, args, kwargs, output):
        call = self._bind(args, kwargs)
        self._check(module, call)
        x = call["query"] if module.batch_first else call["query"].transpose(0, 1)  # [N, L, E]
        num, length, embed = x.shape
        heads = module.num_heads
        projection = F.linear(x, module.in_proj_weight, module.in_proj_bias)  # [N, L, 3E]: recorded
        q, k, v = (t.reshape(num, length, heads, embed // heads).transpose(1, 2) for t in projection.chunk(3, -1))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(embed // heads)  # [N, H, L, L]
        attn_mask = _float_mask(call["attn_mask"], scores.dtype)
        if attn_mask is None and call["is_causal"]:
            attn_mask = _float_mask(torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1), scores.dtype)
        if attn_mask is not None:
            scores = scores + (attn_mask if attn_mask.dim() == 2 else attn_mask.view(num, heads, length, length))
        padding = _float_mask(call["key_padding_mask"], scores.dtype)
        if padding is not None:
            scores = scores + padding.view(num, 1, 1, length)
        weights = scores.softmax(-1)
        merged = (weights @ v).transpose(1, 2).reshape(num, length, embed)
        out = module.out_proj(merged)  # a module call: out_proj's own adapter records it
        if not module.batch_first:
            out = out.transpose(0, 1)
        returned = None
        if call["need_weights"]:
            returned = weights.mean(1) if call["average_attn_weights"] else weights
        return (out, returned), projection
