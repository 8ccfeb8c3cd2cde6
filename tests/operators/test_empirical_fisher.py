"""EmpiricalFisherOperator against the dense reference empirical Fisher (float64)."""

import pytest
import torch

from curvlab import reference
from curvlab.guards import memory_budget
from curvlab.operators import EmpiricalFisherOperator, EmpiricalFisherStrategy
from tests.cases import CASES

STRATEGIES = [
    EmpiricalFisherStrategy.PER_SAMPLE_GRADIENTS,
    EmpiricalFisherStrategy.JACOBIAN_PRODUCTS,
]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=[s.value for s in STRATEGIES])
def test_matvec_equals_dense_reference(case, strategy):
    model, loss_fn, x, y = case.build(batch_size=5)
    op = EmpiricalFisherOperator(model, loss_fn, (x, y), strategy=strategy)
    dense = reference.empirical_fisher(model, loss_fn, x, y)
    v = torch.randn(op.shape[0], 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(op @ v[:, 0], dense @ v[:, 0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op @ v, dense @ v, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=[s.value for s in STRATEGIES])
def test_batches_combine_exactly(strategy):
    model, loss_fn, x, y = CASES[1].build(batch_size=7)
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    op = EmpiricalFisherOperator(model, loss_fn, data, strategy=strategy)
    torch.testing.assert_close(
        op.dense(), reference.empirical_fisher(model, loss_fn, data), rtol=1e-9, atol=1e-11
    )


def test_auto_picks_per_sample_gradients_when_they_fit():
    model, loss_fn, x, y = CASES[0].build()
    assert (
        EmpiricalFisherOperator(model, loss_fn, (x, y)).strategy
        is EmpiricalFisherStrategy.PER_SAMPLE_GRADIENTS
    )
    with memory_budget(64):
        op = EmpiricalFisherOperator(model, loss_fn, (x, y))
    assert op.strategy is EmpiricalFisherStrategy.JACOBIAN_PRODUCTS
    assert op.per_sample_gradients is None


@pytest.mark.parametrize("strategy", STRATEGIES, ids=[s.value for s in STRATEGIES])
def test_diagonal(strategy):
    model, loss_fn, x, y = CASES[2].build(batch_size=5)
    data = [(x[:2], y[:2]), (x[2:], y[2:])]
    op = EmpiricalFisherOperator(model, loss_fn, data, strategy=strategy)
    expected = reference.empirical_fisher(model, loss_fn, data).diagonal()
    torch.testing.assert_close(op.diagonal(), expected, rtol=1e-9, atol=1e-11)
