"""HessianOperator against the dense reference Hessian (float64)."""

import warnings

import pytest
import torch
from torch import nn

from curvlab import reference
from curvlab.errors import CurvlabWarning
from curvlab.operators import GGNOperator, HessianOperator, HVPMethod
from tests.cases import CASES

METHODS = list(HVPMethod)


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("method", METHODS, ids=[m.value for m in METHODS])
def test_matvec_equals_dense_reference(case, method, cache):
    model, loss_fn, x, y = case.build(batch_size=5)
    op = HessianOperator(model, loss_fn, (x, y), method=method, cache=cache)
    dense = reference.hessian(model, loss_fn, x, y)
    v = torch.randn(op.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op @ v[:, 0], dense @ v[:, 0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op @ v, dense @ v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op @ v[:, 1], dense @ v[:, 1], rtol=1e-9, atol=1e-11)  # cache reused


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("method", METHODS, ids=[m.value for m in METHODS])
def test_batches_combine_exactly(method, reduction):
    model, _, x, y = CASES[0].build(batch_size=7)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    op = HessianOperator(model, loss_fn, [(x[:3], y[:3]), (x[3:], y[3:])], method=method)
    torch.testing.assert_close(
        op.dense(), reference.hessian(model, loss_fn, x, y), rtol=1e-9, atol=1e-11
    )


def test_unknown_method_is_refused():
    model, loss_fn, x, y = CASES[0].build()
    with pytest.raises(ValueError, match="reverse_over_forward"):
        HessianOperator(model, loss_fn, (x, y), method="reverse_over_forward")


def test_snapshot_is_independent_of_later_model_changes():
    model, loss_fn, x, y = CASES[1].build()
    before = reference.hessian(model, loss_fn, x, y)
    op = HessianOperator(model, loss_fn, (x, y))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    v = torch.ones(op.shape[0], dtype=torch.float64)
    first = op @ v
    for key, value in model.state_dict().items():  # the operator did not touch the model
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    torch.testing.assert_close(op @ v, first, rtol=0, atol=0)
    torch.testing.assert_close(first, before @ v, rtol=1e-9, atol=1e-11)


class _DataDependent(nn.Module):
    """Python control flow on tensor values: no tracing route could follow it."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x):
        out = torch.tanh(self.layer(x))
        return out if float(out.sum()) > -1e9 else -out


def test_data_dependent_model_needs_no_tracing():
    torch.manual_seed(0)
    model = _DataDependent().double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    v = torch.randn(8, dtype=torch.float64)
    hessian_v = reference.hessian(model, nn.MSELoss(), x, y) @ v
    ggn_v = GGNOperator(model, nn.MSELoss(), (x, y), cache=False) @ v  # no tracing involved
    for make, expected in (
        (
            lambda: HessianOperator(model, nn.MSELoss(), (x, y), method="forward_over_reverse"),
            hessian_v,
        ),
        (lambda: GGNOperator(model, nn.MSELoss(), (x, y)), ggn_v),
    ):
        op = make()
        with warnings.catch_warnings():
            warnings.simplefilter("error", CurvlabWarning)
            first = op @ v
        torch.testing.assert_close(first, expected, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(op @ v, expected, rtol=1e-9, atol=1e-11)
