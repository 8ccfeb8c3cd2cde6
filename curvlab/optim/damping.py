"""Damping rules: ρ schedules, the trust-region ratio rule and reduce-on-plateau (pure functions + one tiny state).

* :func:`scheduled_damping` – ρ_t for t = 1, 2, … under a :class:`DampingSchedule` (SGN reference):

  - constant: ρ_t = ρ₀;
  - linear:   ρ_t = max(ρ₀ + (ρ_min − ρ₀)(t − 1)/(K − 1), ρ_min)  (K steps to ρ_min);
  - cosine:   ρ_t = ρ₀ cos(π t / 2K), or ρ_min once that is smaller or t > K.

* :func:`reduction_ratio` – r = (L(θ + d) − L(θ)) / (gᵀd + ½ dᵀ(G + ρI)d): actual over predicted change.
* :func:`trust_region_damping` – Levenberg–Marquardt update (Nocedal & Wright, alg. 4.1):
  r < ¼ → ρ ← 1.5 ρ;  r > ¾ → ρ ← max(⅔ ρ, ρ_min);  otherwise unchanged.
* :class:`ReduceOnPlateau` – multiply a value by ``factor`` when a monitored loss stops improving by a
  relative ``threshold`` for more than ``patience`` calls (as ``torch.optim.lr_scheduler.ReduceLROnPlateau``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from curvlab.optim.hyperparameters import check_int, check_range

__all__ = [
    "DampingSchedule",
    "ReduceOnPlateau",
    "reduction_ratio",
    "scheduled_damping",
    "trust_region_damping",
]


class DampingSchedule(enum.Enum):
    """How ρ evolves when the trust region is off."""

    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


def scheduled_damping(schedule: DampingSchedule | str, rho0: float, rho_min: float, step: int, horizon: int) -> float:
    """ρ at step ``step`` (1-based) for the schedule; ``horizon`` is K, the step where ρ reaches ρ_min.

    Example:
        >>> [round(scheduled_damping("linear", 1.0, 0.0, t, 3), 3) for t in (1, 2, 3, 4)]
        [1.0, 0.5, 0.0, 0.0]
        >>> round(scheduled_damping("cosine", 1.0, 0.1, 1, 3), 4), scheduled_damping("cosine", 1.0, 0.1, 4, 3)
        (0.866, 0.1)
    """
    schedule = DampingSchedule(schedule)
    check_int("step", step)
    check_int("horizon", horizon)
    if schedule is DampingSchedule.CONSTANT:
        return rho0
    if schedule is DampingSchedule.LINEAR:
        if horizon == 1:
            return rho_min
        return max(rho0 + (rho_min - rho0) * (step - 1) / (horizon - 1), rho_min)
    value = rho0 * math.cos(math.pi / 2 * step / horizon)
    return rho_min if (value < rho_min or step > horizon) else value


def reduction_ratio(actual: float, predicted: float) -> float:
    """Actual over predicted change of the loss; ``-inf`` if the prediction is not a decrease.

    Example:
        >>> reduction_ratio(-0.9, -1.0)
        0.9
    """
    if not predicted < 0:
        return -math.inf
    return actual / predicted


def trust_region_damping(
    rho: float,
    ratio: float,
    rho_min: float = 0.0,
    *,
    low: float = 0.25,
    high: float = 0.75,
    increase: float = 1.5,
    decrease: float = 2.0 / 3.0,
) -> float:
    """The Levenberg–Marquardt damping after a step with reduction ratio ``ratio`` (see module docstring).

    Example:
        >>> trust_region_damping(1.0, 0.1), trust_region_damping(1.0, 0.5), trust_region_damping(1.0, 0.9, 0.8)
        (1.5, 1.0, 0.8)
    """
    if not ratio >= low:  # also NaN
        return rho * increase
    if ratio > high:
        return max(rho * decrease, rho_min)
    return rho


@dataclass
class ReduceOnPlateau:
    """Multiply a value by ``factor`` when the monitored loss plateaus (relative ``threshold``, ``patience``).

    The Wolinski reference reduces its damping λ per epoch with factor 0.5, patience 0, threshold 1e-4.

    Example:
        >>> plateau = ReduceOnPlateau(factor=0.5, patience=0, threshold=1e-4)
        >>> lam = 1.0
        >>> for loss in (3.0, 2.0, 2.0, 1.0):
        ...     lam = plateau.update(lam, loss)
        >>> lam
        0.5
    """

    factor: float = 0.5
    patience: int = 0
    threshold: float = 1e-4
    best: float = math.inf
    bad_steps: int = 0

    def __post_init__(self) -> None:
        check_range("factor", self.factor, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_int("patience", self.patience, low=0)
        check_range("threshold", self.threshold, low=0.0)

    def update(self, value: float, loss: float) -> float:
        """Record ``loss``; return ``value`` or ``value * factor`` if the plateau outlasted the patience."""
        if loss < self.best * (1.0 - self.threshold):
            self.best, self.bad_steps = loss, 0
            return value
        self.bad_steps += 1
        if self.bad_steps > self.patience:
            self.bad_steps = 0
            return value * self.factor
        return value

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad_steps": self.bad_steps}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.best, self.bad_steps = float(state["best"]), int(state["bad_steps"])
