"""grouped_newton_summary against brute force in float64: UᵀHU, UᵀGU and Uᵀg from the dense references,
D³ from finite differences of the directional Hessian and from a polynomial model's exact derivatives,
the Cauchy and Newton limits, batching, direction formats, errors and leaving the model alone."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch import nn

from curvlab.errors import PartitionError, UnsupportedModuleError
from curvlab.partition import Partition
from curvlab.reference import ggn, gradient, hessian
from curvlab.summary import (
    GroupedNewtonSummary,
    SummaryMethod,
    grouped_newton_summary,
    newton_summary_step,
)
from tests.cases import CASES
from tests.summary.helpers import METHODS, d3_finite_differences, dense_u

KINDS = ("canonical", "trivial", "entries")
BY_NAME = {c.name: c for c in CASES}


def _methods(model, kind):
    """Every route takes every model and partition (layered: its stage form on chains, hooks elsewhere)."""
    return list(METHODS)


@pytest.mark.parametrize("kind", KINDS)
def test_hessian_and_gradient_summaries_match_dense(case, kind):
    model, loss_fn, x, y = case.build(5)
    part = Partition.from_model(model, kind)
    g = gradient(model, loss_fn, x, y)
    U = dense_u(part, g)
    hbar, gbar = U.T @ hessian(model, loss_fn, x, y) @ U, U.T @ g
    for method in _methods(model, kind):
        s = grouped_newton_summary(model, loss_fn, (x, y), partition=kind, order=2, method=method)
        assert s.d3 is None and s.group_names == part.group_names
        torch.testing.assert_close(s.gbar, gbar, rtol=1e-9, atol=1e-12, msg=f"{method} gbar")
        torch.testing.assert_close(s.hbar, hbar, rtol=1e-9, atol=1e-12, msg=f"{method} hbar")


@pytest.mark.parametrize("kind", ("canonical", "entries"))
def test_ggn_summary_matches_dense(case, kind):
    model, loss_fn, x, y = case.build(5)
    part = Partition.from_model(model, kind)
    U = dense_u(part, gradient(model, loss_fn, x, y))
    expected = U.T @ ggn(model, loss_fn, x, y) @ U
    for method in _methods(model, kind):
        s = grouped_newton_summary(model, loss_fn, (x, y), partition=kind, curvature="ggn", order=2, method=method)
        torch.testing.assert_close(s.hbar, expected, rtol=1e-9, atol=1e-12, msg=method)


@pytest.mark.parametrize("name", ["mlp-tanh-mse", "mlp-sigmoid-ce", "mlp-relu-bce-sum", "cnn-ce", "residual-ce"])
def test_d3_matches_finite_differences_of_the_directional_hessian(name):
    model, loss_fn, x, y = BY_NAME[name].build(4)
    part = Partition.from_model(model, "canonical")
    U = dense_u(part, gradient(model, loss_fn, x, y))
    expected = d3_finite_differences(model, loss_fn, (x, y), U)
    scale = expected.abs().max()
    for method in _methods(model, "canonical"):
        s = grouped_newton_summary(model, loss_fn, (x, y), method=method)
        torch.testing.assert_close(s.d3, expected, rtol=1e-5, atol=1e-6 * float(scale), msg=method)


@pytest.mark.parametrize("name", ["mlp-tanh-mse-sum", "cnn-ce"])
@pytest.mark.parametrize("kind", ("trivial", "entries"))
def test_d3_agrees_between_routes(name, kind):
    model, loss_fn, x, y = BY_NAME[name].build(4)
    results = [grouped_newton_summary(model, loss_fn, (x, y), partition=kind, method=m).d3
               for m in _methods(model, kind)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-9, atol=1e-12)


class Polynomial(nn.Module):
    """f_n = x_n0 a0 a1 + x_n1 b² + a1³: with MSE (sum) the loss is a polynomial in (a0, a1, b)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([0.5, -1.5], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))

    def forward(self, x):
        return (x[:, :1] * self.a[0] * self.a[1] + x[:, 1:] * self.b**2 + self.a[1] ** 3)


