"""Validation of optimiser hyperparameters: a bad value raises :class:`HyperparameterError` naming it.

Example:
    >>> check_range("damping", 1e-4, low=0.0)
    0.0001
    >>> check_range("beta", 1.5, low=0.0, high=1.0, high_inclusive=False)
    Traceback (most recent call last):
    ...
    curvlab.optim.hyperparameters.HyperparameterError: beta must be in [0.0, 1.0), got 1.5
"""

from __future__ import annotations

import enum
import math

from curvlab.errors import CurvlabError

__all__ = ["HyperparameterError", "check_bool", "check_choice", "check_int", "check_range"]


class HyperparameterError(CurvlabError, ValueError):
    """An optimiser hyperparameter has a bad value or type (the message names it)."""


def check_range(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``float(value)`` if it is a finite real number in the interval, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:  # 0-dim tensors and numpy scalars
            value = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise HyperparameterError(f"{name} must be a real number, got {value!r}") from None
    value = float(value)
    lo = "-inf" if low is None else low
    hi = "inf" if high is None else high
    interval = f"{'[' if low_inclusive and low is not None else '('}{lo}, {hi}{']' if high_inclusive and high is not None else ')'}"
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value < low if low_inclusive else value <= low
    if high is not None:
        bad |= value > high if high_inclusive else value >= high
    if bad:
        raise HyperparameterError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_int(name: str, value: int, *, low: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= low``, else raise naming ``name``.

    Example:
        >>> check_int("cg_iters", 0)
        Traceback (most recent call last):
        ...
        curvlab.optim.hyperparameters.HyperparameterError: cg_iters must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise HyperparameterError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def check_choice(name: str, value, enum_type: type[enum.Enum]) -> enum.Enum:
    """Convert ``value`` (a member or its string value) to ``enum_type``, else raise naming ``name``.

    Example:
        >>> import enum
        >>> class Mode(enum.Enum):
        ...     FAST = "fast"
        >>> check_choice("mode", "fast", Mode)
        <Mode.FAST: 'fast'>
    """
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum_type)
        raise HyperparameterError(f"{name} must be one of {choices}, got {value!r}") from None


def check_bool(name: str, value) -> bool:
    """Return ``value`` if it is a ``bool``, else raise naming ``name``.

    Example:
        >>> check_bool("line_search", 1)
        Traceback (most recent call last):
        ...
        curvlab.optim.hyperparameters.HyperparameterError: line_search must be True or False, got 1
    """
    if not isinstance(value, bool):
        raise HyperparameterError(f"{name} must be True or False, got {value!r}")
    return value
