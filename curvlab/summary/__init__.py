"""GroupedNewton summaries of the gradient, the Hessian (or GGN) and order-3 derivatives over parameter groups.

* :func:`grouped_newton_summary` computes ḡ = Uᵀg [S], H̄ = UᵀHU [S, S] and D³ [S] for a direction u
  split into S groups (φ(η) = L(θ + Uη)), returning a :class:`GroupedNewtonSummary`;
* :func:`newton_summary_step` solves η = (H̄ + ½λ_int‖Dη‖D²)⁻¹ḡ (anisotropic Nesterov cubic
  regularisation), a pure function of (ḡ, H̄, D³) used by the optimiser.

Modules: ``summary`` (entry point), ``problem`` (inputs and options), ``layered`` / ``functional`` /
``double_backward`` (the three exact routes), ``terms`` (batch combination), ``result`` (result and
export), ``cubic`` (the step solver).
"""

from curvlab.summary.cubic import (
    NewtonSummaryStep,
    SingularSummaryError,
    StepStatus,
    X0Method,
    newton_summary_step,
)
from curvlab.summary.problem import SummaryCurvature, SummaryMethod
from curvlab.summary.result import GroupedNewtonSummary
from curvlab.summary.summary import gradient_direction, grouped_newton_summary

__all__ = [
    "GroupedNewtonSummary",
    "NewtonSummaryStep",
    "SingularSummaryError",
    "StepStatus",
    "SummaryCurvature",
    "SummaryMethod",
    "X0Method",
    "gradient_direction",
    "grouped_newton_summary",
    "newton_summary_step",
]
