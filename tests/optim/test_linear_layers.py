import pytest
import torch
from torch import nn

from curvlab.errors import UnsupportedModuleError
from curvlab.optim.linear_layers import LinearRecorder, linear_layers, weight_matrix


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
    model = nn.Sequential(nn.Embedding(4, 2), nn.Linear(2, 1))
    with pytest.raises(UnsupportedModuleError, match="Embedding"):
        linear_layers(model, "ACP")
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert [n for n, _ in linear_layers(model, "ACP")] == ["1"]


def test_normalisation_layers_take_plain_steps():
    model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    assert [n for n, _ in linear_layers(model, "ACP")] == ["0", "2"]


@pytest.mark.parametrize("conv, shape", [(nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1), (4, 2, 7, 7)),
                                         (nn.Conv2d(2, 3, (2, 3), padding=(1, 0), dilation=2), (4, 2, 6, 8)),
                                         (nn.Conv1d(2, 3, 3, stride=2, padding=2), (4, 2, 9))])
def test_convolution_rows_give_the_weight_gradient(conv, shape):
    """Σ_rows g hᵀ over the recorded patch rows and output-gradient rows is the weight gradient (and Σ g the
    bias gradient): the rows are the convolution's linear map, sample by sample and location by location."""
    conv = conv.double()
    x = torch.randn(*shape, dtype=torch.float64)
    with LinearRecorder(linear_layers(conv, "test")) as rec:
        out = conv(x)
        (out * torch.randn_like(out)).sum().backward()
    h, g = rec.inputs[""], rec.output_grads[""]
    assert h.shape[0] == g.shape[0] == out.shape[0] * out[0, 0].numel()
    torch.testing.assert_close(weight_matrix(conv, conv.weight.grad), g.T @ h)
    torch.testing.assert_close(conv.bias.grad, g.sum(0))
