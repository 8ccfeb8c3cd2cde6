import pytest
import torch

from curvlab.optim.cg import conjugate_gradient
from curvlab.optim.hyperparameters import HyperparameterError


def _spd(n, seed=0, cond=100.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return q @ torch.diag(eig) @ q.T, torch.randn(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("precondition", [False, True])
def test_solves_spd_system_in_n_iterations(precondition):
    A, b = _spd(7)
    M = 1.0 / torch.diagonal(A) if precondition else None
    res = conjugate_gradient(lambda v: A @ v, b, max_iters=7, tol=0.0, preconditioner=M)
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(res.residual, b - A @ res.x, rtol=1e-6, atol=1e-9)


def test_stops_at_tolerance_and_counts_iterations():
    A, b = _spd(20, cond=10.0)
    res = conjugate_gradient(lambda v: A @ v, b, max_iters=100, tol=1e-3)
    assert res.converged and res.residual_max <= 1e-3 and res.iterations < 20
    short = conjugate_gradient(lambda v: A @ v, b, max_iters=2, tol=0.0)
    assert short.iterations == 2 and not short.converged


def test_first_iterate_is_cauchy_step():
    A, b = _spd(5)
    res = conjugate_gradient(lambda v: A @ v, b, max_iters=1, tol=0.0)
    torch.testing.assert_close(res.x, (b @ b) / (b @ A @ b) * b)


def test_warm_start_and_bad_arguments():
    A, b = _spd(4)
    x = torch.linalg.solve(A, b)
    assert conjugate_gradient(lambda v: A @ v, b, max_iters=3, x0=x, tol=1e-8).iterations == 0
    with pytest.raises(HyperparameterError, match="max_iters"):
        conjugate_gradient(lambda v: A @ v, b, max_iters=0)
    with pytest.raises(HyperparameterError, match="tol"):
        conjugate_gradient(lambda v: A @ v, b, max_iters=3, tol=-1.0)
    with pytest.raises(ValueError, match="preconditioner"):
        conjugate_gradient(lambda v: A @ v, b, max_iters=3, preconditioner=-torch.ones(4, dtype=torch.float64))
