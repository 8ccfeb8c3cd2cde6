"""Convolution Kronecker factors follow KFC's "expand" convention, as curvlinops does (weight blocks agree)."""

import torch
from torch import nn

import curvlab


def test_conv_kflr_weight_block_equals_curvlinops_kfac_expand():
    from curvlinops import FisherType, KFACLinearOperator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4)).double()
    x, y = torch.randn(6, 2, 5, 5, dtype=torch.float64), torch.randint(0, 4, (6,))
    loss_fn = nn.CrossEntropyLoss()
    ours = curvlab.compute(model, loss_fn, (x, y), ["kflr"], progress=False)["kflr"]

    params = list(model.parameters())
    theirs = KFACLinearOperator(
        model, loss_fn, params, [(x, y)], fisher_type=FisherType.TYPE2, check_deterministic=False,
        num_data=len(x),
    )
    dense_theirs = theirs @ torch.eye(sum(p.numel() for p in params), dtype=torch.float64)
    conv_weight = slice(0, params[0].numel())
    torch.testing.assert_close(
        ours.dense()[conv_weight, conv_weight], dense_theirs[conv_weight, conv_weight], rtol=1e-8, atol=1e-12
    )
