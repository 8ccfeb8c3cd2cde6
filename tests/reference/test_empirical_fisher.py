"""``empirical_fisher`` against a Python loop of per-sample gradient outer products (float64)."""

from __future__ import annotations

import torch

from curvlab import reference
from tests.reference import brute_force


def test_empirical_fisher_is_the_scaled_sum_of_gradient_outer_products(case):
    model, loss_fn, x, y = case.build(5)
    result = reference.empirical_fisher(model, loss_fn, x, y)
    torch.testing.assert_close(result, brute_force.empirical_fisher(model, loss_fn, x, y))
    assert torch.equal(result, result.T)


def test_empirical_fisher_of_one_sample_is_rank_one(case):
    model, loss_fn, x, y = case.build(1)
    result = reference.empirical_fisher(model, loss_fn, x, y)
    eigenvalues = torch.linalg.eigvalsh(result)
    assert (eigenvalues[:-1].abs() < 1e-10 * eigenvalues[-1]).all() and eigenvalues[-1] > 0
