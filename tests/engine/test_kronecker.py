"""Kronecker quantities (kfac, kflr, kfra, ekfac) in the regimes where they must be exact or ordered."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab import reference
from curvlab.engine import compute
from curvlab.repr import KroneckerFactors
from tests.engine.engine_cases import DEEP_LINEAR, ENGINE_CASES, MLP_CASES, layer_mask


def _ggn_blocks(model, loss_fn, x, y):
    full = reference.ggn(model, loss_fn, x, y)
    return torch.where(layer_mask(model), full, torch.zeros_like(full))


@pytest.mark.parametrize("case", MLP_CASES, ids=lambda c: c.name)
def test_kflr_and_kfra_exact_for_a_single_sample(case):
    model, loss_fn, x, y = case.build(batch_size=1)
    result = compute(model, loss_fn, (x, y), ["kflr", "kfra", "ekfac"], progress=False)
    exact = _ggn_blocks(model, loss_fn, x, y)
    for name in ("kflr", "kfra", "ekfac"):
        assert torch.allclose(result[name].dense(), exact, atol=1e-10, rtol=1e-9), name


def test_kflr_and_kfra_exact_for_deep_linear_networks_with_mse():
    model, loss_fn, x, y = DEEP_LINEAR.build(batch_size=6)
    result = compute(model, loss_fn, (x, y), ["kflr", "kfra"], progress=False)
    exact = _ggn_blocks(model, loss_fn, x, y)
    for name in ("kflr", "kfra"):
        assert torch.allclose(result[name].dense(), exact, atol=1e-10, rtol=1e-9), name


def test_kronecker_layers_use_augmented_factors():
    model, loss_fn, x, y = MLP_CASES[0].build(batch_size=6)
    result = compute(model, loss_fn, (x, y), ["kflr"], progress=False)
    layer = result["kflr"].layers["0"]
    assert isinstance(layer, KroneckerFactors) and layer.bias
    x_aug = torch.cat([x, torch.ones(6, 1, dtype=x.dtype)], 1)
    assert torch.allclose(layer.A, x_aug.T @ x_aug / 6)


def test_kfac_approaches_kflr_with_many_samples():
    model, loss_fn, x, y = MLP_CASES[0].build(batch_size=4)
    gen = torch.Generator().manual_seed(0)
    result = compute(model, loss_fn, (x, y), ["kfac", "kflr"], mc_samples=20000, generator=gen, progress=False)
    kfac, kflr = result["kfac"].dense(), result["kflr"].dense()
    assert torch.linalg.norm(kfac - kflr) < 0.03 * torch.linalg.norm(kflr)
    few = compute(model, loss_fn, (x, y), ["kfac"], mc_samples=1, generator=gen, progress=False)["kfac"].dense()
    assert torch.linalg.norm(few - kflr) > torch.linalg.norm(kfac - kflr)


@pytest.mark.parametrize("case", ENGINE_CASES, ids=lambda c: c.name)
def test_ekfac_never_farther_from_the_exact_ggn_than_kflr(case):
    model, loss_fn, x, y = case.build(batch_size=5)
    result = compute(model, loss_fn, (x, y), ["kflr", "ekfac", "ggn_block"], progress=False)
    exact = result["ggn_block"]
    for group in exact.partition.group_names:
        want = exact.block(group, group)
        err_kflr = torch.linalg.norm(result["kflr"].block(group, group) - want)
        err_ekfac = torch.linalg.norm(result["ekfac"].block(group, group) - want)
        assert err_ekfac <= err_kflr * (1 + 1e-9) + 1e-12, (group, err_ekfac, err_kflr)
    # the refitted eigenvalues are the exact GGN's Rayleigh quotients: same trace as the exact block
    assert torch.allclose(result["ekfac"].trace(), exact.trace())


@pytest.mark.parametrize("case", ENGINE_CASES, ids=lambda c: c.name)
def test_single_sample_regime_on_every_module_type(case):
    """At N = 1: KFRA equals KFLR everywhere (its batch averages are exact), and Linear layers and the
    dense blocks of layers without Kronecker rule (BatchNorm) equal the exact blocks of their source,
    KFAC with the same MC draw as ``fisher_mc_block`` (both come from one draw per batch)."""
    model, loss_fn, x, y = case.build(batch_size=1)
    gen = torch.Generator().manual_seed(3)
    result = compute(model, loss_fn, (x, y), ["kfra", "kflr", "ggn_block", "kfac", "fisher_mc_block"],
                     mc_samples=3, generator=gen, progress=False)
    assert torch.allclose(result["kfra"].dense(), result["kflr"].dense(), atol=1e-12)
    modules = dict(model.named_modules())
    for group in result["ggn_block"].partition.group_names:
        if isinstance(modules[group], (nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
            for approx, exact in (("kflr", "ggn_block"), ("kfac", "fisher_mc_block")):
                want = result[exact].block(group, group)
                assert torch.allclose(result[approx].block(group, group), want, atol=1e-12), (approx, group)
