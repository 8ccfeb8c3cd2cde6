"""Smoke test of benchmarks/operators.py in its --quick mode (runs every row once; no timing claims)."""

import math
import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "operators.py"


def test_operator_benchmark_quick_runs(capsys):
    main = runpy.run_path(str(SCRIPT), run_name="operators_benchmark")["main"]
    results = dict(main(["--quick", "--repeats", "1"]))
    out = capsys.readouterr().out
    assert "threads=" in out and "curvlab GGN-vp (cached)" in results
    assert {
        "curvlab HVP double backward (cached)",
        "curvlab HVP forward-over-reverse",
        "first product: curvlab GGNOperator (build + 1 product)",
        "first product: curvlinops GGNLinearOperator (build + 1 product)",
    } <= set(results)
    assert all(math.isfinite(r) and r > 0 for r in results.values())
