"""Branching models through torch.fx: GGN and Fisher quantities on a residual model, errors otherwise."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from curvlab import reference
from curvlab.engine import CurvatureHooks, compute
from curvlab.errors import UnsupportedModuleError
from tests.cases import CASES
from tests.engine.engine_cases import layer_mask

RESIDUAL = next(c for c in CASES if c.name == "residual-ce")
GRAPH_QUANTITIES = ["ggn", "ggn_block", "diag_ggn", "empirical_fisher", "diag_empirical_fisher", "fisher_mc",
                    "hessian"]


class TwoBranches(nn.Module):
    """Two paths from one input, joined by an addition, then a shared head (and a frozen branch)."""

    def __init__(self):
        super().__init__()
        self.left = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid())
        self.right = nn.Sequential(nn.Linear(3, 4), nn.ELU())
        self.head = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))

    def forward(self, x):
        h = self.left(x) + self.right(x)
        return self.head(h + self.head[0](h))  # head.0 would be called twice: not supported


class Joined(TwoBranches):
    def forward(self, x):
        h = self.left(x) + self.right(x)
        return self.head(h + h)


@pytest.mark.parametrize("build", [RESIDUAL.build, lambda batch_size: _joined(batch_size)], ids=["residual", "joined"])
def test_graph_models_match_the_references(build):
    model, loss_fn, x, y = build(batch_size=4)
    gen = torch.Generator().manual_seed(5)
    result = compute(model, loss_fn, (x, y), GRAPH_QUANTITIES, mc_samples=2, generator=gen, progress=False)
    ggn = reference.ggn(model, loss_fn, x, y)
    mask = layer_mask(model)
    checks = {
        "ggn": ggn,
        "ggn_block": torch.where(mask, ggn, torch.zeros_like(ggn)),
        "diag_ggn": ggn.diagonal(),
        "empirical_fisher": reference.empirical_fisher(model, loss_fn, x, y),
        "diag_empirical_fisher": reference.empirical_fisher(model, loss_fn, x, y).diagonal(),
        "fisher_mc": reference.fisher_mc(model, loss_fn, x, y, mc_samples=2,
                                         generator=torch.Generator().manual_seed(5)),
        "hessian": reference.hessian(model, loss_fn, x, y),
    }
    for name, want in checks.items():
        got = result[name].diagonal() if name.startswith("diag") else result[name].dense()
        assert torch.allclose(got, want, atol=1e-10 * want.abs().max(), rtol=1e-9), name


def _joined(batch_size):
    torch.manual_seed(0)
    model = Joined().double()
    return model, nn.MSELoss(), torch.randn(batch_size, 3, dtype=torch.float64), torch.randn(
        batch_size, 2, dtype=torch.float64)


def test_kronecker_on_a_residual_model_is_exact_at_one_sample():
    model, loss_fn, x, y = RESIDUAL.build(batch_size=1)
    result = compute(model, loss_fn, (x, y), ["kflr", "ekfac", "ggn_block"], progress=False)
    assert torch.allclose(result["kflr"].dense(), result["ggn_block"].dense(), atol=1e-12)
    assert torch.allclose(result["ekfac"].dense(), result["ggn_block"].dense(), atol=1e-12)


def test_chain_only_quantities_and_unsupported_graphs_are_refused():
    model, loss_fn, x, y = RESIDUAL.build()
    with pytest.raises(UnsupportedModuleError, match=r"hessian_block, kfra need a chain.*node 'add'"):
        CurvatureHooks(model, loss_fn, ["ggn", "hessian_block", "kfra"])
    twice = TwoBranches().double()
    data = (x[:, :3], torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(UnsupportedModuleError, match="called twice"):
        compute(twice, nn.MSELoss(), data, "ggn", progress=False, route="rules")
    # the default route falls back to the collector, which handles reused modules exactly
    from curvlab.reference import ggn

    result = compute(twice, nn.MSELoss(), data, "ggn", progress=False)
    assert torch.allclose(result["ggn"].dense(), ggn(twice, nn.MSELoss(), *data))
    assert json.loads(result.attrs["config"])["route"] == "collector"
