"""`curvlab analyze` at any scale: user model/data factories, matrix-free runs, formats, guards whose fixes work."""

import sys
import textwrap

import numpy as np
import pytest
import torch

from curvlab.analysis import netcdf
from curvlab.cli.main import build_parser, main

USER_CODE = '''
import torch
from torch import nn


def build(sample_shape, num_outputs):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(sample_shape).prod()), 5), nn.Tanh(),
                         nn.Linear(5, num_outputs))


def load():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 2, 3, generator=g)
    y = (x.sum((1, 2)) > 0).long() + (x[:, 0, 0] > 0).long()
    return x[:60], y[:60], x[60:], y[60:]
'''

FAST = ["--steps", "2", "--measure-every", "2", "--samples", "24", "--dampings", "0.1,1", "--top-k", "2",
        "--no-progress", "--quantities", "kflr,diag_ggn,ggn_block,summary"]


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("userpkg")
    (root / "mymodels.py").write_text(textwrap.dedent(USER_CODE))
    sys.path.insert(0, str(root))
    yield "mymodels"
    sys.path.remove(str(root))


@pytest.fixture(scope="module")
def matrix_free_run(user_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "run"
    argv = ["analyze", "--model", f"{user_module}:build", "--data", f"{user_module}:load", "--dense-limit", "10",
            "--probes", "8", "--format", "png,svg", "--out", str(out), *FAST]
    assert main(argv) == 0
    return out


def test_user_factories_run_matrix_free_with_error_bars(matrix_free_run):
    quality = netcdf.read(matrix_free_run / "quality.nc")
    assert quality.attrs["method"] == "matrix-free"
    assert "matrix_quality_error" in quality and "interaction_error" in quality
    err = quality.matrix_quality_error.sel(metric="rel_frobenius_error", approximation="kflr")
    assert np.isfinite(err.values).all() and float(err.max()) > 0
    assert {"train_accuracy", "test_accuracy", "train_loss", "test_loss"} <= set(quality.data_vars)
    for name in ("interactions", "spectra", "block_comparison", "training", "quality_curves"):
        for suffix in ("png", "svg"):
            assert (matrix_free_run / f"{name}.{suffix}").stat().st_size > 0, f"{name}.{suffix}"
    summary = (matrix_free_run / "summary.md").read_text()
    assert "## Metric definitions" in summary and "matrix-free" in summary


def test_curvature_file_is_float32_compressed_and_holds_only_approximations(matrix_free_run):
    tree = netcdf.read(matrix_free_run / "curvature.nc")
    assert "ggn" not in tree.children and "kflr" in tree.children
    arrays = [v for node in tree.subtree for v in node.to_dataset(inherit=False).data_vars.values()
              if v.dtype.kind == "f"]
    assert arrays and all(v.dtype == np.float32 for v in arrays)


def test_no_escape_codes_when_not_a_terminal(user_module, tmp_path, capsys):
    argv = ["analyze", "--model", f"{user_module}:build", "--data", f"{user_module}:load", "--out",
            str(tmp_path / "o"), "--steps", "1", "--samples", "16", "--quantities", "diag_ggn", "--dampings", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out and "\x1b" not in captured.err + captured.out
    assert "measured step 0" in captured.out  # plain progress lines instead of bars


@pytest.mark.parametrize("command", ["analyze", "compute"])
def test_max_params_refusal_names_a_fix_that_works(command, tmp_path, capsys):
    base = [command, "--hidden", "4", "--limit", "100", "--steps", "1", "--samples", "16", "--no-progress"]
    extra = ["--quantities", "ggn"] if command == "compute" else ["--quantities", "diag_ggn", "--dampings", "1"]
    with pytest.raises(SystemExit) as exc:
        main([*base, *extra, "--max-params", "100", "--out", str(tmp_path / "a")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    p = 64 * 4 + 4 + 4 * 10 + 10
    assert f"raise --max-params to {'at least ' if command == 'analyze' else ''}{p}" in err
    assert main([*base, *extra, "--max-params", str(p), "--out", str(tmp_path / "b")]) == 0


def test_compute_refuses_lenet_and_points_to_analyze(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compute", "--model", "lenet", "--out", str(tmp_path / "o"), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "P=21,386" in err and "curvlab analyze" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("spec, culprit", [("nosuchpkg.mod:f", "cannot import"), ("curvlab.models:nothing",
                                                                                   "no attribute"),
                                           ("curvlab.models:MODELS", "not a callable")])
def test_bad_factory_specs_exit_2(spec, culprit, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--smoke", "--no-progress", "--model", spec, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert culprit in capsys.readouterr().err


def test_help_shows_defaults_and_no_markup():
    parser = build_parser()
    for name in ("analyze", "compute"):
        sub = parser._subparsers._group_actions[0].choices[name]
        text = sub.format_help()
        assert "``" not in text and ":func:" not in text and ":mod:" not in text
        for action in sub._actions:
            if action.option_strings and action.nargs != 0 and action.default is not None and action.help:
                assert "default" in sub.formatter_class(prog="x")._get_help_string(action), action.dest
    compute = parser._subparsers._group_actions[0].choices["compute"].format_help()
    assert "64-16-16-10" in compute  # the docstring's MLP is the default one


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        assert main(["analyze", "--smoke", "--no-progress", "--device", "cuda", "--out", str(tmp_path / "o"),
                     "--quantities", "diag_ggn,ggn_block", "--method", "matrix-free", "--probes", "4"]) == 0
        return
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--smoke", "--no-progress", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "--device cpu" in capsys.readouterr().err
