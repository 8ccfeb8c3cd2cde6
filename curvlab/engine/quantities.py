"""The quantities the engine computes, as data: each is a (source, form) pair.

=========================  ==========  ==========  ==============================================
quantity                   source      form        representation
=========================  ==========  ==========  ==============================================
``hessian_block``          HESSIAN     BLOCK       BlockDiagonalCurvature over layers
``ggn_block``              GGN         BLOCK       BlockDiagonalCurvature over layers
``fisher_mc_block``        MC          BLOCK       BlockDiagonalCurvature over layers
``empirical_fisher_block`` EMPIRICAL   BLOCK       BlockDiagonalCurvature over layers
``hessian``                HESSIAN     FULL        DenseCurvature (memory-budget guarded)
``ggn``                    GGN         FULL        LayeredSquareRootCurvature, factor [N·C, P]
``fisher_mc``              MC          FULL        LayeredSquareRootCurvature, factor [N·M, P]
``empirical_fisher``       EMPIRICAL   FULL        LayeredSquareRootCurvature, factor [N, P]
``diag_hessian``           HESSIAN     DIAG        DiagonalCurvature
``diag_ggn``               GGN         DIAG        DiagonalCurvature
``diag_ggn_mc``            MC          DIAG        DiagonalCurvature
``diag_empirical_fisher``  EMPIRICAL   DIAG        DiagonalCurvature
``kfac``                   MC          KRONECKER   KroneckerCurvature (MC Fisher G)
``kflr``                   GGN         KRONECKER   KroneckerCurvature (exact GGN G)
``kfra``                   KFRA        KRONECKER   KroneckerCurvature (batch-averaged recursion)
``ekfac``                  GGN         EKFAC       KroneckerCurvature with refitted eigenvalues
=========================  ==========  ==========  ==============================================

Sources: the matrix sandwiched between the Jacobians, as a square-root factor at the model output
(GGN: S_n with S_n S_nᵀ = H_n; MC: M sampled gradient columns; EMPIRICAL: the observed gradient),
the per-sample Hessian recursion (HESSIAN), or KFRA's batch-averaged recursion.
Full factors are kept per layer (S_l ⊗ [X_l; 1] for Linear layers) and formed only on request.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = ["Form", "Quantity", "Source", "parse_quantities"]


class Source(enum.Enum):
    """What is propagated backwards from the loss."""

    GGN = "ggn"
    MC = "mc"
    EMPIRICAL = "empirical"
    HESSIAN = "hessian"
    KFRA = "kfra"


class Form(enum.Enum):
    """How a quantity is stored."""

    BLOCK = "block"
    FULL = "full"
    DIAG = "diag"
    KRONECKER = "kronecker"
    EKFAC = "ekfac"


class Quantity(enum.Enum):
    """A curvature quantity; ``Quantity("kfac")`` parses a name."""

    HESSIAN_BLOCK = "hessian_block"
    GGN_BLOCK = "ggn_block"
    FISHER_MC_BLOCK = "fisher_mc_block"
    EMPIRICAL_FISHER_BLOCK = "empirical_fisher_block"
    HESSIAN = "hessian"
    GGN = "ggn"
    FISHER_MC = "fisher_mc"
    EMPIRICAL_FISHER = "empirical_fisher"
    DIAG_HESSIAN = "diag_hessian"
    DIAG_GGN = "diag_ggn"
    DIAG_GGN_MC = "diag_ggn_mc"
    DIAG_EMPIRICAL_FISHER = "diag_empirical_fisher"
    KFAC = "kfac"
    KFLR = "kflr"
    KFRA = "kfra"
    EKFAC = "ekfac"

    @property
    def source(self) -> Source:
        return _TABLE[self][0]

    @property
    def form(self) -> Form:
        return _TABLE[self][1]


_TABLE = {
    Quantity.HESSIAN_BLOCK: (Source.HESSIAN, Form.BLOCK),
    Quantity.GGN_BLOCK: (Source.GGN, Form.BLOCK),
    Quantity.FISHER_MC_BLOCK: (Source.MC, Form.BLOCK),
    Quantity.EMPIRICAL_FISHER_BLOCK: (Source.EMPIRICAL, Form.BLOCK),
    Quantity.HESSIAN: (Source.HESSIAN, Form.FULL),
    Quantity.GGN: (Source.GGN, Form.FULL),
    Quantity.FISHER_MC: (Source.MC, Form.FULL),
    Quantity.EMPIRICAL_FISHER: (Source.EMPIRICAL, Form.FULL),
    Quantity.DIAG_HESSIAN: (Source.HESSIAN, Form.DIAG),
    Quantity.DIAG_GGN: (Source.GGN, Form.DIAG),
    Quantity.DIAG_GGN_MC: (Source.MC, Form.DIAG),
    Quantity.DIAG_EMPIRICAL_FISHER: (Source.EMPIRICAL, Form.DIAG),
    Quantity.KFAC: (Source.MC, Form.KRONECKER),
    Quantity.KFLR: (Source.GGN, Form.KRONECKER),
    Quantity.KFRA: (Source.KFRA, Form.KRONECKER),
    Quantity.EKFAC: (Source.GGN, Form.EKFAC),
}


def parse_quantities(quantities: str | Quantity | Iterable[str | Quantity]) -> tuple[Quantity, ...]:
    """Quantities from names or enum members, duplicates dropped, order kept.

    Example:
        >>> parse_quantities(["kfac", "diag_ggn", "kfac"])
        (<Quantity.KFAC: 'kfac'>, <Quantity.DIAG_GGN: 'diag_ggn'>)
        >>> parse_quantities("ggn_blok")
        Traceback (most recent call last):
        ...
        ValueError: unknown quantity 'ggn_blok'; valid names: hessian_block, ggn_block, ...
    """
    if isinstance(quantities, (str, Quantity)):
        quantities = [quantities]
    parsed: list[Quantity] = []
    for q in quantities:
        if not isinstance(q, Quantity):
            try:
                q = Quantity(q)
            except ValueError:
                names = ", ".join(m.value for m in Quantity)
                raise ValueError(f"unknown quantity {q!r}; valid names: {names}") from None
        if q not in parsed:
            parsed.append(q)
    if not parsed:
        raise ValueError("no quantities requested")
    return tuple(parsed)
