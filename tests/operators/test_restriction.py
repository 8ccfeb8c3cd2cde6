"""Restriction of operators to groups (square sub-blocks) and off-diagonal block views."""

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from curvlab import reference
from curvlab.operators import GGNOperator, HessianOperator, RestrictedOperator, sub_partition
from tests.cases import CASES


@pytest.fixture(scope="module")
def hessian_case():
    model, loss_fn, x, y = CASES[3].build(
        batch_size=6
    )  # mlp-tanh-mse-sum 3-4-4-2: P = 46, 6 groups
    op = HessianOperator(model, loss_fn, (x, y))
    return op, reference.hessian(model, loss_fn, x, y)


def test_sub_partition_keeps_names_and_order():
    op, _ = _shared_hessian()
    sub, idx = sub_partition(op.partition, ["4.bias", "0.weight"])
    assert sub.group_names == ("0.weight", "4.bias")  # parent order
    assert idx.tolist() == list(range(12)) + [44, 45]
    assert [p.name for p in sub.params] == ["0.weight", "4.bias"] and sub.params[1].offset == 12
    with pytest.raises(ValueError, match="named twice"):
        sub_partition(op.partition, ["0.bias", "0.bias"])


def test_restriction_equals_sub_blocks(hessian_case):
    op, dense = hessian_case
    part = op.partition
    for groups in (["2.weight"], ["0.weight", "4.bias"], ["4.bias", "0.weight"]):
        sub = op.restrict(groups)
        idx = part.restrict(groups)
        assert isinstance(sub, RestrictedOperator) and sub.shape == (idx.numel(), idx.numel())
        assert set(sub.partition.group_names) == set(groups)
        torch.testing.assert_close(sub.dense(), dense[idx][:, idx], rtol=1e-9, atol=1e-11)
    nested = op.restrict(["0.weight", "2.weight", "2.bias"]).restrict(["2.bias"])
    idx = part.group("2.bias").indices
    torch.testing.assert_close(nested.dense(), dense[idx][:, idx], rtol=1e-9, atol=1e-11)


def test_restriction_of_entries_partition():
    model, loss_fn, x, y = CASES[0].build()
    op = GGNOperator(model, loss_fn, (x, y), partition="entries")
    names = ["0.weight[3]", "2.bias[1]", "0.weight[0]"]
    sub = op.restrict(names)
    idx = op.partition.restrict(names)
    torch.testing.assert_close(
        sub.dense(), reference.ggn(model, loss_fn, x, y)[idx][:, idx], rtol=1e-9, atol=1e-11
    )
    assert sub.partition.num_params == 3


def test_unknown_group_is_named(hessian_case):
    op, _ = hessian_case
    with pytest.raises(KeyError, match="9.weight"):
        op.restrict(["9.weight"])


def test_block_operator_equals_off_diagonal_block(hessian_case):
    op, dense = hessian_case
    rows, cols = op.partition.restrict(["4.weight"]), op.partition.restrict(["0.weight", "0.bias"])
    blk = op.block_operator("4.weight", ["0.weight", "0.bias"])
    torch.testing.assert_close(blk.dense(), dense[rows][:, cols], rtol=1e-9, atol=1e-11)
    w = torch.randn(rows.numel(), dtype=torch.float64)
    torch.testing.assert_close(blk.T @ w, dense[cols][:, rows] @ w, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(
        blk.to_scipy().rmatvec(w.numpy()), (dense[cols][:, rows] @ w).numpy(), rtol=1e-9
    )


@settings(max_examples=12, deadline=None)
@given(
    st.lists(
        st.sampled_from(["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]),
        min_size=1,
        max_size=4,
        unique=True,
    )
)
def test_any_restriction_is_the_sub_block(groups):
    op, dense = _shared_hessian()
    idx = op.partition.restrict(groups)
    torch.testing.assert_close(
        op.restrict(groups).dense(), dense[idx][:, idx], rtol=1e-9, atol=1e-11
    )


@functools.cache
def _shared_hessian():
    model, loss_fn, x, y = CASES[3].build(batch_size=4)
    return HessianOperator(model, loss_fn, (x, y)), reference.hessian(model, loss_fn, x, y)
