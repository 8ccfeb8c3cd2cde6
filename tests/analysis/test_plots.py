"""Every plot returns a Figure with the expected labels and saves as PNG or PDF."""

import pytest
import torch
from matplotlib.figure import Figure

from curvlab.analysis import plots
from curvlab.analysis.comparison import compare
from curvlab.partition import Partition
from tests.analysis.test_quality import spd


@pytest.fixture(scope="module")
def setting():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 2))
    return Partition.from_model(model, "canonical"), spd(14, 3)


def test_block_norms(setting, tmp_path):
    part, e = setting
    fig = plots.plot_block_norms(e, part)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("column group", "row group")
    assert [t.get_text() for t in ax.get_yticklabels()] == list(part.group_names)
    assert plots.save_figure(fig, tmp_path / "norms.png").stat().st_size > 0
    assert plots.save_figure(plots.plot_block_norms(e, part, interaction=True), tmp_path / "i.pdf").exists()


def test_summary_split_by_role(setting):
    part, e = setting
    fig = plots.plot_summary(e[:4, :4], part.group_names)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["H̄ weight–weight", "H̄ bias–bias", "H̄ weight–bias",
                      "H̄⁻¹ weight–weight", "H̄⁻¹ bias–bias", "H̄⁻¹ weight–bias"]
    assert fig.axes[0].get_xlabel() == "layer"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "2"]


def test_summary_unsplit():
    fig = plots.plot_summary(spd(3), ["a", "b", "c"])
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["H̄", "H̄⁻¹"]


def test_block_comparison(setting):
    part, e = setting
    fig = plots.plot_block_comparison(e, {"diag": torch.diag(e.diagonal())}, part, "0.weight", "2.weight")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["exact", "diag"]
    assert fig.axes[0].get_xlabel() == "entries of 2.weight"
    assert fig.axes[-1].get_ylabel().startswith("block entry (all panels)")  # one colour bar for every panel
    labelled = plots.plot_block_comparison(e, {}, part, "2.weight", labels={"2.weight": "2 Linear (2×3)"})
    assert labelled.axes[0].get_ylabel() == "entries of 2 Linear (2×3)"
    with pytest.raises(KeyError, match="no group"):
        plots.plot_block_comparison(e, {}, part, "missing")


def test_spectrum_and_density():
    fig = plots.plot_spectrum({"h": torch.tensor([2.0, -0.5, 1e-15]), "g": torch.tensor([2.0, 1.0, 0.0])})
    ax = fig.axes[0]
    steps = plots.plot_spectrum({f"ggn, step {s}": torch.tensor([3.0, 2.0, 1.0]) * (s + 1) for s in range(3)})
    lines = steps.axes[0].get_lines()
    assert len({str(line.get_color()) for line in lines}) == 3 and len({line.get_marker() for line in lines}) == 3
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_yscale()) == ("rank", "|eigenvalue|", "log")
    grid = torch.linspace(-1, 3, 50)
    fig = plots.plot_density({"slq": (grid, torch.exp(-grid**2))}, eigenvalues={"exact": torch.randn(40)})
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_yscale()) == ("eigenvalue", "density", "log")


def test_curves():
    import xarray as xr

    e = spd(4)
    steps = [compare(e * (s + 1), {"diag": torch.diag(e.diagonal())}, torch.ones(4), dampings=[0.1, 1.0], k=1)
             .expand_dims(step=[s]) for s in range(3)]
    ds = xr.concat(steps, dim="step")
    fig = plots.plot_metric_curves(ds, ["rel_frobenius_error", "decrease_ratio"])
    assert [ax.get_xlabel() for ax in fig.axes] == ["training step"] * 2
    assert fig.axes[0].get_yscale() == "log"
    assert fig.axes[1].get_ylabel() == "decrease ratio" and fig.axes[1].get_yscale() == "symlog"
    fig = plots.plot_damping_curves(ds)
    assert fig.axes[0].get_xlabel() == "damping λ"
    with pytest.raises(ValueError, match="step"):
        plots.plot_metric_curves(steps[0].isel(step=0))


def test_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="png, .svg or .pdf"):
        plots.save_figure(Figure(), tmp_path / "x.jpg")
