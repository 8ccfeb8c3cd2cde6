import pytest
import torch
from torch import nn

from curvlab.optim import CenteredSGD, HyperparameterError


@pytest.mark.parametrize("bias", [True, False])
def test_update_matches_hand_derivation(bias):
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=bias).double()
    x, y = torch.randn(8, 3, dtype=torch.float64) + 1, torch.randn(8, 2, dtype=torch.float64)
    with torch.no_grad():
        g = 2 * (model(x) - y) / 16  # ∂L/∂a_n for 'mean' MSE, Z = N·C = 16
    lr = 0.3
    expected_w = model.weight.detach() - lr * g.T @ (x - x.mean(0))
    expected_b = model.bias.detach() - lr * g.sum(0) if bias else None
    CenteredSGD(model, nn.MSELoss(), lr=lr).step(x, y)
    torch.testing.assert_close(model.weight.detach(), expected_w)
    if bias:
        torch.testing.assert_close(model.bias.detach(), expected_b)


def test_centred_update_differs_from_sgd_only_by_the_mean_term():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1)).double()
    x, y = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    reference = [p.detach().clone() for p in model.parameters()]
    loss = nn.MSELoss()(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    hidden = torch.sigmoid(model[0](x)).detach()
    CenteredSGD(model, nn.MSELoss(), lr=1.0).step(x, y)
    means = [x.mean(0), hidden.mean(0)]
    for i, h_mean in enumerate(means):
        gw, gb = grads[2 * i], grads[2 * i + 1]
        torch.testing.assert_close(list(model.parameters())[2 * i].detach(), reference[2 * i] - (gw - torch.outer(gb, h_mean)))
        torch.testing.assert_close(list(model.parameters())[2 * i + 1].detach(), reference[2 * i + 1] - gb)


def test_bad_lr():
    with pytest.raises(HyperparameterError, match="lr"):
        CenteredSGD(nn.Linear(2, 1), nn.MSELoss(), lr=-0.1)
