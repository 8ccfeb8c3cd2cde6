"""``grouped_newton_summary`` on every zoo model, by each route, against the references (float64).

ḡ = Uᵀg, H̄ = UᵀHU (Hessian) or UᵀGU (GGN) with the dense references (two-route checked in
``tests/reference/test_zoo.py``), and D³ by two independent routes (double backward and nested
forward-mode ``jvp``) plus a central finite difference of u_sᵀ H(θ + t u_s) u_s.
"""

from __future__ import annotations

import copy

import pytest
import torch

from curvlab import grouped_newton_summary, reference
from curvlab.partition import Partition
from tests.zoo import ZOO

BATCH = 4


def close(actual, expected, rtol=1e-8):
    err = (actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)
    assert err < rtol, f"relative error {err:.2e}"


def basis(model, partition, u):
    part = Partition.from_model(model, partition)
    U = torch.zeros(u.numel(), part.num_groups, dtype=u.dtype)
    U[torch.arange(u.numel()), part.group_ids()] = u
    return U


@pytest.mark.parametrize("zoo", ZOO, ids=lambda c: c.name)
def test_summaries_on_the_zoo(zoo):
    model, loss_fn, x, y = zoo.build(BATCH)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    u = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    U = basis(model, "canonical", u)
    g = reference.gradient(model, loss_fn, x, y)
    H = reference.hessian(model, loss_fn, x, y)
    G = reference.ggn(model, loss_fn, x, y)
    d3 = {}
    for method in ("auto", "layered", "double_backward", "functional"):
        s = grouped_newton_summary(model, loss_fn, (x, y), direction=u, method=method)
        close(s.gbar, U.T @ g)
        close(s.hbar, U.T @ H @ U)
        d3[method] = s.d3
        ggn = grouped_newton_summary(
            model, loss_fn, (x, y), direction=u, method=method, curvature="ggn", order=2
        )
        close(ggn.hbar, U.T @ G @ U)
    close(d3["functional"], d3["double_backward"])
    close(d3["auto"], d3["double_backward"])
    close(d3["layered"], d3["double_backward"])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


SMOOTH = ("layernorm-mlp-ce", "gpt-token-ce", "transformer-train", "lstm-ce", "functional-bce")


@pytest.mark.parametrize("zoo", [c for c in ZOO if c.name in SMOOTH], ids=lambda c: c.name)
def test_d3_matches_finite_differences_of_the_curvature(zoo):
    """D³_s = d/dt u_sᵀ H(θ + t u_s) u_s, by central differences of torch's plain double backward on
    φ(t) = L(θ + t u_s) (second derivatives of the native kernels are right; their third ones are not,
    which curvlab works around)."""
    model, loss_fn, x, y = zoo.build(BATCH)
    torch.manual_seed(1)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    us = [torch.randn_like(p) for p in params]
    u = torch.cat([t.flatten() for t in us])
    s = grouped_newton_summary(model, loss_fn, (x, y), direction=u, partition="trivial")
    twin = copy.deepcopy(model)

    def second_derivative(t0):
        t = torch.tensor(t0, dtype=torch.float64, requires_grad=True)
        shifted = {n: p + t * v for n, p, v in zip(names, params, us, strict=True)}
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            loss = loss_fn(torch.func.functional_call(twin, shifted, (x,)), y)
        (g,) = torch.autograd.grad(loss, t, create_graph=True)
        return torch.autograd.grad(g, t)[0]

    h = 1e-4
    fd = (second_derivative(h) - second_derivative(-h)) / (2 * h)
    assert abs(float(fd - s.d3[0])) <= 1e-5 * max(1.0, abs(float(fd))), (float(fd), float(s.d3[0]))
