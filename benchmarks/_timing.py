"""Timing and memory helpers shared by the benchmarks.

Time. :func:`measure_time` runs a callable ``warmup`` times untimed, then ``repeats`` times under
``time.perf_counter`` and reports the median (and min/max) wall time. Garbage is collected before each
run and the collector is paused during it, so a collection triggered by earlier work does not land in
a timed run. If the warm-up alone takes longer than ``slow_s`` seconds, the timed runs are cut to one
(the flag ``Timing.truncated`` says so): a 30-s computation does not need five repeats to be judged.

Memory. :func:`measure_peak_memory` runs the callable once under ``torch.profiler`` with
``profile_memory=True`` and replays the allocator's allocation and free records in time order. The
peak of that running sum is the largest amount of *torch tensor storage* (CPU allocator) that was
live at once during the call, above what was live before it. This counts every tensor the
computation creates, including autograd's saved activations and the returned result, but not
Python objects, BLAS/oneDNN scratch buffers allocated outside the torch allocator, or the heap's
fragmentation and caching; it is therefore a lower bound on the growth of the resident set, and a
fair like-for-like comparison between libraries that all store their data in torch tensors. The
profiler slows the call, so memory is measured in a separate run from the timings. ``tracemalloc``
is not used: it sees only Python's own allocator, not tensor storage.

Example:
    >>> import torch
    >>> t = measure_time(lambda: torch.ones(10).sum(), repeats=3, warmup=1)
    >>> t.repeats, t.median_s >= 0.0
    (3, True)
    >>> peak = measure_peak_memory(lambda: torch.empty(1000, 1000))   # 4 MB of float32
    >>> peak is None or peak >= 4_000_000
    True
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["PairedTiming", "ProfiledRun", "Timing", "format_bytes", "measure_paired", "measure_peak_memory",
           "measure_time", "profiled_run"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the timed runs of one callable.

    Attributes:
        median_s, min_s, max_s: median, fastest and slowest of the timed runs.
        repeats: number of timed runs actually made.
        truncated: ``True`` if the repeats were cut to one because the warm-up was slow.
    """

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    truncated: bool = False


def _timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    del result
    return elapsed


def measure_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, slow_s: float | None = None) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    Args:
        fn: the work, called with no arguments; its result is discarded after each run.
        repeats: timed runs (at least 1).
        warmup: untimed runs first (caches, lazy initialisation, thread pools).
        slow_s: if the first warm-up run takes longer than this, make only one timed run.

    Returns:
        A :class:`Timing`.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    truncated = False
    for i in range(warmup):
        elapsed = _timed(fn)
        if i == 0 and slow_s is not None and elapsed > slow_s:
            truncated = repeats > 1
            repeats = 1
            break
    times = [_timed(fn) for _ in range(repeats)]
    return Timing(statistics.median(times), min(times), max(times), len(times), truncated)


@dataclass(frozen=True)
class PairedTiming:
    """A callable timed in alternation with a baseline (see :func:`measure_paired`).

    Attributes:
        work, baseline: the two :class:`Timing` s.
        ratio: median over the timed runs of (work time / median of the baseline runs just before it).
    """

    work: Timing
    baseline: Timing
    ratio: float


def measure_paired(fn: Callable[[], object], baseline: Callable[[], object], repeats: int = 5, warmup: int = 1,
                   slow_s: float | None = None, baseline_runs: int = 3) -> PairedTiming:
    """Time ``fn`` as :func:`measure_time` does, but precede each timed run by ``baseline_runs`` runs of
    ``baseline`` and report the median of the per-run ratios.

    On a machine whose load changes from second to second, a ratio of two timings taken moments apart is
    far steadier than a ratio of two medians taken minutes apart.

    Example:
        >>> import torch
        >>> x = torch.randn(200, 200)
        >>> p = measure_paired(lambda: x @ x @ x, lambda: x @ x, repeats=3)
        >>> p.work.repeats, p.baseline.repeats, p.ratio > 0
        (3, 9, True)
    """
    if repeats < 1 or baseline_runs < 1:
        raise ValueError(f"repeats and baseline_runs must be >= 1, got {repeats}, {baseline_runs}")
    truncated = False
    for i in range(warmup):
        if _timed(fn) > (slow_s if slow_s is not None else math.inf) and i == 0:
            truncated, repeats = repeats > 1, 1
            break
    _timed(baseline)
    work, base, ratios = [], [], []
    for _ in range(repeats):
        runs = [_timed(baseline) for _ in range(baseline_runs)]
        work.append(_timed(fn))
        base.extend(runs)
        ratios.append(work[-1] / statistics.median(runs))

    def timing(times, cut=False):
        return Timing(statistics.median(times), min(times), max(times), len(times), cut)

    return PairedTiming(timing(work, truncated), timing(base), statistics.median(ratios))


def _allocation_records(prof) -> list[tuple[int, int]] | None:
    """``(start_ns, bytes)`` allocator records of a finished profile (negative bytes are frees)."""
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # the profiler's internals moved: no memory figure rather than a wrong one
        return None
    return [(e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"]


@dataclass(frozen=True)
class ProfiledRun:
    """One call under the memory profiler: peak tensor storage (``None`` if unavailable) and wall time
    (inflated by the profiler's overhead: use it to decide, not to report)."""

    peak_bytes: int | None
    seconds: float


def profiled_run(fn: Callable[[], object]) -> ProfiledRun:
    """Run ``fn()`` once under ``torch.profiler`` and return its :class:`ProfiledRun` (module docstring).

    Doubles as a warm-up run: the benchmark uses it first, so a slow computation runs once less.
    """
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        start = time.perf_counter()
        result = fn()
        del result
        seconds = time.perf_counter() - start
    records = _allocation_records(prof)
    if records is None:
        return ProfiledRun(None, seconds)
    records.sort()
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return ProfiledRun(peak, seconds)


def measure_peak_memory(fn: Callable[[], object]) -> int | None:
    """Peak bytes of torch CPU tensor storage live during one call of ``fn`` (see the module docstring).

    Returns ``None`` when this torch version does not expose the profiler's allocation records.
    """
    return profiled_run(fn).peak_bytes


def format_bytes(num_bytes: float | None) -> str:
    """Human-readable size with binary prefixes.

    Example:
        >>> format_bytes(3 * 2**20), format_bytes(None)
        ('3.0 MiB', 'n/a')
    """
    if num_bytes is None:
        return "n/a"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


if __name__ == "__main__":  # pragma: no cover
    print(measure_time(lambda: torch.randn(500, 500) @ torch.randn(500, 500)))
