"""SGN: stochastic generalised Gauss–Newton with conjugate gradient (Gargiani et al. 2020).

On each batch, with gradient g, GGN G (:class:`~curvlab.optim.gauss_newton.GaussNewtonQuadratic`) and
Levenberg–Marquardt damping ρ, SGN solves by (preconditioned) CG, from d₀ = 0,

    (G + ρI) d = −m,      m = g, or the bias-corrected gradient EMA m̂_t = m_t/(1 − β^t),
                          m_t = β m_{t−1} + (1 − β) g  when ``momentum`` β > 0,

stopping when max|r| ≤ ``cg_tol`` or after ``cg_iters`` products, and steps θ ← θ + t d with t = ``lr``
(or smaller, by line search). Options (reference defaults in brackets):

* ``trust_region`` [on]: ratio r = (L(θ + t d) − L(θ)) / (t gᵀd + ½ t² dᵀ(G + ρI)d); r < ¼ → ρ ← 1.5ρ,
  r > ¾ → ρ ← max(⅔ρ, ρ_min). The step is taken either way (as in the reference code).
* ``line_search`` [on]: backtracking Armijo from t = lr, c = 1e-4, shrink 0.5, ≤ 10 tries; if no try
  passes, the smallest t is taken (as in the reference code).
* ``damping_schedule`` (trust region off): constant, linear or cosine decay of ρ from ρ₀ to ρ_min over
  ``damping_horizon`` steps.
* ``preconditioner``: none; ``"gradient-squared"`` M = (m̂² + ρ)^(−κ) (reference, κ = ``preconditioner_exponent``);
  ``"ggn-diagonal"`` M = (diag G + ρ)⁻¹, exact, from per-sample Jacobians.

Cost per step: one forward/backward, ≤ ``cg_iters`` GGN-vector products (each ≈ one JVP + one VJP),
and one or more loss evaluations for trust region / line search.

References:
    M. Gargiani, A. Zanelli, M. Diehl, F. Hutter. On the promise of the stochastic generalized
    Gauss-Newton method for training DNNs. arXiv:2006.02409, 2020.
"""

from __future__ import annotations

import enum

import torch
from torch import nn

from curvlab.operators.cg import CGBreakdown, CGNorm, CGSettings, conjugate_gradient
from curvlab.optim.base import CurvatureOptimizer, all_finite
from curvlab.optim.damping import (
    DampingSchedule,
    reduction_ratio,
    scheduled_damping,
    trust_region_damping,
)
from curvlab.optim.gauss_newton import GaussNewtonQuadratic
from curvlab.optim.hyperparameters import (
    HyperparameterError,
    check_bool,
    check_choice,
    check_int,
    check_range,
)
from curvlab.optim.line_search import backtracking_armijo

__all__ = ["CGPreconditioner", "SGN"]


class CGPreconditioner(enum.Enum):
    """Diagonal preconditioner for SGN's CG."""

    NONE = "none"
    GRADIENT_SQUARED = "gradient-squared"
    GGN_DIAGONAL = "ggn-diagonal"


