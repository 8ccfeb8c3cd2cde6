"""Brute-force ground truth for the summary tests: the dense U, and φ's derivatives from dense matrices."""

from __future__ import annotations

import copy

import torch

from curvlab.partition import Partition
from curvlab.reference import hessian

METHODS = ("layered", "functional", "double_backward")


def dense_u(partition: Partition, u_flat: torch.Tensor) -> torch.Tensor:
    """U [P, S]: column s holds u on the entries of group s, zeros elsewhere."""
    U = torch.zeros(partition.num_params, partition.num_groups, dtype=u_flat.dtype)
    U[torch.arange(partition.num_params), partition.group_ids()] = u_flat
    return U


def shifted(model: torch.nn.Module, step: torch.Tensor) -> torch.nn.Module:
    """A copy of ``model`` with θ + step (flat [P], reference ordering)."""
    other = copy.deepcopy(model)
    params = [p for p in other.parameters() if p.requires_grad]
    with torch.no_grad():
        offset = 0
        for p in params:
            p.add_(step[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    return other


def d3_finite_differences(model, loss_fn, data, U: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """D³_s ≈ (H̄_ss(θ + ε u_s) − H̄_ss(θ − ε u_s)) / 2ε from dense Hessians (error O(ε²))."""
    out = []
    for s in range(U.shape[1]):
        u = U[:, s]
        plus = u @ hessian(shifted(model, eps * u), loss_fn, data) @ u
        minus = u @ hessian(shifted(model, -eps * u), loss_fn, data) @ u
        out.append((plus - minus) / (2 * eps))
    return torch.stack(out)
