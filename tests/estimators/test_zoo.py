"""Structured curvature on every zoo model, in float64, against curvlab.reference (issue 10).

Blocks and diagonals equal those of the exact GGN / Hessian; the cross-layer GGN is exact (the batch
function for train-mode BatchNorm); KFLR equals the exact GGN block at one sample wherever a layer's
weight is used at one position.
"""

from __future__ import annotations

import json

import pytest
import torch

from curvlab import compute, reference
from curvlab.collector import Collector
from curvlab.engine.result import model_partition
from curvlab.repr import GroupedKroneckerFactors
from tests.zoo import ZOO

BATCH = 3


def _layer_mask(model, size):
    mask = torch.zeros(size, size, dtype=torch.bool)
    for group in model_partition(model, "layer").groups:
        idx = group.indices
        mask[idx[:, None], idx[None, :]] = True
    return mask


def _close(actual, expected):
    scale = expected.abs().max().clamp_min(1e-300)
    torch.testing.assert_close(actual / scale, expected / scale, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", ZOO, ids=[c.name for c in ZOO])
def test_ggn_blocks_diagonals_and_full_factor_are_exact(case):
    model, loss_fn, x, y = case.build(BATCH)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = compute(model, loss_fn, (x, y), ["ggn_block", "diag_ggn", "ggn", "empirical_fisher_block"],
                     progress=False, route="collector")
    exact = reference.ggn(model, loss_fn, x, y)
    mask = _layer_mask(model, exact.shape[0])
    _close(result["ggn"].dense(), exact)
    _close(result["ggn_block"].dense(), torch.where(mask, exact, 0))
    _close(result["diag_ggn"].diagonal(), exact.diagonal())
    ef = reference.empirical_fisher(model, loss_fn, x, y)
    _close(result["empirical_fisher_block"].dense(), torch.where(mask, ef, 0))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # buffers untouched
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


FAST = [c for c in ZOO if c.name in (
    "resnet-torchvision-train", "layernorm-mlp-ce", "gru-ce", "functional-bce", "tokenwise-linear-mse",
    "control-cnn-mse", "gpt-token-ce",
)]


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_hessian_blocks_and_diagonal_are_exact(case):
    model, loss_fn, x, y = case.build(2)
    result = compute(model, loss_fn, (x, y), ["hessian_block", "diag_hessian"], progress=False, route="collector")
    exact = reference.hessian(model, loss_fn, x, y)
    _close(result["hessian_block"].dense(), torch.where(_layer_mask(model, exact.shape[0]), exact, 0))
    _close(result["diag_hessian"].diagonal(), exact.diagonal())


def _single_position_layers(model, x):
    """Layers whose every call uses the weight at one position (S = 1)."""
    with Collector(model) as col:
        col.forward(x)
        return {name for name, calls in col.calls.items() if all(X.shape[1] == 1 for X in calls.inputs)}


# independent samples and at least one layer used at one position (token-wise models: see test_weight_sharing)
INDEPENDENT = [c for c in ZOO if not c.name.endswith("-train") and c.name not in ("gpt-token-ce", "tokenwise-linear-mse")]


@pytest.mark.parametrize("case", INDEPENDENT, ids=[c.name for c in INDEPENDENT])
def test_kflr_and_ekfac_equal_the_ggn_block_at_one_sample(case):
    model, loss_fn, x, y = case.build(1)
    result = compute(model, loss_fn, (x, y), ["kflr", "ekfac", "ggn_block"], progress=False, route="collector")
    single = _single_position_layers(model, x)
    structure = json.loads(json.loads(result.attrs["config"])["structure"])
    fallbacks = {key.split("/", 1)[1] for key in structure.get("fallbacks", {})}
    checked = 0
    for layer in model_partition(model, "layer").group_names:
        if layer in single or layer in fallbacks:
            exact = result["ggn_block"].block(layer, layer)
            for q in ("kflr", "ekfac"):
                rep = result[q].layers[layer]
                if isinstance(rep, GroupedKroneckerFactors):  # exact within each group (no cross-group terms)
                    for j, factors in enumerate(rep.groups):
                        idx = rep._indices(j)
                        _close(factors.dense(), exact[idx[:, None], idx[None, :]])
                else:
                    _close(result[q].block(layer, layer), exact)
            checked += 1
    assert checked > 0
