"""Exception and warning classes of curvlab.

Every error names its culprit: the module's qualified name, the loss and its setting, the quantity that
went non-finite, or the size of a refused allocation.
"""

from __future__ import annotations

__all__ = [
    "CurvlabError",
    "CurvlabWarning",
    "DistributedError",
    "MemoryBudgetError",
    "NonFiniteError",
    "PartitionError",
    "UnsupportedLossError",
    "UnsupportedModuleError",
]


class CurvlabError(Exception):
    """Base class of every error raised by curvlab."""


class UnsupportedModuleError(CurvlabError, TypeError):
    """A module type has no rule for the requested quantity (the message gives its qualified name)."""


class UnsupportedLossError(CurvlabError, ValueError):
    """A loss function, or one of its settings, is not supported (the message names it)."""


class MemoryBudgetError(CurvlabError, MemoryError):
    """A dense allocation would exceed the memory budget; raised before allocating."""


class NonFiniteError(CurvlabError, FloatingPointError):
    """A NaN or inf appeared in a named quantity."""


class PartitionError(CurvlabError, ValueError):
    """A parameter partition misses a parameter, names one twice, or names an unknown one."""


class DistributedError(CurvlabError, RuntimeError):
    """The ranks of a process group failed or disagree; raised on every rank alike, before any reduction."""


class CurvlabWarning(UserWarning):
    """Warnings raised by curvlab."""
