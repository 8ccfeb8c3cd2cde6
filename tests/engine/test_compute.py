"""Every quantity on every module type against the dense float64 references of ``curvlab.reference``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab import reference
from curvlab.engine import compute
from tests.cases import Case, _binary
from tests.engine.engine_cases import ENGINE_CASES, layer_mask

EXACT = [
    "hessian_block", "ggn_block", "empirical_fisher_block", "fisher_mc_block",
    "hessian", "ggn", "empirical_fisher", "fisher_mc",
    "diag_hessian", "diag_ggn", "diag_empirical_fisher", "diag_ggn_mc",
]


def _references(model, loss_fn, x, y, seed, mc_samples):
    gen = torch.Generator().manual_seed(seed)
    return {
        "hessian": reference.hessian(model, loss_fn, x, y),
        "ggn": reference.ggn(model, loss_fn, x, y),
        "empirical_fisher": reference.empirical_fisher(model, loss_fn, x, y),
        "fisher_mc": reference.fisher_mc(model, loss_fn, x, y, mc_samples=mc_samples, generator=gen),
    }


def _expected(name: str, refs, mask):
    base = name.removesuffix("_block").removeprefix("diag_")
    base = {"ggn_mc": "fisher_mc"}.get(base, base)
    full = refs[base]
    if name.endswith("_block"):
        return torch.where(mask, full, torch.zeros_like(full))
    if name.startswith("diag_"):
        return full.diagonal()
    return full


@pytest.mark.parametrize("case", ENGINE_CASES, ids=lambda c: c.name)
def test_quantities_match_reference(case):
    model, loss_fn, x, y = case.build(batch_size=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # two MC draws per batch; the engine and the reference draw in the same order from the same seed
    result = compute(model, loss_fn, (x, y), EXACT, mc_samples=2, generator=torch.Generator().manual_seed(7),
                     progress=False)
    refs = _references(model, loss_fn, x, y, seed=7, mc_samples=2)
    mask = layer_mask(model)
    for name in EXACT:
        got = result[name].diagonal() if name.startswith("diag_") else result[name].dense()
        want = _expected(name, refs, mask)
        scale = want.abs().max().clamp_min(1e-12)
        assert torch.allclose(got, want, atol=1e-10 * scale, rtol=1e-9), (name, (got - want).abs().max())
    for k, v in model.state_dict().items():  # the model is untouched
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_partition_labels_diagonal_and_square_root():
    model, loss_fn, x, y = ENGINE_CASES[0].build()
    result = compute(model, loss_fn, (x, y), ["diag_ggn", "ggn", "ggn_block"], partition="canonical",
                     progress=False)
    assert result["diag_ggn"].partition.kind == "canonical"
    assert result["ggn"].partition.kind == "canonical"
    assert result["ggn_block"].partition.kind == "layer"
    full = reference.ggn(model, loss_fn, x, y)
    assert torch.allclose(result["ggn"].block("2.weight", "0.bias"), full[25:40][:, 20:25])


DEEP_TANH = Case("mlp-3-hidden-mixed-bce", lambda: nn.Sequential(
    nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.ELU(), nn.Linear(4, 2)),
    nn.BCEWithLogitsLoss, _binary((3,), 2))


@pytest.mark.parametrize("case", [*ENGINE_CASES, DEEP_TANH], ids=lambda c: c.name)
def test_diag_hessian_alone_uses_the_factored_route(case):
    """Without ``hessian_block`` the diagonal comes from weighted factors, not per-sample Hessians."""
    model, loss_fn, x, y = case.build(batch_size=3)
    got = compute(model, loss_fn, (x, y), "diag_hessian", progress=False)["diag_hessian"].diagonal()
    want = reference.hessian(model, loss_fn, x, y).diagonal()
    assert torch.allclose(got, want, atol=1e-10 * want.abs().max(), rtol=1e-9)


def test_frozen_parameters_are_constants():
    model, loss_fn, x, y = ENGINE_CASES[0].build()
    model[0].bias.requires_grad_(False)
    model[2].requires_grad_(False)
    result = compute(model, loss_fn, (x, y), ["ggn", "diag_hessian", "kflr", "ggn_block"], progress=False)
    ggn = reference.ggn(model, loss_fn, x, y)
    assert torch.allclose(result["ggn"].dense(), ggn)
    assert torch.allclose(result["diag_hessian"].diagonal(), reference.hessian(model, loss_fn, x, y).diagonal())
    assert torch.allclose(result["ggn_block"].dense(), ggn)  # a single trainable layer
    assert result["kflr"].layers["0"].A.shape == (4, 4)  # no bias column
