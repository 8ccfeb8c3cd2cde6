"""Lanczos extreme eigenvalues against exact dense spectra (float64)."""

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import aslinearoperator
from torch import nn

from curvlab import reference
from curvlab.errors import CurvlabWarning
from curvlab.losses import loss_adapter
from curvlab.operators import GGNOperator, HessianOperator
from curvlab.spectra import bottom_eigenvalues, eigvalsh, extreme_eigenvalues, top_eigenvalues
from tests.cases import CASES


def test_top5_of_10k_parameter_ggn_matches_exact():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(30, 100), nn.Tanh(), nn.Linear(100, 60), nn.Tanh(), nn.Linear(60, 10)
    ).double()
    x, y = torch.randn(8, 30, dtype=torch.float64), torch.randint(0, 10, (8,))
    loss_fn = nn.CrossEntropyLoss()
    op = GGNOperator(model, loss_fn, (x, y))
    assert op.shape[0] == 9770
    # exact: G = BᵀB with B = [S_nᵀ J_n]/√Z (rows N·C), so its non-zero spectrum is eigvalsh(B Bᵀ)
    jac = reference.jacobian(model, x)  # [N, C, P]
    adapter = loss_adapter(loss_fn)
    sqrt = adapter.sqrt_hessian(model(x).detach())  # [N, C, C]
    b = (
        torch.einsum("nck,ncp->nkp", sqrt, jac).reshape(-1, op.shape[0])
        / adapter.normalizer(model(x)) ** 0.5
    )
    exact = torch.linalg.eigvalsh(b @ b.T).flip(0)[:5].numpy()
    ds = top_eigenvalues(op, 5, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(ds["eigenvalues"].values, exact, rtol=1e-6)
    assert ds.attrs["converged"] == 1 and ds["residual_norms"].max() < 1e-6 * exact[0]
    assert list(ds.eigenvalue.values) == [0, 1, 2, 3, 4] and ds["eigenvalues"].attrs["long_name"]


@pytest.fixture(scope="module")
def hessian():
    model, loss_fn, x, y = CASES[3].build(batch_size=6)  # P = 46, indefinite
    return HessianOperator(model, loss_fn, (x, y)), reference.hessian(model, loss_fn, x, y)


def test_top_bottom_extreme_match_eigvalsh(hessian):
    op, dense = hessian
    exact = torch.linalg.eigvalsh(dense).numpy()
    gen = torch.Generator().manual_seed(1)
    top = top_eigenvalues(op, 4, return_eigenvectors=True, generator=gen)
    np.testing.assert_allclose(top["eigenvalues"].values, exact[::-1][:4], rtol=1e-8, atol=1e-10)
    vectors = torch.from_numpy(top["eigenvectors"].values)
    torch.testing.assert_close(
        dense @ vectors, vectors * torch.from_numpy(top["eigenvalues"].values), rtol=1e-7, atol=1e-8
    )
    assert top["eigenvectors"].dims == ("param", "eigenvalue") and "group" in top.coords
    bottom = bottom_eigenvalues(op, 3, generator=gen)
    np.testing.assert_allclose(bottom["eigenvalues"].values, exact[:3], rtol=1e-8, atol=1e-10)
    both = extreme_eigenvalues(op, 4, generator=gen)
    np.testing.assert_allclose(
        both["eigenvalues"].values,
        [exact[-1], exact[-2], exact[1], exact[0]],
        rtol=1e-8,
        atol=1e-10,
    )
    np.testing.assert_allclose(eigvalsh(op).values, exact, rtol=1e-8, atol=1e-10)


def test_accepts_dense_numpy_and_scipy(hessian):
    _, dense = hessian
    expected = torch.linalg.eigvalsh(dense).flip(0)[:3].numpy()
    for form in (dense, dense.numpy(), aslinearoperator(dense.numpy())):
        np.testing.assert_allclose(
            top_eigenvalues(form, 3)["eigenvalues"].values, expected, rtol=1e-8, atol=1e-10
        )
    np.testing.assert_allclose(
        eigvalsh(aslinearoperator(dense.numpy())).values,
        torch.linalg.eigvalsh(dense).numpy(),
        rtol=1e-8,
        atol=1e-10,
    )


def test_non_convergence_warns_and_keeps_partial_results():
    a = torch.randn(400, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(CurvlabWarning, match="converged for"):
        ds = top_eigenvalues(a + a.T, 6, maxiter=1, ncv=13)
    assert ds.attrs["converged"] == 0 and ds["eigenvalues"].shape == (6,)
    assert np.isnan(ds["eigenvalues"].values).any()


def test_invalid_k_and_input():
    with pytest.raises(ValueError, match="1 <= k < P"):
        top_eigenvalues(torch.eye(3, dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="k >= 2"):
        extreme_eigenvalues(torch.eye(5, dtype=torch.float64), 1)
    with pytest.raises(TypeError, match="expected a CurvatureRepresentation"):
        top_eigenvalues([[1.0]], 1)
    with pytest.raises(ValueError, match="square"):
        top_eigenvalues(torch.ones(3, 2), 1)


def test_accepts_any_representation_and_restricted_operators(hessian):
    op, dense = hessian
    from curvlab.repr import DenseCurvature

    rep = DenseCurvature(dense, op.partition, quantity="hessian")
    expected = torch.linalg.eigvalsh(dense).flip(0)[:2].numpy()
    np.testing.assert_allclose(
        top_eigenvalues(rep, 2)["eigenvalues"].values, expected, rtol=1e-8, atol=1e-10
    )
    idx = op.partition.restrict(["0.weight", "2.weight"])
    sub = torch.linalg.eigvalsh(dense[idx][:, idx]).flip(0)[:2].numpy()
    restricted = op.restrict(["0.weight", "2.weight"])
    np.testing.assert_allclose(
        top_eigenvalues(restricted, 2)["eigenvalues"].values, sub, rtol=1e-8, atol=1e-10
    )
