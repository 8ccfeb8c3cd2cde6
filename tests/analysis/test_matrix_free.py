"""Matrix-free metrics (products only) agree with the dense ones within their reported error bars (float64)."""

import warnings

import numpy as np
import pytest
import torch

import curvlab
from curvlab.analysis import lanczos
from curvlab.analysis.measurement import measure
from curvlab.analysis.probes import BlockSketch
from curvlab.errors import CurvlabWarning
from tests.cases import CASES

BY_NAME = {c.name: c for c in CASES}
APPROX = ["kfac", "kflr", "diag_ggn", "ggn_block", "summary"]


def _both(case_name: str, reference: str, approximations, monkeypatch, *, batch_size: int = 12):
    # tiny blocks would be materialised; force Lanczos on every block with more than 4 rows
    monkeypatch.setattr(lanczos, "DENSE_BLOCK", 4)
    model, loss_fn, x, y = BY_NAME[case_name].build(batch_size=batch_size)
    kwargs = dict(reference=reference, approximations=approximations, dampings=[1e-2, 1.0], k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CurvlabWarning)
        dense = measure(model, loss_fn, (x, y), method="dense", **kwargs).quality
        free = measure(model, loss_fn, (x, y), method="matrix-free", num_probes=60, block_steps=True, block_spectra=True,
                       **kwargs).quality
    return dense, free


def _within(free, dense, error, sigmas=4.0, atol=1e-6):
    f, d, e = (np.asarray(a, dtype=float) for a in (free, dense, error))
    ok = np.isnan(d) | (np.abs(f - d) <= sigmas * np.nan_to_num(e, nan=0.0) + atol)
    assert ok.all(), f"matrix-free {f[~ok]} vs dense {d[~ok]} (error bars {e[~ok]})"


@pytest.mark.parametrize("case_name", ["mlp-sigmoid-ce", "mlp-tanh-mse", "cnn-ce"])
def test_ggn_metrics_agree_within_error_bars(case_name, monkeypatch):
    dense, free = _both(case_name, "ggn", APPROX, monkeypatch)
    assert dense.attrs["method"] == "dense" and free.attrs["method"] == "matrix-free"
    names = [n for n in free.approximation.values if n != "summary"]
    assert set(names) >= {"kfac", "kflr"}
    mq = dense.matrix_quality.sel(approximation=names)
    _within(free.matrix_quality.sel(approximation=names), mq, free.matrix_quality_error.sel(approximation=names))
    # the error bars are informative: not so wide that everything agrees trivially
    fro = free.matrix_quality_error.sel(approximation=names, metric="rel_frobenius_error", block="all")
    assert float(fro.max()) < 0.1
    _within(free.step_quality, dense.step_quality, free.step_quality_error, atol=1e-7)
    _within(free.interaction, dense.interaction, free.interaction_error)
    assert np.allclose(free.summary_hbar, dense.summary_hbar, rtol=1e-10, atol=1e-12)
    assert free.attrs["step_preconditioner"] == "kflr"  # the exact steps' CG is preconditioned by KFLR


def test_exact_block_approximation_has_zero_error_matrix_free(monkeypatch):
    _, free = _both("mlp-sigmoid-ce", "ggn", ["ggn_block"], monkeypatch)
    blocks = [b for b in free.block.values if b != "all"]
    err = free.matrix_quality.sel(approximation="ggn_block", block=blocks)
    assert np.allclose(err.sel(metric="rel_frobenius_error"), 0.0, atol=1e-7)
    assert np.allclose(err.sel(metric="eigenspace_overlap"), 1.0, atol=1e-6)
    step = free.step_quality.sel(approximation="ggn_block", block=blocks, step_metric="step_cosine")
    assert np.allclose(step, 1.0, atol=1e-8)


def test_hessian_steps_by_minres_agree(monkeypatch):
    dense, free = _both("mlp-tanh-mse", "hessian", ["diag_hessian", "ggn_block"], monkeypatch)
    assert free.attrs["step_solver"] == "minres"
    assert np.allclose(free.step_quality, dense.step_quality, atol=1e-6, equal_nan=True)
    _within(free.matrix_quality, dense.matrix_quality.sel(approximation=free.approximation),
            free.matrix_quality_error)


