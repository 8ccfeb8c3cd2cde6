"""Restricting a [P, P] operator to the rows and columns of some groups of its partition.

For index sets R and C (the flat indices of the named groups, ascending), the restriction is the
matrix C_RR (square, symmetric: :class:`RestrictedOperator`) or the off-diagonal block C_RC
(:class:`BlockView`). Both cost one product of the parent per column: v ∈ R^{|C|} is embedded into
R^P with zeros, multiplied by the parent, and the rows R are read off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from curvlab.guards import check_dense_allocation
from curvlab.partition import ParameterInfo, Partition

__all__ = ["BlockView", "scipy_operator", "sub_partition"]


def sub_partition(
    partition: Partition, group_names: Sequence[str]
) -> tuple[Partition, torch.Tensor]:
    """The partition of the named groups alone, and their flat indices [n] in the parent (ascending).

    Parameters keep their names; a parameter only partly covered (``"entries"`` partitions) becomes a
    flat parameter of the covered entries, in the parent's order.

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)))
        >>> sub, idx = sub_partition(part, ["2.weight", "0.bias"])
        >>> sub.group_names, idx.tolist()
        (('0.bias', '2.weight'), [6, 7, 8, 9])
    """
    if isinstance(group_names, str):
        group_names = [group_names]
    if not group_names:
        raise ValueError("restriction needs at least one group")
    if len(set(group_names)) != len(group_names):
        raise ValueError(f"groups named twice in {list(group_names)}")
    groups = [partition.group(name) for name in group_names]  # KeyError names the unknown group
    groups.sort(key=lambda g: int(g.indices[0]) if g.size else -1)
    indices = torch.cat([g.indices for g in groups]).sort().values
    covered = set(indices.tolist())
    params: list[ParameterInfo] = []
    local: dict[
        str, dict[int, int]
    ] = {}  # param name -> parent flat index -> entry in the new param
    offset = 0
    for info in partition.params:
        mine = [i for i in range(info.offset, info.offset + info.numel) if i in covered]
        if not mine:
            continue
        shape = info.shape if len(mine) == info.numel else (len(mine),)
        params.append(ParameterInfo(info.name, info.layer, shape, offset))
        local[info.name] = {flat: k for k, flat in enumerate(mine)}
        offset += len(mine)
    assignment: dict[str, list[tuple[str, int | None]]] = {}
    for g in groups:
        members: list[tuple[str, int | None]] = []
        for info in g.params:
            entries = [
                int(i) for i in g.indices if info.offset <= int(i) < info.offset + info.numel
            ]
            if len(entries) == info.numel:
                members.append((info.name, None))
            else:
                members += [(info.name, local[info.name][i]) for i in entries]
        assignment[g.name] = members
    return Partition(
        params, assignment, kind=f"{partition.kind}[{', '.join(g.name for g in groups)}]"
    ), indices


class BlockView:
    """The block C[R, C] of a symmetric operator between two index sets, as a rectangular operator.

    ``view @ v`` for v of shape [|C|] or [|C|, K]; ``view.T`` is the block C[C, R] (by symmetry);
    :meth:`dense` and :meth:`to_scipy` as for the operators. Built by ``op.block_operator(rows, cols)``.
    """

    def __init__(self, parent, rows: torch.Tensor, cols: torch.Tensor, row_names=(), col_names=()):
        self.parent = parent
        self.rows, self.cols = rows, cols
        self.row_groups, self.col_groups = tuple(row_names), tuple(col_names)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.rows.numel()), int(self.cols.numel()))

    @property
    def dtype(self) -> torch.dtype:
        return self.parent.dtype

    @property
    def device(self) -> torch.device:
        return self.parent.device

    @property
    def T(self) -> BlockView:
        return BlockView(self.parent, self.cols, self.rows, self.col_groups, self.row_groups)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """C[R, C] v for v of shape [|C|] or [|C|, K]."""
        if v.ndim not in (1, 2) or v.shape[0] != self.shape[1]:
            raise ValueError(
                f"block operator expects shape [{self.shape[1]}] or [{self.shape[1]}, K], got {tuple(v.shape)}"
            )
        full = torch.zeros(
            (self.parent.shape[0], *v.shape[1:]), dtype=self.dtype, device=self.device
        )
        full[self.cols] = v.to(self.dtype)
        return self.parent.matvec(full)[self.rows]

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def dense(self) -> torch.Tensor:
        """The [|R|, |C|] block, one parent product per column (guarded by the memory budget)."""
        check_dense_allocation(self.shape, self.dtype, "block_operator dense()")
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return torch.cat(
            [self.matvec(eye[:, s : s + 256]) for s in range(0, self.shape[1], 256)], dim=1
        )

    def to_scipy(self) -> LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` of shape [|R|, |C|] (float64 numpy in and out)."""
        return scipy_operator(self.shape, self.matvec, self.T.matvec, self.dtype, self.device)

    def __repr__(self) -> str:
        return f"BlockView(rows={self.row_groups}, cols={self.col_groups}, shape={self.shape})"


def scipy_operator(
    shape, matvec, rmatvec, dtype: torch.dtype, device: torch.device
) -> LinearOperator:
    """Wrap torch products v ↦ A v and v ↦ Aᵀ v ([n] or [n, K]) as a float64 ``scipy.sparse.linalg.LinearOperator``.

    Numpy arrays come in and go out in float64; the torch side runs in ``dtype`` on ``device``.

    Example:
        >>> a = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
        >>> lin = scipy_operator((2, 2), a.__matmul__, a.T.__matmul__, torch.float32, torch.device("cpu"))
        >>> lin.matvec(np.ones(2)).tolist(), lin.rmatvec(np.ones(2)).tolist()
        ([3.0, 1.0], [1.0, 3.0])
    """

    def wrap(fn):
        def apply(v):
            t = torch.as_tensor(np.asarray(v, dtype=np.float64), device=device).to(dtype)
            return fn(t).detach().cpu().to(torch.float64).numpy()

        return apply

    return LinearOperator(
        shape,
        matvec=wrap(matvec),
        rmatvec=wrap(rmatvec),
        matmat=wrap(matvec),
        rmatmat=wrap(rmatvec),
        dtype=np.float64,
    )
