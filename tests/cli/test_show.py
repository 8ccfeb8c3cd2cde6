"""`curvlab show`: summaries of quality and curvature files; missing or foreign files exit 2."""

import pytest
import torch

from curvlab.analysis import netcdf
from curvlab.analysis.comparison import compare
from curvlab.cli.main import main


@pytest.fixture
def quality_file(tmp_path):
    ds = compare(torch.eye(3) * 2, {"half": torch.eye(3), "same": torch.eye(3) * 2}, torch.ones(3),
                 dampings=[0.1], k=1, attrs={"dataset": "digits"})
    return netcdf.write(ds.expand_dims(step=[7]), tmp_path / "quality.nc")


def test_show_quality(quality_file, capsys):
    assert main(["show", str(quality_file)]) == 0
    out = capsys.readouterr().out
    assert "2 approximations (half, same)" in out and "steps [7]" in out
    assert "best by rel_frobenius_error: **same**" in out
    assert "matrix_quality ('step', 'approximation', 'block', 'metric')" in out
    assert "@dataset: digits" in out


def test_show_curvature_tree(tmp_path, capsys):
    from curvlab.partition import Partition
    from curvlab.repr import DenseCurvature, DiagonalCurvature

    part = Partition.from_model(torch.nn.Linear(2, 1), "canonical")
    import xarray as xr

    tree = xr.DataTree.from_dict({
        "/ggn": DenseCurvature(torch.eye(3), part, quantity="ggn").to_xarray(),
        "/diag_ggn": DiagonalCurvature(torch.ones(3), part, quantity="diag_ggn").to_xarray(),
    })
    path = netcdf.write(tree, tmp_path / "curvature.nc")
    assert main(["show", str(path), "--attrs"]) == 0
    out = capsys.readouterr().out
    assert "DataTree with 2 groups: ggn, diag_ggn" in out
    assert "curvlab dense representation of 'ggn': P=3, 2 groups (weight, bias)" in out
    assert "@partition:" in out


@pytest.mark.parametrize("content, culprit", [(None, "no such file"), (b"hello", "not a netCDF file")])
def test_show_bad_files_exit_2(tmp_path, capsys, content, culprit):
    path = tmp_path / "x.nc"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["show", str(path)])
    assert exc.value.code == 2
    assert culprit in capsys.readouterr().err
