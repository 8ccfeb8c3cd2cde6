"""The one small interface shared by every curvature representation.

A representation stands for a symmetric matrix C ∈ R^{P×P} in the reference ordering of a model's
flat parameters (see :mod:`curvlab.partition`), labelled by a :class:`~curvlab.partition.Partition`.
Entries an approximation does not cover are zero (e.g. off-diagonal blocks of a block-diagonal one).

Public methods are templates: they validate, guard memory and finiteness, then call a private hook
that subclasses implement. Subclasses must implement ``_dense`` and ``_to_xarray``/``_from_xarray``
and should override the others where they have a cheaper route than the dense matrix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from curvlab.guards import check_dense_allocation, check_finite
from curvlab.partition import Partition

__all__ = ["CurvatureRepresentation"]


class CurvatureRepresentation(ABC):
    """Abstract symmetric [P, P] curvature matrix with group structure.

    Args:
        partition: the parameter groups labelling rows and columns.
        quantity: what the matrix approximates, e.g. ``"ggn"``, ``"kfac"``, ``"hessian"``.
        attrs: provenance attributes (see :func:`curvlab.provenance.provenance`), exported as-is.
    """

    #: short name written to the ``curvlab_kind`` attribute on export; :func:`curvlab.load` dispatches on it.
    kind: ClassVar[str]

    def __init__(self, partition: Partition, *, quantity: str, attrs: Mapping[str, Any] | None = None):
        self.partition = partition
        self.quantity = quantity
        self.attrs = dict(attrs or {})

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int]:
        p = self.partition.num_params
        return (p, p)

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    # ------------------------------------------------------------------ public templates
    def dense(self) -> torch.Tensor:
        """The [P, P] matrix in the reference ordering; refuses before allocating beyond the memory budget."""
        check_dense_allocation(self.shape, self.dtype, f"{self.quantity} ({self.kind}) dense()")
        return self._dense()

    def block(self, row_group: str | int, col_group: str | int) -> torch.Tensor:
        """The [n_row, n_col] block between two groups of the partition (zeros where not covered)."""
        rows, cols = self.partition.group(row_group), self.partition.group(col_group)
        check_dense_allocation((rows.size, cols.size), self.dtype, f"{self.quantity} block")
        return self._block(rows.indices, cols.indices)

    def diagonal(self) -> torch.Tensor:
        """The [P] diagonal."""
        return self._diagonal()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """C v for v of shape [P] or [P, K] (K right-hand sides)."""
        v = self._check_vector(v, "matvec")
        return self._matvec(v)

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def eigvalsh(self) -> torch.Tensor:
        """All eigenvalues, ascending, [P]."""
        return self._eigvalsh()

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues [P] ascending and orthonormal eigenvectors [P, P] (columns), C = V diag(λ) Vᵀ."""
        check_dense_allocation(self.shape, self.dtype, f"{self.quantity} eigenvectors")
        return self._eigh()

    def solve(self, v: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
        """(C + damping·I)⁻¹ v for v of shape [P] or [P, K].

        Raises ``torch.linalg.LinAlgError`` if the damped matrix is singular.
        """
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        v = self._check_vector(v, "solve")
        return check_finite(self._solve(v, float(damping)), f"{self.quantity} solve")

    def trace(self) -> torch.Tensor:
        """tr(C), a 0-d tensor."""
        return self._diagonal().sum()

    def to_xarray(self):
        """Export as an ``xarray.Dataset`` (or ``xarray.DataTree``) with named dims, coordinates and attrs.

        The schema is documented in ``docs/export-schema.md``; :func:`curvlab.load` inverts it exactly.
        """
        obj = self._to_xarray()
        obj.attrs.update(self._export_attrs())
        return obj

    @classmethod
    def from_xarray(cls, obj) -> CurvatureRepresentation:
        """Rebuild the representation written by :meth:`to_xarray`."""
        return cls._from_xarray(obj)

    # ------------------------------------------------------------------ hooks for subclasses
    @abstractmethod
    def _dense(self) -> torch.Tensor: ...

    @abstractmethod
    def _to_xarray(self): ...

    @classmethod
    @abstractmethod
    def _from_xarray(cls, obj) -> CurvatureRepresentation: ...

    def _block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.dense()[rows][:, cols]

    def _diagonal(self) -> torch.Tensor:
        return self.dense().diagonal().clone()

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.dense() @ v

    def _eigvalsh(self) -> torch.Tensor:
        return torch.linalg.eigvalsh(self.dense())

    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.linalg.eigh(self.dense())

    def _solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        matrix = self.dense()
        matrix = matrix + damping * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
        return torch.linalg.solve(matrix, v)

    # ------------------------------------------------------------------ helpers
    def _export_attrs(self) -> dict[str, Any]:
        # str subclasses (e.g. torch.__version__, a TorchVersion) become plain str: HDF5 cannot store them.
        attrs = {k: str(v) if isinstance(v, str) else v for k, v in self.attrs.items() if v is not None}
        attrs.update(
            curvlab_kind=self.kind,
            quantity=self.quantity,
            partition=self.partition.to_json(),
        )
        return attrs

    def _check_vector(self, v: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what} expects a torch.Tensor, got {type(v).__qualname__}")
        if v.ndim not in (1, 2) or v.shape[0] != self.shape[0]:
            raise ValueError(
                f"{what} expects shape [P] or [P, K] with P={self.shape[0]}, got {tuple(v.shape)}"
            )
        return v.to(self.dtype)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(quantity={self.quantity!r}, P={self.shape[0]}, "
            f"groups={self.partition.num_groups}, dtype={self.dtype})"
        )
