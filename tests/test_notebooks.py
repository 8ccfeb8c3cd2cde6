"""The notebooks (jupytext percent scripts) execute as real notebooks (nbclient, smoke mode) and show their figures.

Each notebook is converted to an ``nbformat`` notebook, run in a fresh ``python3`` kernel with
``CURVLAB_SMOKE=1``, and every cell that draws a figure must have an ``image/png`` output (not only the
``<Figure size ...>`` text a figure gets without the inline backend).
"""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def test_there_are_four_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


def _draws_a_figure(cell) -> bool:
    lines = [line for line in cell.source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return bool(lines) and any("plot_" in line and "import" not in line for line in lines)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_shows_its_figures(path, tmp_path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    assert sum(c.cell_type == "markdown" for c in notebook.cells) >= 2
    assert sum(c.cell_type == "code" for c in notebook.cells) >= 3
    monkeypatch.setenv("CURVLAB_SMOKE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    figure_cells = [c for c in notebook.cells if c.cell_type == "code" and _draws_a_figure(c)]
    assert figure_cells or path.stem.startswith("04")
    for cell in figure_cells:
        kinds = [set(out.get("data", {})) for out in cell.outputs]
        assert any("image/png" in k for k in kinds), f"{path.name}: no image output for\n{cell.source}"
        texts = [out["data"].get("text/plain", "") for out in cell.outputs if "data" in out]
        assert not any(t.startswith("<Figure size") and "image/png" not in k for t, k in zip(texts, kinds,
                                                                                              strict=True))
