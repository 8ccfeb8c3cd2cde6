"""Square-root (low-rank) curvature C = Fᵀ F from a factor F [K, P]."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from curvlab.guards import check_dense_allocation
from curvlab.partition import Partition
from curvlab.repr._checks import check_attrs, check_tensor
from curvlab.repr._export import decode_common, flat_coords, long_name, require, to_numpy, to_tensor
from curvlab.repr.base import CurvatureRepresentation

__all__ = ["SquareRootCurvature"]


class SquareRootCurvature(CurvatureRepresentation):
    """C = Fᵀ F for a factor F ∈ R^{K×P}: stacked backpropagated GGN square roots, scaled per-sample
    gradients (empirical Fisher), MC samples, ...

    Costs: matvec Fᵀ(F v) O(KP); diagonal Σ_k F_kp² and trace ‖F‖²_F O(KP);
    ``eigvalsh`` via the K×K Gram matrix F Fᵀ when K < P, O(K²P), padded with P − K zeros
    (via the singular values of F when K ≥ P);
    ``solve`` by Woodbury when K < P, (C + λI)⁻¹ v = (v − Fᵀ (λI_K + F Fᵀ)⁻¹ F v) / λ for λ > 0,
    O(K²P + K³); when K ≥ P the dense [P, P] system is the smaller one and is solved directly.
    ``dense`` and ``eigh`` are O(P²) memory and go through the memory budget.

    Args:
        factor: tensor [K, P] (P = ``partition.num_params``, K ≥ 1); stored as given.
        partition: groups labelling the P columns.
        quantity: e.g. ``"ggn"`` or ``"empirical_fisher"``.
        attrs: provenance attributes.

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(1, 1), "canonical")
        >>> C = SquareRootCurvature(torch.tensor([[1.0, 2.0]]), part, quantity="ggn")   # C = [[1, 2], [2, 4]]
        >>> C.dense().tolist(), C.eigvalsh().tolist(), C.trace().item()
        ([[1.0, 2.0], [2.0, 4.0]], [0.0, 5.0], 5.0)
        >>> C.solve(torch.tensor([1.0, 2.0]), damping=3.0).tolist()   # v is an eigenvector: v / (5 + 3)
        [0.125, 0.25]
    """

    kind = "square_root"

    def __init__(
        self,
        factor: torch.Tensor,
        partition: Partition,
        *,
        quantity: str,
        attrs: Mapping[str, Any] | None = None,
    ):
        self.factor = check_tensor(factor, "factor", (None, partition.num_params))
        if self.factor.shape[0] == 0:
            raise ValueError(
                f"factor must have at least one row (K >= 1), got shape {tuple(self.factor.shape)}"
            )
        super().__init__(partition, quantity=quantity, attrs=check_attrs(attrs))

    @property
    def rank(self) -> int:
        """K, the number of rows of the factor (an upper bound on the rank of C)."""
        return self.factor.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.factor.dtype

    @property
    def device(self) -> torch.device:
        return self.factor.device

    def _dense(self) -> torch.Tensor:
        return self.factor.mT @ self.factor

    def _block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        rows, cols = rows.to(self.device), cols.to(self.device)
        return self.factor.index_select(1, rows).mT @ self.factor.index_select(1, cols)

    def _diagonal(self) -> torch.Tensor:
        return (self.factor**2).sum(0)

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        """F v for v [P] or [P, m]."""
        return self.factor @ v

    def _apply_t(self, u: torch.Tensor) -> torch.Tensor:
        """Fᵀ u for u [K] or [K, m]."""
        return self.factor.mT @ u

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._apply_t(self._apply(v))

    def _gram(self) -> torch.Tensor:
        check_dense_allocation((self.rank, self.rank), self.dtype, f"{self.quantity} Gram matrix")
        return self.factor @ self.factor.mT

    def _eigvalsh(self) -> torch.Tensor:
        k, p = self.rank, self.shape[0]
        if k >= p:  # singular values of F, without forming FᵀF
            return (torch.linalg.svdvals(self.factor) ** 2).sort().values
        nonzero = torch.linalg.eigvalsh(self._gram())
        zeros = torch.zeros(p - k, dtype=self.dtype, device=self.device)
        return torch.cat([zeros, nonzero]).sort().values

    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        # F = U diag(s) Vᵀ with V [P, P] (U stays [K, min(K, P)]): C = V diag(s², 0, ..., 0) Vᵀ.
        _, s, vh = torch.linalg.svd(self.factor, full_matrices=self.rank < self.shape[0])
        values = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        values[: s.numel()] = s**2
        values, order = values.sort()
        return values, vh.mT[:, order]

    def _solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        if self.rank >= self.shape[0]:  # tall factor: the [P, P] system is the smaller one
            return super()._solve(v, damping)
        if damping == 0.0:
            raise torch.linalg.LinAlgError(
                f"{self.quantity} square-root solve: C = FᵀF has rank <= K = {self.rank} < "
                f"P = {self.shape[0]} and is singular; use damping > 0"
            )
        inner = self._gram()
        inner.diagonal().add_(damping)
        chol = torch.linalg.cholesky(inner)
        fv = self._apply(v)
        correction = torch.cholesky_solve(fv if v.ndim == 2 else fv[:, None], chol)
        correction = correction if v.ndim == 2 else correction[:, 0]
        return (v - self._apply_t(correction)) / damping

    def trace(self) -> torch.Tensor:
        """tr(C) = ‖F‖²_F, a 0-d tensor."""
        return (self.factor**2).sum()

    def _to_xarray(self) -> xr.Dataset:
        coords = flat_coords(self.partition, "col")
        coords["rank"] = (
            "rank",
            np.arange(self.rank, dtype=np.int64),
            {"long_name": "row of the factor F"},
        )
        factor = to_numpy(self.factor)
        attrs = {"long_name": f"square-root factor F (C = F^T F) of the {long_name(self.quantity)}"}
        return xr.Dataset({"factor": (("rank", "col"), factor, attrs)}, coords=coords)

    @classmethod
    def _from_xarray(cls, obj) -> SquareRootCurvature:
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind)
        require(obj, ["factor"], cls.kind)
        factor = to_tensor(obj["factor"].transpose("rank", "col").values)
        return cls(factor, partition, quantity=quantity, attrs=attrs)
