"""Guards against silent failure: a memory budget for dense results and finiteness checks.

The memory budget defaults to 4 GiB. Change it for a block of code with :func:`memory_budget`, for the
process with :func:`set_memory_budget`, or with the environment variable ``CURVLAB_MEMORY_BUDGET``
(bytes, or a number with a ``K``/``M``/``G`` suffix).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence

import torch

from curvlab.errors import MemoryBudgetError, NonFiniteError, UnsupportedModuleError

__all__ = [
    "check_backward_hooks",
    "check_dense_allocation",
    "check_finite",
    "format_bytes",
    "get_memory_budget",
    "memory_budget",
    "set_memory_budget",
]

_DEFAULT_BUDGET = 4 * 2**30
_budget_override: int | None = None


_ENV = "CURVLAB_MEMORY_BUDGET"


def _parse_bytes(text: str, source: str = _ENV) -> int:
    """Bytes from ``"4096"``, ``"512M"``, ``"2GiB"``...; ``ValueError`` naming ``source`` unless positive.

    Example:
        >>> _parse_bytes("1.5K"), _parse_bytes("2GiB")
        (1536, 2147483648)
        >>> _parse_bytes("-5")
        Traceback (most recent call last):
        ...
        ValueError: CURVLAB_MEMORY_BUDGET='-5' is not a positive size: use bytes or a number with a K/M/G/T suffix, e.g. 4G
    """
    clean = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(clean[-1:], 1)
    number = clean[:-1] if clean[-1:] in "KMGT" else clean
    try:
        value = float(number) * scale
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(
            f"{source}={text!r} is not a positive size: use bytes or a number with a K/M/G/T suffix, e.g. 4G"
        )
    return int(value)


def get_memory_budget() -> int:
    """Return the current budget in bytes for a single dense allocation.

    Example:
        >>> get_memory_budget() > 0
        True
    """
    if _budget_override is not None:
        return _budget_override
    env = os.environ.get(_ENV)
    return _parse_bytes(env) if env else _DEFAULT_BUDGET


def set_memory_budget(num_bytes: int | None) -> None:
    """Set the process-wide budget in bytes; ``None`` restores the default (or the environment's).

    Example:
        >>> set_memory_budget(2**20); get_memory_budget()
        1048576
        >>> set_memory_budget(None)
    """
    global _budget_override
    if num_bytes is not None and num_bytes <= 0:
        raise ValueError(f"memory budget must be positive, got {num_bytes}")
    _budget_override = num_bytes


@contextlib.contextmanager
def memory_budget(num_bytes: int) -> Iterator[None]:
    """Temporarily set the memory budget.

    Example:
        >>> with memory_budget(10):
        ...     check_dense_allocation((100, 100), torch.float64, "ggn")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        curvlab.errors.MemoryBudgetError: ggn: a dense [100, 100] float64 matrix needs 78.1 KiB, ...
    """
    global _budget_override
    previous = _budget_override
    set_memory_budget(num_bytes)
    try:
        yield
    finally:
        _budget_override = previous


def format_bytes(num_bytes: float) -> str:
    """Human-readable size, e.g. ``format_bytes(3 * 2**30) == '3.0 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def check_dense_allocation(shape: Sequence[int], dtype: torch.dtype, what: str) -> None:
    """Raise :class:`MemoryBudgetError` if a tensor of ``shape`` and ``dtype`` exceeds the budget.

    Call this *before* allocating. ``what`` names the quantity in the message.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    needed = math.prod(int(s) for s in shape) * itemsize
    budget = get_memory_budget()
    if needed > budget:
        dims = ", ".join(str(int(s)) for s in shape)
        raise MemoryBudgetError(
            f"{what}: a dense [{dims}] {str(dtype).removeprefix('torch.')} matrix needs "
            f"{format_bytes(needed)}, over the memory budget of {format_bytes(budget)}. "
            "Use a matrix-free operator or a block/diagonal/Kronecker representation, or raise the "
            "budget with curvlab.memory_budget(...)."
        )


def check_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``tensor`` unchanged, or raise :class:`NonFiniteError` naming ``what`` if it holds NaN/inf.

    Example:
        >>> check_finite(torch.tensor([1.0, float("nan")]), "diag_ggn")
        Traceback (most recent call last):
        ...
        curvlab.errors.NonFiniteError: diag_ggn contains 1 NaN and 0 inf entries (of 2)
    """
    if tensor.is_floating_point() or tensor.is_complex():
        if tensor.numel() and bool(torch.isfinite(tensor.sum())):
            return tensor  # fast path: any NaN/inf entry makes the sum non-finite
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            nans = int(torch.isnan(tensor).sum())
            infs = int((~finite).sum()) - nans
            raise NonFiniteError(
                f"{what} contains {nans} NaN and {infs} inf entries (of {tensor.numel()})"
            )
    return tensor


def check_backward_hooks(model: torch.nn.Module, what: str) -> None:
    """Raise :class:`~curvlab.errors.UnsupportedModuleError` naming a module with a user's *full*
    backward hook (``register_full_backward_hook`` or ``register_full_backward_pre_hook``, or a global one).

    Such a hook wraps the module's inputs and outputs in an ``autograd.Function``: curvlab's hook
    engine then no longer sees one module's output flow into the next, and ``torch.func`` transforms
    refuse it. The fix is to remove the hook (``handle.remove()``) while computing curvature.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> handle = model[0].register_full_backward_hook(lambda *args: None)
        >>> check_backward_hooks(model, "curvlab.compute")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        curvlab.errors.UnsupportedModuleError: curvlab.compute: module '0' (Linear) has a full backward hook ...
        >>> handle.remove(); check_backward_hooks(model, "curvlab.compute")
    """
    from torch.nn.modules import module as torch_module  # noqa: PLC0415

    if getattr(torch_module, "_global_is_full_backward_hook", None) and torch_module._global_backward_hooks:
        raise UnsupportedModuleError(
            f"{what}: a global full backward hook is registered (torch.nn.modules.module."
            "register_module_full_backward_hook); remove it while computing curvature"
        )
    for name, module in model.named_modules():
        full = bool(module._backward_hooks) and getattr(module, "_is_full_backward_hook", None) is True
        if full or module._backward_pre_hooks:
            raise UnsupportedModuleError(
                f"{what}: module {name or 'the model'!r} ({type(module).__qualname__}) has a full backward hook "
                "(register_full_backward_hook/register_full_backward_pre_hook), which wraps its inputs and outputs "
                "in an autograd.Function that curvature computations cannot trace; remove it (handle.remove()) "
                "while computing curvature"
            )
