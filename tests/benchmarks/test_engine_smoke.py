"""Smoke test of ``benchmarks/engine.py``: the script runs end to end on tiny models (``--quick``), and
its float64 cross-check finds every library in agreement with brute-force autograd.

The script runs once in a subprocess (module fixture, a few seconds of CPU); the helpers are tested
in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from _peers import QUANTITIES, Library, NotOffered, TooLarge, prepare  # noqa: E402
from _problems import build_problem  # noqa: E402
from _timing import measure_peak_memory, measure_time  # noqa: E402

PEERS = {Library.BACKPACK.value, Library.CURVLINOPS.value, Library.NNGEOMETRY.value}
#: what each peer offers (the rest must be reported as "n/a", never silently missing)
OFFERED = {
    "BackPACK": {"kfac", "kflr", "kfra", "diag_ggn", "diag_ggn_mc", "diag_hessian", "ggn"},
    "curvlinops": {"kfac", "kflr", "ekfac", "ggn_matvec", "hessian_matvec"},
    "nngeometry": {"kflr", "ekfac", "diag_ggn", "ggn", "ggn_matvec"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "engine.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "engine.py"), "--quick", "--repeats", "1", "--warmup", "0",
         "--no-isolate", "--json", str(out)],  # forked cells are tested below: in-process is 3× faster here
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_cell_is_reported(run):
    report, _ = run
    assert [m["key"] for m in report["models"]] == ["a", "b", "c"]
    assert report["meta"]["threads"] == 1 and report["meta"]["repeats"] == 1
    for model in report["models"]:
        assert model["baseline_ms"] > 0
        cells = {(c["quantity"], c["library"]): c for c in model["cells"]}
        assert set(cells) == {(q, lib.value) for q in QUANTITIES for lib in Library}
        for (quantity, library), cell in cells.items():
            if library in PEERS:
                expected = "ok" if quantity in OFFERED[library] else "n/a"
                assert cell["status"] == expected, (model["key"], quantity, library, cell.get("error"))
            if cell["status"] == "ok":
                assert cell["ratio"] > 0 and cell["repeats"] == 1
                assert cell["peak_bytes"] is None or cell["peak_bytes"] > 0


def test_table_is_printed(run):
    _, stdout = run
    assert "quantity" in stdout and "target (BackPACK)" in stdout
    for lib in Library:
        assert lib.value in stdout
    assert "plain forward+backward" in stdout and "float64 cross-check" in stdout


def test_peers_agree_with_autograd_in_float64(run):
    report, _ = run
    rows = [r for r in report["check"] if r["library"] in PEERS]
    compared = {(r["regime"], r["quantity"], r["library"]) for r in rows}
    # every exact quantity of every peer is compared with brute force at least once
    assert ("batch", "diag_ggn", "BackPACK") in compared and ("N=1", "kfra", "BackPACK") in compared
    assert ("batch", "hessian_matvec", "curvlinops") in compared and ("N=1", "kflr", "nngeometry") in compared
    bad = [r for r in rows if not r["ok"] and not r["informational"]]
    assert not bad, bad


def test_curvlab_agrees_where_it_computes(run):
    """curvlab's rows: every value it returned matches the reference (errors are listed by the script)."""
    report, _ = run
    rows = [r for r in report["check"] if r["library"] == "curvlab" and r["rel_err"] is not None]
    bad = [r for r in rows if not r["ok"] and not r["informational"]]
    assert not bad, bad


# ------------------------------------------------------------------------------------------- helpers
def test_measure_time_repeats_and_truncates():
    calls = []
    t = measure_time(lambda: calls.append(1), repeats=3, warmup=2)
    assert (t.repeats, len(calls), t.truncated) == (3, 5, False)
    assert t.min_s <= t.median_s <= t.max_s
    slow = measure_time(lambda: time.sleep(0.02), repeats=4, warmup=1, slow_s=0.001)
    assert (slow.repeats, slow.truncated) == (1, True) and slow.median_s >= 0.02
    with pytest.raises(ValueError, match="repeats"):
        measure_time(lambda: None, repeats=0)


def test_peak_memory_is_the_high_water_mark_not_the_total():
    def two_in_turn():
        a = torch.ones(1_000_000)   # 4 MB live, then freed
        del a
        return torch.ones(500_000)  # 2 MB

    def two_at_once():
        a, b = torch.ones(1_000_000), torch.ones(500_000)
        return a.sum() + b.sum()

    peak_turn, peak_once = measure_peak_memory(two_in_turn), measure_peak_memory(two_at_once)
    if peak_turn is None:
        pytest.skip("this torch does not expose the profiler's allocation records")
    assert 4_000_000 <= peak_turn < 4_100_000
    assert 6_000_000 <= peak_once < 6_100_000


def test_prepare_refuses_clearly():
    problem = build_problem("a", quick=True)
    with pytest.raises(NotOffered):
        prepare(Library.CURVLINOPS, "kfra", problem)
    with pytest.raises(TooLarge, match="GiB"):
        prepare(Library.BACKPACK, "ggn", problem, max_bytes=1.0)
    with pytest.raises(ValueError, match="unknown quantity"):
        prepare(Library.BACKPACK, "hessian_cube", problem)


def test_prepare_leaves_the_model_alone():
    problem = build_problem("c", quick=True)
    before = {k: v.clone() for k, v in problem.model.state_dict().items()}
    hooks = [len(m._forward_hooks) + len(m._backward_hooks) for m in problem.model.modules()]
    for lib, quantity in [(Library.BACKPACK, "kflr"), (Library.CURVLINOPS, "kflr"), (Library.NNGEOMETRY, "kflr")]:
        prepare(lib, quantity, problem)()
    assert all(torch.equal(before[k], v) for k, v in problem.model.state_dict().items())
    assert hooks == [len(m._forward_hooks) + len(m._backward_hooks) for m in problem.model.modules()]
    assert all(p.grad is None for p in problem.model.parameters())


def test_cli_rejects_unknown_names():
    from engine import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--models", "a,z"])
    args = parse_args(["--models", "c,a", "--libraries", "backpack,curvlab", "--quantities", "kfac"])
    assert args.models == ["c", "a"] and args.libraries == [Library.BACKPACK, Library.CURVLAB]


def test_cell_time_limit_interrupts_and_is_removed():
    import signal

    from engine import CellTimeout, _time_limit

    start = time.perf_counter()
    with pytest.raises(CellTimeout):
        with _time_limit(0.05):
            time.sleep(2)
    assert time.perf_counter() - start < 1.5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with _time_limit(5):  # finishes in time: no exception, timer cleared
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_isolated_cells_report_partial_results_and_are_killed_on_timeout():
    import os
    import signal

    from engine import _isolated

    assert _isolated(lambda send: {"status": "ok", "x": 1}, timeout=30) == [{"status": "ok", "x": 1}]

    def slow(send):
        send({"status": "ok", "from_profiled_run": True})
        time.sleep(30)
        return {"status": "ok"}

    start = time.perf_counter()
    assert _isolated(slow, timeout=0.5) == [{"status": "ok", "from_profiled_run": True}, {"status": "timeout"}]
    assert time.perf_counter() - start < 10

    def crash(send):
        os.kill(os.getpid(), signal.SIGKILL)

    assert _isolated(crash, timeout=30) == [{"status": "killed by signal 9"}]
