"""``ggn``, ``fisher`` and ``fisher_mc`` against brute force (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab import reference
from curvlab.losses import loss_adapter
from tests.cases import CASES, Case
from tests.reference import brute_force


def test_ggn_matches_the_full_output_jacobian_sandwich(case):
    model, loss_fn, x, y = case.build(5)
    result = reference.ggn(model, loss_fn, x, y)
    torch.testing.assert_close(result, brute_force.ggn(model, loss_fn, x, y))
    assert torch.equal(result, result.T)


def test_fisher_equals_ggn(case):
    model, loss_fn, x, y = case.build(5)
    torch.testing.assert_close(
        reference.fisher(model, loss_fn, x, y), reference.ggn(model, loss_fn, x, y)
    )


@pytest.mark.parametrize("case", [c for c in CASES if "mse" not in c.name], ids=lambda c: c.name)
def test_fisher_matches_enumeration_of_the_predictive_distribution(case):
    model, loss_fn, x, y = case.build(3)
    torch.testing.assert_close(
        reference.fisher(model, loss_fn, x, y), brute_force.fisher_by_enumeration(model, loss_fn, x)
    )


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.CrossEntropyLoss(reduction="sum")])
def test_ggn_equals_hessian_for_a_linear_model(loss_fn):
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = (
        torch.randn(6, 4, dtype=torch.float64)
        if isinstance(loss_fn, nn.MSELoss)
        else torch.randint(0, 4, (6,))
    )
    torch.testing.assert_close(
        reference.ggn(model, loss_fn, x, y), reference.hessian(model, loss_fn, x, y)
    )


def mc_standard_error(model, loss_fn, x, pilot: int, seed: int) -> torch.Tensor:
    """Entrywise standard deviation of one draw's contribution (1/Z) Σ_n J_nᵀ g_n g_nᵀ J_n.

    Brute-force Jacobians, the adapter's predictive sampler and autograd output gradients.
    """
    f = brute_force.closure(model, x)
    theta = brute_force.theta_of(model)
    outputs = f(theta).detach()
    jac = torch.autograd.functional.jacobian(f, theta)  # [N, C, P]
    adapter = loss_adapter(loss_fn)
    samples = adapter.sample_targets(outputs, pilot, torch.Generator().manual_seed(seed))
    summed = brute_force.sample_loss_fn(loss_fn)
    draws = []
    for y in samples:
        o = outputs.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(summed(o, y), o)  # [N, C]: per-sample output gradients
        u = torch.einsum("ncp,nc->np", jac, g)
        draws.append(u.T @ u / brute_force.normalizer(loss_fn, outputs))
    return torch.stack(draws).std(0)


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: c.name)
def test_fisher_mc_approaches_fisher(case: Case):
    model, loss_fn, x, y = case.build(3)
    exact = reference.fisher(model, loss_fn, x, y)
    spread = mc_standard_error(model, loss_fn, x, pilot=400, seed=11)
    errors = {}
    for samples in (100, 20_000):
        estimate = reference.fisher_mc(
            model, loss_fn, x, y, samples, torch.Generator().manual_seed(samples)
        )
        assert torch.equal(estimate, estimate.T)
        error = (estimate - exact).abs()
        errors[samples] = error.max()
        if samples == 20_000:  # within 5 standard errors entrywise (pilot estimate of the spread)
            assert (error <= 5 * spread / samples**0.5 + 1e-10).all(), (
                error / (spread / samples**0.5)
            ).max()
    assert errors[20_000] < errors[100] / 3


def test_fisher_mc_is_reproducible_with_a_generator(case):
    model, loss_fn, x, y = case.build(3)
    first = reference.fisher_mc(
        model, loss_fn, x, y, mc_samples=3, generator=torch.Generator().manual_seed(5)
    )
    again = reference.fisher_mc(
        model, loss_fn, x, y, mc_samples=3, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(first, again)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (2.5, ValueError), (True, ValueError)])
def test_fisher_mc_rejects_bad_sample_counts(bad, error):
    model, loss_fn, x, y = CASES[0].build(2)
    with pytest.raises(error, match="mc_samples"):
        reference.fisher_mc(model, loss_fn, x, y, mc_samples=bad)


def test_fisher_mc_rejects_a_bad_generator():
    model, loss_fn, x, y = CASES[0].build(2)
    with pytest.raises(TypeError, match="generator"):
        reference.fisher_mc(model, loss_fn, x, y, mc_samples=2, generator=0)
