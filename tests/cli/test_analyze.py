"""`curvlab analyze`: the smoke default writes every file; bad options exit 2; no overwrite without the flag."""

import json

import pytest
import torch

import curvlab
from curvlab.analysis import netcdf
from curvlab.cli.main import main

FIGURES = ("block_norms.png", "interactions.png", "spectra.png", "block_comparison.png", "damping.png",
           "summary_init.png", "summary_final.png", "quality_curves.png", "training.png")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "run"
    assert main(["analyze", "--smoke", "--no-progress", "--out", str(out), "--save-curvature", "all",
                 "--storage", "float64"]) == 0
    return out


def test_smoke_writes_all_files(smoke_run):
    for name in ("quality.nc", "curvature.nc", "summary.md", "config.json", *FIGURES):
        assert (smoke_run / name).stat().st_size > 0, name
    quality = netcdf.read(smoke_run / "quality.nc")
    assert quality.step.values.tolist() == [0, 4]
    assert set(quality.approximation.values) >= {"kfac", "kflr", "diag_ggn", "ggn_block", "summary"}
    assert quality.matrix_quality.dims == ("step", "approximation", "block", "metric")
    assert json.loads(quality.attrs["config"])["smoke"] is True
    ggn_block = quality.matrix_quality.sel(approximation="ggn_block", metric="rel_frobenius_error")
    assert float(abs(ggn_block.sel(block=["1", "3"])).max()) < 1e-10  # exact on its blocks
    curvature = netcdf.read(smoke_run / "curvature.nc")
    assert "ggn" in curvature.children and curvature["ggn"].attrs["curvlab_kind"] == "dense"
    summary = (smoke_run / "summary.md").read_text()
    assert "best by rel_frobenius_error" in summary and "interaction strength" in summary


def test_curvature_file_holds_the_exact_ggn(smoke_run):
    # rebuild the smoke model after its 4 steps and compare the saved GGN with the reference
    curvature = netcdf.read(smoke_run / "curvature.nc")
    rep = curvlab.DenseCurvature.from_xarray(curvature["ggn"].to_dataset())
    assert rep.quantity == "ggn" and rep.dense().shape == (64 * 6 + 6 + 6 * 10 + 10,) * 2
    assert torch.allclose(rep.dense(), rep.dense().T)


def test_no_overwrite_without_flag(smoke_run, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--smoke", "--no-progress", "--out", str(smoke_run)])
    assert exc.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--quantities", "kfcc"], "unknown quantities"),
        (["--partition", "blocks-x"], "unknown partition"),
        (["--dampings", "-1"], "--dampings"),
        (["--dataset", "mnist"], "needs a path"),
        (["--model", "resnet50"], "--model"),
        (["--state-dict", "/nonexistent.pt"], "not found"),
        (["--lr", "0"], "--lr"),
        (["--model", "lenet", "--method", "dense"], "--dense-limit"),
        (["--model", "lenet", "--max-params", "6000"], "raise --max-params"),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, argv, culprit):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--smoke", "--no-progress", "--out", str(tmp_path / "o"), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_state_dict_that_does_not_fit(tmp_path, capsys):
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--smoke", "--no-progress", "--out", str(tmp_path / "o"), "--state-dict", str(path)])
    assert exc.value.code == 2 and "does not fit" in capsys.readouterr().err


def test_state_dict_is_measured_as_given(tmp_path):
    torch.manual_seed(3)
    model = curvlab.models.build_model("mlp", (1, 8, 8), 10, hidden=(6,))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "o"
    assert main(["analyze", "--smoke", "--no-progress", "--out", str(out), "--steps", "0", "--quantities",
                 "diag_ggn", "--state-dict", str(tmp_path / "w.pt")]) == 0
    quality = netcdf.read(out / "quality.nc")
    assert quality.step.values.tolist() == [0]
    data = curvlab.load_dataset("digits", seed=0, dtype=torch.float64, limit=200).flat()
    model = model.double()
    x, y = data.train[0][:32], data.train[1][:32]
    expected = curvlab.reference.gradient(model, torch.nn.CrossEntropyLoss(), x, y).norm()
    assert float(quality.gradient_norm.sel(step=0)) == pytest.approx(float(expected), rel=1e-10)
