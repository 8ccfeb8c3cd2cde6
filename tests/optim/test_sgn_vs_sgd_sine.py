"""Smoke run of the reproduction in analyses/sgn_vs_sgd_sine (seconds)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import xarray as xr

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "sgn_vs_sgd_sine" / "run.py"


def _load():
    spec = importlib.util.spec_from_file_location("sgn_vs_sgd_sine_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_curves_table_and_plot(tmp_path):
    ds = _load().main(["--smoke", "--out", str(tmp_path), "--budget", "0.05"])
    for name in ("curves.nc", "curves.png", "final_losses.csv", "final_losses.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    loaded = xr.load_dataset(tmp_path / "curves.nc")
    assert list(loaded.setting.values) == ["SGN(2)", "SGN(3)", "SGN(5)", "SGN(10)",
                                           "SGD(0.001)", "SGD(0.01)", "SGD(0.1)", "SGD(1)"]
    assert set(loaded.dims) == {"setting", "seed", "epoch", "time"}
    assert json.loads(loaded.attrs["config"])["batch_size"] == 1000 and loaded.attrs["smoke"] == 1
    assert "git_sha" in loaded.attrs and loaded.time.attrs["units"] == "s"
    # every run starts from the same loss for a seed (same initialisation and data) and SGN stays finite
    start = loaded.train_loss.isel(epoch=0).values
    np.testing.assert_allclose(start, np.broadcast_to(start[:1], start.shape))
    sgn = loaded.train_loss.sel(setting=loaded.method == "SGN")
    assert np.isfinite(sgn.isel(epoch=1).values).all()
    np.testing.assert_allclose(loaded.train_loss.values, ds.train_loss.values)
    table = (tmp_path / "final_losses.md").read_text()
    assert "| SGN(10) |" in table and "| SGD(1) |" in table
