"""Turning what the analysis receives into dense float64 blocks.

Every analysis function accepts a curvature matrix either as a plain symmetric tensor [P, P] or as a
:class:`~curvlab.repr.base.CurvatureRepresentation` (anything with ``dense()``/``block()``), and a
:class:`~curvlab.partition.Partition` (or a list of index tensors) cutting it into blocks.
Computations run in float64 whatever the input dtype.

Example:
    >>> import torch
    >>> m = torch.arange(16.0).reshape(4, 4)
    >>> [b.tolist() for b in block_indices(None, 4)]
    [[0, 1, 2, 3]]
    >>> as_dense(m, "approximation").dtype
    torch.float64
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from curvlab.partition import Partition

__all__ = ["as_dense", "as_vector", "block_indices", "group_labels", "sub_block"]


def as_dense(matrix, what: str) -> torch.Tensor:
    """The [P, P] float64 matrix of a tensor or a representation; ``what`` names it in errors.

    Raises:
        TypeError: ``matrix`` is neither a tensor nor has ``dense()``.
        ValueError: the tensor is not square.
    """
    if hasattr(matrix, "dense") and callable(matrix.dense):
        dense = matrix.dense()
    elif isinstance(matrix, torch.Tensor):
        dense = matrix
    else:
        raise TypeError(
            f"{what} must be a torch.Tensor [P, P] or a curvature representation, got {type(matrix).__qualname__}"
        )
    if dense.ndim != 2 or dense.shape[0] != dense.shape[1]:
        raise ValueError(f"{what} must be a square [P, P] matrix, got shape {tuple(dense.shape)}")
    return dense.detach().to(torch.float64)


def as_vector(vector, size: int, what: str) -> torch.Tensor:
    """A flat float64 [P] vector, checking its length (a list of per-parameter tensors is concatenated)."""
    if isinstance(vector, (list, tuple)):
        vector = torch.cat([torch.as_tensor(v).reshape(-1) for v in vector])
    if not isinstance(vector, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [P], got {type(vector).__qualname__}")
    vector = vector.detach().reshape(-1).to(torch.float64)
    if vector.numel() != size:
        raise ValueError(f"{what} has {vector.numel()} entries, but the matrix is [{size}, {size}]")
    return vector


def block_indices(partition: Partition | Sequence[torch.Tensor] | None, size: int) -> list[torch.Tensor]:
    """Flat index tensors of the blocks: one per group of ``partition``; one block of all if ``None``."""
    if partition is None:
        return [torch.arange(size)]
    if isinstance(partition, Partition):
        if partition.num_params != size:
            raise ValueError(
                f"partition {partition.kind!r} covers {partition.num_params} parameters, "
                f"but the matrix is [{size}, {size}]"
            )
        return [g.indices for g in partition.groups]
    blocks = [torch.as_tensor(b, dtype=torch.long) for b in partition]
    if blocks and int(max(int(b.max()) for b in blocks if b.numel())) >= size:
        raise ValueError(f"block indices reach beyond the [{size}, {size}] matrix")
    return blocks


def group_labels(partition: Partition | Sequence[torch.Tensor] | None) -> list[str]:
    """Names of the blocks: the partition's group names, ``"all"`` for none, ``"block<i>"`` otherwise."""
    if partition is None:
        return ["all"]
    if isinstance(partition, Partition):
        return list(partition.group_names)
    return [f"block{i}" for i in range(len(partition))]


def sub_block(matrix: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """``matrix[rows][:, cols]`` (``cols`` defaults to ``rows``)."""
    cols = rows if cols is None else cols
    return matrix.index_select(0, rows).index_select(1, cols)
