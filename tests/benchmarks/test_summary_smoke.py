"""Smoke test of ``benchmarks/summary.py``: it runs end to end on a tiny MLP (``--quick``), reports every
method for both orders, and the methods agree with the double-backward reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_summary_benchmark_runs_quick(tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "summary.py"), "--quick", "--full-hvps", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["meta"]["threads"] == 1 and report["meta"]["repeats"] == 1
    by_order = {block["order"]: {r["method"]: r for r in block["rows"]} for block in report["orders"]}
    assert set(by_order[2]) == {"double_backward", "layered", "full_hvps"}
    assert set(by_order[3]) == {"double_backward", "layered"}
    for rows in by_order.values():
        assert rows["double_backward"]["ratio_wall"] == 1.0
        for row in rows.values():
            assert row["wall_ms"] > 0 and row["ratio_cpu"] > 0
            assert row["hbar_rel_diff"] < 1e-5
            assert row["d3_rel_diff"] is None or row["d3_rel_diff"] < 1e-4
    assert "ratio wall" in proc.stdout and "threads=1" in proc.stdout


def test_summary_benchmark_runs_the_hook_form_on_the_resnet(tmp_path):
    out = tmp_path / "resnet.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "summary.py"), "--quick", "--model", "resnet", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert "ResNet" in report["meta"]["model"] and report["meta"]["batch"] == 4
    for block in report["orders"]:
        rows = {r["method"]: r for r in block["rows"]}
        assert rows["layered"]["hbar_rel_diff"] < 1e-5
