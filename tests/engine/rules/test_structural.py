"""Structural rules: max pooling's KFRA recursion (scatter-adds of Ḡ) against the generic per-sample sandwich."""

import pytest
import torch
from torch import nn

from curvlab.engine.rules.base import ModuleRule, Record
from curvlab.engine.rules.structural import PoolingRule


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.MaxPool2d(2, ceil_mode=True)],
                         ids=["2x2", "3x3-s2-p1-overlapping", "ceil"])
def test_max_pool_kfra_equals_the_per_sample_sandwich(pool):
    torch.manual_seed(0)
    x = torch.randn(5, 2, 5, 5, dtype=torch.float64)
    y = pool(x)
    root = torch.randn(y[0].numel(), y[0].numel(), dtype=torch.float64)
    gbar = root @ root.T
    rule = PoolingRule(linear=False)
    record = Record("pool", pool, rule, x, y)
    fast = rule.kfra_backprop(record, gbar)
    generic = ModuleRule.kfra_backprop(rule, Record("pool", pool, rule, x, y), gbar)
    torch.testing.assert_close(fast, generic, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d((2, 3)), nn.MaxPool2d(3, stride=2, padding=1)],
                         ids=["2x2", "2x3", "overlapping (the vjp route)"])
def test_max_pool_backprop_equals_autograd(pool):
    torch.manual_seed(1)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    y = pool(x)
    factor = torch.randn(4, 3, *y.shape[1:], dtype=torch.float64)
    rule = PoolingRule(linear=False)
    ours = rule.backprop(Record("pool", pool, rule, x, y), factor)
    xr = x.clone().requires_grad_(True)
    out = pool(xr)
    expected = torch.stack([torch.autograd.grad(out, xr, factor[:, k], retain_graph=True)[0] for k in range(3)], 1)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
