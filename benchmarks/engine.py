"""Engine benchmark: cost of each curvature quantity relative to one plain forward+backward pass,
for curvlab and, side by side in the same process, BackPACK, curvlinops and nngeometry.

For every model (:mod:`_problems`: a = MLP 784-256-256-10, b = MNIST autoencoder, c = LeNet-5) and
quantity (:mod:`_peers`), each library's whole computation (forward pass included) is timed: ``--warmup``
untimed runs, then ``--repeats`` timed runs, each right after three runs of a plain
``loss_fn(model(x), y).backward()`` on the same batch; the ratio is the median of the per-run ratios
(:func:`_timing.measure_paired`: steady under a changing machine load).
Peak memory is the largest amount of torch tensor storage live during one extra run (see :mod:`_timing`).
A ``--check`` run first compares every library with float64 autograd references on small versions of the
models (:mod:`_crosscheck`).

Usage::

    python benchmarks/engine.py --models a,b,c --repeats 5 --json engine.json
    python benchmarks/engine.py --quick --repeats 1 --warmup 0      # smoke test, a few seconds

Cells: ``2.1× 35.0M`` (ratio, peak MiB); ``—`` the library has no such quantity; ``skip`` estimated above
``--max-gb``; ``err`` an exception (listed under the table).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import select
import signal
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _crosscheck import cross_check  # noqa: E402
from _peers import QUANTITIES, Library, NotOffered, TooLarge, prepare  # noqa: E402
from _problems import MODEL_KEYS, Problem, build_problem  # noqa: E402
from _timing import format_bytes, measure_paired, measure_peak_memory, measure_time, profiled_run  # noqa: E402

#: Targets of issue 6 on model (a): ratio to a plain gradient, curvlab (BackPACK's ratio in the issue).
TARGETS_A = {"kfac": (2.0, 3.0), "kfra": (2.5, 3.4), "kflr": (4.0, 7.3), "diag_ggn": (3.0, 3.7),
             "diag_hessian": (30.0, 280.0), "ggn": (30.0, 145.0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--quantities", default=",".join(QUANTITIES), help="comma-separated subset")
    parser.add_argument("--libraries", default=",".join(lib.value for lib in Library),
                        help="comma-separated subset of " + ",".join(lib.value for lib in Library))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--slow-s", type=float, default=15.0,
                        help="if the warm-up run takes longer than this, time a single run")
    parser.add_argument("--cell-timeout", type=float, default=240.0,
                        help="seconds allowed per cell (library × quantity), profiled run included")
    parser.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                        help="run every cell in a forked child (default where fork exists, at 1 thread): hard "
                             "timeout, no state shared between cells. Off by default at --threads > 1: a forked "
                             "child of a multi-threaded OpenMP parent can hang")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-gb", type=float, default=6.0,
                        help="skip cells estimated above this; also caps the process's address space growth")
    parser.add_argument("--no-memory", action="store_true", help="skip the profiler run for peak memory")
    parser.add_argument("--check", dest="check", action="store_true", default=True,
                        help="run the float64 cross-check first (default)")
    parser.add_argument("--no-check", dest="check", action="store_false")
    parser.add_argument("--quick", action="store_true", help="tiny models (smoke test)")
    parser.add_argument("--mnist", default=None, help="an MNIST .npz (images/labels) instead of random data")
    parser.add_argument("--json", default=None, help="write all results to this JSON file")
    args = parser.parse_args(argv)
    args.models = _subset(args.models, MODEL_KEYS, "--models")
    args.quantities = _subset(args.quantities, QUANTITIES, "--quantities")
    names = {lib.value.lower(): lib for lib in Library}
    args.libraries = [names[n] for n in _subset(args.libraries.lower(), tuple(names), "--libraries")]
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --warmup >= 0")
    if args.isolate is None:
        args.isolate = hasattr(os, "fork") and args.threads == 1
    return args


def _subset(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"{option}: unknown {unknown or 'empty'}; choose from {','.join(allowed)}")
    return chosen


def _cap_address_space(max_gb: float) -> None:
    """Fail allocations cleanly (RuntimeError) instead of letting the OOM killer hit a shared machine."""
    with open("/proc/self/status") as fh:
        vm_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmSize"))
    limit = int(vm_kb * 1024 + (max_gb + 2) * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def plain_gradient(problem: Problem):
    """The baseline: one forward and backward pass of the loss on a copy of the model."""
    model, loss_fn = copy.deepcopy(problem.model), problem.loss_fn
    x, y = problem.inputs, problem.targets

    def run():
        for p in model.parameters():
            p.grad = None
        loss_fn(model(x), y).backward()

    return run


def _settle_garbage(full: bool = False) -> None:
    """Collect garbage, then freeze the survivors (imported libraries, live models) out of the collector's
    sight: the ``gc.collect()`` before every timed run then costs microseconds instead of 0.1-0.5 s.
    ``full`` first unfreezes everything, so cycles that died while frozen are collected too."""
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


class CellTimeout(Exception):
    """A cell ran past ``--cell-timeout``."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise :class:`CellTimeout` in the main thread after ``seconds``. Python checks for signals between
    bytecodes only, so one long torch operation overruns it: :func:`_isolated` enforces the hard limit."""
    if seconds <= 0:
        raise CellTimeout("no time left (--cell-timeout)")

    def stop(signum, frame):
        raise CellTimeout("stopped after --cell-timeout")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _measure_cell(library: Library, quantity: str, problem: Problem, args, baseline, base_s: float,
                  report=lambda partial: None) -> dict:
    """Time one (library, quantity): a profiled first run (peak memory, doubles as warm-up), then
    :func:`measure_paired`. Slow cells get one timed run. ``report`` receives the profiled run's result
    first, so that a cell cut short later still has a (profiler-inflated) time, marked ``from_profiled_run``."""
    row = {"library": library.value, "quantity": quantity}
    start = time.perf_counter()
    try:
        fn = prepare(library, quantity, problem, args.max_gb * 2**30)
        row["setup_s"] = time.perf_counter() - start
        warmup, repeats, peak = args.warmup, args.repeats, None
        if not args.no_memory:  # the profiled run is the first warm-up run
            first = profiled_run(fn)
            peak, warmup = first.peak_bytes, max(warmup - 1, 0)
            report({**row, "status": "ok", "median_s": first.seconds, "min_s": first.seconds,
                    "max_s": first.seconds, "repeats": 1, "truncated": True, "from_profiled_run": True,
                    "ratio": first.seconds / base_s, "baseline_median_s": base_s, "peak_bytes": peak})
            if first.seconds > args.slow_s:
                warmup, repeats = 0, 1
        timing = measure_paired(fn, baseline, repeats, warmup, args.slow_s)
    except NotOffered:
        return {**row, "status": "n/a"}
    except TooLarge as err:
        return {**row, "status": "skip", "error": str(err)}
    except Exception as err:  # noqa: BLE001 - a failing library is a result, not a crash
        return {**row, "status": "error", "error": f"{type(err).__name__}: {err}"[:400]}
    work = timing.work
    return {**row, "status": "ok", "median_s": work.median_s, "min_s": work.min_s, "max_s": work.max_s,
            "repeats": work.repeats, "truncated": work.truncated or repeats < args.repeats, "ratio": timing.ratio,
            "baseline_median_s": timing.baseline.median_s, "peak_bytes": peak}


def _isolated(measure, timeout: float) -> list[dict]:
    """Run ``measure(report)`` in a forked child and return the dicts it reported, its result last.

    The child is killed after ``timeout`` seconds (a long torch operation cannot be interrupted from
    Python), and its memory, hooks and garbage die with it. A child that dies (e.g. out of memory) or is
    killed leaves only what it reported before.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the parent's code
        code = 0
        try:
            os.close(read_fd)
            out = os.fdopen(write_fd, "w")

            def send(item):
                out.write(json.dumps(item, default=str) + "\n")
                out.flush()

            send(measure(send))
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline, buffer, status = time.monotonic() + timeout, b"", None
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                status = "timeout"
                break
            chunk = pipe.read(1 << 16)
            if not chunk:
                break
            buffer += chunk
    _, wait_status = os.waitpid(pid, 0)
    items = [json.loads(line) for line in buffer.decode().splitlines() if line.strip()]
    if status is None and os.WIFSIGNALED(wait_status):
        status = f"killed by signal {os.WTERMSIG(wait_status)}"
    if status:
        items.append({"status": status})
    return items


