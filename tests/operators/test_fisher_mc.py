"""FisherMCOperator against the reference MC Fisher drawn from the same generator (float64)."""

import pytest
import torch

from curvlab import reference
from curvlab.operators import FisherMCOperator, GGNOperator
from tests.cases import CASES


def test_matvec_equals_reference_with_same_draws(case):
    model, loss_fn, x, y = case.build(batch_size=5)
    op = FisherMCOperator(
        model, loss_fn, (x, y), mc_samples=3, generator=torch.Generator().manual_seed(7)
    )
    dense = reference.fisher_mc(
        model, loss_fn, x, y, mc_samples=3, generator=torch.Generator().manual_seed(7)
    )
    v = torch.randn(op.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(op @ v, dense @ v, rtol=1e-9, atol=1e-11)


def test_draws_are_fixed_at_construction_and_batches_combine():
    model, loss_fn, x, y = CASES[0].build(batch_size=6)
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    op = FisherMCOperator(
        model, loss_fn, data, mc_samples=2, generator=torch.Generator().manual_seed(0)
    )
    ref = reference.fisher_mc(
        model, loss_fn, data, mc_samples=2, generator=torch.Generator().manual_seed(0)
    )
    v = torch.randn(op.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op @ v, op @ v, rtol=0, atol=0)
    torch.testing.assert_close(op.dense(), ref, rtol=1e-9, atol=1e-11)


def test_converges_to_the_ggn():
    model, loss_fn, x, y = CASES[1].build(batch_size=3)  # MSE: H_n = 2I
    op = FisherMCOperator(
        model, loss_fn, (x, y), mc_samples=4000, generator=torch.Generator().manual_seed(0)
    )
    ggn = GGNOperator(model, loss_fn, (x, y)).dense()
    err = (op.dense() - ggn).abs().max() / ggn.abs().max()
    assert err < 0.1  # ~ 1/sqrt(4000) relative fluctuation, with margin
    assert err > 0  # sampled, not exact


def test_invalid_mc_samples():
    model, loss_fn, x, y = CASES[0].build()
    with pytest.raises(ValueError, match="mc_samples"):
        FisherMCOperator(model, loss_fn, (x, y), mc_samples=0)
