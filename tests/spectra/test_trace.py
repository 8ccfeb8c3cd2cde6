"""Hutchinson, Hutch++ and the diagonal estimator are unbiased (seeded, statistical tolerances)."""

import numpy as np
import pytest
import torch

from curvlab import reference
from curvlab.operators import GGNOperator
from curvlab.spectra import diagonal_estimate, trace
from tests.cases import CASES


def _matrix(p=40, seed=0):
    """Symmetric, indefinite, with a geometrically decaying spectrum and non-zero off-diagonal entries."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64, generator=gen)).Q
    spectrum = (
        10
        * 0.8 ** torch.arange(p, dtype=torch.float64)
        * torch.where(torch.arange(p) % 5 == 4, -1.0, 1.0)
    )
    return (q * spectrum) @ q.T


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_trace_estimators_are_unbiased(method):
    a = _matrix()
    gen = torch.Generator().manual_seed(1)
    runs = [trace(a, method, 12, generator=gen) for _ in range(300)]
    estimates = np.array([float(r["estimate"]) for r in runs])
    stderr_of_mean = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean() - float(a.trace())) < 4 * stderr_of_mean
    assert estimates.std() > 0  # random, not exact
    reported = np.median([float(r["standard_error"]) for r in runs])
    assert 0.5 < reported / estimates.std(ddof=1) < 2.0  # the reported standard error is calibrated


def test_hutchpp_beats_hutchinson_on_decaying_spectrum():
    a = _matrix()
    gen = torch.Generator().manual_seed(2)
    spread = {
        m: np.std([float(trace(a, m, 30, generator=gen)["estimate"]) for _ in range(100)])
        for m in ("hutchinson", "hutchpp")
    }
    assert spread["hutchpp"] < 0.5 * spread["hutchinson"]


def test_diagonal_estimate_is_unbiased():
    a = _matrix(20)
    gen = torch.Generator().manual_seed(3)
    runs = np.stack(
        [diagonal_estimate(a, 10, generator=gen)["estimate"].values for _ in range(300)]
    )
    stderr = runs.std(0, ddof=1) / np.sqrt(runs.shape[0])
    assert np.all(np.abs(runs.mean(0) - a.diagonal().numpy()) < 4.5 * stderr)


def test_on_an_operator_with_labels():
    model, loss_fn, x, y = CASES[0].build(batch_size=6)
    op = GGNOperator(model, loss_fn, (x, y))
    exact = reference.ggn(model, loss_fn, x, y)
    ds = trace(op, "hutchpp", 60, generator=torch.Generator().manual_seed(0))
    assert (
        abs(float(ds["estimate"]) - float(exact.trace())) < 5 * float(ds["standard_error"]) + 1e-10
    )
    assert ds.attrs["num_matvecs"] == 60 and ds["samples"].dims == ("probe",)
    diag = diagonal_estimate(op, 5, generator=torch.Generator().manual_seed(0))
    assert diag["estimate"].dims == ("param",) and diag["group"].values[0] == "0.weight"


def test_invalid_arguments():
    with pytest.raises(ValueError, match="hutchpp needs num_matvecs >= 3"):
        trace(torch.eye(4), "hutchpp", 2)
    with pytest.raises(ValueError, match="'exact'"):
        trace(torch.eye(4), "exact", 2)


def test_frobenius_norm_hutchpp_beats_hutchinson_on_a_low_rank_matrix():
    """Both estimators agree with the dense norm within their error bars; Hutch++ is far closer when the
    matrix is nearly low-rank (rank 5 plus a small full-rank part)."""
    from curvlab.spectra import frobenius_norm

    g = torch.Generator().manual_seed(0)
    u = torch.randn(80, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(80, 80, generator=g, dtype=torch.float64) * 1e-3
    a = u @ u.T + noise + noise.T
    exact = float(a.pow(2).sum())
    errors = {}
    for method in ("hutchinson", "hutchpp"):
        runs = [frobenius_norm(a, method, 30, generator=torch.Generator().manual_seed(s)) for s in range(40)]
        deviation = np.array([float(ds.squared) - exact for ds in runs])
        z = deviation / np.array([float(ds.squared_error) for ds in runs])
        assert abs(deviation.mean()) < 3 * deviation.std() / len(runs) ** 0.5  # unbiased
        assert np.median(np.abs(z)) < 1.5  # the error bars are of the right size (few-probe tails aside)
        assert all(float(ds.norm) ** 2 == pytest.approx(float(ds.squared)) for ds in runs)
        errors[method] = np.mean(np.abs(deviation)) / exact
    assert errors["hutchpp"] < 1e-3 < 0.05 < errors["hutchinson"], errors


def test_frobenius_norm_needs_enough_products():
    from curvlab.spectra import frobenius_norm

    with pytest.raises(ValueError, match="hutchpp needs num_matvecs >= 3"):
        frobenius_norm(torch.eye(3), "hutchpp", 2)