@pytest.mark.parametrize("kind", KINDS)
def test_summaries_of_a_polynomial_model_are_its_exact_derivatives(kind):
    """ḡ, H̄ and D³ of φ(η) = L(θ + Uη) derived symbolically (sympy, exact rationals)."""
    xs = [[1, 2], [-3, 1], [2, -1]]
    ys = [1, 0, -2]
    theta = [sympy.Rational(1, 2), sympy.Rational(-3, 2), sympy.Integer(2)]
    u = [sympy.Rational(1, 4), sympy.Integer(1), sympy.Rational(-1, 2)]
    part = Partition.from_model(Polynomial(), kind)
    group_of = part.group_ids().tolist()  # entries of (a0, a1, b) -> group
    eta = sympy.symbols(f"e0:{part.num_groups}")
    a0, a1, b = (t + e * v for t, v, e in zip(theta, u, [eta[g] for g in group_of], strict=True))
    phi = sum((xn[0] * a0 * a1 + xn[1] * b**2 + a1**3 - yn) ** 2 for xn, yn in zip(xs, ys, strict=True))
    at0 = dict.fromkeys(eta, 0)

    def value(expr):
        return float(expr.subs(at0))

    gbar = torch.tensor([value(sympy.diff(phi, e)) for e in eta], dtype=torch.float64)
    hbar = torch.tensor([[value(sympy.diff(phi, e, f)) for f in eta] for e in eta], dtype=torch.float64)
    d3 = torch.tensor([value(sympy.diff(phi, e, 3)) for e in eta], dtype=torch.float64)
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)[:, None]
    direction = torch.tensor([float(v) for v in u], dtype=torch.float64)
    for method in ("functional", "double_backward"):
        s = grouped_newton_summary(Polynomial(), nn.MSELoss(reduction="sum"), (x, y), direction=direction,
                                   partition=kind, method=method)
        torch.testing.assert_close(s.gbar, gbar, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.hbar, hbar, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.d3, d3, rtol=1e-12, atol=1e-12)


def test_trivial_partition_gives_cauchys_steepest_descent_step(sequential_case):
    model, loss_fn, x, y = sequential_case.build(5)
    g = gradient(model, loss_fn, x, y)
    s = grouped_newton_summary(model, loss_fn, (x, y), partition="trivial", order=2)
    expected = (g @ g) / (g @ hessian(model, loss_fn, x, y) @ g)
    torch.testing.assert_close(s.step().eta, expected.reshape(1), rtol=1e-9, atol=0)


