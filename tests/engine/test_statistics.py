"""Propagation details of :mod:`curvlab.engine.statistics` that the end-to-end tests do not isolate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.engine.compute import compute
from curvlab.engine.rules import RULES
from curvlab.engine.rules.base import Record
from curvlab.engine.statistics import _drop_null_column, _propagate
from curvlab.errors import UnsupportedLossError
from curvlab.reference import ggn


def _ce_sqrt(logits):
    p = logits.softmax(1)
    return torch.diag_embed(p.sqrt()) - p[:, :, None] * p.sqrt()[:, None, :], p.sqrt()


@pytest.mark.parametrize("scale", [1.0, 40.0], ids=["spread", "near-one-hot"])
def test_drop_null_column_keeps_the_gram(scale):
    torch.manual_seed(0)
    logits = scale * torch.randn(6, 5, dtype=torch.float64)
    sqrt, null = _ce_sqrt(logits)
    reduced = _drop_null_column(sqrt, null)
    assert reduced.shape == (6, 5, 4)
    assert torch.allclose(reduced @ reduced.mT, sqrt @ sqrt.mT, atol=1e-14)
    # the dropped column is the (numerically) zero one: the kept columns carry all of S Sᵀ's trace
    assert torch.allclose(reduced.pow(2).sum((1, 2)), sqrt.pow(2).sum((1, 2)), atol=1e-14)


def _chain(dtype=torch.float64):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)
    x = torch.randn(5, 3, dtype=dtype)
    records, h = [], x
    for i, module in enumerate(model):
        out = module(h).detach()
        records.append(Record(str(i), module, RULES[type(module)], h.detach(), out))
        h = out
    return model, records


def test_inplace_steps_leave_visited_values_intact():
    _, records = _chain()
    start = torch.randn(5, 2, 3, dtype=torch.float64)
    start_copy = start.clone()

    def run(step_inplace):
        seen = []
        _propagate(records, start, lambda r, v: r.rule.backprop(r, v),
                   lambda r, v: seen.append((r.name, v, v.clone())), step_inplace=step_inplace)
        return seen

    plain = run(None)
    inplace = run(lambda r, v: r.rule.backprop_inplace(r, v))
    assert [n for n, *_ in plain] == [n for n, *_ in inplace] == ["4", "2", "0"]
    for (_, live, copy), (_, _, reference) in zip(inplace, plain, strict=True):
        assert torch.equal(live, copy)  # not overwritten after its visit
        assert torch.equal(copy, reference)
    assert torch.equal(start, start_copy)


def test_reduced_rank_results_match_the_reference_ggn():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 5)).double()
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randint(0, 5, (7,))
    result = compute(model, nn.CrossEntropyLoss(), (x, y), ["ggn_block", "diag_ggn", "ggn"], progress=False)
    exact = ggn(model, nn.CrossEntropyLoss(), x, y)
    assert torch.allclose(result["diag_ggn"].diagonal(), exact.diagonal(), atol=1e-12)
    assert torch.allclose(result["ggn"].dense(), exact, atol=1e-12)
    for i, j in ((0, 0), (1, 1)):
        assert torch.allclose(result["ggn_block"].block(i, j), result["ggn"].block(i, j), atol=1e-12)


def test_targets_are_checked_without_a_backward_pass():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2))
    x, bad = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(UnsupportedLossError, match="class indices"):
        compute(model, nn.CrossEntropyLoss(), (x, bad), ["kfac"], progress=False)


def test_drop_null_column_keeps_a_square_root_without_that_null_vector():
    torch.manual_seed(3)
    sqrt, null = _ce_sqrt(torch.randn(4, 3, dtype=torch.float64))
    symmetric = torch.linalg.cholesky(sqrt @ sqrt.mT + torch.eye(3, dtype=torch.float64))  # full rank
    assert _drop_null_column(symmetric, null) is symmetric
