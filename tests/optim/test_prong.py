"""PRONG (natural neural networks) against an explicitly reparametrised network trained by plain SGD."""

import pytest
import torch
from torch import nn

from curvlab import optim
from curvlab.errors import UnsupportedModuleError


class Whitened(nn.Module):
    """a = V U (h − μ) + d with U = (Σ + εI)^(−1/2), μ and U fixed between reparametrisations."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.bias = layer.bias is not None
        self.V = nn.Parameter(layer.weight.detach().clone())
        self.d = nn.Parameter(torch.zeros(layer.out_features, dtype=layer.weight.dtype))
        self.register_buffer("U", torch.eye(layer.in_features, dtype=layer.weight.dtype))
        self.register_buffer("mu", torch.zeros(layer.in_features, dtype=layer.weight.dtype))
        if self.bias:
            self.d.data.copy_(layer.bias.detach())
        self.d.requires_grad_(self.bias)

    def original(self):
        """(W, b) of the equivalent plain layer: W = V U, b = d − W μ."""
        W = self.V.detach() @ self.U
        return W, self.d.detach() - W @ self.mu

    @torch.no_grad()
    def reparametrise(self, h: torch.Tensor, eps: float):
        W, b = self.original()
        self.mu = h.mean(0) if self.bias else torch.zeros_like(self.mu)
        z = h - self.mu
        lam, q = torch.linalg.eigh(z.T @ z / len(h) + eps * torch.eye(h.shape[1], dtype=h.dtype))
        self.U = (q * lam.rsqrt()) @ q.T
        self.V.copy_(W @ torch.linalg.inv(self.U))  # the same function: V U = W, d − W μ = b
        self.d.copy_(b + W @ self.mu)

    def forward(self, h):
        return (h - self.mu) @ self.U @ self.V.T + self.d


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4, bias=False), nn.Sigmoid(), nn.Linear(4, 2)).double()


def test_prong_equals_sgd_on_the_explicitly_whitened_network():
    lr, eps, period, steps = 0.4, 0.05, 3, 7
    model = _mlp()
    explicit = nn.Sequential(*[Whitened(m) if isinstance(m, nn.Linear) else m for m in _mlp()])
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.2]) + 2,
                torch.randn(16, 2, generator=g, dtype=torch.float64)) for _ in range(steps)]
    opt = optim.PRONG(model, nn.MSELoss(), lr=lr, eps=eps, period=period)
    for step, (x, y) in enumerate(batches):
        if step % period == 0:
            h = x
            for unit in explicit:
                if isinstance(unit, Whitened):
                    unit.reparametrise(h, eps)
                h = unit(h).detach()
        params = [p for p in explicit.parameters() if p.requires_grad]
        sgd = torch.optim.SGD(params, lr=lr)
        sgd.zero_grad()
        nn.functional.mse_loss(explicit(x), y).backward()
        sgd.step()
        opt.step(x, y)
        for layer, unit in zip((model[0], model[2], model[4]), (explicit[0], explicit[2], explicit[4]), strict=True):
            W, b = unit.original()
            torch.testing.assert_close(layer.weight.detach(), W, rtol=1e-9, atol=1e-11)
            if layer.bias is not None:
                torch.testing.assert_close(layer.bias.detach(), b, rtol=1e-9, atol=1e-11)
    assert opt.statistics()["reparametrised"] == 1.0  # step 7 = 1 + 2·period


def test_whitening_fixes_badly_scaled_inputs():
    """With inputs scaled 1 : 100 : 0.01, PRONG solves a linear regression that SGD at the same rate cannot."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 100.0, 0.01]) + 3
    y = x @ torch.tensor([[1.0], [0.01], [100.0]], dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    opt = optim.PRONG(model, nn.MSELoss(), lr=0.5, eps=1e-12)
    losses = [float(opt.step(x, y)) for _ in range(30)]
    assert losses[-1] < 1e-8 * losses[0]


def test_prong_on_a_convolution_equals_sgd_on_its_whitened_patches():
    """A convolution is the linear map of its receptive-field patches: PRONG on it equals PRONG on the
    equivalent nn.Linear fed the unfolded patches (one location per output pixel, 3 × 3 output)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 2).double()
    linear = nn.Linear(8, 3).double()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(3, -1))
        linear.bias.copy_(conv.bias)
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    y = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    patches = nn.functional.unfold(x, 2).transpose(1, 2).reshape(-1, 8)  # [6·9, 8]
    targets = y.permute(0, 2, 3, 1).reshape(-1, 3)
    a = optim.PRONG(conv, nn.MSELoss(reduction="sum"), lr=0.01, eps=0.1)
    b = optim.PRONG(linear, nn.MSELoss(reduction="sum"), lr=0.01, eps=0.1)
    for _ in range(3):
        a.step(x, y)
        b.step(patches, targets)
    torch.testing.assert_close(conv.weight.detach().reshape(3, -1), linear.weight.detach())
    torch.testing.assert_close(conv.bias.detach(), linear.bias.detach())


def test_prong_refuses_other_modules_naming_them():
    model = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(UnsupportedModuleError, match="module '0'.*Conv2d"):
        optim.PRONG(model, nn.CrossEntropyLoss())


def test_rejected_step_raises_eps_and_reparametrises():
    model = nn.Sequential(nn.Linear(2, 1)).double()
    opt = optim.PRONG(model, nn.MSELoss(), eps=0.1)
    x, y = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    opt.step(x, y)
    with pytest.warns(Warning, match="eps raised to 1"):
        opt._reject("step", torch.tensor(1.0))
    assert "whitening" not in opt.global_state
    opt.step(x, y)
    assert opt.statistics()["reparametrised"] == 1.0
