import warnings

import pytest
import torch
from torch import nn

from curvlab import reference
from curvlab.optim import SGN, HyperparameterError
from curvlab.optim.damping import scheduled_damping


def _linear_problem(dtype, outputs=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = x @ torch.randn(4, outputs, generator=g, dtype=torch.float64) + torch.randn(20, outputs, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    return nn.Linear(4, outputs).to(dtype), x.to(dtype), y.to(dtype)


def _least_squares_solution(x, y):
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    sol = torch.linalg.lstsq(xa, y.double()).solution  # [5, C]
    return sol[:-1].T, sol[-1]


@pytest.mark.parametrize("preconditioner", ["none", "ggn-diagonal"])
def test_one_step_reaches_least_squares_solution(dtype, preconditioner):
    model, x, y = _linear_problem(dtype)
    opt = SGN(model, nn.MSELoss(), cg_iters=10, cg_tol=0.0, damping=1e-10,  # P = 10
              trust_region=False, line_search=False, preconditioner=preconditioner)
    opt.step(x, y)
    weight, bias = _least_squares_solution(x, y)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=0, atol=1e-2)
    torch.testing.assert_close(model.weight.detach().double(), weight, **tol)
    torch.testing.assert_close(model.bias.detach().double(), bias, **tol)
    with torch.no_grad():
        best = float(((x.double() @ weight.T + bias - y.double()) ** 2).mean())
        reached = float(nn.MSELoss()(model(x), y))
    assert reached == pytest.approx(best, rel=1e-10 if dtype == torch.float64 else 1e-4)
    assert opt.statistics()["cg_iterations"] <= 10


def test_step_is_damped_gauss_newton_step_on_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 2, (7,))
    loss_fn = nn.CrossEntropyLoss()
    G = reference.ggn(model, loss_fn, x, y)
    g = reference.gradient(model, loss_fn, x, y)
    theta = reference.flat_parameters(model)
    rho = 0.1
    expected = theta - torch.linalg.solve(G + rho * torch.eye(len(g), dtype=g.dtype), g)
    opt = SGN(model, loss_fn, damping=rho, damping_min=0.0, cg_iters=len(g), cg_tol=0.0,
              trust_region=False, line_search=False)
    opt.step(x, y)
    torch.testing.assert_close(reference.flat_parameters(model), expected)


def test_trust_region_applies_ratio_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Sigmoid(), nn.Linear(6, 1)).double()
    x = torch.rand(30, 2, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, :1])
    opt = SGN(model, nn.MSELoss(), damping=1e-2, damping_min=1e-3, cg_iters=3, line_search=False)
    seen = set()
    for _ in range(15):
        rho = opt.param_groups[0]["damping"]
        loss = float(opt.step(x, y))
        stats = opt.statistics()
        with torch.no_grad():
            new = float(nn.MSELoss()(model(x), y))
        assert stats["actual_change"] == pytest.approx(new - loss, rel=1e-9, abs=1e-12)
        ratio = stats["reduction_ratio"]
        assert ratio == pytest.approx(stats["actual_change"] / stats["predicted_change"])
        after = opt.param_groups[0]["damping"]
        if ratio < 0.25:
            expected, kind = 1.5 * rho, "up"
        elif ratio > 0.75:
            expected, kind = max(2 / 3 * rho, 1e-3), "down"
        else:
            expected, kind = rho, "same"
        assert after == pytest.approx(expected)
        seen.add(kind)
    assert "down" in seen


def test_line_search_backtracks_a_too_long_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    x = torch.randn(30, 2, dtype=torch.float64)
    y = torch.sin(3 * x[:, :1])
    opt = SGN(model, nn.MSELoss(), lr=64.0, trust_region=False, cg_iters=4)
    loss = float(opt.step(x, y))
    stats = opt.statistics()
    assert stats["step_size"] < 64.0 and stats["line_search_tries"] > 1
    with torch.no_grad():
        assert float(nn.MSELoss()(model(x), y)) < loss


def test_momentum_first_step_equals_plain_step_and_schedule_is_followed():
    results = []
    for beta in (0.0, 0.9):
        model, x, y = _linear_problem(torch.float64)
        opt = SGN(model, nn.MSELoss(), momentum=beta, trust_region=False, line_search=False,
                  damping=1.0, damping_min=0.1, damping_schedule="linear", damping_horizon=4, cg_iters=3)
        rhos = []
        for _ in range(5):
            opt.step(x, y)
            rhos.append(opt.statistics()["damping"])
            if not results or len(results) == 1 and len(rhos) == 1:
                results.append(model.weight.detach().clone())
        assert rhos == pytest.approx([scheduled_damping("linear", 1.0, 0.1, t, 4) for t in range(1, 6)])
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize(
    "kw, name",
    [({"lr": 0.0}, "lr"), ({"damping": -1.0}, "damping"), ({"cg_iters": 0}, "cg_iters"),
     ({"cg_tol": float("nan")}, "cg_tol"), ({"momentum": 1.0}, "momentum"),
     ({"preconditioner": "jacobi"}, "preconditioner"), ({"damping_schedule": "exp"}, "damping_schedule"),
     ({"trust_region": 1}, "trust_region"), ({"damping_min": 1.0}, "damping_min"),
     ({"armijo_c": 2.0}, "armijo_c")],
)
def test_bad_hyperparameters_are_named(kw, name):
    model, _, _ = _linear_problem(torch.float64)
    with pytest.raises(HyperparameterError, match=name):
        SGN(model, nn.MSELoss(), **kw)


def test_non_finite_loss_after_the_step_restores_parameters_and_raises_damping():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x = torch.linspace(-1, 1, 10, dtype=torch.float64)[:, None]
    y = x.exp()
    opt = SGN(model, nn.MSELoss(), trust_region=False, line_search=True, armijo_tries=1, lr=1e300)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(match="loss after the step is not finite"):
        opt.step(x, y)
    assert opt.statistics()["rejected"] == 1.0 and opt.param_groups[0]["damping"] == pytest.approx(1.5e-4)
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q.detach())


def test_decreases_loss_on_shared_cases(case):
    model, loss_fn, x, y = case.build(batch_size=16)
    opt = SGN(model, loss_fn, cg_iters=5)
    losses = [float(opt.step(x, y)) for _ in range(4)]
    with torch.no_grad():
        final = float(loss_fn(model(x), y))
    assert final < losses[0], (case.name, losses, final)


def test_cg_uses_max_abs_rule_and_truncation_is_quiet():
    model, x, y = _linear_problem(torch.float64)
    g = reference.gradient(model, nn.MSELoss(), x, y)
    loose = SGN(model, nn.MSELoss(), cg_iters=5, cg_tol=float(g.abs().max()) * 1.0001,
                trust_region=False, line_search=False)
    before = reference.flat_parameters(model)
    loose.step(x, y)  # max|r₀| = max|g| ≤ cg_tol: no CG iteration, a zero step
    assert loose.statistics()["cg_iterations"] == 0
    assert loose.statistics()["cg_residual"] == pytest.approx(float(g.abs().max()), rel=1e-12)
    torch.testing.assert_close(reference.flat_parameters(model), before)
    truncated = SGN(model, nn.MSELoss(), cg_iters=2, cg_tol=0.0, trust_region=False, line_search=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        truncated.step(x, y)
    assert truncated.statistics()["cg_iterations"] == 2 and truncated.statistics()["cg_residual"] > 0
