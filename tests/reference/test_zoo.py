"""The references on every zoo model, each matrix by two independent routes, in float64.

* Hessian: curvlab's double backward, curvlab's forward-over-``grad`` (jvp of torch.func.grad) and
  ``torch.autograd.functional.hessian`` agree.
* GGN: curvlab's (reverse-mode batch Jacobian, closed-form output Hessian) equals the brute force
  Jᵀ (∂²L/∂F²) J over the whole batch (no adapter, no per-sample structure), and the per-sample
  products J_nᵀ H_n J_n from batches of one wherever the samples are independent.
* Empirical Fisher, Fisher: from per-sample gradients (batches of one) and by the GGN identity.
* The user's model is never modified: parameters, buffers (BatchNorm running statistics) and mode.
"""

from __future__ import annotations

import pytest
import torch

from curvlab import reference
from curvlab.autodiff import batch_coupled_modules
from tests.reference import brute_force
from tests.zoo import ZOO

BATCH = 4


def close(actual, expected, rtol=1e-8):
    scale = expected.abs().max().clamp_min(1e-12)
    err = (actual - expected).abs().max() / scale
    assert err < rtol, f"relative error {err:.2e}"


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(params=ZOO, ids=lambda c: c.name)
def zoo(request):
    return request.param


def test_hessian_two_routes(zoo):
    model, loss_fn, x, y = zoo.build(BATCH)
    before, mode = state(model), model.training
    h = reference.hessian(model, loss_fn, x, y)
    close(h, reference.hessian(model, loss_fn, x, y, method="forward_over_reverse"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training == mode
    close(h, brute_force.hessian(model, loss_fn, x, y))


def test_ggn_two_routes(zoo):
    model, loss_fn, x, y = zoo.build(BATCH)
    before = state(model)
    g = reference.ggn(model, loss_fn, x, y)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    close(g, brute_force.ggn(model, loss_fn, x, y))
    close(reference.fisher(model, loss_fn, x, y), g)  # canonical links: F = G
    if not batch_coupled_modules(model):
        close(g, brute_force.per_sample_ggn(model, loss_fn, x, y))


def test_empirical_fisher_and_gradients(zoo):
    model, loss_fn, x, y = zoo.build(BATCH)
    grads = reference.per_sample_gradients(model, loss_fn, x, y)
    z = brute_force.normalizer(loss_fn, model(x))
    close(grads.sum(0) / z, reference.gradient(model, loss_fn, x, y))
    loss = loss_fn(model(x), y)
    expected = torch.cat(
        [g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]
    )
    close(reference.gradient(model, loss_fn, x, y), expected)
    if not batch_coupled_modules(model):
        close(grads, brute_force.per_sample_gradients(model, loss_fn, x, y))
        close(
            reference.empirical_fisher(model, loss_fn, x, y),
            brute_force.empirical_fisher(model, loss_fn, x, y),
        )