def test_auto_switches_at_dense_limit():
    model, loss_fn, x, y = BY_NAME["mlp-sigmoid-ce"].build(batch_size=6)
    p = sum(q.numel() for q in model.parameters())
    kwargs = dict(approximations=["kflr"], dampings=[0.1], k=1, num_probes=4)
    assert measure(model, loss_fn, (x, y), dense_limit=p, **kwargs).quality.attrs["method"] == "dense"
    free = measure(model, loss_fn, (x, y), dense_limit=p - 1, **kwargs)
    assert free.quality.attrs["method"] == "matrix-free"
    assert "ggn" not in free.curvature  # the reference is never materialised
    with pytest.raises(ValueError, match="unknown method"):
        measure(model, loss_fn, (x, y), method="sparse", **kwargs)


def test_tracker_keeps_the_method_attribute():
    model, loss_fn, x, y = BY_NAME["mlp-sigmoid-ce"].build(batch_size=6)
    tracker = curvlab.analysis.Tracker({"q": lambda: measure(model, loss_fn, (x, y), approximations=["kflr"],
                                                             dampings=[0.1], k=1, method="matrix-free",
                                                             num_probes=4).quality})
    tracker(0)
    tracker(1)
    assert tracker.dataset.attrs["method"] == "matrix-free"


def test_probe_estimates_are_unbiased_on_a_known_matrix():
    torch.manual_seed(0)
    a = torch.randn(30, 30, dtype=torch.float64)
    exact = a @ a.T
    approx = exact + 0.3 * torch.diag(torch.rand(30, dtype=torch.float64))
    blocks = [torch.arange(0, 12), torch.arange(12, 30)]
    truth = float(torch.linalg.matrix_norm(exact - approx) / torch.linalg.matrix_norm(exact))
    z = []
    for seed in range(20):
        sketch = BlockSketch.draw(exact, blocks, 10, generator=torch.Generator().manual_seed(seed))
        value, error = sketch.statistics(approx).rel_frobenius_error()
        z.append((value[-1] - truth) / error[-1])
    z = np.array(z)
    assert abs(z.mean()) < 1.0 and 0.4 < z.std() < 2.0  # calibrated standard errors


def test_block_steps_are_left_out_by_default():
    model, loss_fn, x, y = BY_NAME["mlp-sigmoid-ce"].build(batch_size=6)
    ds = measure(model, loss_fn, (x, y), approximations=["kflr"], dampings=[0.1], k=1, method="matrix-free",
                 num_probes=4).quality
    steps = ds.step_quality.sel(approximation="kflr")
    assert np.isfinite(steps.sel(block="all")).all() and np.isnan(steps.sel(block="0")).all()


def test_hutchpp_frobenius_error_agrees_with_dense_and_is_sharper():
    """The whole matrix's relative Frobenius error of KFLR on a real GGN, by Hutch++ and by the block probes,
    against the dense value: both within their error bars, Hutch++'s bar the narrower (the error is
    dominated by few directions)."""
    from curvlab.analysis.matrix_free import compare_matrix_free
    from curvlab.analysis.quality import Metric
    from curvlab.partition import Partition

    model, loss_fn, x, y = BY_NAME["mlp-tanh-mse"].build(batch_size=12)
    exact = curvlab.reference.ggn(model, loss_fn, x, y)
    kflr = curvlab.compute(model, loss_fn, (x, y), ["kflr"], partition="layer", progress=False)["kflr"]
    dense_kflr = kflr.dense().to(torch.float64)
    truth = float(torch.linalg.matrix_norm(exact - dense_kflr) / torch.linalg.matrix_norm(exact))
    partition = Partition.from_model(model, "layer")
    results = {}
    for method in ("hutchinson", "hutchpp"):
        ds = compare_matrix_free(exact, {"kflr": dense_kflr}, partition=partition, metrics=[Metric.REL_FROBENIUS_ERROR],
                                 num_probes=20, frobenius_method=method, seed=3)
        value = float(ds.matrix_quality.sel(approximation="kflr", block="all", metric="rel_frobenius_error"))
        error = float(ds.matrix_quality_error.sel(approximation="kflr", block="all", metric="rel_frobenius_error"))
        assert abs(value - truth) <= 4 * error + 1e-9, (method, value, truth, error)
        assert ds.attrs["frobenius_method"] == method
        results[method] = error
    assert results["hutchpp"] < results["hutchinson"], results
    with pytest.raises(ValueError, match="frobenius_method"):
        compare_matrix_free(exact, {"kflr": dense_kflr}, metrics=[Metric.REL_FROBENIUS_ERROR], frobenius_method="x")
