import pytest
import torch
from torch import nn

from curvlab.errors import UnsupportedModuleError
from curvlab.optim.linear_layers import LinearRecorder, linear_layers


def test_records_inputs_and_output_gradients():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    with LinearRecorder(linear_layers(model, "test")) as rec:
        out = model(x)
        loss = out.pow(2).sum()
        loss.backward()
    torch.testing.assert_close(rec.inputs["0"], x)
    torch.testing.assert_close(rec.inputs["2"], torch.tanh(model[0](x)).detach())
    torch.testing.assert_close(rec.output_grads["2"], 2 * out.detach())


def test_hooks_are_removed_even_on_error():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with pytest.raises(RuntimeError):
        with LinearRecorder(linear_layers(model, "test")):
            model(torch.randn(4, 5))  # wrong input width
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_frozen_other_modules_are_fine_trainable_ones_are_not():
    model = nn.Sequential(nn.LayerNorm(2), nn.Linear(2, 1))
    with pytest.raises(UnsupportedModuleError, match="LayerNorm"):
        linear_layers(model, "ACP")
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert [n for n, _ in linear_layers(model, "ACP")] == ["1"]