def test_entries_partition_with_unit_direction_gives_newtons_step_on_a_quadratic():
    """Linear least squares (a positive-definite quadratic): θ − η ⊙ 1 is the minimiser, η = H⁻¹g."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    loss_fn = nn.MSELoss()
    ones = torch.ones(8, dtype=torch.float64)
    s = grouped_newton_summary(model, loss_fn, (x, y), direction=ones, partition="entries", order=2)
    g, H = gradient(model, loss_fn, x, y), hessian(model, loss_fn, x, y)
    eta = s.step().eta
    torch.testing.assert_close(eta, torch.linalg.solve(H, g), rtol=1e-10, atol=1e-12)
    newton = torch.cat([p.detach().flatten() for p in model.parameters()]) - eta
    X = torch.cat([x, torch.ones(20, 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(X, y).solution  # [4, 2]: rows weights of inputs, then bias
    torch.testing.assert_close(newton, torch.cat([solution[:3].T.flatten(), solution[3]]), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.MSELoss(reduction="sum")], ids=["mean", "sum"])
@pytest.mark.parametrize("method", METHODS)
def test_batches_combine_exactly(loss_fn, method):
    model, _, x, y = BY_NAME["mlp-tanh-mse"].build(9)
    whole = grouped_newton_summary(model, loss_fn, (x, y), method=method)
    parts = grouped_newton_summary(model, loss_fn, [(x[:4], y[:4]), (x[4:], y[4:])], method=method)
    for a, b in [(whole.gbar, parts.gbar), (whole.hbar, parts.hbar), (whole.d3, parts.d3)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert parts.attrs["batch_size"] == 9


def test_direction_formats_agree_and_default_to_the_gradient():
    model, loss_fn, x, y = BY_NAME["mlp-sigmoid-ce"].build(5)
    model[0].bias.requires_grad_(False)  # a frozen parameter: not part of θ
    flat = gradient(model, loss_fn, x, y)
    part = Partition.from_model(model)
    as_list = part.unflatten(flat)
    with_frozen = [p.detach() if not p.requires_grad else None for p in model.parameters()]
    with_frozen = [as_list.pop(0) if w is None else torch.zeros_like(w) for w in with_frozen]
    runs = [grouped_newton_summary(model, loss_fn, (x, y), direction=d, order=2)
            for d in (None, flat, part.unflatten(flat), with_frozen)]
    assert runs[0].attrs["config"].count('"direction": "gradient"') == 1
    for other in runs[1:]:
        torch.testing.assert_close(other.hbar, runs[0].hbar, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(other.gbar, runs[0].gbar, rtol=1e-12, atol=1e-14)


def test_float32_agrees_with_float64():
    model, loss_fn, x, y = BY_NAME["mlp-tanh-mse"].build(6)
    s64 = grouped_newton_summary(model, loss_fn, (x, y))
    s32 = grouped_newton_summary(model.float(), loss_fn, (x.float(), y.float()))
    assert s32.hbar.dtype == torch.float32 and s32.d3.dtype == torch.float32
    torch.testing.assert_close(s32.hbar.double(), s64.hbar, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s32.d3.double(), s64.d3, rtol=1e-3, atol=1e-5)


def test_model_is_left_alone():
    model, loss_fn, x, y = BY_NAME["cnn-ce"].build(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = [m.training for m in model.modules()]
    for method in METHODS:
        grouped_newton_summary(model, loss_fn, (x, y), method=method)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert training == [m.training for m in model.modules()]
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_auto_picks_layered_where_possible():
    model, loss_fn, x, y = BY_NAME["mlp-tanh-mse"].build(3)
    cfg = grouped_newton_summary(model, loss_fn, (x, y), order=2).attrs["config"]
    assert '"method": "layered"' in cfg
    cfg = grouped_newton_summary(model, loss_fn, (x, y), order=2, partition="entries").attrs["config"]
    assert '"method": "double_backward"' in cfg
    assert SummaryMethod("double_backward") is SummaryMethod.DOUBLE_BACKWARD
    pooled = nn.Sequential(nn.Linear(x.shape[1], 4), nn.Tanh(), nn.Unflatten(1, (1, 4)), nn.MaxPool1d(2), nn.Flatten(),
                           nn.Linear(2, y.shape[1])).double()  # stages without closed-form jets: order 3 by double backward
    for order, method in ((2, "layered"), (3, "double_backward")):
        s = grouped_newton_summary(pooled, loss_fn, (x, y), order=order)
        assert f'"method": "{method}"' in s.attrs["config"]


def test_bad_arguments_raise_clear_errors():
    model, loss_fn, x, y = BY_NAME["residual-ce"].build(3)
    with pytest.raises(ValueError, match="order must be 2 or 3"):
        grouped_newton_summary(model, loss_fn, (x, y), order=4)
    with pytest.raises(ValueError, match="direction must be a flat"):
        grouped_newton_summary(model, loss_fn, (x, y), direction=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"direction\[0\].*'inner.0.weight'"):
        grouped_newton_summary(model, loss_fn, (x, y), direction=[torch.zeros(2)] * 6)
    with pytest.raises(ValueError, match="'hessians' is not a valid SummaryCurvature"):
        grouped_newton_summary(model, loss_fn, (x, y), curvature="hessians")
    with pytest.raises(PartitionError, match="unknown partition kind"):
        grouped_newton_summary(model, loss_fn, (x, y), partition="bogus")
    other = Partition.from_model(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="another model"):
        grouped_newton_summary(model, loss_fn, (x, y), partition=other)
    dropout = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).double()
    with pytest.raises(UnsupportedModuleError, match=r"1 \(Dropout\) in training mode"):
        grouped_newton_summary(dropout, loss_fn, (x, y))


def test_summary_feeds_the_step_solver():
    model, loss_fn, x, y = BY_NAME["mlp-tanh-mse"].build(6)
    s = grouped_newton_summary(model, loss_fn, (x, y))
    assert isinstance(s, GroupedNewtonSummary) and s.order == 3
    step = s.step(lambda_int=1.0)
    direct = newton_summary_step(s.gbar, s.hbar, s.d3, lambda_int=1.0)
    assert step.found and torch.equal(step.eta, direct.eta)
