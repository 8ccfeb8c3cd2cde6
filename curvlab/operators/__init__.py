"""Matrix-free curvature operators: products C v without forming the [P, P] matrix.

Each operator is built as ``Operator(model, loss_fn, data, ...)``, evaluated at a copy of the model's
current trainable parameters, and implements :class:`curvlab.repr.base.CurvatureRepresentation`
(``op @ v`` for v of shape [P] or [P, K] in the reference ordering, ``dense()``, ``solve`` by CG, ...),
plus ``to_scipy()``, ``restrict(groups)`` and ``block_operator(rows, cols)``.

* :class:`HessianOperator`: H = ∇²L; double backward (cached gradient graph) or forward-over-reverse.
* :class:`ComplexStepHessianOperator`: H v = Im ∇L(θ + iεv)/ε, ε = 2⁻⁵⁰ (analytic models only).
* :class:`GGNOperator`: G = Σ_b w_b Jᵀ H_f J / Z_b; a jvp, the output Hessian in closed form, a vjp.
* :class:`FisherMCOperator`: Jᵀ S Sᵀ J / Z with MC square roots S sampled once at construction.
* :class:`EmpiricalFisherOperator`: Σ_n g_n g_nᵀ / Z; cached per-sample gradients or jvp, r rᵀ, vjp.

Every operator also gives ``dense()`` (P products), an exact ``diagonal()`` (P products), ``solve`` by
conjugate gradient (:mod:`curvlab.operators.cg`), and exports its materialised matrix as a
``DenseCurvature``. Products of several columns use ``vmap`` (32 columns at a time).
"""

from curvlab.operators.base import CurvatureOperator, RestrictedOperator
from curvlab.operators.cg import CGBreakdown, CGNorm, CGResult, CGSettings, conjugate_gradient
from curvlab.operators.complex_step import ComplexStepHessianOperator, check_analytic
from curvlab.operators.empirical_fisher import EmpiricalFisherOperator, EmpiricalFisherStrategy
from curvlab.operators.fisher_mc import FisherMCOperator
from curvlab.operators.ggn import GGNOperator
from curvlab.operators.hessian import HessianOperator, HVPMethod
from curvlab.operators.model_operator import ModelCurvatureOperator
from curvlab.operators.restriction import BlockView, sub_partition

__all__ = [
    "BlockView",
    "CGBreakdown",
    "CGNorm",
    "CGResult",
    "CGSettings",
    "ComplexStepHessianOperator",
    "CurvatureOperator",
    "EmpiricalFisherOperator",
    "EmpiricalFisherStrategy",
    "FisherMCOperator",
    "GGNOperator",
    "HVPMethod",
    "HessianOperator",
    "ModelCurvatureOperator",
    "RestrictedOperator",
    "check_analytic",
    "conjugate_gradient",
    "sub_partition",
]
