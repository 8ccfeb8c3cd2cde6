"""ComplexStepHessianOperator against double backward (float64, to ~1e-10) and its refusals."""

import pytest
import torch
from torch import nn

from curvlab.errors import UnsupportedModuleError
from curvlab.operators import ComplexStepHessianOperator, HessianOperator, check_analytic
from tests.cases import CASES, Residual, mlp

ANALYTIC = [
    c
    for c in CASES
    if c.name in ("mlp-sigmoid-ce", "mlp-tanh-mse", "mlp-tanh-mse-sum", "residual-ce")
]


def _bce_sigmoid_case():
    torch.manual_seed(0)
    model = mlp(nn.Sigmoid, (4, 6, 3))().double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6, 3)).double()
    return model, nn.BCEWithLogitsLoss(), x, y


@pytest.mark.parametrize("case", ANALYTIC, ids=lambda c: c.name)
def test_equals_double_backward(case):
    model, loss_fn, x, y = case.build(batch_size=6)
    _check_against_double_backward(model, loss_fn, [(x[:4], y[:4]), (x[4:], y[4:])])


def test_equals_double_backward_bce_with_large_logits():
    model, loss_fn, x, y = _bce_sigmoid_case()
    with torch.no_grad():
        model[-1].bias.add_(
            torch.tensor([30.0, -30.0, 0.0], dtype=torch.float64)
        )  # both softplus branches
    _check_against_double_backward(model, loss_fn, (x, y))


def _check_against_double_backward(model, loss_fn, data):
    cs = ComplexStepHessianOperator(model, loss_fn, data)
    db = HessianOperator(model, loss_fn, data)
    v = torch.randn(cs.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = db @ v
    err = ((cs @ v) - expected).abs().max() / expected.abs().max()
    assert err < 1e-10


def test_refuses_relu_and_maxpool_naming_the_modules():
    model, loss_fn, x, y = CASES[4].build()  # cnn-ce: Conv, ReLU, MaxPool2d, Conv, Sigmoid, ...
    with pytest.raises(UnsupportedModuleError, match=r"'1' \(ReLU.*'2' \(MaxPool2d"):
        ComplexStepHessianOperator(model, loss_fn, (x, y))


@pytest.mark.parametrize(
    "module",
    [nn.LeakyReLU(), nn.Hardtanh(), nn.ELU(), nn.LayerNorm(5), nn.Dropout(0.5)],
    ids=lambda m: type(m).__name__,
)
def test_refuses_non_analytic_modules(module):
    model = nn.Sequential(nn.Linear(3, 5), nn.Sequential(module), nn.Linear(5, 2))
    with pytest.raises(UnsupportedModuleError, match=rf"'1\.0' \({type(module).__name__}"):
        check_analytic(model)
    model.eval()
    if isinstance(module, nn.Dropout):  # dropout is the identity in eval mode
        check_analytic(model)


class _FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Residual()

    def forward(self, x):
        return torch.relu(self.body(x))


def test_runtime_failure_names_the_module_and_removes_hooks():
    torch.manual_seed(0)
    model = _FunctionalRelu().double()
    x, y = torch.randn(4, 4, dtype=torch.float64), torch.randint(0, 3, (4,))
    op = ComplexStepHessianOperator(
        model, nn.CrossEntropyLoss(), (x, y)
    )  # the module walk cannot see torch.relu
    with pytest.raises(UnsupportedModuleError, match=r"module '<root>' \(_FunctionalRelu\)"):
        op @ torch.ones(op.shape[0], dtype=torch.float64)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_epsilon_must_be_positive():
    model, loss_fn, x, y = CASES[0].build()
    with pytest.raises(ValueError, match="epsilon"):
        ComplexStepHessianOperator(model, loss_fn, (x, y), epsilon=0.0)


def test_convolutions_pooling_and_eval_batchnorm_are_exact():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(3, 2, 2), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3),
    ).double()  # fmt: skip
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    x, y = torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (4,))
    _check_against_double_backward(model, nn.CrossEntropyLoss(), (x, y))
    model.train()
    with pytest.raises(UnsupportedModuleError, match=r"'1' \(BatchNorm2d"):
        check_analytic(model)
