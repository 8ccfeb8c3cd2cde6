"""``LayerAdapter.parameter_output``: for every built-in adapter that says its call is linear in its
parameters, the calls with one parameter set (the others zero) add up to the call with all of them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.collector.adapters import adapter_for

F64 = torch.float64
LAYERS = {
    "linear-tokens": (lambda: nn.Linear(3, 2), lambda: torch.randn(4, 5, 3)),
    "conv2d-grouped-reflect": (lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1, padding_mode="reflect"),
                               lambda: torch.randn(2, 4, 5, 5)),
    "conv1d-strided": (lambda: nn.Conv1d(2, 3, 3, stride=2), lambda: torch.randn(2, 2, 9)),
    "embedding": (lambda: nn.Embedding(7, 3, padding_idx=0), lambda: torch.randint(0, 7, (3, 4))),
    "layernorm": (lambda: nn.LayerNorm(3), lambda: torch.randn(4, 2, 3)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), lambda: torch.randn(3, 4, 5)),
    "batchnorm-train": (lambda: nn.BatchNorm2d(3), lambda: torch.randn(4, 3, 2, 2)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_parameter_outputs_add_up_to_the_call(name):
    torch.manual_seed(0)
    make, data = LAYERS[name]
    module, x = make().double(), data()
    x = x.double() if x.is_floating_point() else x
    adapter = adapter_for(module)
    assert adapter.linear_in_parameters(module)
    output = module(x)
    names = adapter.parameter_names(module)
    total = sum(adapter.parameter_output(module, (x,), {}, output, n, getattr(module, n)) for n in names)
    torch.testing.assert_close(total.expand_as(output), output, rtol=1e-12, atol=1e-12)
    for n in names:  # linear: scaling one parameter scales its part
        part = adapter.parameter_output(module, (x,), {}, output, n, getattr(module, n))
        twice = adapter.parameter_output(module, (x,), {}, output, n, 2 * getattr(module, n))
        torch.testing.assert_close(twice, 2 * part)


def test_attention_is_not_linear_in_its_parameters():
    mha = nn.MultiheadAttention(4, 2)
    assert not adapter_for(mha).linear_in_parameters(mha)
    embed = nn.Embedding(5, 3, max_norm=1.0)
    assert not adapter_for(embed).linear_in_parameters(embed)
