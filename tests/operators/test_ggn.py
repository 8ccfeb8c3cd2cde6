"""GGNOperator against the dense reference GGN (float64)."""

import pytest
import torch

from curvlab import reference
from curvlab.losses import loss_adapter
from curvlab.operators import GGNOperator
from curvlab.operators.sandwich import output_hessian_product
from tests.cases import CASES, LOSSES


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "uncached"])
def test_matvec_equals_dense_reference(case, cache):
    model, loss_fn, x, y = case.build(batch_size=5)
    op = GGNOperator(model, loss_fn, (x, y), cache=cache)
    dense = reference.ggn(model, loss_fn, x, y)
    v = torch.randn(op.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(op @ v[:, 0], dense @ v[:, 0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op @ v, dense @ v, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("index", [1, 2], ids=["mse-mean", "bce-sum"])
def test_batches_combine_exactly(index):
    model, loss_fn, x, y = CASES[index].build(batch_size=7)
    op = GGNOperator(model, loss_fn, [(x[:2], y[:2]), (x[2:], y[2:])])
    torch.testing.assert_close(
        op.dense(), reference.ggn(model, loss_fn, x, y), rtol=1e-9, atol=1e-11
    )


@pytest.mark.parametrize("make_loss", LOSSES)
def test_closed_form_output_hessian_product(make_loss):
    adapter = loss_adapter(make_loss())
    gen = torch.Generator().manual_seed(0)
    f, u = (
        torch.randn(4, 3, dtype=torch.float64, generator=gen),
        torch.randn(4, 3, dtype=torch.float64, generator=gen),
    )
    expected = torch.einsum("nij,nj->ni", adapter.output_hessian(f), u)
    torch.testing.assert_close(
        output_hessian_product(adapter, f, u), expected, rtol=1e-12, atol=1e-14
    )
