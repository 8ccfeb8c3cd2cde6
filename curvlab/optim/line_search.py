"""Backtracking line search with the Armijo sufficient-decrease condition (Nocedal & Wright, alg. 3.1).

Along a direction d from θ with loss f(0) = L(θ) and slope s = ∇L(θ)ᵀd < 0, try t = t₀, t₀·shrink, …
and accept the first t with

    f(t) ≤ f(0) + c · t · s,

at most ``max_tries`` evaluations. SGN defaults: c = 1e-4, shrink = 0.5, 10 tries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from curvlab.optim.hyperparameters import check_int, check_range

__all__ = ["LineSearchResult", "backtracking_armijo"]


@dataclass(frozen=True)
class LineSearchResult:
    """``step``: the last t tried; ``value``: f(step); ``tries``: evaluations; ``accepted``: Armijo held."""

    step: float
    value: float
    tries: int
    accepted: bool


def backtracking_armijo(
    f: Callable[[float], float],
    f0: float,
    slope: float,
    *,
    initial_step: float = 1.0,
    c: float = 1e-4,
    shrink: float = 0.5,
    max_tries: int = 10,
) -> LineSearchResult:
    """Backtrack from ``initial_step`` until f(t) ≤ f0 + c t slope (see the module docstring).

    Args:
        f: t ↦ loss at θ + t d (a float; NaN/inf count as a failed try).
        f0: the loss at t = 0.
        slope: the directional derivative ∇L(θ)ᵀd.

    Returns:
        :class:`LineSearchResult`; if no try is accepted, ``step`` is the smallest t tried.

    Example:
        >>> res = backtracking_armijo(lambda t: (1 - 4 * t) ** 2, 1.0, -8.0)   # f(t) = (1 - 4t)^2
        >>> res.step, res.tries, res.accepted
        (0.25, 3, True)
    """
    check_range("initial_step", initial_step, low=0.0, low_inclusive=False)
    check_range("c", c, low=0.0, high=1.0, high_inclusive=False)
    check_range("shrink", shrink, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    check_int("max_tries", max_tries)
    t, value = initial_step, math.nan
    for tries in range(1, max_tries + 1):
        value = float(f(t))
        if math.isfinite(value) and value <= f0 + c * t * slope:
            return LineSearchResult(t, value, tries, True)
        if tries < max_tries:
            t *= shrink
    return LineSearchResult(t, value, max_tries, False)
