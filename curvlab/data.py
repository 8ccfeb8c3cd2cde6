"""Normalising the ``data`` argument: one ``(inputs, targets)`` batch or an iterable of batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["Batch", "Data", "iter_batches", "is_single_batch"]

Batch = tuple[torch.Tensor, torch.Tensor]
Data = Batch | Iterable[Batch]


def is_single_batch(data: Any) -> bool:
    """True if ``data`` is one ``(inputs, targets)`` pair of tensors rather than an iterable of pairs."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
    )


def iter_batches(data: Data) -> Iterator[Batch]:
    """Yield ``(inputs, targets)`` batches from a single batch or an iterable of batches.

    Example:
        >>> x, y = torch.zeros(4, 2), torch.zeros(4)
        >>> len(list(iter_batches((x, y)))), len(list(iter_batches([(x, y), (x, y)])))
        (1, 2)
    """
    if is_single_batch(data):
        yield _checked(data, None)
        return
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            f"data must be an (inputs, targets) pair of tensors or an iterable of such pairs, "
            f"got {type(data).__qualname__}"
        )
    count = 0
    for i, batch in enumerate(data):
        if not is_single_batch(batch):
            raise TypeError(
                f"batch {i} is a {type(batch).__qualname__}; expected an (inputs, targets) pair of tensors"
            )
        count += 1
        yield _checked(batch, i)
    if count == 0:
        raise ValueError("data holds no batches")


def _checked(batch: Batch, index: int | None) -> Batch:
    """The batch, or ``ValueError`` if it holds no samples (the loss adapters check targets against outputs)."""
    inputs, targets = batch[0], batch[1]
    if inputs.ndim and inputs.shape[0] == 0:
        where = "the batch" if index is None else f"batch {index}"
        raise ValueError(f"{where} is empty: inputs of shape {tuple(inputs.shape)}")
    return inputs, targets
