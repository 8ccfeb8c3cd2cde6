"""Layer adapters: one small file per module type (see :mod:`curvlab.collector.adapters.base`).

:data:`ADAPTERS` is the default, ordered list; :func:`adapter_for` picks the first that matches.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from curvlab.collector.adapters.base import LayerAdapter
from curvlab.collector.adapters.conv import ConvAdapter
from curvlab.collector.adapters.embedding import EmbeddingAdapter
from curvlab.collector.adapters.linear import LinearAdapter
from curvlab.collector.adapters.norm import BatchNormAdapter, GroupNormAdapter, LayerNormAdapter

__all__ = ["ADAPTERS", "LayerAdapter", "adapter_for"]

ADAPTERS: tuple[LayerAdapter, ...] = (
    LinearAdapter(),
    ConvAdapter(),
    EmbeddingAdapter(),
    LayerNormAdapter(),
    GroupNormAdapter(),
    BatchNormAdapter(),
)


def adapter_for(module: nn.Module, adapters: Sequence[LayerAdapter] = ADAPTERS) -> LayerAdapter | None:
    """The first adapter matching ``module`` (``None``: its parameters take the exact per-parameter route).

    Example:
        >>> type(adapter_for(nn.Linear(2, 3))).__name__, adapter_for(nn.LSTM(2, 3))
        ('LinearAdapter', None)
    """
    for adapter in adapters:
        if adapter.matches(module):
            return adapter
    return None
