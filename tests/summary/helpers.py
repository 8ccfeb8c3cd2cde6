"""Brute-force ground truth for the summary tests: dense U, Hessian/GGN and gradient from curvlab.reference."""

from __future__ import annotations

import torch

from curvlab.partition import Partition


def dense_u(partition: Partition, u_flat: torch.Tensor) -> torch.Tensor:
    """U [P, S]: column s holds u on the entries of group s, zeros elsewhere."""
    ids = partition.group_ids()
    U = torch.zeros(partition.num_params, partition.num_groups, dtype=u_flat.dtype)
    U[torch.arange(partition.num_params), ids] = u_flat
    return U


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])
