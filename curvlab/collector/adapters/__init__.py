"""Layer adapters: one small file per module type (see :mod:`curvlab.collector.adapters.base`).

:data:`ADAPTERS` is the default, ordered list; :func:`adapter_for` picks the first that matches.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from curvlab.collector.adapters.attention import MultiheadAttentionAdapter
from curvlab.collector.adapters.base import LayerAdapter
from curvlab.collector.adapters.conv import ConvAdapter
from curvlab.collector.adapters.embedding import EmbeddingAdapter
from curvlab.collector.adapters.linear import LinearAdapter
from curvlab.collector.adapters.norm import BatchNormAdapter, GroupNormAdapter, LayerNormAdapter

__all__ = ["ADAPTERS", "LayerAdapter", "adapter_for", "register_adapter"]

#: the default adapters, in the order :func:`adapter_for` tries them (extend with :func:`register_adapter`)
ADAPTERS: list[LayerAdapter] = [
    LinearAdapter(),
    ConvAdapter(),
    EmbeddingAdapter(),
    LayerNormAdapter(),
    GroupNormAdapter(),
    BatchNormAdapter(),
    MultiheadAttentionAdapter(),
]


def register_adapter(adapter: LayerAdapter) -> LayerAdapter:
    """Add ``adapter`` in front of the defaults (it wins over them for the modules it matches).

    Example:
        >>> class Mine(LayerAdapter):
        ...     def matches(self, module):
        ...         return False
        >>> mine = register_adapter(Mine())
        >>> ADAPTERS[0] is mine
        True
        >>> ADAPTERS.remove(mine)
    """
    if not isinstance(adapter, LayerAdapter):
        raise TypeError(f"adapter must be a LayerAdapter instance, got {type(adapter).__qualname__}")
    ADAPTERS.insert(0, adapter)
    return adapter


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
