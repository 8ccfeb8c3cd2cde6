"""Every optimiser: decreases the loss on three problems in float32 and float64, resumes identically
from a state_dict, rejects bad hyperparameters, and leaves the parameters untouched on a NaN loss."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from curvlab.errors import CurvlabWarning, NonFiniteError
from curvlab.optim import ACP, PRONG, CurvatureOptimizer, NewtonSummary
from tests.optim.problems import DAMPED, OPTIMIZERS, PROBLEMS, REQUIRED_RATIO

STEPS = 8


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_decreases_loss(name, problem, dtype):
    model, loss_fn, x, y = PROBLEMS[problem](dtype)
    opt = OPTIMIZERS[name](model, loss_fn)
    assert isinstance(opt, (CurvatureOptimizer, torch.optim.Optimizer))
    with torch.no_grad():
        initial = float(loss_fn(model(x), y))
    losses = [float(opt.step(x, y)) for _ in range(STEPS)]
    with torch.no_grad():
        final = float(loss_fn(model(x), y))
    assert losses[0] == pytest.approx(initial, rel=1e-5)
    assert final < REQUIRED_RATIO.get(name, 0.7) * initial, (name, problem, losses, final)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == dtype for p in model.parameters())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_resumes_identically(name):
    model, loss_fn, x, y = PROBLEMS["mlp-regression"](torch.float64)
    halves = [(x[:24], y[:24]), (x[24:], y[24:])]
    opt = OPTIMIZERS[name](model, loss_fn)
    for i in range(3):
        opt.step(*halves[i % 2])
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    for i in range(3, 6):
        opt.step(*halves[i % 2])
    expected = [p.detach().clone() for p in model.parameters()]

    model2, _, _, _ = PROBLEMS["mlp-regression"](torch.float64)
    model2.load_state_dict(saved_model)
    opt2 = OPTIMIZERS[name](model2, loss_fn)
    opt2.load_state_dict(saved_opt)
    for i in range(3, 6):
        opt2.step(*halves[i % 2])
    for p, q in zip(expected, model2.parameters(), strict=True):
        torch.testing.assert_close(q.detach(), p, rtol=0, atol=0)
    assert opt2.statistics().keys() == opt.statistics().keys()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_nan_loss_leaves_parameters_untouched(name):
    model, loss_fn, x, y = PROBLEMS["least-squares"](torch.float64)
    opt = OPTIMIZERS[name](model, loss_fn)
    opt.step(x, y)
    before = [p.detach().clone() for p in model.parameters()]
    bad = y.clone()
    bad[0, 0] = float("nan")
    if name in DAMPED:
        damping = dict(opt.param_groups[0])
        with pytest.warns(CurvlabWarning, match="not finite"):
            loss = opt.step(x, bad)
        assert not torch.isfinite(loss)
        assert opt.statistics()["rejected"] == 1.0
        assert _damping_raised(opt, damping, opt.param_groups[0])
    else:
        with pytest.raises(NonFiniteError, match="not finite"):
            opt.step(x, bad)
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q.detach())
    with warnings.catch_warnings():
        warnings.simplefilter("error", CurvlabWarning)
        assert torch.isfinite(opt.step(x, y))  # and it carries on


def _damping_raised(opt, before: dict, after: dict) -> bool:
    if isinstance(opt, NewtonSummary):  # λ scales the step: smaller is more damped
        return after["lr"] < before["lr"]
    if isinstance(opt, (ACP, PRONG)):  # Tikhonov ε
        return after["eps"] > before["eps"]
    return after["damping"] > before["damping"]  # SGN ρ, KFAC γ


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_statistics_are_numbers_or_tensors(name):
    model, loss_fn, x, y = PROBLEMS["least-squares"](torch.float32)
    opt = OPTIMIZERS[name](model, loss_fn)
    opt.step(x, y)
    stats = opt.statistics()
    assert "loss" in stats and "rejected" in stats
    for key, value in stats.items():
        assert isinstance(value, (int, float, torch.Tensor)), key


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_needs_tensors(name):
    model, loss_fn, x, y = PROBLEMS["least-squares"](torch.float64)
    opt = OPTIMIZERS[name](model, loss_fn)
    with pytest.raises(TypeError, match="two tensors"):
        opt.step(x.tolist(), y)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_learning_rate_schedulers_drive_param_groups(name):
    model, loss_fn, x, y = PROBLEMS["least-squares"](torch.float64)
    opt = OPTIMIZERS[name](model, loss_fn)
    lr0 = opt.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        opt.step(x, y)
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr0 / 4)
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
