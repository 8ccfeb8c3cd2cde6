"""The notebooks (jupytext percent scripts) parse as notebooks and execute in smoke mode (CURVLAB_SMOKE=1)."""

import runpy
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def test_there_are_four_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    import jupytext
    notebook = jupytext.read(path)
    assert sum(c.cell_type == "markdown" for c in notebook.cells) >= 2
    assert sum(c.cell_type == "code" for c in notebook.cells) >= 3
    monkeypatch.setenv("CURVLAB_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(path), run_name="__main__")
