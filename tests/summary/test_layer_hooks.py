"""The layered route's hook form (any model): exact against the dense references and the other routes,
with the layers it must not inject (attention, uses outside the call) moved to direct perturbation."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from curvlab import grouped_newton_summary
from curvlab.losses import loss_adapter
from curvlab.partition import Partition
from curvlab.reference import ggn, gradient, hessian
from curvlab.summary.layer_hooks import HookedRoute
from curvlab.summary.problem import SummaryCurvature, SummaryProblem
from tests.summary.helpers import dense_u
from tests.zoo import TiedLM, zoo_case

F64 = torch.float64


def _problem(model, loss_fn, kind="canonical", curvature="hessian", order=3, seed=0):
    part = Partition.from_model(model, kind)
    u = torch.randn(part.num_params, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return SummaryProblem.build(model, loss_adapter(loss_fn), part, u, SummaryCurvature(curvature), order), u


@pytest.mark.parametrize("kind", ["canonical", "layer", "trivial", "entries"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_hook_form_matches_the_dense_references_on_a_resnet_in_train_mode(kind, curvature):
    model, loss_fn, x, y = zoo_case("resnet-torchvision-train").build(3)
    s = grouped_newton_summary(model, loss_fn, (x, y), partition=kind, curvature=curvature, order=2,
                               method="layered", direction=_problem(model, loss_fn, kind)[1])
    U = dense_u(s.partition, _problem(model, loss_fn, kind)[1])
    matrix = hessian if curvature == "hessian" else ggn
    torch.testing.assert_close(s.gbar, U.T @ gradient(model, loss_fn, x, y), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s.hbar, U.T @ matrix(model, loss_fn, x, y) @ U, rtol=1e-9, atol=1e-12)
    assert json.loads(s.attrs["config"])["layered_form"] == "hooks"


def test_attention_and_its_output_projection_are_perturbed_directly():
    model, loss_fn, x, y = zoo_case("transformer-eval").build(3)
    problem, _ = _problem(model, loss_fn)
    route = HookedRoute(problem)
    terms = route(x, y)
    assert "not linear in its parameters" in route.demoted["encoder.self_attn"]
    assert "used outside its call" in route.demoted["encoder.self_attn.out_proj"]
    U = dense_u(problem.partition, torch.cat([d.flatten() for d in problem.directions]))
    torch.testing.assert_close(terms.hbar, U.T @ hessian(model, loss_fn, x, y) @ U, rtol=1e-9, atol=1e-12)


def test_a_weight_used_outside_its_layer_is_not_injected():
    torch.manual_seed(0)
    model = TiedLM().double()  # the head is F.linear(h, wte.weight)
    x, y = torch.randint(0, 5, (5, 3)), torch.randint(0, 5, (5, 3))
    problem, u = _problem(model, nn.CrossEntropyLoss())
    route = HookedRoute(problem)
    terms = route(x, y)
    assert "used outside its call (by linear)" in route.demoted["wte"]
    U = dense_u(problem.partition, u)
    torch.testing.assert_close(terms.hbar, U.T @ hessian(model, nn.CrossEntropyLoss(), x, y) @ U,
                               rtol=1e-9, atol=1e-12)
    s = grouped_newton_summary(model, nn.CrossEntropyLoss(), (x, y), direction=u, method="layered")
    assert "wte" in json.loads(s.attrs["config"])["directly_perturbed"]


def test_d3_and_ggn_agree_with_the_reference_route_on_a_gpt():
    model, loss_fn, x, y = zoo_case("gpt-token-ce").build(3)
    for curvature in ("hessian", "ggn"):
        fast = grouped_newton_summary(model, loss_fn, (x, y), curvature=curvature, method="layered")
        ref = grouped_newton_summary(model, loss_fn, (x, y), curvature=curvature, method="double_backward")
        for a, b in ((fast.gbar, ref.gbar), (fast.hbar, ref.hbar), (fast.d3, ref.d3)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_hooks_are_removed_and_the_model_is_unchanged():
    model, loss_fn, x, y = zoo_case("resnet-pytorch-cifar-train").build(3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grouped_newton_summary(model, loss_fn, (x, y), method="layered")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
