"""Matrix-free curvature operators: products C v without forming the [P, P] matrix.

Each operator is built as ``Operator(model, loss_fn, data, ...)``, evaluated at a copy of the model's
current trainable parameters, and implements :class:`curvlab.repr.base.CurvatureRepresentation`
(``op @ v`` for v of shape [P] or [P, K] in the reference ordering, ``dense()``, ``solve`` by CG, ...),
plus ``to_scipy()``, ``restrict(groups)`` and ``block_operator(rows, cols)``.

==============================  ==========================================  =========================
operator                        matrix                                      product
==============================  ==========================================  =========================
:class:`HessianOperator`        H = ∇²L                                     double backward or
                                                                            forward-over-reverse
:class:`ComplexStepHessianOperator`  H (analytic models only)               Im ∇L(θ+iεv)/ε
:class:`GGNOperator`            G = Jᵀ H_f J / Z                            jvp, output Hessian, vjp
:class:`FisherMCOperator`       Jᵀ S Sᵀ J / Z, S sampled once               jvp, S Sᵀ, vjp
:class:`EmpiricalFisherOperator`  Σ g_n g_nᵀ / Z                            per-sample gradients or
                                                                            jvp, r rᵀ, vjp
==============================  ==========================================  =========================
"""

from curvlab.operators.base import CurvatureOperator, RestrictedOperator
from curvlab.operators.cg import CGResult, CGSettings, conjugate_gradient
from curvlab.operators.complex_step import ComplexStepHessianOperator, check_analytic
from curvlab.operators.empirical_fisher import EmpiricalFisherOperator, EmpiricalFisherStrategy
from curvlab.operators.fisher_mc import FisherMCOperator
from curvlab.operators.ggn import GGNOperator
from curvlab.operators.hessian import HessianOperator, HVPMethod
from curvlab.operators.model_operator import ModelCurvatureOperator
from curvlab.operators.restriction import BlockView, sub_partition

__all__ = [
    "BlockView",
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
