"""Biased random search for hyperparameters (George, master's thesis, §4.2, algorithm 1).

Random search samples every hyperparameter uniformly from its domain D (log-uniformly for a ``"log"``
range). Biased random search keeps a model M of the cost landscape – a 1-nearest-neighbour regressor
over the history H of (hyperparameters, cost) in the normalised search space – and accepts a sample a
with probability

    p(a) = (c_max − ĉ(a)) / (c_max − c_min),     ĉ(a) = M(H, a) (the cost of the nearest tried point),

where c_max and c_min are the worst and best costs so far: samples near the worst runs are almost surely
rejected, samples near the best almost surely accepted. Rejected samples are redrawn. A non-finite cost
(a diverged run) counts as c_max. The first ``initial`` experiments are plain random samples.

:func:`biased_random_search` takes any objective, e.g. "build this optimiser with these
hyperparameters, train for a budget, return the final loss", so it tunes any optimiser factory.

Example:
    >>> result = biased_random_search(lambda hp: (math.log10(hp["lr"]) + 2) ** 2,
    ...                               {"lr": (1e-5, 1.0, "log")}, budget=25, seed=0)
    >>> abs(math.log10(result.best["lr"]) + 2) < 0.3
    True
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from curvlab.optim.hyperparameters import HyperparameterError, check_int

__all__ = ["TuningResult", "biased_random_search"]


@dataclass
class TuningResult:
    """The best hyperparameters found, their cost, and the whole history [(hyperparameters, cost), …]."""

    best: dict[str, float]
    best_cost: float
    history: list[tuple[dict[str, float], float]] = field(default_factory=list)
    rejected: int = 0


def _check_space(space: Mapping[str, tuple]) -> dict[str, tuple[float, float, str]]:
    if not space:
        raise HyperparameterError("space must name at least one hyperparameter")
    out = {}
    for name, spec in space.items():
        low, high, *rest = spec
        scale = rest[0] if rest else "linear"
        if scale not in ("linear", "log"):
            raise HyperparameterError(f"space[{name!r}]: scale must be 'linear' or 'log', got {scale!r}")
        if not (math.isfinite(low) and math.isfinite(high) and low < high) or (scale == "log" and low <= 0):
            raise HyperparameterError(f"space[{name!r}]: need finite low < high (low > 0 for 'log'), got {spec!r}")
        out[name] = (float(low), float(high), scale)
    return out


def _to_unit(value: float, low: float, high: float, scale: str) -> float:
    if scale == "log":
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def _from_unit(u: float, low: float, high: float, scale: str) -> float:
    if scale == "log":
        return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)


def biased_random_search(
    objective: Callable[[dict[str, float]], float],
    space: Mapping[str, tuple],
    budget: int,
    *,
    seed: int = 0,
    initial: int = 2,
    bias: bool = True,
    max_rejections: int = 10_000,
) -> TuningResult:
    """Minimise ``objective(hyperparameters)`` over ``space`` with ``budget`` experiments.

    Args:
        objective: maps a dict of hyperparameters to a cost (lower is better; NaN/inf = diverged).
        space: ``{name: (low, high)}`` or ``{name: (low, high, "log")}``.
        budget: number of experiments (objective calls).
        seed: seed of the sampling; initial: plain random experiments first.
        bias: ``False`` gives plain random search (for comparison).
        max_rejections: after this many consecutive rejections the sample is taken anyway.
    """
    ranges = _check_space(space)
    check_int("budget", budget)
    rng = random.Random(seed)
    history: list[tuple[dict[str, float], float]] = []
    units: list[list[float]] = []
    rejected = 0

    def sample() -> tuple[dict[str, float], list[float]]:
        u = [rng.random() for _ in ranges]
        return {n: _from_unit(x, *r) for x, (n, r) in zip(u, ranges.items(), strict=True)}, u

    for _ in range(budget):
        hp, u = sample()
        if bias and len(history) >= max(initial, 1):
            costs = [c for _, c in history]
            finite = [c for c in costs if math.isfinite(c)]
            c_max, c_min = (max(finite), min(finite)) if finite else (0.0, 0.0)
            for _ in range(max_rejections):
                if c_max <= c_min:
                    break
                nearest = min(range(len(units)), key=lambda i: sum((a - b) ** 2 for a, b in zip(units[i], u, strict=True)))
                estimate = costs[nearest] if math.isfinite(costs[nearest]) else c_max
                if rng.random() < (c_max - estimate) / (c_max - c_min):
                    break
                rejected += 1
                hp, u = sample()
        cost = float(objective(dict(hp)))
        history.append((hp, cost if math.isfinite(cost) else math.inf))
        units.append(u)
    best_hp, best_cost = min(history, key=lambda item: item[1])
    return TuningResult(dict(best_hp), best_cost, history, rejected)
