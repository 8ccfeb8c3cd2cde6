"""The comparison dataset: layout, exact regimes and the summary row."""

import math

import numpy as np
import pytest
import torch

from curvlab.analysis.comparison import STEP_METRICS, SummaryInput, compare
from curvlab.analysis.interactions import summary_matrix
from curvlab.partition import Partition
from tests.analysis.test_quality import spd


@pytest.fixture
def setting():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 2))
    layer = Partition.from_model(model, "layer")
    canonical = Partition.from_model(model, "canonical")
    e = spd(layer.num_params, 7)
    g = torch.randn(layer.num_params, dtype=torch.float64)
    return layer, canonical, e, g


def test_layout_and_exact_copy(setting):
    layer, canonical, e, g = setting
    block = torch.block_diag(*[e[idx][:, idx] for idx in (grp.indices for grp in layer.groups)])
    summary = SummaryInput(summary_matrix(e, g, canonical), None or _gbar(g, canonical), g, canonical)
    ds = compare(e, {"copy": e, "block": block, "diag": torch.diag(e.diagonal())}, g, partition=layer,
                 dampings=[0.01, 1.0], k=2, summary=summary)
    assert ds.matrix_quality.dims == ("approximation", "block", "metric")
    assert ds.step_quality.dims == ("approximation", "block", "step_metric", "damping")
    assert list(ds.approximation.values) == ["copy", "block", "diag", "summary"]
    assert list(ds.block.values) == ["0", "2", "all"]
    assert list(ds.step_metric.values) == list(STEP_METRICS)
    copy = ds.sel(approximation="copy")
    assert np.allclose(copy.matrix_quality.sel(metric="rel_frobenius_error"), 0.0)
    assert np.allclose(copy.step_quality, 1.0)
    # a block-diagonal approximation is exact on every diagonal block, not overall
    blk = ds.matrix_quality.sel(approximation="block", metric="rel_frobenius_error")
    assert np.allclose(blk.sel(block=["0", "2"]), 0.0) and float(blk.sel(block="all")) > 0
    assert np.allclose(ds.step_quality.sel(approximation="block", block=["0", "2"]), 1.0)
    # the summary has step metrics overall only
    summ = ds.sel(approximation="summary")
    assert summ.matrix_quality.isnull().all()
    assert summ.step_quality.sel(block="all").notnull().all()
    assert summ.step_quality.sel(block="0").isnull().all()
    assert ds.summary_hbar.dims == ("summary_i", "summary_j")
    assert list(ds.summary_i.values) == list(canonical.group_names)
    assert ds.interaction.shape == (2, 2)


def _gbar(g, partition):
    return torch.stack([(g[grp.indices] ** 2).sum() for grp in partition.groups])


def test_summary_step_is_best_in_its_subspace(setting):
    from curvlab.analysis.steps import quadratic_decrease, summary_steps

    _, canonical, e, g = setting
    summary = SummaryInput(summary_matrix(e, g, canonical), _gbar(g, canonical), g, canonical)
    ds = compare(e, {}, g, dampings=[0.1], summary=summary)
    ratio = ds.step_quality.sel(approximation="summary", step_metric="decrease_ratio", block="all").item()
    assert 0 < ratio <= 1
    step = summary_steps(summary.hbar, summary.gbar, g, canonical, [0.1])
    best = quadratic_decrease(e, g, step, [0.1]).item()
    basis = torch.zeros(g.numel(), canonical.num_groups, dtype=torch.float64)
    for j, grp in enumerate(canonical.groups):
        basis[grp.indices, j] = g[grp.indices]
    for seed in range(5):  # any other step in span(U) decreases the damped model less
        other = step + (basis @ torch.randn(canonical.num_groups, generator=torch.Generator().manual_seed(seed),
                                             dtype=torch.float64)) * 0.1
        assert quadratic_decrease(e, g, other, [0.1]).item() < best


def test_without_gradient_has_no_step_quality(setting):
    layer, _, e, _ = setting
    ds = compare(e, {"half": e / 2}, partition=layer)
    assert "step_quality" not in ds
    assert float(ds.matrix_quality.sel(approximation="half", block="all", metric="rel_frobenius_error")) == 0.5


def test_netcdf_round_trip(setting, tmp_path):
    import xarray as xr

    from curvlab.analysis import netcdf

    layer, canonical, e, g = setting
    summary = SummaryInput(summary_matrix(e, g, canonical), _gbar(g, canonical), g, canonical)
    ds = compare(e, {"diag": torch.diag(e.diagonal())}, g, partition=layer, dampings=[0.1], summary=summary,
                 attrs={"config": "{}"})
    netcdf.write(ds, tmp_path / "q.nc")
    xr.testing.assert_identical(netcdf.read(tmp_path / "q.nc"), ds)


def test_nan_where_undefined():
    ds = compare(torch.zeros(2, 2), {"eye": torch.eye(2)})
    assert math.isnan(float(ds.matrix_quality.sel(approximation="eye", block="all", metric="cosine_similarity")))


def test_cached_metrics_equal_the_standalone_functions(setting):
    from curvlab.analysis.quality import matrix_quality
    from curvlab.analysis.steps import damped_steps, step_quality

    layer, _, e, g = setting
    a = spd(e.shape[0], 11)
    ds = compare(e, {"a": a}, g, partition=layer, dampings=[0.05, 2.0], k=2)
    _, expected = matrix_quality(e, a, layer, k=2)
    assert np.allclose(ds.matrix_quality.sel(approximation="a").values, expected, rtol=1e-10)
    for block, idx in zip(["0", "2"], [grp.indices for grp in layer.groups], strict=True):
        eb, ab, gb = e[idx][:, idx], a[idx][:, idx], g[idx]
        q = step_quality(eb, damped_steps(ab, gb, [0.05, 2.0]), gb, [0.05, 2.0])
        got = ds.step_quality.sel(approximation="a", block=block).values
        assert np.allclose(got, np.stack([q.cosine.numpy(), q.decrease_ratio.numpy()]), rtol=1e-10)
