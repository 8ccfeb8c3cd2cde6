"""Data-parallel helpers for the optimisers (``torch.distributed``; no-ops without a process group).

Under data parallelism every rank holds a shard of the batch. An optimiser that must take *identical*
steps on every rank averages what it computes from its shard, weighting rank r by its loss normaliser
Z_r, so the result is the full-batch value: x = Σ_r Z_r x_r / Σ_r Z_r (:func:`weighted_mean`). The
statistics engine already sums its curvature factors over the ranks (:mod:`curvlab.engine.accumulate`).

Example (no process group: the identity):
    >>> weighted_mean([torch.tensor([1.0, 2.0])], 4)[0].tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["is_distributed", "unwrap_data_parallel", "weighted_mean"]


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def unwrap_data_parallel(model: nn.Module) -> nn.Module:
    """The wrapped module of ``DistributedDataParallel`` / ``DataParallel`` (same parameter tensors), else ``model``.

    Example:
        >>> unwrap_data_parallel(nn.DataParallel(nn.Linear(2, 1))).__class__.__name__
        'Linear'
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def weighted_mean(tensors: Sequence[torch.Tensor], weight: float) -> list[torch.Tensor]:
    """Σ_r w_r t_r / Σ_r w_r over the ranks for each tensor (one all-reduce of a flat buffer)."""
    if not is_distributed():
        return list(tensors)
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors] + [
        torch.ones(1, dtype=torch.float64)
    ]) * float(weight)
    dist.all_reduce(flat)
    flat = flat[:-1] / flat[-1]
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.dtype))
        start += t.numel()
    return out
