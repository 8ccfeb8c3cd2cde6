"""`curvlab analyze --model resnet|transformer`: the presets' defaults, explicit options kept, and a fast run of
each (the full-size runs are timed in the issue notes: each within 10 minutes on 2 cores)."""

import json

import numpy as np
import pytest

from curvlab.analysis import netcdf
from curvlab.cli.analyze import PRESETS, _validate
from curvlab.cli.main import build_parser, main

FAST = ["--steps", "1", "--measure-every", "1", "--samples", "4", "--probes", "2", "--top-k", "1", "--dampings", "1",
        "--threads", "1", "--no-progress", "--limit", "80"]


def _parsed(*argv):
    args = build_parser().parse_args(["analyze", *argv])
    args.argv = ["analyze", *argv]
    _validate(args)
    return args


@pytest.mark.parametrize("model", sorted(PRESETS))
def test_preset_replaces_defaults_but_keeps_explicit_options(model):
    args = _parsed("--model", model)
    for key, value in PRESETS[model].items():
        assert getattr(args, key) == value, key
    explicit = _parsed("--model", model, "--samp", "7", "--partition=layer", "--threads", "1")
    assert explicit.samples == 7 and explicit.partition == "layer"  # a default's value, given, is kept
    assert explicit.threads == 1
    assert explicit.probes == PRESETS[model]["probes"]
    assert _parsed("--model", "mlp").samples == 256  # other models keep the parser's defaults


@pytest.mark.parametrize("model, groups, data", [("resnet", 12, "digits"), ("transformer", 6, "text")])
def test_preset_runs_matrix_free_on_its_architecture(model, groups, data, tmp_path):
    out = tmp_path / model
    assert main(["analyze", "--model", model, "--out", str(out), *FAST]) == 0
    quality = netcdf.read(out / "quality.nc")
    assert quality.attrs["method"] == "matrix-free"
    assert len(quality.block) == groups + 1  # the preset's groups and "all"
    assert json.loads(quality.attrs["skipped"]) == {}
    fro = quality.matrix_quality.sel(approximation="kfac", block="all", metric="rel_frobenius_error")
    assert np.isfinite(fro.values).all() and (fro.values > 0).all()
    assert np.isfinite(quality.test_accuracy.values).all()
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == data and config["partition"] == PRESETS[model]["partition"]
    for figure in ("interactions", "spectra", "summary_final", "training"):
        assert (out / f"{figure}.png").stat().st_size > 0, figure


def test_token_data_for_a_vector_model_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--model", "mlp", "--dataset", "text", "--out", str(tmp_path / "o"), *FAST])
    assert exc.value.code == 2
    assert "--model transformer" in capsys.readouterr().err
