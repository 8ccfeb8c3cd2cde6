"""Clear errors instead of raw ones (issue 11, case 11): empty batches, targets checked before the loss
sees them, cross-entropy target dtypes refused alike on every path, BCE targets outside [0, 1], and a
user's full backward hook."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import curvlab
from curvlab.errors import UnsupportedLossError, UnsupportedModuleError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _batch(n: int = 5):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, dtype=torch.float64, generator=gen), torch.randint(0, 2, (n,), generator=gen)


CE = nn.CrossEntropyLoss()

# each path a user can take with one (model, loss, data); P = 26
PATHS = {
    "compute-ggn": lambda m, loss, x, y: curvlab.compute(m, loss, (x, y), ["ggn"], progress=False),
    "compute-kflr": lambda m, loss, x, y: curvlab.compute(m, loss, (x, y), ["kflr"], progress=False),
    "compute-empirical-fisher": lambda m, loss, x, y: curvlab.compute(m, loss, (x, y), ["empirical_fisher"],
                                                                      progress=False),
    "compute-diag-hessian": lambda m, loss, x, y: curvlab.compute(m, loss, (x, y), ["diag_hessian"], progress=False),
    "reference-hessian": lambda m, loss, x, y: curvlab.reference.hessian(m, loss, x, y),
    "reference-ggn": lambda m, loss, x, y: curvlab.reference.ggn(m, loss, x, y),
    "summary": lambda m, loss, x, y: curvlab.grouped_newton_summary(m, loss, (x, y)),
    "hessian-operator": lambda m, loss, x, y: curvlab.HessianOperator(m, loss, (x, y)) @ torch.ones(26).double(),
}


@pytest.mark.parametrize("path", PATHS)
def test_empty_batch_is_named(path):
    """Before: IndexError / ZeroDivisionError, or 'hessian contains 2809 NaN' from reference.hessian."""
    x, y = _batch(0)
    with pytest.raises(ValueError, match=r"batch is empty"):
        PATHS[path](_mlp(), CE, x, y)


def test_empty_batch_among_batches_is_named_by_index():
    x, y = _batch()
    with pytest.raises(ValueError, match=r"batch 1 is empty"):
        curvlab.compute(_mlp(), CE, [(x, y), (x[:0], y[:0])], ["diag_ggn"], progress=False)


def test_summary_checks_the_targets_before_calling_the_loss(monkeypatch):
    """Before: the default direction (the gradient) called the loss on unchecked targets, which failed raw."""
    calls = []
    forward = nn.CrossEntropyLoss.forward
    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", lambda self, *a: calls.append(1) or forward(self, *a))
    x, y = _batch()
    with pytest.raises(UnsupportedLossError, match=r"class indices must lie in \[0, 2\), got \d\.\.\d"):
        curvlab.grouped_newton_summary(_mlp(), CE, (x, y + 5))
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("path", PATHS)
def test_cross_entropy_target_dtypes_are_refused_alike_on_every_path(path, dtype):
    """Before: int32/bool targets worked in the GGN paths but failed raw (RuntimeError) in the gradient paths
    (uint8 in the operators' one_hot)."""
    x, y = _batch()
    with pytest.raises(UnsupportedLossError, match=rf"must be int64 \(torch.long\), got {dtype}: pass targets.long\(\)"):
        PATHS[path](_mlp(), CE, x, y.to(dtype))


@pytest.mark.parametrize("path", PATHS)
def test_cross_entropy_int64_targets_work_on_every_path(path):
    x, y = _batch()
    PATHS[path](_mlp(), CE, x, y)


@pytest.mark.parametrize("bad", [2.0, -0.5, float("nan")])
@pytest.mark.parametrize("path", ["compute-ggn", "compute-diag-hessian", "reference-hessian", "summary"])
def test_bce_targets_outside_unit_interval_are_refused(path, bad):
    """Before: accepted (a silently meaningless curvature)."""
    x, _ = _batch()
    y = torch.full((5, 2), 0.5, dtype=torch.float64)
    y[2, 1] = bad
    with pytest.raises(UnsupportedLossError, match=r"targets must be probabilities in \[0, 1\]"):
        PATHS[path](_mlp(), nn.BCEWithLogitsLoss(), x, y)


@pytest.mark.parametrize("where", ["layer", "model"])
@pytest.mark.parametrize("route", ["auto", "rules", "collector"])
def test_full_backward_hook_is_named_by_compute(route, where):
    """Before: 'the input of module '1' is not the output of the module before it'. After: every route names
    the module and the hook, and the suggested fix (removing it) works."""
    model = _mlp()
    x, y = _batch()
    handle = (model[1] if where == "layer" else model).register_full_backward_hook(lambda *args: None)
    name = "'1' (Tanh)" if where == "layer" else "'the model' (Sequential)"
    with pytest.raises(UnsupportedModuleError, match=rf"module {re.escape(name)} has a full backward hook.*handle"):
        curvlab.compute(model, CE, (x, y), ["ggn", "kflr"], route=route, progress=False)
    handle.remove()
    curvlab.compute(model, CE, (x, y), ["ggn", "kflr"], route=route, progress=False)


@pytest.mark.parametrize("where", ["layer", "model"])
def test_full_backward_hook_is_named_by_the_summary(where):
    """Before: torch.func's 'autograd.Function ... must override the setup_context staticmethod'."""
    model = _mlp()
    handle = (model[1] if where == "layer" else model).register_full_backward_hook(lambda *args: None)
    x, y = _batch()
    name = "'1' (Tanh)" if where == "layer" else "'the model' (Sequential)"
    with pytest.raises(UnsupportedModuleError, match=rf"module {re.escape(name)} has a full backward hook.*handle"):
        curvlab.grouped_newton_summary(model, CE, (x, y))
    handle.remove()
    curvlab.grouped_newton_summary(model, CE, (x, y))  # the suggested fix works

