import pytest
import torch
from torch import nn

from curvlab.errors import UnsupportedModuleError
from curvlab.optim import ACP, HyperparameterError


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(16, 3, dtype=torch.float64) + 0.5
    y = torch.randn(16, 2, dtype=torch.float64)
    return model, x, y


def _layer_inputs(model, x):
    return [x, torch.tanh(model[0](x))]


@pytest.mark.parametrize("eps", [1e-12, 0.3])
def test_update_is_blockwise_inverse_of_damped_input_statistics(eps):
    """ΔW, Δb = −(λ/α) [∇W, ∇b] A'⁻¹ with A' = E[[h;1][h;1]ᵀ] + (ε/α) diag(1, …, 1, 0)."""
    model, x, y = _mlp()
    lr, alpha = 0.7, 1.3
    loss = nn.MSELoss()(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = []
    for (gw, gb), h in zip([grads[:2], grads[2:]], _layer_inputs(model, x), strict=True):
        ha = torch.cat([h.detach(), torch.ones(len(h), 1, dtype=h.dtype)], 1)
        a = ha.T @ ha / len(h)
        a[:-1, :-1] += eps / alpha * torch.eye(h.shape[1], dtype=h.dtype)
        delta = -(lr / alpha) * torch.cat([gw, gb[:, None]], 1) @ torch.linalg.inv(a)
        expected += [delta[:, :-1], delta[:, -1]]
    before = [p.detach().clone() for p in model.parameters()]
    ACP(model, nn.MSELoss(), lr=lr, alpha=alpha, eps=eps).step(x, y)
    for p0, p, d in zip(before, model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach() - p0, d)


def test_one_step_solves_linear_least_squares(dtype):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(dtype)
    x = (torch.randn(30, 4, dtype=torch.float64) * 2 + 1).to(dtype)
    y = (torch.randn(30, 3, dtype=torch.float64)).to(dtype)
    ACP(model, nn.MSELoss(), lr=1.0, alpha=2.0 / 3, eps=1e-10, period=1).step(x, y)  # exact α = 2/C
    xa = torch.cat([x, torch.ones(30, 1, dtype=dtype)], 1).double()
    sol = torch.linalg.lstsq(xa, y.double()).solution
    tol = dict(rtol=1e-8, atol=1e-8) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(model.weight.detach().double(), sol[:-1].T, **tol)
    torch.testing.assert_close(model.bias.detach().double(), sol[-1], **tol)


def test_heuristic_alpha_and_amortisation():
    model, x, y = _mlp()
    with torch.no_grad():
        residual = model(x) - y
    opt = ACP(model, nn.MSELoss(), lr=0.1, period=3)
    opt.step(x, y)
    n, z = 16, 32  # MSE mean over N·C entries
    expected_last = (n / z) * float((2 * residual).pow(2).max())
    assert float(opt.statistics()["alpha"][1]) == pytest.approx(expected_last)
    flags = [opt.statistics()["recomputed"]]
    for _ in range(4):
        opt.step(x, y)
        flags.append(opt.statistics()["recomputed"])
    assert flags == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_layer_without_bias_uses_uncentred_moment():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    x, y = torch.randn(10, 3, dtype=torch.float64) + 1, torch.randn(10, 1, dtype=torch.float64)
    loss = nn.MSELoss()(model(x), y)
    (gw,) = torch.autograd.grad(loss, [model.weight])
    expected = model.weight.detach() - 0.5 * gw @ torch.linalg.inv(x.T @ x / 10 + 0.1 / 2 * torch.eye(3, dtype=x.dtype))
    ACP(model, nn.MSELoss(), lr=1.0, alpha=2.0, eps=0.1).step(x, y)
    torch.testing.assert_close(model.weight.detach(), expected)


def test_refuses_other_modules_and_bad_hyperparameters():
    grouped = nn.Sequential(nn.Conv2d(2, 2, 2, groups=2), nn.Flatten(), nn.Linear(8, 1))
    with pytest.raises(UnsupportedModuleError, match="grouped.*'0' is a torch.nn.modules.conv.Conv2d"):
        ACP(grouped, nn.MSELoss())
    with pytest.raises(UnsupportedModuleError, match="'0' is a torch.nn.modules.sparse.Embedding"):
        ACP(nn.Sequential(nn.Embedding(5, 2), nn.Linear(2, 1)), nn.MSELoss())
    model = nn.Linear(2, 1)
    for kw, name in [({"alpha": "max"}, "alpha"), ({"alpha": -1.0}, "alpha"), ({"eps": 0.0}, "eps"),
                     ({"period": 0}, "period"), ({"lr": float("inf")}, "lr")]:
        with pytest.raises(HyperparameterError, match=name):
            ACP(model, nn.MSELoss(), **kw)
