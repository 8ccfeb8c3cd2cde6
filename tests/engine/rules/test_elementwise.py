"""f' and f'' of every elementwise rule against torch.func derivatives of the module's function."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import grad, vmap

from curvlab.engine.rules import RULES
from curvlab.engine.rules.base import Record
from curvlab.engine.rules.elementwise import ELEMENTWISE_RULES

MODULES = [nn.ReLU(), nn.LeakyReLU(0.3), nn.Sigmoid(), nn.Tanh(), nn.ELU(0.7), nn.SELU(), nn.Softplus(2.0, 3.0),
           nn.GELU(), nn.GELU(approximate="tanh")]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: repr(m))
def test_first_and_second_derivatives(module):
    assert type(module) in ELEMENTWISE_RULES
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(1, 13) + 0.01  # avoid the kinks at 0
    scalar = lambda t: module.forward(t)  # noqa: E731
    first = vmap(grad(scalar))(x.flatten())
    second = vmap(grad(grad(scalar)))(x.flatten())
    rule = RULES[type(module)]
    record = Record("act", module, rule, x, module(x))
    d1, d2 = rule._derivs(record)
    assert torch.allclose(d1.flatten(), first, atol=1e-12)
    assert torch.allclose(torch.zeros_like(second) if d2 is None else d2.flatten(), second, atol=1e-12)


@pytest.mark.parametrize("module", [nn.Sigmoid(), nn.Tanh(), nn.ReLU(), nn.ELU()], ids=lambda m: repr(m))
def test_first_derivative_alone_and_inplace_backprop(module):
    x = torch.linspace(-2, 2, 8, dtype=torch.float64).reshape(2, 4) + 0.01
    rule = RULES[type(module)]
    record = Record("act", module, rule, x, module(x))
    factor = torch.randn(2, 3, 4, dtype=torch.float64)
    expected = rule.backprop(record, factor)
    fresh = Record("act", module, rule, x, module(x))
    copy = factor.clone()
    out = rule.backprop_inplace(fresh, copy)
    assert torch.equal(out, expected)
    if rule.first is not None:  # closed forms: f'' is not computed for a factor step
        assert "derivatives" not in fresh.cache
    d1, _ = rule._derivs(fresh)
    assert torch.equal(d1, rule._derivs(record)[0])