def _cell(library: Library, quantity: str, problem: Problem, args, baseline, base_s: float) -> dict:
    """One cell, in a forked child when ``--isolate`` (default), with ``--cell-timeout``."""
    _settle_garbage()
    if not args.isolate:
        return _measure_cell(library, quantity, problem, args, baseline, base_s)
    items = _isolated(lambda send: _measure_cell(library, quantity, problem, args, baseline, base_s, send),
                      args.cell_timeout)
    row = {"library": library.value, "quantity": quantity}
    final = items[-1] if items else {"status": "error", "error": "the child process reported nothing"}
    if final.get("status") in ("timeout",) or str(final.get("status", "")).startswith("killed"):
        profiled = [i for i in items[:-1] if i.get("from_profiled_run")]
        if profiled:
            return {**profiled[-1], "note": f"{final['status']} after the profiled run"}
        if final["status"] == "timeout":
            return {**row, "status": "timeout", "ratio_lower_bound": args.cell_timeout / base_s,
                    "error": f"no run finished within --cell-timeout {args.cell_timeout:g} s"}
        return {**row, "status": "error", "error": f"child process {final['status']} (out of memory?)"}
    return final


def run_model(key: str, args) -> dict:
    problem = build_problem(key, args.quick, args.mnist, seed=args.seed)
    base = plain_gradient(problem)
    _settle_garbage(full=True)
    before = measure_time(base, max(args.repeats, 5), max(args.warmup, 1))
    base_peak = None if args.no_memory else measure_peak_memory(base)
    cells = []
    for quantity in args.quantities:
        for library in args.libraries:
            start = time.perf_counter()
            cells.append(_cell(library, quantity, problem, args, base, before.median_s))
            print(f"  [{key}] {quantity:<15} {library.value:<11} {_format_cell(cells[-1]):<16} "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    floor = _factor_floor(problem, args) if "ggn" in args.quantities else None
    _settle_garbage()
    after = measure_time(base, max(args.repeats, 5), 0)
    paired = [c["baseline_median_s"] for c in cells if c["status"] == "ok"]
    base_s = statistics.median(paired) if paired else before.median_s
    return {"key": key, "description": problem.description, "num_params": problem.num_params,
            "batch_size": problem.batch_size, "baseline_ms": base_s * 1e3, "baseline_before_ms": before.median_s * 1e3,
            "baseline_after_ms": after.median_s * 1e3, "baseline_peak_bytes": base_peak,
            "ggn_factor_floor": floor, "cells": cells}


def _factor_floor(problem: Problem, args) -> dict | None:
    """Cost of merely allocating and writing the square-root GGN factor V [N·C, P] once (float32, fresh
    memory each time): a lower bound for any ``ggn`` cell that materialises V, whatever the algorithm."""
    shape = (problem.batch_size * problem.num_outputs, problem.num_params)
    nbytes = shape[0] * shape[1] * problem.inputs.element_size()
    if nbytes > args.max_gb * 2**30:
        return None
    _settle_garbage()
    paired = measure_paired(lambda: torch.ones(shape, dtype=problem.inputs.dtype), plain_gradient(problem),
                            repeats=min(args.repeats, 3), warmup=1)
    return {"shape": list(shape), "bytes": nbytes, "median_s": paired.work.median_s, "ratio": paired.ratio}


def _format_cell(cell: dict | None) -> str:
    if cell is None or cell["status"] == "n/a":
        return "—"
    if cell["status"] == "timeout":
        return f">{cell['ratio_lower_bound']:.0f}× (timeout)"
    if cell["status"] != "ok":
        return cell["status"] if cell["status"] == "skip" else "err"
    mem = "" if cell["peak_bytes"] is None else " " + format_bytes(cell["peak_bytes"]).replace(" MiB", "M") \
        .replace(" GiB", "G").replace(" KiB", "K")
    mark = "²" if cell.get("from_profiled_run") else ("¹" if cell["truncated"] else "")
    return f"{cell['ratio']:.2f}×{mark}{mem}"


def format_table(result: dict, libraries: list[Library], quantities: list[str]) -> str:
    """The printed table of one model: one row per quantity, one column per library, notes below."""
    by = {(c["quantity"], c["library"]): c for c in result["cells"]}
    target = result["key"] == "a"
    head = ["quantity", *(lib.value for lib in libraries)] + (["target (BackPACK)"] if target else [])
    rows, notes = [head], []
    for q in quantities:
        row = [q] + [_format_cell(by.get((q, lib.value))) for lib in libraries]
        if target:
            row.append(f"≤ {TARGETS_A[q][0]:g} ({TARGETS_A[q][1]:g})" if q in TARGETS_A else "")
        rows.append(row)
        for lib in libraries:
            cell = by.get((q, lib.value))
            if cell and cell["status"] in ("error", "skip", "timeout"):
                notes.append(f"  {q} / {lib.value}: {cell['error']}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"({result['key']}) {result['description']}, P = {result['num_params']:,}",
             f"plain forward+backward: {result['baseline_ms']:.1f} ms (median of the runs paired with the cells; "
             f"{result['baseline_before_ms']:.1f} before, {result['baseline_after_ms']:.1f} after them), "
             f"peak {format_bytes(result['baseline_peak_bytes'])}",
             "cells: median ratio to the paired plain forward+backward, peak tensor memory"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    floor = result.get("ggn_factor_floor")
    if floor and "ggn" in quantities:
        lines.append(f"  ggn floor: allocating and writing V [{floor['shape'][0]}, {floor['shape'][1]:,}] "
                     f"({format_bytes(floor['bytes'])}) once costs {floor['ratio']:.1f}× the plain forward+backward")
    if any(c.get("truncated") and not c.get("from_profiled_run") for c in result["cells"]):
        lines.append("  ¹ first run slower than --slow-s: a single timed run")
    if any(c.get("from_profiled_run") for c in result["cells"]):
        lines.append("  ² only the profiled run finished within --cell-timeout: its time (profiler overhead "
                     "included), ratio to the baseline measured before the cells")
    return "\n".join(lines + notes)


def format_check(rows) -> str:
    lines = ["float64 cross-check (relative Frobenius error; ok ≤ 1e-6; 'info' = known convention difference):"]
    for r in rows:
        verdict = "ok" if r.ok else ("info" if r.informational else "MISMATCH")
        err = "error" if r.rel_err is None else f"{r.rel_err:.1e}"
        note = f"  {r.note}" if r.note else ""
        lines.append(f"  ({r.model}) {r.regime:<10} {r.quantity:<15} {r.library:<11} vs {r.reference:<10} "
                     f"{err:>8}  {verdict}{note}")
    return "\n".join(lines)


def _metadata(args) -> dict:
    import backpack
    import curvlinops
    import nngeometry

    try:
        import curvlab
        curvlab_version = curvlab.__version__
    except Exception as err:  # noqa: BLE001
        curvlab_version = f"unavailable ({err})"
    return {"date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(), "dtype": "float32", "seed": args.seed, "repeats": args.repeats,
            "warmup": args.warmup, "quick": args.quick, "data": args.mnist or "random",
            "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(), "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "curvlab": curvlab_version,
                         "backpack": getattr(backpack, "__version__", "?"),
                         "curvlinops": getattr(curvlinops, "__version__", "?"),
                         "nngeometry": getattr(nngeometry, "__version__", "?")}}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    if args.max_gb and math.isfinite(args.max_gb):
        _cap_address_space(args.max_gb)
    report = {"meta": _metadata(args), "check": [], "models": []}
    print(f"curvlab engine benchmark, {report['meta']['date_utc']}, torch {torch.__version__}, "
          f"{args.threads} thread(s), float32, {args.repeats} repeats after {args.warmup} warm-up, "
          f"load average {report['meta']['load_average_start'][0]:.1f} on {os.cpu_count()} CPUs")
    if args.check:
        rows = [r for key in args.models for r in
                cross_check(build_problem(key, quick=True, dtype=torch.float64, seed=args.seed), args.libraries)]
        report["check"] = [r.__dict__ for r in rows]
        print(format_check(rows), flush=True)
    for key in args.models:
        result = run_model(key, args)
        report["models"].append(result)
        print("\n" + format_table(result, args.libraries, args.quantities), flush=True)
    gc.unfreeze()
    report["meta"]["load_average_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
