"""Curvature representations behind one interface (:class:`CurvatureRepresentation`).

Kinds, what they store, and the cost of a matvec / a damped solve:

* :class:`DenseCurvature` – the full [P, P] matrix: O(P²) / O(P³).
* :class:`BlockDiagonalCurvature` – one [n_g, n_g] block per group: Σ n_g² / Σ n_g³.
* :class:`DiagonalCurvature` – the [P] diagonal: O(P) / O(P).
* :class:`SquareRootCurvature` – F [K, P] with C = FᵀF: O(KP) / O(K²P + K³) (Woodbury).
* :class:`LayeredSquareRootCurvature` – the same C = FᵀF with F kept per layer as outer products
  S_l ⊗ X_l (backpropagated output factors, layer inputs): O(N·P_l) per layer, F never formed.
* :class:`KroneckerFactors` – G [O, O] and A [I', I'] of one layer: O(O²I' + OI'²) /
  the same after one cached eigendecomposition of each factor.
* :class:`GroupedKroneckerFactors` – one KroneckerFactors per group of a grouped convolution: the sum
  over the groups.
* :class:`KroneckerCurvature` – KroneckerFactors (grouped, or a dense block) per layer: the sum over layers.
* :class:`SummaryMatrix` – an [S, S] matrix over groups (not [P, P]): O(S²) / O(S³).

Every one exports to xarray (``to_xarray``/``from_xarray``, schema in ``docs/export-schema.md``) and
is saved and loaded by :func:`curvlab.io.save`/:func:`curvlab.io.load`.
"""

from curvlab.repr.base import CurvatureRepresentation
from curvlab.repr.block_diagonal import BlockDiagonalCurvature
from curvlab.repr.dense import DenseCurvature
from curvlab.repr.diagonal import DiagonalCurvature
from curvlab.repr.grouped_kronecker import GroupedKroneckerFactors
from curvlab.repr.kronecker import KroneckerFactors
from curvlab.repr.kronecker_curvature import KroneckerCurvature
from curvlab.repr.kronecker_layout import BiasConvention, KroneckerLayout
from curvlab.repr.layered_square_root import LayeredSquareRootCurvature, LayerFactor
from curvlab.repr.square_root import SquareRootCurvature
from curvlab.repr.summary import SummaryMatrix

__all__ = [
    "BiasConvention",
    "BlockDiagonalCurvature",
    "CurvatureRepresentation",
    "DenseCurvature",
    "DiagonalCurvature",
    "GroupedKroneckerFactors",
    "KroneckerCurvature",
    "KroneckerFactors",
    "KroneckerLayout",
    "LayerFactor",
    "LayeredSquareRootCurvature",
    "SquareRootCurvature",
    "SummaryMatrix",
]
