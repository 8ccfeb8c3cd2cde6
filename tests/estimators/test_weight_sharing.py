"""KFAC-expand and KFAC-reduce are exact in their regimes (Eschenhagen et al. 2023): deep linear networks
with weight sharing and MSE loss; and kflr / ekfac agree with curvlinops' KFAC / EKFAC (type-2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab import compute
from tests.zoo import ZOO_BY_NAME


class TokenwiseLinear(nn.Module):
    """Deep linear network applied to every token; per-token MSE (the expand regime)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.fc1(x))


class PooledLinear(nn.Module):
    """Token-wise linear layers, mean over tokens, a linear head; MSE per sequence (the reduce regime)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.fc2(self.fc1(x)).mean(1))


def _data(model_cls, out_shape):
    torch.manual_seed(0)
    model = model_cls().double()
    return model, nn.MSELoss(), torch.randn(5, 6, 3, dtype=torch.float64), torch.randn(5, *out_shape, dtype=torch.float64)


@pytest.mark.parametrize(("model_cls", "out_shape", "sharing"), [
    (TokenwiseLinear, (6, 2), "expand"), (PooledLinear, (2,), "reduce"),
], ids=["expand", "reduce"])
def test_kronecker_is_exact_in_its_weight_sharing_regime(model_cls, out_shape, sharing):
    model, loss_fn, x, y = _data(model_cls, out_shape)
    result = compute(model, loss_fn, (x, y), ["kflr", "kfac", "ggn_block"], progress=False,
                     weight_sharing=sharing, mc_samples=1)
    exact = result["ggn_block"].dense()
    torch.testing.assert_close(result["kflr"].dense(), exact, rtol=1e-10, atol=1e-12)
    other = "reduce" if sharing == "expand" else "expand"
    wrong = compute(model, loss_fn, (x, y), ["kflr"], progress=False, weight_sharing=other)["kflr"].dense()
    assert not torch.allclose(wrong, exact, rtol=1e-3)  # the other convention is not exact here


def _kron_params(model):
    """Parameters of the layers curvlinops factors (Linear, Conv2d), with their flat offsets in ours."""
    params, index, offset = [], [], 0
    kinds = (nn.Linear, nn.Conv2d)
    owners = {id(p): m for m in model.modules() if isinstance(m, kinds) for p in m.parameters(recurse=False)}
    for p in model.parameters():
        if id(p) in owners:
            params.append(p)
            index.append(torch.arange(offset, offset + p.numel()))
        offset += p.numel()
    return params, torch.cat(index)


def _curvlinops_dense(operator_cls, model, loss_fn, x, y, params):
    op = operator_cls(model, loss_fn, params, [(x, y)], fisher_type="type-2", check_deterministic=False,
                      separate_weight_and_bias=False, num_data=len(x))
    return op @ torch.eye(sum(p.numel() for p in params), dtype=torch.float64)


@pytest.mark.parametrize("name", ["control-mlp-ce", "control-cnn-mse", "functional-bce", "resnet-module-per-use-eval"])
def test_kflr_and_ekfac_match_curvlinops_type2(name):
    curvlinops = pytest.importorskip("curvlinops")
    model, loss_fn, x, y = ZOO_BY_NAME[name].build(4)
    ours = compute(model, loss_fn, (x, y), ["kflr", "ekfac"], progress=False, route="collector")
    params, index = _kron_params(model)  # curvlinops has no Kronecker factors for BatchNorm
    for quantity, operator_cls in (("kflr", curvlinops.KFACLinearOperator), ("ekfac", curvlinops.EKFACLinearOperator)):
        theirs = _curvlinops_dense(operator_cls, model, loss_fn, x, y, params)
        dense = ours[quantity].dense()[index][:, index]
        torch.testing.assert_close(dense, theirs, rtol=1e-7, atol=1e-12)
