"""The optimiser benchmark (analyses/optimizer_benchmark) and the cost benchmark (benchmarks/optimizers.py)
run end to end in their --quick modes (CI)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.optim.problems import shared_data

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "analyses" / "optimizer_benchmark" / "run.py"


def _load():
    spec = importlib.util.spec_from_file_location("optimizer_benchmark_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_netcdf_figures_and_summary(tmp_path):
    if shared_data("mnist-5k-labeled.npz") is None or shared_data("mnist-10k-images.npz") is None:
        pytest.skip("the shared MNIST extracts are not in ../shared/data")
    result = _load().main(["--quick", "--out", str(tmp_path)])
    assert set(result["rows"]) == {"sine", "diabetes", "mnist-mlp", "mnist-autoencoder", "resnet"}
    assert "KFRA" in result["skipped"]["resnet (excluded settings)"]
    for name in result["rows"]:
        for ext in ("nc", "png", "svg"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 0, (name, ext)
        ds = xr.load_dataset(tmp_path / f"{name}.nc")
        assert "git_sha" in ds.attrs and ds.attrs["quick"] == 1 and json.loads(ds.attrs["config"])["updates"] == 4
        assert set(ds.family.values) >= {"adam", "sgd-momentum", "default", "paper"}
        start = ds.loss.isel(checkpoint=0).values  # every setting starts from the same model per seed
        np.testing.assert_allclose(start, np.broadcast_to(start[:1], start.shape), rtol=1e-6)
        budget = ds.attrs["curvlab_updates"] // json.loads(ds.attrs["config"])["eval_every"]
        assert np.isfinite(ds.loss.sel(setting="sgn (defaults)").isel(checkpoint=slice(0, budget + 1)).values).all()
    assert "lbfgs (full batch)" in xr.load_dataset(tmp_path / "diabetes.nc").setting.values
    summary = (tmp_path / "summary.md").read_text()
    assert "## Paper claims" in summary and "Gargiani" in summary and "| sgn (defaults) |" in summary
    assert (tmp_path / "comparison.csv").read_text().count("\n") > 10


def test_cost_benchmark_runs_quick(tmp_path):
    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "optimizers.py"), "--quick", "--problems", "mlp",
         "--methods", "sgd|kfac (defaults)|sgn (3 CG)", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"sgd", "kfac (defaults)", "sgn (3 CG)"}
    assert rows["sgd"]["ratio_cpu"] == 1.0 and rows["kfac (defaults)"]["ratio_cpu"] > 0
    assert rows["kfac (defaults)"]["target"] == 3.0 and "ratio cpu" in proc.stdout
