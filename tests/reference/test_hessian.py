"""``hessian`` against ``torch.autograd.functional.hessian`` on a flat-parameter closure (float64)."""

from __future__ import annotations

import pytest
import torch

from curvlab import reference
from tests.reference import brute_force


def test_hessian_matches_autograd(case):
    model, loss_fn, x, y = case.build(5)
    result = reference.hessian(model, loss_fn, x, y)
    torch.testing.assert_close(result, brute_force.hessian(model, loss_fn, x, y))
    assert torch.equal(result, result.T)


@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_chunk_size_does_not_change_the_result(case, chunk_size):
    model, loss_fn, x, y = case.build(4)
    torch.testing.assert_close(
        reference.hessian(model, loss_fn, x, y, chunk_size=chunk_size),
        reference.hessian(model, loss_fn, x, y),
    )


def test_chunk_size_must_be_positive(case):
    model, loss_fn, x, y = case.build(2)
    with pytest.raises(ValueError, match="chunk_size"):
        reference.hessian(model, loss_fn, x, y, chunk_size=0)
