"""The layered route's per-stage rules against torch.func: closed-form activation derivatives, Faà di
Bruno jets, the loss's third-order term, and the generic fallback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.losses import loss_adapter
from curvlab.summary import layer_rules as rules
from tests.cases import LOSSES

F64 = torch.float64


@pytest.mark.parametrize("module", [nn.Tanh(), nn.Sigmoid(), nn.ReLU()], ids=lambda m: type(m).__name__)
def test_elementwise_jets_match_nested_jvp(module):
    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=F64)
    jets = [torch.randn(2, 5, 4, dtype=F64) for _ in range(3)]
    y, d = rules.ELEMENTWISE_RULES[type(module)](x, 3)
    torch.testing.assert_close(y, module(x))
    pushed = rules.elementwise_push(jets, d)
    expected = torch.stack([rules.taylor3(module, x, torch.stack([j[a] for j in jets])) for a in range(2)])
    for order in range(3):
        got = torch.zeros_like(x) if pushed[order] is None else pushed[order]
        torch.testing.assert_close(got, expected[:, order], rtol=1e-12, atol=1e-12)
    # the first-order push and the adjoint's curvature factor: λσ'' = c·(λg)·σ'
    torch.testing.assert_close(rules.elementwise_push(jets[:1], d)[0], pushed[0])
    lam = torch.randn(5, 4, dtype=F64)
    second = torch.func.jvp(lambda t: torch.func.vjp(module, t)[1](lam)[0], (x,), (torch.ones_like(x),))[1]
    if d.curvature is None:
        assert float(second.abs().max()) == 0.0
    else:
        scaled, c = d.curvature(lam)
        torch.testing.assert_close(c * scaled * d.d1, second, rtol=1e-12, atol=1e-12)


def test_zero_orders_stay_none():
    x = torch.randn(3, 2, dtype=F64)
    _, d = rules.ELEMENTWISE_RULES[nn.ReLU](x, 3)
    assert rules.elementwise_push([torch.ones(1, 3, 2, dtype=F64), None, None], d)[1:] == [None, None]


@pytest.mark.parametrize("make_loss", LOSSES)
def test_loss_third_order_matches_nested_jvp(make_loss):
    torch.manual_seed(1)
    loss_fn = make_loss()
    adapter = loss_adapter(loss_fn)
    f = torch.randn(6, 3, dtype=F64)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        y = torch.randint(0, 3, (6,))
    elif isinstance(loss_fn, nn.BCEWithLogitsLoss):
        y = torch.randint(0, 2, (6, 3)).to(F64)
    else:
        y = torch.randn(6, 3, dtype=F64)
    jets = [torch.randn(2, 6, 3, dtype=F64) for _ in range(3)]
    got = rules.loss_third_order(adapter, f, y, jets)
    expected = torch.stack(
        [rules.taylor3(lambda out: loss_fn(out, y), f, torch.stack([j[a] for j in jets]))[2] for a in range(2)]
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_generic_push_agrees_with_the_closed_form():
    x = torch.randn(4, 3, dtype=F64)
    jets = [torch.randn(2, 4, 3, dtype=F64), None, torch.randn(2, 4, 3, dtype=F64)]
    _, d = rules.ELEMENTWISE_RULES[nn.Tanh](x, 3)
    y, generic = rules.generic_push(nn.Tanh(), x, jets)
    closed = rules.elementwise_push(jets, d)
    torch.testing.assert_close(y, torch.tanh(x))
    for a, b in zip(generic, closed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_affine_helpers_for_convolutions():
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(2, 4, 2, 5, 5, dtype=F64)  # extra leading group dimension
    w = torch.randn_like(conv.weight)
    expected = torch.stack([torch.nn.functional.conv2d(x[i], w, padding=1) for i in range(2)])
    torch.testing.assert_close(rules.affine_linear_part(conv, x, w), expected)
    lam = torch.randn(4, 3, 5, 5, dtype=F64)
    pulled = rules.affine_pullback(conv, x[0], w, lam)
    auto = torch.func.vjp(lambda t: torch.nn.functional.conv2d(t, w, padding=1), x[0])[1](lam)[0]
    torch.testing.assert_close(pulled, auto)
    assert rules.bias_term(conv, conv.bias.detach(), expected[0]).shape == (4, 3, 5, 5)