class SGN(CurvatureOptimizer):
    """Stochastic Gauss–Newton with CG, Levenberg–Marquardt damping, trust region and line search.

    Args:
        model, loss_fn: the network and a supported loss.
        lr: initial step length t (1 = the Gauss–Newton step).
        damping: ρ₀ > 0 (trust region: the current ρ, updated in ``param_groups[0]["damping"]``).
        damping_min: ρ_min ≥ 0 for the trust region and the schedules.
        cg_iters: maximum CG iterations; cg_tol: stop when max|r| ≤ cg_tol.
        preconditioner: a :class:`CGPreconditioner` or its value; preconditioner_exponent: κ ∈ [0, 1].
        trust_region, line_search: see the module docstring.
        damping_schedule: a :class:`~curvlab.optim.damping.DampingSchedule` (without trust region);
        damping_horizon: K, steps to reach ρ_min.
        momentum: β ∈ [0, 1), EMA of the gradient (bias-corrected).
        armijo_c, armijo_shrink, armijo_tries: line-search constants.

    ``statistics()`` keys: ``loss``, ``damping`` (ρ used), ``cg_iterations``, ``cg_residual`` (max|r|),
    ``step_size`` (t), ``step_norm`` (‖t d‖), ``predicted_change``, ``actual_change``, ``reduction_ratio``,
    ``line_search_tries``, ``rejected``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> x = torch.randn(64, 2); y = x[:, :1] * x[:, 1:]
        >>> opt = SGN(model, nn.MSELoss(), cg_iters=5)
        >>> losses = [float(opt.step(x, y)) for _ in range(20)]
        >>> losses[-1] < 0.5 * losses[0]
        True
    """

    has_damping = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        *,
        lr: float = 1.0,
        damping: float = 1e-4,
        damping_min: float = 1e-6,
        cg_iters: int = 10,
        cg_tol: float = 1e-6,
        preconditioner: CGPreconditioner | str = CGPreconditioner.NONE,
        preconditioner_exponent: float = 1.0,
        trust_region: bool = True,
        line_search: bool = True,
        damping_schedule: DampingSchedule | str = DampingSchedule.CONSTANT,
        damping_horizon: int = 10,
        momentum: float = 0.0,
        armijo_c: float = 1e-4,
        armijo_shrink: float = 0.5,
        armijo_tries: int = 10,
    ) -> None:
        defaults = dict(
            lr=check_range("lr", lr, low=0.0, low_inclusive=False),
            damping=check_range("damping", damping, low=0.0, low_inclusive=False),
            damping_min=check_range("damping_min", damping_min, low=0.0),
            cg_iters=check_int("cg_iters", cg_iters),
            cg_tol=check_range("cg_tol", cg_tol, low=0.0),
            preconditioner=check_choice("preconditioner", preconditioner, CGPreconditioner).value,
            preconditioner_exponent=check_range("preconditioner_exponent", preconditioner_exponent, low=0.0, high=1.0),
            trust_region=check_bool("trust_region", trust_region),
            line_search=check_bool("line_search", line_search),
            damping_schedule=check_choice("damping_schedule", damping_schedule, DampingSchedule).value,
            damping_horizon=check_int("damping_horizon", damping_horizon),
            momentum=check_range("momentum", momentum, low=0.0, high=1.0, high_inclusive=False),
            armijo_c=check_range("armijo_c", armijo_c, low=0.0, high=1.0, high_inclusive=False),
            armijo_shrink=check_range("armijo_shrink", armijo_shrink, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False),
            armijo_tries=check_int("armijo_tries", armijo_tries),
        )
        uses_minimum = defaults["trust_region"] or defaults["damping_schedule"] != DampingSchedule.CONSTANT.value
        if uses_minimum and defaults["damping_min"] > defaults["damping"]:
            raise HyperparameterError(
                f"damping_min ({damping_min}) must not exceed damping ({damping}) with a trust region or a schedule"
            )
        super().__init__(model, loss_fn, defaults)

    def _raise_damping(self) -> str:
        group = self._group()
        group["damping"] *= 1.5
        return f"damping raised to {group['damping']:.3g}"

    def _current_damping(self, group: dict, step: int) -> float:
        if group["trust_region"]:
            return group["damping"]
        return scheduled_damping(
            group["damping_schedule"], group["damping"], group["damping_min"], step, group["damping_horizon"]
        )

    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self._group()
        step = self.global_state["step"] + 1
        quad = GaussNewtonQuadratic(self.model, self.loss_fn, inputs, targets)
        loss, grad = quad.loss, quad.gradient
        if not all_finite(loss):
            return self._reject("loss", loss)
        if not all_finite(grad):
            return self._reject("gradient", loss)
        rho = self._current_damping(group, step)
        self._statistics["damping"] = rho

        direction = grad
        beta = group["momentum"]
        if beta > 0:
            buf = self.global_state.get("momentum_buffer")
            buf = (1 - beta) * grad if buf is None else beta * buf + (1 - beta) * grad
            direction = buf / (1 - beta**step)
        precond = self._preconditioner(group, quad, direction, rho)
        settings = CGSettings(
            rtol=0.0,
            atol=group["cg_tol"],
            maxiter=group["cg_iters"],
            norm=CGNorm.MAX_ABS,
            on_breakdown=CGBreakdown.STOP,  # keep the iterate reached so far
            warn=False,  # a truncated solve is the method, not a failure
        )
        cg = conjugate_gradient(quad.ggn_matvec, -direction, rho, settings, preconditioner=precond)
        d = cg.solution
        self._statistics.update(cg_iterations=cg.iterations, cg_residual=float(cg.residual_norm))
        if not all_finite(d):
            return self._reject("step", loss)

        t = group["lr"]
        start = self._before if self._before is not None else [p.detach().clone() for p in self.params]
        placed = [0.0]  # the step size the parameters are at now (start + t d)
        slope = float(torch.dot(grad, d))
        actual = predicted = ratio = float("nan")
        tries = 0
        if group["trust_region"] or group["line_search"]:
            cache: dict[float, float] = {}

            def loss_at(step_size: float) -> float:
                if step_size not in cache:
                    self._set_params(start, d, step_size)
                    placed[0] = step_size
                    cache[step_size] = float(self._evaluate(inputs, targets))
                return cache[step_size]

            new_loss = loss_at(t)
            if group["trust_region"]:
                curvature = float(torch.dot(d, -direction - cg.residual))  # dᵀ(G + ρI)d, free from CG
                predicted = t * slope + 0.5 * t * t * curvature
                actual = new_loss - float(loss)
                ratio = reduction_ratio(actual, predicted)
                group["damping"] = trust_region_damping(group["damping"], ratio, group["damping_min"])
            if group["line_search"]:
                search = backtracking_armijo(
                    loss_at, float(loss), slope, initial_step=t, c=group["armijo_c"],
                    shrink=group["armijo_shrink"], max_tries=group["armijo_tries"],
                )
                t, new_loss, tries = search.step, search.value, search.tries
            if not torch.isfinite(torch.tensor(new_loss)):
                with torch.no_grad():
                    for p, p0 in zip(self.params, start, strict=True):
                        p.copy_(p0)
                return self._reject("loss after the step", loss)
        if beta > 0:
            self.global_state["momentum_buffer"] = buf
        if placed[0] != t:  # the line search may have ended on an earlier try's step size
            self._set_params(start, d, t)
        self._statistics.update(
            step_size=t,
            step_norm=t * float(d.norm()),
            predicted_change=predicted,
            actual_change=actual,
            reduction_ratio=ratio,
            line_search_tries=tries,
        )
        return loss

    @torch.no_grad()
    def _set_params(self, start: list[torch.Tensor], d: torch.Tensor, t: float) -> None:
        offset = 0
        for p, p0 in zip(self.params, start, strict=True):
            n = p.numel()
            torch.add(p0, d[offset : offset + n].view_as(p), alpha=t, out=p)
            offset += n

    @staticmethod
    def _preconditioner(group: dict, quad: GaussNewtonQuadratic, direction: torch.Tensor, rho: float):
        kind = CGPreconditioner(group["preconditioner"])
        if kind is CGPreconditioner.NONE:
            return None
        if kind is CGPreconditioner.GRADIENT_SQUARED:
            return (direction.pow(2) + rho).pow(-group["preconditioner_exponent"])
        return 1.0 / (quad.ggn_diagonal() + rho)

