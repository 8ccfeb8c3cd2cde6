"""Dense curvature: the full symmetric [P, P] matrix, cross-group blocks included."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import xarray as xr

from curvlab.partition import Partition
from curvlab.repr._checks import check_attrs, check_square
from curvlab.repr._export import decode_common, flat_coords, long_name, require, to_numpy, to_tensor
from curvlab.repr.base import CurvatureRepresentation

__all__ = ["DenseCurvature"]


class DenseCurvature(CurvatureRepresentation):
    """The full matrix C ∈ R^{P×P} in the reference ordering, labelled by a partition.

    Every operation is exact; costs are those of dense linear algebra: matvec O(P²),
    ``eigvalsh``/``eigh``/``solve`` O(P³), storage P² numbers.

    Args:
        matrix: symmetric tensor [P, P] (P = ``partition.num_params``); stored as given, not copied.
        partition: groups labelling rows and columns.
        quantity: what the matrix is, e.g. ``"ggn"`` or ``"hessian"``.
        attrs: provenance attributes (:func:`curvlab.provenance.provenance`).

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(1, 1), "canonical")   # P = 2: weight, bias
        >>> C = DenseCurvature(torch.tensor([[2.0, 1.0], [1.0, 2.0]]), part, quantity="ggn")
        >>> C.eigvalsh().tolist(), C.block("weight", "bias").tolist()
        ([1.0, 3.0], [[1.0]])
        >>> C.solve(torch.tensor([3.0, 3.0])).tolist()
        [1.0, 1.0]
    """

    kind = "dense"

    def __init__(
        self,
        matrix: torch.Tensor,
        partition: Partition,
        *,
        quantity: str,
        attrs: Mapping[str, Any] | None = None,
    ):
        self.matrix = check_square(matrix, "matrix", partition.num_params)
        super().__init__(partition, quantity=quantity, attrs=check_attrs(attrs))

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def _dense(self) -> torch.Tensor:
        return self.matrix

    def _block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        rows, cols = rows.to(self.device), cols.to(self.device)
        return self.matrix.index_select(0, rows).index_select(1, cols)

    def _diagonal(self) -> torch.Tensor:
        return self.matrix.diagonal().clone()

    def _to_xarray(self) -> xr.Dataset:
        labels = self.partition.flat_labels()
        coords = {
            **flat_coords(self.partition, "row", labels=labels),
            **flat_coords(self.partition, "col", labels=labels),
        }
        data = to_numpy(self.matrix)
        return xr.Dataset(
            {"matrix": (("row", "col"), data, {"long_name": long_name(self.quantity)})},
            coords=coords,
        )

    @classmethod
    def _from_xarray(cls, obj) -> DenseCurvature:
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind)
        require(obj, ["matrix"], cls.kind)
        matrix = to_tensor(obj["matrix"].transpose("row", "col").values)
        return cls(matrix, partition, quantity=quantity, attrs=attrs)
