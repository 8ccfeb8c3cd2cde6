"""The convolution adapter's per-sample weight gradients (one grouped convolution) against the
normal form's Σ_s g_s x_sᵀ on unfolded patches, for every dimension, stride, dilation and padding mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.collector import Collector
from curvlab.collector.adapters.conv import ConvAdapter
from curvlab.estimators.gradients import layer_gradients

CONVS = [
    (nn.Conv1d(2, 3, 3, padding=2, dilation=2, padding_mode="reflect"), (5, 2, 9)),
    (nn.Conv2d(3, 4, 3, stride=2, padding=1), (5, 3, 7, 7)),
    (nn.Conv2d(2, 3, 2, padding="same", padding_mode="circular"), (5, 2, 5, 5)),
    (nn.Conv2d(2, 3, (3, 1), stride=(1, 2), padding="valid", bias=False), (5, 2, 6, 6)),
    (nn.Conv3d(1, 2, 2, stride=2, padding=1, padding_mode="replicate"), (5, 1, 4, 4, 4)),
]


@pytest.mark.parametrize("conv, shape", CONVS, ids=["1d-reflect-dilated", "2d-strided", "2d-same-circular",
                                                     "2d-valid-rect-nobias", "3d-replicate"])
def test_weight_gradients_equal_the_normal_form(conv, shape):
    torch.manual_seed(0)
    conv = conv.double()
    x = torch.randn(*shape, dtype=torch.float64)
    with Collector(nn.Sequential(conv)) as col:
        out = col.forward(x)
        G = col.columns(out, torch.randn(shape[0], 3, *out.shape[1:], dtype=torch.float64))["0"]
        calls = col.calls["0"]
        args, kwargs, _ = calls.args[0]
        fast = ConvAdapter().weight_gradients(conv, args, kwargs, calls.outputs[0], G)
        slow = layer_gradients(calls.plan, calls.X, G)[..., : conv.weight.numel()]
    assert fast.shape == (shape[0], 3, *conv.weight.shape)
    torch.testing.assert_close(fast.flatten(2), slow, rtol=1e-10, atol=1e-12)


def test_grouped_convolutions_use_the_normal_form():
    conv = nn.Conv2d(4, 4, 3, groups=2)
    assert ConvAdapter().weight_gradients(conv, (torch.randn(1, 4, 5, 5),), {}, None, torch.randn(1, 1, 9, 4)) is None
