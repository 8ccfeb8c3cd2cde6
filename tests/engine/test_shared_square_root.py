"""KFLR through the rule engine for a loss whose output square root is shared by all samples (MSE):
the factored propagation (shared rows times per-sample scales) against the dense one, and against the
exact GGN block at one sample (where KFLR is exact for fully-connected layers)."""

import pytest
import torch
from torch import nn

from curvlab import compute, reference
from curvlab.engine.result import model_partition
from curvlab.losses.mse import MSEAdapter


def _model():
    return nn.Sequential(nn.Linear(5, 7), nn.Sigmoid(), nn.Linear(7, 3), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3, 4), nn.BatchNorm1d(4).eval(), nn.Linear(4, 4)).double()


def test_shared_rows_equal_the_dense_propagation(monkeypatch):
    torch.manual_seed(0)
    model = _model()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    shared = compute(model, nn.MSELoss(), (x, y), ["kflr"], progress=False, route="rules")["kflr"]
    monkeypatch.setattr(MSEAdapter, "shared_sqrt_hessian", lambda self, outputs: None)
    dense = compute(model, nn.MSELoss(), (x, y), ["kflr"], progress=False, route="rules")["kflr"]
    for layer, block in dense.layers.items():
        ours = shared.layers[layer]
        if isinstance(block, torch.Tensor):  # BatchNorm: an exact block, from the materialised factor
            torch.testing.assert_close(ours, block, rtol=1e-12, atol=1e-14)
        else:
            torch.testing.assert_close(ours.G, block.G, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(ours.A, block.A, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kflr_is_the_exact_ggn_block_at_one_sample(reduction):
    torch.manual_seed(1)
    model = _model()
    loss_fn = nn.MSELoss(reduction=reduction)
    x, y = torch.randn(1, 5, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    kflr = compute(model, loss_fn, (x, y), ["kflr"], progress=False, route="rules")["kflr"]
    exact = reference.ggn(model, loss_fn, x, y)
    for group in model_partition(model, "layer").groups:
        idx = group.indices
        torch.testing.assert_close(kflr.block(group.name, group.name), exact[idx[:, None], idx[None, :]],
                                   rtol=1e-9, atol=1e-12)
