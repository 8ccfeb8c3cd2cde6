"""The matrix-free base: a curvature matrix known only through its products C v.

:class:`CurvatureOperator` turns one hook, ``_apply(v)`` for v ∈ R^P, into the whole
:class:`~curvlab.repr.base.CurvatureRepresentation` interface. Costs, in products C v (one product
costs about one to two gradients, see the concrete operators):

=====================  ===========================================================================
``op @ v``             1 per column of v ([P] or [P, K])
``dense()``            P (columns of the identity, in chunks), memory-budget guarded
``diagonal()``         P (exact, unit vectors; use ``curvlab.spectra.diagonal_estimate`` for cheap)
``block(g, h)``        size of group h
``trace()``            P (exact; ``curvlab.spectra.trace`` estimates it with few products)
``solve(v, λ)``        one per CG iteration (:mod:`curvlab.operators.cg`); C + λI must be PD
``eigvalsh()``         P, then a dense eigendecomposition
``restrict(groups)``   free; the restricted operator's products cost one product of the parent
=====================  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from scipy.sparse.linalg import LinearOperator

from curvlab.errors import CurvlabError
from curvlab.guards import check_finite
from curvlab.operators.cg import DEFAULT_CG, CGSettings, conjugate_gradient
from curvlab.operators.restriction import BlockView, scipy_operator, sub_partition
from curvlab.partition import Partition
from curvlab.repr.base import CurvatureRepresentation

__all__ = ["CurvatureOperator", "RestrictedOperator"]

_CHUNK = 256  # identity columns per batch in dense()/diagonal()/block()
_BLOCK = 32  # columns per vectorised product (bounds the memory of vmap'ed products)


class CurvatureOperator(CurvatureRepresentation):
    """A symmetric [P, P] curvature matrix available through products only (``kind = "operator"``).

    Subclasses implement ``_apply(v)`` for a single v of shape [P] (reference ordering) and may
    override ``_apply_block(V)`` to treat V of shape [P, K] at once (K ≤ 32 columns per call).

    Args:
        partition: groups labelling rows and columns (used by :meth:`restrict`).
        quantity: e.g. ``"hessian"``, ``"ggn"``.
        dtype, device: of the vectors the operator takes and returns.
        cg: stopping rule for :meth:`solve`.
        attrs: provenance attributes.
    """

    kind: ClassVar[str] = "operator"

    def __init__(
        self,
        partition: Partition,
        *,
        quantity: str,
        dtype: torch.dtype,
        device: torch.device,
        cg: CGSettings = DEFAULT_CG,
        attrs=None,
    ):
        super().__init__(partition, quantity=quantity, attrs=attrs)
        self._dtype, self._device = dtype, torch.device(device)
        self.cg = cg

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------ products
    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _apply_block(self, v: torch.Tensor) -> torch.Tensor:
        """C V for V of shape [P, K]; the default multiplies column by column."""
        return torch.stack([self._apply(v[:, k]) for k in range(v.shape[1])], dim=1)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.ndim == 1:
            out = self._apply(v)
        elif v.shape[1] == 0:
            return torch.zeros_like(v)
        else:
            out = torch.cat(
                [self._apply_block(v[:, s : s + _BLOCK]) for s in range(0, v.shape[1], _BLOCK)], 1
            )
        return self._checked_once(v, out)

    def _checked_once(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The first product (and its vector) checked for NaN/inf; later products are not checked."""
        if not self.__dict__.get("_product_checked", False):
            check_finite(v, f"{self.quantity} operator: the vector multiplied")
            check_finite(out, f"{self.quantity} operator product")
            self._product_checked = True
        return out

    def _columns(self, cols: torch.Tensor):
        """Yield ``(positions, C[:, cols[positions]])`` in chunks of identity columns."""
        p = self.shape[0]
        for start in range(0, cols.numel(), _CHUNK):
            chunk = cols[start : start + _CHUNK]
            unit = torch.zeros((p, chunk.numel()), dtype=self.dtype, device=self.device)
            unit[chunk, torch.arange(chunk.numel())] = 1
            yield slice(start, start + chunk.numel()), self._matvec(unit)

    def _dense(self) -> torch.Tensor:
        p = self.shape[0]
        out = torch.empty((p, p), dtype=self.dtype, device=self.device)
        for pos, cols in self._columns(torch.arange(p)):
            out[:, pos] = cols
        return out

    def _block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        out = torch.empty((rows.numel(), cols.numel()), dtype=self.dtype, device=self.device)
        for pos, columns in self._columns(cols):
            out[:, pos] = columns[rows]
        return out

    def _diagonal(self) -> torch.Tensor:
        """Exact diagonal: P products with unit vectors (never the full matrix at once)."""
        p = self.shape[0]
        out = torch.empty(p, dtype=self.dtype, device=self.device)
        for pos, cols in self._columns(torch.arange(p)):
            idx = torch.arange(pos.start, pos.stop)
            out[pos] = cols[idx, torch.arange(idx.numel())]
        return out

    def _solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        return conjugate_gradient(self._apply, v, damping, self.cg).solution

    # ------------------------------------------------------------------ views
    def to_scipy(self) -> LinearOperator:
        """This operator as a float64 ``scipy.sparse.linalg.LinearOperator`` (e.g. for ``eigsh``, ``cg``).

        Example:
            >>> import numpy as np, torch.nn as nn, curvlab
            >>> model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).double()
            >>> data = (torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))
            >>> op = curvlab.operators.GGNOperator(model, nn.MSELoss(), data).to_scipy()
            >>> op.shape, op.matvec(np.ones(9)).shape
            ((9, 9), (9,))
        """
        return scipy_operator(self.shape, self.matvec, self.matvec, self.dtype, self.device)

    def restrict(self, groups: str | Sequence[str]) -> RestrictedOperator:
        """The operator on the named groups' entries only: C[R, R] with R their flat indices (ascending).

        A single group gives the diagonal block C_ii; two give [[C_ii, C_ij], [C_ji, C_jj]]. The result is
        an operator too (restrict it again, take its spectrum, ...); one product costs one of the parent.

        Example:
            >>> import torch.nn as nn, curvlab
            >>> model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).double()
            >>> data = (torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))
            >>> op = curvlab.operators.HessianOperator(model, nn.MSELoss(), data)
            >>> sub = op.restrict(["2.weight", "2.bias"])
            >>> sub.shape, torch.allclose(sub.dense(), op.dense()[6:, 6:])
            ((3, 3), True)
        """
        names = [groups] if isinstance(groups, str) else list(groups)
        partition, indices = sub_partition(self.partition, names)
        return RestrictedOperator(self, indices, partition)

    def block_operator(
        self, row_groups: str | Sequence[str], col_groups: str | Sequence[str]
    ) -> BlockView:
        """The off-diagonal block C[R, C] between two sets of groups, as a rectangular :class:`BlockView`.

        Example:
            >>> import torch.nn as nn, curvlab
            >>> model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)).double()
            >>> data = (torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))
            >>> op = curvlab.operators.GGNOperator(model, nn.MSELoss(), data)
            >>> blk = op.block_operator("2.weight", "0.weight")
            >>> blk.shape, torch.allclose(blk.dense(), op.dense()[6:8, 0:4])
            ((2, 4), True)
        """
        rows = [row_groups] if isinstance(row_groups, str) else list(row_groups)
        cols = [col_groups] if isinstance(col_groups, str) else list(col_groups)
        return BlockView(
            self,
            sub_partition(self.partition, rows)[1],
            sub_partition(self.partition, cols)[1],
            rows,
            cols,
        )

    # ------------------------------------------------------------------ export
    def to_dense_curvature(self):
        """The materialised matrix as a :class:`curvlab.repr.DenseCurvature` (P products, budget-guarded)."""
        from curvlab.repr import DenseCurvature

        return DenseCurvature(
            self.dense(), self.partition, quantity=self.quantity, attrs=self.attrs
        )

    def to_xarray(self):
        """Export the materialised dense matrix (see :meth:`to_dense_curvature`); refuses over the memory budget.

        The export is that of a ``DenseCurvature`` (``curvlab_kind="dense"``), with ``exported_from="operator"``.
        """
        obj = self.to_dense_curvature().to_xarray()
        obj.attrs["exported_from"] = "operator"
        return obj

    def _to_xarray(self):  # pragma: no cover - to_xarray is overridden
        return self.to_dense_curvature().to_xarray()

    @classmethod
    def _from_xarray(cls, obj):
        raise CurvlabError(
            "a matrix-free operator cannot be rebuilt from a file: it was exported as a dense matrix; "
            "load it with curvlab.load (or DenseCurvature.from_xarray)"
        )


class RestrictedOperator(CurvatureOperator):
    """C[R, R] for a parent operator C and flat indices R; see :meth:`CurvatureOperator.restrict`.

    Attributes:
        parent: the unrestricted operator.
        indices: LongTensor [n], the rows/columns R of the parent (ascending).
    """

    def __init__(self, parent: CurvatureOperator, indices: torch.Tensor, partition: Partition):
        super().__init__(
            partition,
            quantity=parent.quantity,
            dtype=parent.dtype,
            device=parent.device,
            cg=parent.cg,
            attrs={**parent.attrs, "restricted_to": ", ".join(partition.group_names)},
        )
        self.parent, self.indices = parent, indices

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(
            (self.parent.shape[0], *v.shape[1:]), dtype=self.dtype, device=self.device
        )
        full[self.indices] = v
        return self.parent.matvec(full)[self.indices]

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        return self._matvec(v)
