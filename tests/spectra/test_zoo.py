"""Lanczos on every zoo model's GGN and Hessian operators against the exact spectrum (float64), and an
honest convergence report when the products are not those of one symmetric matrix."""

from __future__ import annotations

import pytest
import torch
from scipy.sparse.linalg import LinearOperator

from curvlab import spectra
from curvlab.errors import CurvlabWarning
from curvlab.operators import GGNOperator, HessianOperator
from tests.zoo import ZOO, zoo_reference

K = 3


@pytest.mark.parametrize("zoo", ZOO, ids=lambda c: c.name)
def test_top_eigenvalues_on_the_zoo(zoo):
    model, loss_fn, x, y = zoo.build(4)
    for make, quantity in ((GGNOperator, "ggn"), (HessianOperator, "hessian")):
        op = make(model, loss_fn, (x, y))
        ds = spectra.top_eigenvalues(op, K, generator=torch.Generator().manual_seed(0))
        exact = torch.linalg.eigvalsh(zoo_reference(zoo.name, quantity)).flip(0)[:K]
        err = (torch.from_numpy(ds["eigenvalues"].values) - exact).abs().max() / exact.abs().max()
        assert err < 1e-8, f"{make.__name__}: relative error {err:.1e}"
        assert ds.attrs["converged"] == 1
        assert (ds["residual_norms"].values <= ds.attrs["residual_threshold"]).all()


def test_inconsistent_products_are_reported_not_converged():
    """An operator whose products drift (as a wrongly cached one did) fails the pair check."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, dtype=torch.float64, generator=gen)
    a = a @ a.T
    calls = {"n": 0}

    def drifting(v):
        calls["n"] += 1
        noise = 1e-3 * calls["n"] * torch.randn(30, 30, dtype=torch.float64, generator=gen)
        return ((a + noise + noise.T) @ torch.from_numpy(v).reshape(30, -1)).numpy()

    op = LinearOperator((30, 30), matvec=drifting, matmat=drifting, dtype="float64")
    with pytest.warns(CurvlabWarning, match="check of the returned pairs failed"):
        ds = spectra.top_eigenvalues(op, 3, generator=gen)
    assert ds.attrs["converged"] == 0
