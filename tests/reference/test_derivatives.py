"""``loss_value``, ``gradient``, ``per_sample_gradients`` and ``jacobian`` against autograd (float64)."""

from __future__ import annotations

import pytest
import torch

from curvlab import reference
from tests.reference import brute_force


def test_loss_and_gradient_match_autograd(case):
    model, loss_fn, x, y = case.build(5)
    torch.testing.assert_close(
        reference.loss_value(model, loss_fn, x, y), loss_fn(model(x), y).detach()
    )
    f = brute_force.closure(model, x)
    expected = torch.autograd.functional.jacobian(
        lambda t: loss_fn(f(t), y), brute_force.theta_of(model)
    )
    torch.testing.assert_close(reference.gradient(model, loss_fn, x, y), expected)


def test_per_sample_gradients_match_a_loop_and_sum_to_the_gradient(case):
    model, loss_fn, x, y = case.build(5)
    grads = reference.per_sample_gradients(model, loss_fn, x, y)
    torch.testing.assert_close(grads, brute_force.per_sample_gradients(model, loss_fn, x, y))
    z = brute_force.normalizer(loss_fn, model(x))
    torch.testing.assert_close(grads.sum(0) / z, reference.gradient(model, loss_fn, x, y))


def test_per_sample_gradients_stack_batches(case):
    model, loss_fn, x, y = case.build(5)
    stacked = reference.per_sample_gradients(model, loss_fn, [(x[:2], y[:2]), (x[2:], y[2:])])
    torch.testing.assert_close(stacked, reference.per_sample_gradients(model, loss_fn, x, y))


def test_jacobian_matches_autograd(case):
    model, _, x, _ = case.build(4)
    jac = reference.jacobian(model, x)
    f = brute_force.closure(model, x)
    expected = torch.autograd.functional.jacobian(
        lambda t: f(t).flatten(1), brute_force.theta_of(model)
    )
    torch.testing.assert_close(jac, expected)


def test_jacobian_needs_a_tensor(case):
    model, _, x, _ = case.build(2)
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        reference.jacobian(model, [x])
