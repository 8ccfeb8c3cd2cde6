"""One view of everything the spectral tools accept: a representation, a scipy operator or a dense matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from curvlab.guards import check_dense_allocation
from curvlab.operators.restriction import scipy_operator
from curvlab.partition import Partition
from curvlab.repr.base import CurvatureRepresentation

__all__ = ["SymmetricMatrix", "as_symmetric_matrix", "rademacher"]


@dataclass
class SymmetricMatrix:
    """A symmetric [P, P] matrix through float64 torch products ``matmat`` ([P, K] -> [P, K]).

    ``num_matvecs`` counts the columns multiplied so far; ``partition`` labels the rows if known.
    """

    size: int
    _matmat: Callable[[torch.Tensor], torch.Tensor]
    dense: Callable[[], torch.Tensor]
    partition: Partition | None = None
    num_matvecs: int = 0

    def matmat(self, v: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1 if v.ndim == 1 else v.shape[1]
        return self._matmat(v)

    def to_scipy(self) -> LinearOperator:
        """A float64 scipy view whose products are counted in ``num_matvecs``."""
        return scipy_operator(
            (self.size, self.size), self.matmat, self.matmat, torch.float64, torch.device("cpu")
        )


def as_symmetric_matrix(op) -> SymmetricMatrix:
    """Wrap a :class:`CurvatureRepresentation`, a ``scipy.sparse.linalg.LinearOperator``, or a dense torch/numpy matrix."""
    if isinstance(op, CurvatureRepresentation):
        size = op.shape[0]

        def matmat(v):
            return op.matvec(v.to(device=op.device, dtype=op.dtype)).to(torch.float64).cpu()

        return SymmetricMatrix(
            size, matmat, lambda: op.dense().to(torch.float64).cpu(), op.partition
        )
    if isinstance(op, np.ndarray):
        op = torch.from_numpy(op)
    if isinstance(op, torch.Tensor):
        if op.ndim != 2 or op.shape[0] != op.shape[1]:
            raise ValueError(f"a dense matrix must be square [P, P], got {tuple(op.shape)}")
        matrix = op.detach().to(torch.float64).cpu()
        return SymmetricMatrix(matrix.shape[0], matrix.__matmul__, lambda: matrix)
    if isinstance(op, LinearOperator):
        if op.shape[0] != op.shape[1]:
            raise ValueError(f"a linear operator must be square, got shape {op.shape}")

        def matmat(v):
            out = op.matmat(v.numpy()) if v.ndim == 2 else op.matvec(v.numpy())
            return torch.as_tensor(np.asarray(out, dtype=np.float64))

        def dense():
            check_dense_allocation(op.shape, torch.float64, "dense LinearOperator")
            return matmat(torch.eye(op.shape[0], dtype=torch.float64))

        return SymmetricMatrix(op.shape[0], matmat, dense)
    raise TypeError(
        "expected a CurvatureRepresentation, a scipy LinearOperator or a dense torch/numpy matrix, "
        f"got {type(op).__qualname__}"
    )


def rademacher(size: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """[size, count] independent ±1 entries (float64)."""
    return torch.randint(0, 2, (size, count), generator=generator).to(torch.float64).mul_(2).sub_(1)
