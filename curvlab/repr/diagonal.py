"""Diagonal curvature: only the [P] diagonal, zero elsewhere."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import xarray as xr

from curvlab.partition import Partition
from curvlab.repr._checks import check_attrs, check_tensor
from curvlab.repr._export import decode_common, flat_coords, long_name, require, to_numpy, to_tensor
from curvlab.repr.base import CurvatureRepresentation

__all__ = ["DiagonalCurvature"]


class DiagonalCurvature(CurvatureRepresentation):
    """C = diag(d) with d ∈ R^P in the reference ordering.

    Everything but :meth:`dense`/:meth:`eigh` costs O(P): matvec d ⊙ v, solve v / (d + λ),
    eigenvalues sort(d), trace Σ d. The export holds only the diagonal (dimension ``row``).

    Args:
        diag: tensor [P] (P = ``partition.num_params``); stored as given.
        partition: groups labelling the entries.
        quantity: e.g. ``"ggn"``.
        attrs: provenance attributes.

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(1, 1), "canonical")
        >>> C = DiagonalCurvature(torch.tensor([4.0, 1.0]), part, quantity="ggn")
        >>> (C @ torch.tensor([1.0, 1.0])).tolist(), C.solve(torch.tensor([5.0, 2.0]), damping=1.0).tolist()
        ([4.0, 1.0], [1.0, 1.0])
        >>> C.dense().tolist()
        [[4.0, 0.0], [0.0, 1.0]]
    """

    kind = "diagonal"

    def __init__(
        self,
        diag: torch.Tensor,
        partition: Partition,
        *,
        quantity: str,
        attrs: Mapping[str, Any] | None = None,
    ):
        self.diag = check_tensor(diag, "diag", (partition.num_params,))
        super().__init__(partition, quantity=quantity, attrs=check_attrs(attrs))

    @property
    def dtype(self) -> torch.dtype:
        return self.diag.dtype

    @property
    def device(self) -> torch.device:
        return self.diag.device

    def _dense(self) -> torch.Tensor:
        return torch.diag(self.diag)

    def _block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        rows, cols = rows.to(self.device), cols.to(self.device)
        same = rows[:, None] == cols[None, :]
        return torch.where(
            same, self.diag[rows][:, None], torch.zeros((), dtype=self.dtype, device=self.device)
        )

    def _diagonal(self) -> torch.Tensor:
        return self.diag.clone()

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return v * (self.diag if v.ndim == 1 else self.diag[:, None])

    def _eigvalsh(self) -> torch.Tensor:
        return self.diag.sort().values

    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        values, order = self.diag.sort()
        eye = torch.eye(self.diag.numel(), dtype=self.dtype, device=self.device)
        return values, eye[:, order]

    def _solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        shifted = self.diag + damping
        if bool((shifted == 0).any()):
            raise torch.linalg.LinAlgError(
                f"{self.quantity} diagonal solve: a diagonal entry plus damping is zero; use damping > 0"
            )
        return v / (shifted if v.ndim == 1 else shifted[:, None])

    def trace(self) -> torch.Tensor:
        """tr(C) = Σ d, a 0-d tensor."""
        return self.diag.sum()

    def _to_xarray(self) -> xr.Dataset:
        data = to_numpy(self.diag)
        return xr.Dataset(
            {"diagonal": (("row",), data, {"long_name": long_name(self.quantity, "diagonal")})},
            coords=flat_coords(self.partition, "row"),
        )

    @classmethod
    def _from_xarray(cls, obj) -> DiagonalCurvature:
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind)
        require(obj, ["diagonal"], cls.kind)
        return cls(to_tensor(obj["diagonal"].values), partition, quantity=quantity, attrs=attrs)
