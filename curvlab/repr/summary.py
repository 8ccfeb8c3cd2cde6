"""Summary matrix over the groups of a partition: the S×S matrix H̄ of GroupedNewton."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from curvlab.guards import check_dense_allocation
from curvlab.partition import Partition
from curvlab.repr._checks import check_attrs, check_square
from curvlab.repr._export import decode_common, long_name, require, to_numpy, to_tensor
from curvlab.repr.base import CurvatureRepresentation

__all__ = ["SummaryMatrix"]


class SummaryMatrix(CurvatureRepresentation):
    """A symmetric S×S matrix indexed by the S groups of a partition, e.g. H̄_ij = u_iᵀ H_ij u_j.

    Unlike the other representations this is **not** [P, P]: ``shape`` is (S, S), :meth:`dense`
    returns the [S, S] matrix, :meth:`matvec`/:meth:`solve` take vectors [S] (or [S, K]),
    :meth:`diagonal` and :meth:`eigvalsh` return [S], and :meth:`block` returns the [1, 1] entry of
    two groups. It may be indefinite. The export uses dims ``group_i``/``group_j`` with the group
    names as coordinates.

    Args:
        matrix: symmetric tensor [S, S] (S = ``partition.num_groups``); stored as given.
        partition: the groups indexing rows and columns.
        quantity: e.g. ``"newton_summary"``.
        attrs: provenance attributes.

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(1, 1), "canonical")    # S = 2 groups
        >>> H = SummaryMatrix(torch.tensor([[2.0, 1.0], [1.0, -1.0]]), part, quantity="newton_summary")
        >>> H.shape, H.block("weight", "bias").tolist(), (H @ torch.tensor([1.0, 1.0])).tolist()
        ((2, 2), [[1.0]], [3.0, 0.0])
    """

    kind = "summary_matrix"

    def __init__(
        self,
        matrix: torch.Tensor,
        partition: Partition,
        *,
        quantity: str,
        attrs: Mapping[str, Any] | None = None,
    ):
        self.matrix = check_square(matrix, "matrix", partition.num_groups)
        super().__init__(partition, quantity=quantity, attrs=check_attrs(attrs))

    @property
    def shape(self) -> tuple[int, int]:
        """(S, S): one row and column per group (not per parameter)."""
        s = self.partition.num_groups
        return (s, s)

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def block(self, row_group: str | int, col_group: str | int) -> torch.Tensor:
        """The [1, 1] entry between two groups (by name or position)."""
        i = self.partition.groups.index(self.partition.group(row_group))
        j = self.partition.groups.index(self.partition.group(col_group))
        return self.matrix[i : i + 1, j : j + 1].clone()

    def dense(self) -> torch.Tensor:
        """The [S, S] matrix (the stored tensor)."""
        check_dense_allocation(self.shape, self.dtype, f"{self.quantity} ({self.kind}) dense()")
        return self.matrix

    def _dense(self) -> torch.Tensor:
        return self.matrix

    def _diagonal(self) -> torch.Tensor:
        return self.matrix.diagonal().clone()

    def _to_xarray(self) -> xr.Dataset:
        names = np.asarray(self.partition.group_names, dtype=str)
        sizes = np.asarray([g.size for g in self.partition.groups], dtype=np.int64)
        coords = {}
        for d in ("group_i", "group_j"):
            coords[d] = (d, names, {"long_name": "parameter group"})
            coords[f"{d}_size"] = (
                d,
                sizes,
                {"long_name": "number of parameters in the group", "units": "1"},
            )
        data = {
            "matrix": (
                ("group_i", "group_j"),
                to_numpy(self.matrix),
                {"long_name": long_name(self.quantity)},
            )
        }
        return xr.Dataset(data, coords=coords)

    @classmethod
    def _from_xarray(cls, obj) -> SummaryMatrix:
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind)
        require(obj, ["matrix"], cls.kind)
        matrix = to_tensor(obj["matrix"].transpose("group_i", "group_j").values)
        return cls(matrix, partition, quantity=quantity, attrs=attrs)
