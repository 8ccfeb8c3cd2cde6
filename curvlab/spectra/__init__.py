"""Spectral estimation from matrix-vector products: eigenvalues, traces, diagonals and densities.

Every function takes a :class:`~curvlab.repr.base.CurvatureRepresentation` (matrix-free operators
included), a ``scipy.sparse.linalg.LinearOperator`` or a dense [P, P] matrix, works in float64, and
returns xarray objects with named dims (``eigenvalue``, ``param``, ``probe``, ``node``, ``grid``,
``group``) and ``long_name`` attrs; ``.values`` gives the raw numpy arrays.

=============================  =================================================  ====================
function                       result                                             products
=============================  =================================================  ====================
:func:`top_eigenvalues`        k largest eigenpairs, Lanczos (ARPACK ``eigsh``)    O(k · iterations)
:func:`bottom_eigenvalues`     k smallest                                         idem
:func:`extreme_eigenvalues`    both ends                                          idem
:func:`eigvalsh`               whole spectrum, dense                              P
:func:`trace`                  Hutchinson / Hutch++ estimate and standard error   ``num_matvecs``
:func:`diagonal_estimate`      Hutchinson diagonal                                ``num_matvecs``
:func:`frobenius_norm`         ‖A‖_F by Hutch++ / Hutchinson, standard error      ``num_matvecs``
:func:`density`                stochastic Lanczos quadrature                      probes × steps
:func:`block_spectra`          top-k of each diagonal block (restricted ops)      per group
=============================  =================================================  ====================
"""

from curvlab.spectra.blocks import block_spectra
from curvlab.spectra.density import density, lanczos_tridiagonal, quadrature_moments
from curvlab.spectra.eigen import bottom_eigenvalues, eigvalsh, extreme_eigenvalues, top_eigenvalues
from curvlab.spectra.trace import TraceMethod, diagonal_estimate, frobenius_norm, trace

__all__ = [
    "TraceMethod",
    "block_spectra",
    "bottom_eigenvalues",
    "density",
    "diagonal_estimate",
    "eigvalsh",
    "extreme_eigenvalues",
    "frobenius_norm",
    "lanczos_tridiagonal",
    "quadrature_moments",
    "top_eigenvalues",
    "trace",
]
