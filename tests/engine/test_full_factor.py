"""The full square-root factors (``ggn``, ``fisher_mc``, ``empirical_fisher``) are kept per layer:
S_l ⊗ [X_l; 1] for Linear layers, dense columns for the rest; every route equals the reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import curvlab
from curvlab import reference
from curvlab.engine import compute
from curvlab.repr import LayeredSquareRootCurvature

F64 = torch.float64


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3, bias=False), nn.Tanh(), nn.Linear(3, 3))
    return model.double(), nn.CrossEntropyLoss(), torch.randn(6, 4, dtype=F64), torch.randint(0, 3, (6,))


def test_linear_layers_keep_outer_factors_and_match_the_reference():
    model, loss_fn, x, y = _mlp()
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    rep = compute(model, loss_fn, batches, "ggn", progress=False)["ggn"]
    assert isinstance(rep, LayeredSquareRootCurvature)
    assert [layer.inputs.shape for layer in rep.layers] == [(6, 4), (6, 5), (6, 3)]
    assert [layer.outputs.shape for layer in rep.layers] == [(18, 5), (18, 3), (18, 3)]
    want = reference.ggn(model, loss_fn, x, y)
    v = torch.randn(want.shape[0], 2, dtype=F64)
    torch.testing.assert_close(rep.dense(), want)
    torch.testing.assert_close(rep.matvec(v), want @ v)
    torch.testing.assert_close(rep.diagonal(), want.diagonal())
    torch.testing.assert_close(rep.block("2", "4"), want[25:40, 40:])
    torch.testing.assert_close(rep.eigvalsh(), torch.linalg.eigvalsh(want), atol=1e-10, rtol=1e-8)


def test_frozen_weight_keeps_dense_bias_columns_and_the_input_is_copied():
    model, loss_fn, x, y = _mlp()
    model[4].weight.requires_grad_(False)  # the head trains its bias only: dense columns
    rep = compute(model, loss_fn, (x, y), "empirical_fisher", progress=False)["empirical_fisher"]
    assert rep.layers[-1].inputs is None and rep.layers[-1].outputs.shape == (6, 3)
    torch.testing.assert_close(rep.dense(), reference.empirical_fisher(model, loss_fn, x, y))
    x.add_(1.0)  # the representation holds its own copy of the first layer's input
    torch.testing.assert_close(rep.dense(), reference.empirical_fisher(model, loss_fn, x - 1.0, y))


@pytest.mark.parametrize("quantity", ["ggn", "fisher_mc"])
def test_the_factor_is_only_formed_on_request(quantity):
    model, loss_fn, x, y = _mlp()
    gen = torch.Generator().manual_seed(3)
    rep = compute(model, loss_fn, (x, y), quantity, progress=False, generator=gen)[quantity]
    size = rep.rank * rep.shape[0] * 8
    with curvlab.memory_budget(size - 8):
        trace = rep.trace()
        with pytest.raises(curvlab.MemoryBudgetError, match=f"{quantity} square-root factor"):
            _ = rep.factor
    torch.testing.assert_close(trace, (rep.factor**2).sum())
