"""`curvlab compute`: the embedded default runs, files load back, bad input exits 2 without a traceback."""

import pytest
import torch

import curvlab
from curvlab.cli.main import main

SMALL = ["--steps", "2", "--samples", "16", "--hidden", "4", "--no-progress", "--limit", "200"]


def test_compute_writes_loadable_references(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compute", "--out", str(out), *SMALL]) == 0
    for name in ("hessian", "ggn", "fisher", "empirical_fisher"):
        rep = curvlab.load(out / f"{name}.nc")
        assert rep.quantity == name
        assert rep.dense().shape == (64 * 4 + 4 + 4 * 10 + 10,) * 2
        assert rep.attrs["dataset"] == "digits"
    ggn, fisher = curvlab.load(out / "ggn.nc").dense(), curvlab.load(out / "fisher.nc").dense()
    torch.testing.assert_close(ggn, fisher)  # canonical-link loss
    assert "wrote" in capsys.readouterr().out


def test_compute_refuses_existing_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compute", "--out", str(out), *SMALL, "--quantities", "ggn"]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["compute", "--out", str(out), *SMALL, "--quantities", "ggn"])
    assert exc.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compute", "--out", str(out), *SMALL, "--quantities", "ggn", "--overwrite"]) == 0


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--dataset", "imagenet"], "--dataset"),
        (["--hidden", "0"], "--hidden"),
        (["--quantities", "kfac"], "unknown quantities"),
        (["--dataset", "mnist"], "needs a path"),
        (["--dataset", "mnist", "--data-path", "/nonexistent.npz"], "not found"),
        (["--partition", "blocks-x"], "unknown partition"),
    ],
)
def test_compute_bad_options_exit_2(tmp_path, capsys, argv, culprit):
    with pytest.raises(SystemExit) as exc:
        main(["compute", "--out", str(tmp_path / "o"), *SMALL, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err
