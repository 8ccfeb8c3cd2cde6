"""Stochastic Lanczos quadrature: exact per-probe moments and unbiased spectral moments."""

import numpy as np
import pytest
import torch

from curvlab import reference
from curvlab.spectra import density, lanczos_tridiagonal, quadrature_moments
from curvlab.spectra._matrix import rademacher
from tests.cases import CASES


@pytest.fixture(scope="module")
def hessian():
    model, loss_fn, x, y = CASES[3].build(batch_size=6)  # P = 46, indefinite
    return reference.hessian(model, loss_fn, x, y)


def test_moments_match_exact_spectral_moments(hessian):
    a, p = hessian, hessian.shape[0]
    probes, steps = 100, 3  # Gauss quadrature with 3 nodes is exact up to degree 5
    ds = density(a, probes, steps, generator=torch.Generator().manual_seed(0))
    z = rademacher(p, probes, torch.Generator().manual_seed(0)) / p**0.5  # the same probes
    nodes, weights = np.nan_to_num(ds["nodes"].values), ds["weights"].values
    for k in range(4):
        per_probe = torch.einsum("pi,pi->i", z, torch.linalg.matrix_power(a, k) @ z).numpy()
        np.testing.assert_allclose((weights * nodes**k).sum(1), per_probe, rtol=1e-8, atol=1e-10)
        exact = float(torch.linalg.matrix_power(a, k).trace()) / p
        estimate = float(quadrature_moments(ds, [k]).values[0])
        stderr = per_probe.std(ddof=1) / np.sqrt(probes)
        assert abs(estimate - exact) <= 4 * stderr + 1e-10 * max(1.0, abs(exact))


def test_density_integrates_to_one_and_full_lanczos_finds_the_spectrum():
    eigen = torch.tensor([-1.0, 0.5, 2.0, 3.0, 7.0], dtype=torch.float64)
    ds = density(torch.diag(eigen), num_probes=2, lanczos_steps=5, grid=2000, sigma=0.05)
    np.testing.assert_allclose(
        ds["nodes"].values, np.tile(eigen.numpy(), (2, 1)), rtol=1e-8, atol=1e-10
    )
    np.testing.assert_allclose(ds["weights"].values, 0.2, rtol=1e-8)  # Rademacher: |z_i|² / P
    np.testing.assert_allclose(
        np.trapezoid(ds["density"].values, ds["grid"].values), 1.0, rtol=1e-4
    )
    assert ds["density"].dims == ("grid",) and ds.attrs["num_matvecs"] == 2 * 5


def test_early_stop_on_an_invariant_subspace():
    ds = density(
        torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64)),
        num_probes=1,
        lanczos_steps=4,
    )
    assert np.isnan(ds["nodes"].values).sum() == 2 and np.isclose(ds["weights"].values.sum(), 1.0)
    np.testing.assert_allclose(
        quadrature_moments(ds, [0, 1, 2]).values, [1.0, 1.25, 1.75], rtol=1e-10
    )


def test_lanczos_tridiagonal_reproduces_krylov_moments():
    a = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
    alpha, beta = lanczos_tridiagonal(lambda v: a @ v, torch.ones(6, dtype=torch.float64), 2)
    t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    v = torch.ones(6, dtype=torch.float64) / 6**0.5
    for k in range(4):  # exact up to degree 2·2 − 1
        assert torch.isclose(
            torch.linalg.matrix_power(t, k)[0, 0], v @ torch.linalg.matrix_power(a, k) @ v
        )
