"""The flat-parameter view of a model and the one-pass batch combination."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from curvlab.errors import UnsupportedModuleError
from curvlab.reference.functional import (
    BatchSum,
    FlatModel,
    flat_parameters,
    symmetric_product,
    symmetrize_,
)


def test_flat_parameters_follow_the_reference_ordering_and_skip_frozen():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    model[0].bias.requires_grad_(False)
    theta = flat_parameters(model)
    expected = torch.cat([model[0].weight.flatten(), model[2].weight.flatten(), model[2].bias])
    assert torch.equal(theta, expected) and not theta.requires_grad
    fm = FlatModel(model)
    assert fm.names == ("0.weight", "2.weight", "2.bias") and fm.num_params == 10
    x = torch.randn(4, 2)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for p in shifted.parameters():
            if p.requires_grad:
                p.add_(1)
    torch.testing.assert_close(fm(theta + 1, x), shifted(x))
    theta.add_(1)  # a copy: the model is untouched
    assert torch.equal(flat_parameters(model), expected)


def test_model_checks():
    with pytest.raises(TypeError, match="nn.Module"):
        FlatModel(lambda x: x)
    with pytest.raises(UnsupportedModuleError, match="no trainable parameters"):
        FlatModel(nn.Linear(2, 2).requires_grad_(False))
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(UnsupportedModuleError, match="one dtype"):
        FlatModel(mixed)



def test_train_mode_batchnorm_is_the_batch_function_and_buffers_stay():
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    before = {n: b.clone() for n, b in bn.named_buffers()}
    flat = FlatModel(bn)
    out = flat(flat.theta, x)
    assert all(torch.equal(b, before[n]) for n, b in bn.named_buffers())
    assert bn.training
    assert torch.allclose(out, bn(x))  # the same function of the batch (this call updates stats)


def test_batch_sum_mean_and_sum():
    mean, total = BatchSum("mean"), BatchSum("sum")
    for unscaled, z in [(torch.tensor([3.0]), 3), (torch.tensor([5.0]), 2)]:
        mean.add(unscaled.clone(), z)
        total.add(unscaled.clone(), 1)
    assert mean.result("m").item() == pytest.approx(8 / 5) and total.result("s").item() == 8
    with pytest.raises(ValueError, match="no batches"):
        BatchSum("mean").result("m")


@pytest.mark.parametrize("block", [1, 3, 100])
def test_symmetric_product_and_symmetrize(block):
    gen = torch.Generator().manual_seed(0)
    left = torch.randn(6, 7, dtype=torch.float64, generator=gen)
    weights = torch.randn(6, 6, dtype=torch.float64, generator=gen)
    right = (weights + weights.T) @ left
    product = symmetric_product(left, right, block=block)
    torch.testing.assert_close(product, left.T @ right)
    assert torch.equal(product, product.T)
    square = torch.randn(7, 7, dtype=torch.float64, generator=gen)
    expected = (square + square.T) / 2
    result = symmetrize_(square, block=block)
    assert result is square and torch.equal(result, result.T)
    torch.testing.assert_close(result, expected)
