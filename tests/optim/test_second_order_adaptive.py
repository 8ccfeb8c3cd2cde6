import pytest
import torch
from torch import nn

from curvlab import reference
from curvlab.errors import NonFiniteError
from curvlab.optim import HyperparameterError, SecondOrderAdaptive


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 1, dtype=torch.float64)
    return model, nn.MSELoss(), x, y


def test_first_step_hand_computed():
    model, loss_fn, x, y = _problem()
    g = reference.gradient(model, loss_fn, x, y)
    H = reference.hessian(model, loss_fn, x, y)
    theta = reference.flat_parameters(model)
    lr, c, growth, beta2 = 0.01, 0.5, 2.0, 0.9
    v = lr * g  # r = 1, ĝ = g, η = lr on the first step
    drift = H @ v
    curvature = drift.abs() / v.abs()
    target = torch.minimum(c / curvature, torch.full_like(v, growth * lr))
    eta = beta2 * lr + (1 - beta2) * target
    opt = SecondOrderAdaptive(model, loss_fn, lr=lr, step_fraction=c, max_growth=growth, beta2=beta2)
    opt.step(x, y)
    torch.testing.assert_close(reference.flat_parameters(model), theta - v)
    stats = opt.statistics()
    assert stats["drift_norm"] == pytest.approx(float(drift.norm()))
    assert stats["lr_mean"] == pytest.approx(float(eta.mean()))
    assert stats["lr_max"] == pytest.approx(float(eta.max()))
    assert stats["mixing_mean"] == 1.0


def test_step_sizes_stay_below_damped_diagonal_newton_on_separable_quadratic():
    # rows of x are orthogonal: H = (2/N) diag(a²) is diagonal. On a deterministic trajectory the
    # mixing weight r falls to its floor (s − ĝ² also measures the drift), so η stays below c / H_ii.
    scales = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    x = torch.diag(scales)
    y = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    opt = SecondOrderAdaptive(model, nn.MSELoss(), lr=1e-3)
    newton = 0.5 / (2 * scales**2 / 3)
    losses = []
    for _ in range(150):
        losses.append(float(opt.step(x, y)))
        assert bool((opt.global_state["eta"] <= newton).all())
    assert losses[-1] < 1e-3 * losses[0]


def test_nan_raises_and_bad_hyperparameters():
    model, loss_fn, x, y = _problem()
    opt = SecondOrderAdaptive(model, loss_fn)
    with pytest.raises(NonFiniteError):
        opt.step(x * float("nan"), y)
    for kw, name in [({"beta": 1.0}, "beta"), ({"max_growth": 0.5}, "max_growth"), ({"step_fraction": 0}, "step_fraction")]:
        with pytest.raises(HyperparameterError, match=name):
            SecondOrderAdaptive(model, loss_fn, **kw)
