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
