"""The layered route on layouts beyond tests/cases.py: nested Sequentials, frozen stages, activations
without a closed-form rule (generic torch.func), and the reasons it refuses a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.losses import loss_adapter
from curvlab.partition import Partition
from curvlab.summary import grouped_newton_summary
from curvlab.summary.layered import layered_stages, unsupported_reason
from curvlab.summary.problem import SummaryCurvature, SummaryProblem

F64 = torch.float64


def _model():
    torch.manual_seed(0)
    frozen = nn.Linear(4, 4)
    frozen.requires_grad_(False)
    return nn.Sequential(
        nn.Sequential(nn.Linear(3, 4), nn.ELU()),  # nested; ELU has no closed-form rule
        frozen,
        nn.Softplus(),
        nn.Linear(4, 2, bias=False),
    ).double()


@pytest.mark.parametrize("kind", ["canonical", "trivial", "layer"])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_layered_matches_the_reference_route(kind, curvature):
    model = _model()
    x, y = torch.randn(5, 3, dtype=F64), torch.randn(5, 2, dtype=F64)
    kwargs = dict(partition=kind, curvature=curvature)
    fast = grouped_newton_summary(model, nn.MSELoss(), (x, y), method="layered", **kwargs)
    ref = grouped_newton_summary(model, nn.MSELoss(), (x, y), method="double_backward", **kwargs)
    for a, b in [(fast.gbar, ref.gbar), (fast.hbar, ref.hbar), (fast.d3, ref.d3)]:
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_stages_are_the_leaves_with_their_own_parameters():
    model = _model()
    part = Partition.from_model(model)
    problem = SummaryProblem.build(model, loss_adapter(nn.MSELoss()), part, torch.ones(part.num_params, dtype=F64),
                                   SummaryCurvature.HESSIAN, 2)
    stages = layered_stages(problem)
    assert [type(s.module).__name__ for s in stages] == ["Linear", "ELU", "Linear", "Softplus", "Linear"]
    assert [s.own for s in stages] == [(("weight", 0), ("bias", 1)), (), (), (), (("weight", 2),)]
    assert unsupported_reason(problem) is None


def test_unsupported_reasons():
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)).double()
    part = Partition.from_model(model, "entries")
    problem = SummaryProblem.build(model, loss_adapter(nn.MSELoss()), part, torch.ones(part.num_params, dtype=F64),
                                   SummaryCurvature.HESSIAN, 2)
    assert "part of a parameter tensor" in unsupported_reason(problem)
