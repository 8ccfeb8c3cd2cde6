"""EKFAC's factor eigenbasis: every route gives an orthonormal basis that diagonalises the factor."""

import pytest
import torch
from torch import nn

from curvlab import compute
from curvlab.engine import eigenbasis
from curvlab.engine.eigenbasis import factor_eigenvectors
from curvlab.io import load, save


def _check_eigenbasis(U, A, tol):
    n = A.shape[0]
    assert U.shape == (n, n) and U.dtype == A.dtype
    assert torch.allclose(U.T @ U, torch.eye(n, dtype=A.dtype), atol=tol)
    D = U.T @ A @ U
    assert (D - torch.diag(D.diagonal())).abs().max() <= tol * D.diagonal().abs().max()


@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_rank_route_is_an_exact_eigenbasis(rows, dtype):
    gen = torch.Generator().manual_seed(rows)
    X = torch.rand(rows, 257, generator=gen, dtype=torch.float64)
    X[:, -1] = 1.0  # the augmented bias column
    A = (X.T @ X / rows).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    U = factor_eigenvectors(A, rank_bound=rows)
    _check_eigenbasis(U, A, tol)
    _check_eigenbasis(factor_eigenvectors(A), A, tol)  # the full route (scipy below 512: torch)


def test_scipy_route_on_a_wide_rank_deficient_factor():
    X = torch.rand(64, 1025, generator=torch.Generator().manual_seed(0))
    A = X.T @ X / 64
    _check_eigenbasis(factor_eigenvectors(A), A, 1e-4)


def test_ekfac_is_the_same_with_and_without_the_rank_bound(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    x, y = torch.randn(12, 300, dtype=torch.float64), torch.randint(0, 4, (12,))
    fast = compute(model, nn.CrossEntropyLoss(), (x, y), ["ekfac"], progress=False, route="collector")
    monkeypatch.setattr(eigenbasis, "LOW_RANK_RATIO", 10**9)  # never the low-rank route
    full = compute(model, nn.CrossEntropyLoss(), (x, y), ["ekfac"], progress=False, route="collector")
    assert torch.allclose(fast["ekfac"].dense(), full["ekfac"].dense(), atol=1e-12, rtol=1e-9)


def test_the_representation_keeps_the_basis_its_scaling_was_fitted_in(tmp_path):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(60, 3)).double()
    x, y = torch.randn(4, 60, dtype=torch.float64), torch.randint(0, 3, (4,))
    rep = compute(model, nn.CrossEntropyLoss(), (x, y), ["ekfac", "ggn_block"], progress=False, route="collector")
    block = rep["ekfac"].layers["0"]
    assert block.eigenbasis is not None  # rank ≤ 4 ≪ 61: the low-rank basis, not eigh's
    # EKFAC's definition: the scaling is the GGN block's diagonal in the basis U_G ⊗ U_A
    U_a, U_g = block.eigenbasis
    directions = torch.einsum("oi,aj->ijoa", U_g, U_a).reshape(-1, *block.matrix_shape)  # [O·I', O, I']
    V = block.from_matrix(directions)  # [P, O·I'] in the reference ordering
    ggn = rep["ggn_block"].block("0", "0")
    assert torch.allclose((V * (ggn @ V)).sum(0).reshape(block.scaling.shape), block.scaling, atol=1e-12)
    path = save(rep, tmp_path / "ekfac.nc")
    again = load(path)["ekfac"].layers["0"]
    assert torch.equal(again.eigenbasis[0], block.eigenbasis[0])
    assert torch.allclose(again.dense(), block.dense(), atol=1e-14)
