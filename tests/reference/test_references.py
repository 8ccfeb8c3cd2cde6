"""Properties shared by every reference: batch combination, symmetry/PSD, random MLPs, model safety, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from curvlab import reference
from curvlab.errors import (
    MemoryBudgetError,
    NonFiniteError,
    UnsupportedLossError,
    UnsupportedModuleError,
)
from curvlab.guards import memory_budget
from tests.cases import CASES, mlp
from tests.reference import brute_force

MATRICES = {
    "hessian": reference.hessian,
    "ggn": reference.ggn,
    "fisher": reference.fisher,
    "empirical_fisher": reference.empirical_fisher,
    "fisher_mc": lambda *args: reference.fisher_mc(
        *args, mc_samples=4, generator=torch.Generator().manual_seed(0)
    ),
}
PSD = ("ggn", "fisher", "empirical_fisher", "fisher_mc")


@pytest.mark.parametrize("name", MATRICES)
def test_batches_combine_exactly(case, name):
    """One batch of 8 equals uneven batches of 3 and 5 (and a data pair equals inputs, targets)."""
    fn = MATRICES[name]
    model, loss_fn, x, y = case.build(8)
    whole = fn(model, loss_fn, x, y)
    torch.testing.assert_close(fn(model, loss_fn, (x, y)), whole)
    if (
        name == "fisher_mc"
    ):  # draws differ when split; check the combination on the exact Fisher only
        return
    torch.testing.assert_close(fn(model, loss_fn, [(x[:3], y[:3]), (x[3:], y[3:])]), whole)
    torch.testing.assert_close(fn(model, loss_fn, iter([(x[:4], y[:4]), (x[4:], y[4:])])), whole)


@pytest.mark.parametrize("name", MATRICES)
def test_symmetric_and_psd(case, name):
    model, loss_fn, x, y = case.build(5)
    result = MATRICES[name](model, loss_fn, x, y)
    num_params = sum(p.numel() for p in model.parameters())
    assert result.shape == (num_params, num_params) and result.dtype == torch.float64
    assert torch.equal(result, result.T)
    if name in PSD:
        eigenvalues = torch.linalg.eigvalsh(result)
        assert eigenvalues.min() >= -1e-10 * eigenvalues.abs().max()


@settings(max_examples=10, deadline=None)
@given(
    widths=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    activation=st.sampled_from([nn.Tanh, nn.Sigmoid, nn.ReLU]),
    loss=st.sampled_from(["mse", "ce", "bce-sum"]),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_random_mlps(widths, activation, loss, batch, seed):
    torch.manual_seed(seed)
    model = mlp(activation, tuple(widths))().double()
    x = torch.randn(batch, widths[0], dtype=torch.float64)
    if loss == "ce":
        loss_fn, y = nn.CrossEntropyLoss(), torch.randint(0, widths[-1], (batch,))
    elif loss == "mse":
        loss_fn, y = nn.MSELoss(), torch.randn(batch, widths[-1], dtype=torch.float64)
    else:
        loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
        y = torch.randint(0, 2, (batch, widths[-1])).double()
    torch.testing.assert_close(
        reference.hessian(model, loss_fn, x, y), brute_force.hessian(model, loss_fn, x, y)
    )
    ggn = reference.ggn(model, loss_fn, x, y)
    torch.testing.assert_close(ggn, brute_force.ggn(model, loss_fn, x, y))
    torch.testing.assert_close(reference.fisher(model, loss_fn, x, y), ggn)
    torch.testing.assert_close(
        reference.empirical_fisher(model, loss_fn, x, y),
        brute_force.empirical_fisher(model, loss_fn, x, y),
    )


# ------------------------------------------------------------------ the model is left alone
@pytest.mark.parametrize("name", MATRICES)
@pytest.mark.parametrize("training", [True, False])
def test_model_is_not_modified(name, training):
    model, loss_fn, x, y = CASES[0].build(4)
    model.train(training)
    before = copy.deepcopy(model.state_dict())
    MATRICES[name](model, loss_fn, x, y)
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_frozen_parameters_are_constants():
    model, loss_fn, x, y = CASES[1].build(5)
    full = reference.hessian(model, loss_fn, x, y)
    model[0].weight.requires_grad_(False)
    kept = torch.arange(model[0].weight.numel(), full.shape[0])
    for name in ("hessian", "ggn"):
        torch.testing.assert_close(
            MATRICES[name](model, loss_fn, x, y),
            full[kept][:, kept] if name == "hessian" else brute_force.ggn(model, loss_fn, x, y),
        )


def test_batchnorm_and_dropout_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)
    )
    model = model.double().eval()
    model[1].running_mean.normal_()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    loss_fn = nn.CrossEntropyLoss()
    torch.testing.assert_close(
        reference.hessian(model, loss_fn, x, y), brute_force.hessian(model, loss_fn, x, y)
    )
    torch.testing.assert_close(
        reference.ggn(model, loss_fn, x, y), brute_force.ggn(model, loss_fn, x, y)
    )
    with pytest.raises(UnsupportedModuleError, match=r"3 \(Dropout\) in training mode.*random"):
        reference.ggn(model.train(), loss_fn, x, y)


def test_float32_works():
    model, loss_fn, x, y = CASES[0].build(4)
    model, x = model.float(), x.float()
    result = reference.ggn(model, loss_fn, x, y)
    assert result.dtype == torch.float32
    torch.testing.assert_close(
        result.double(), reference.ggn(model.double(), loss_fn, x.double(), y), rtol=1e-4, atol=1e-6
    )


# ------------------------------------------------------------------ errors name their culprit
@pytest.mark.parametrize("name", MATRICES)
@pytest.mark.parametrize(
    "loss_fn, culprit",
    [
        (nn.L1Loss(), "L1Loss"),
        (nn.MSELoss(reduction="none"), "reduction='none'"),
        (nn.CrossEntropyLoss(weight=torch.ones(3, dtype=torch.float64)), "weight"),
    ],
)
def test_unsupported_losses(name, loss_fn, culprit):
    model, _, x, y = CASES[0].build(3)
    with pytest.raises(UnsupportedLossError, match=culprit):
        MATRICES[name](model, loss_fn, x, y)


@pytest.mark.parametrize("name", MATRICES)
def test_used_ignore_index_is_refused(name):
    model, loss_fn, x, y = CASES[0].build(3)
    y[1] = -100
    with pytest.raises(UnsupportedLossError, match="ignore_index=-100"):
        MATRICES[name](model, loss_fn, x, y)


@pytest.mark.parametrize("name", MATRICES)
def test_bce_pos_weight_is_refused(name):
    model, _, x, y = CASES[2].build(3)
    with pytest.raises(UnsupportedLossError, match="pos_weight"):
        MATRICES[name](model, nn.BCEWithLogitsLoss(pos_weight=torch.ones(3)), x, y)


@pytest.mark.parametrize("name", MATRICES)
def test_memory_budget_is_checked_before_allocating(name):
    model, loss_fn, x, y = CASES[0].build(3)
    with memory_budget(100), pytest.raises(MemoryBudgetError, match=name):
        MATRICES[name](model, loss_fn, x, y)


@pytest.mark.parametrize("name", ["ggn", "fisher", "fisher_mc", "empirical_fisher"])
def test_per_sample_intermediates_are_budgeted(name):
    model, loss_fn, x, y = CASES[0].build(100)  # P = 43: [P, P] fits, [N·C, P] or [N, P] does not
    with (
        memory_budget(43 * 43 * 8),
        pytest.raises(MemoryBudgetError, match=f"{name}: (Jacobian|per-sample)"),
    ):
        MATRICES[name](model, loss_fn, x, y)


@pytest.mark.parametrize("name", MATRICES)
def test_non_finite_results_are_named(name):
    model, loss_fn, x, y = CASES[0].build(3)
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=name):
        MATRICES[name](model, loss_fn, x, y)


@pytest.mark.parametrize("name", MATRICES)
def test_argument_errors(name):
    fn = MATRICES[name]
    model, loss_fn, x, y = CASES[0].build(3)
    with pytest.raises(TypeError, match="targets are missing"):
        fn(model, loss_fn, x)
    with pytest.raises(TypeError, match="inputs tensor"):
        fn(model, loss_fn, (x, y), y)
    with pytest.raises(ValueError, match="no batches"):
        fn(model, loss_fn, [])
    with pytest.raises(TypeError, match="batch 1"):
        fn(model, loss_fn, [(x, y), x])
    with pytest.raises(UnsupportedModuleError, match="no trainable parameters"):
        fn(copy.deepcopy(model).requires_grad_(False), loss_fn, x, y)
