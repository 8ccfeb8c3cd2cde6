"""The operator interface shared by all operators: scipy, dense, diagonal, solve, export, inputs, vmap."""

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from curvlab import reference
from curvlab.errors import (
    CurvlabError,
    MemoryBudgetError,
    NonFiniteError,
    UnsupportedLossError,
    UnsupportedModuleError,
)
from curvlab.guards import memory_budget
from curvlab.operators import (
    ComplexStepHessianOperator,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
)
from tests.cases import CASES


@pytest.fixture(scope="module")
def hessian_case():
    # mlp-tanh-mse-sum 3-4-4-2: P = 46, 6 groups
    model, loss_fn, x, y = CASES[3].build(batch_size=6)
    op = HessianOperator(model, loss_fn, (x, y))
    return op, reference.hessian(model, loss_fn, x, y)


def test_scipy_wrapper(hessian_case):
    op, dense = hessian_case
    lin = op.to_scipy()
    v = np.random.default_rng(0).standard_normal((46, 3))
    np.testing.assert_allclose(lin.matvec(v[:, 0]), dense.numpy() @ v[:, 0], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(lin.matmat(v), dense.numpy() @ v, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(lin @ v[:, 1], dense.numpy() @ v[:, 1], rtol=1e-9, atol=1e-11)


def test_dense_diagonal_block_trace(hessian_case):
    op, dense = hessian_case
    torch.testing.assert_close(op.dense(), dense, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op.diagonal(), dense.diagonal(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op.trace(), dense.trace(), rtol=1e-9, atol=1e-11)
    rows, cols = op.partition.group("2.weight").indices, op.partition.group("0.bias").indices
    torch.testing.assert_close(
        op.block("2.weight", "0.bias"), dense[rows][:, cols], rtol=1e-9, atol=1e-11
    )


def test_solve_by_cg_equals_dense_solve():
    model, loss_fn, x, y = CASES[0].build(batch_size=8)
    op = GGNOperator(model, loss_fn, (x, y))
    b = torch.randn(op.shape[0], 2, dtype=torch.float64)
    expected = torch.linalg.solve(
        reference.ggn(model, loss_fn, x, y) + 0.1 * torch.eye(op.shape[0], dtype=torch.float64), b
    )
    torch.testing.assert_close(op.solve(b, damping=0.1), expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(op.solve(b[:, 0], damping=0.1), expected[:, 0], rtol=1e-6, atol=1e-8)


def test_bad_vector_and_memory_budget(hessian_case):
    op, _ = hessian_case
    with pytest.raises(ValueError, match="P=46"):
        op @ torch.ones(45, dtype=torch.float64)
    with memory_budget(1000), pytest.raises(MemoryBudgetError, match="hessian"):
        op.dense()


def test_export_is_a_dense_curvature(hessian_case):
    op, dense = hessian_case
    ds = op.to_xarray()
    assert (
        isinstance(ds, xr.Dataset)
        and ds.attrs["curvlab_kind"] == "dense"
        and ds.attrs["exported_from"] == "operator"
    )
    from curvlab.repr import DenseCurvature

    torch.testing.assert_close(DenseCurvature.from_xarray(ds).dense(), dense, rtol=1e-9, atol=1e-11)
    with pytest.raises(CurvlabError, match="cannot be rebuilt"):
        HessianOperator.from_xarray(ds)


def test_dropout_in_training_mode_is_refused_and_model_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.2), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModuleError, match=r"1 \(Dropout\) in training mode.*model.eval\(\)"):
        GGNOperator(model, nn.MSELoss(), (x, y))
    op = GGNOperator(model.eval(), nn.MSELoss(), (x, y))  # the suggested fix works
    op @ torch.ones(op.shape[0], dtype=torch.float64)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "make",
    [
        lambda m, l, d: HessianOperator(m, l, d),
        lambda m, l, d: HessianOperator(m, l, d, method="forward_over_reverse"),
        lambda m, l, d: GGNOperator(m, l, d),
    ],
    ids=["hessian-db", "hessian-for", "ggn"],
)
def test_products_under_no_grad(make):
    model, loss_fn, x, y = CASES[0].build()
    expected = (
        reference.hessian if "Hessian" in repr(make(model, loss_fn, (x, y))) else reference.ggn
    )
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with torch.no_grad():
        op = make(model, loss_fn, (x, y))
        result = op @ v
    torch.testing.assert_close(result, expected(model, loss_fn, x, y) @ v, rtol=1e-9, atol=1e-11)


def test_float32_products_and_provenance():
    model, loss_fn, x, y = CASES[0].build()
    dense = reference.ggn(model, loss_fn, x, y)
    model32 = model.float()
    op = GGNOperator(model32, loss_fn, (x.float(), y))
    v = torch.randn(op.shape[0], dtype=torch.float64)
    result = op @ v
    assert op.dtype == torch.float32 and result.dtype == torch.float32
    torch.testing.assert_close(result.double(), dense @ v, rtol=1e-4, atol=1e-5)
    assert (
        '"operator": "GGNOperator"' in op.attrs["config"] and '"cache": true' in op.attrs["config"]
    )


def test_export_over_budget_is_refused(hessian_case):
    op, _ = hessian_case
    with memory_budget(1000), pytest.raises(MemoryBudgetError, match="dense"):
        op.to_xarray()


class _UnusedParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(3, 2), nn.Linear(2, 2)

    def forward(self, x):
        return torch.tanh(self.used(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda m, l, d: HessianOperator(m, l, d),
        lambda m, l, d: HessianOperator(m, l, d, method="forward_over_reverse"),
        lambda m, l, d: GGNOperator(m, l, d),
        lambda m, l, d: EmpiricalFisherOperator(m, l, d),
        lambda m, l, d: ComplexStepHessianOperator(m, l, d),
    ],
    ids=["hessian-db", "hessian-for", "ggn", "empirical-fisher", "complex-step"],
)
def test_a_parameter_the_loss_ignores_has_zero_rows(make):
    torch.manual_seed(0)
    model = _UnusedParameter().double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    op = make(model, nn.MSELoss(), (x, y))
    result = op @ torch.randn(op.shape[0], dtype=torch.float64)
    assert result[8:].abs().max() == 0 and result[:8].abs().max() > 0


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_vectorised_and_column_loop_products_agree(method):
    model, loss_fn, x, y = CASES[5].build()  # residual-ce
    v = torch.randn(sum(p.numel() for p in model.parameters()), 5, dtype=torch.float64)
    for op in (
        HessianOperator(model, loss_fn, (x, y), method=method),
        GGNOperator(model, loss_fn, (x, y)),
    ):
        batched = op @ v
        assert op.__dict__.get("_vectorize", True)  # vmap handled the model
        op._vectorize = False
        torch.testing.assert_close(op @ v, batched, rtol=1e-10, atol=1e-12)


def test_bad_inputs_are_named():
    model, loss_fn, x, y = CASES[0].build()
    with pytest.raises(TypeError, match="batch 1: inputs are torch.float32"):
        GGNOperator(model, loss_fn, [(x, y), (x.float(), y)])
    with pytest.raises(UnsupportedLossError, match="CrossEntropyLoss"):
        GGNOperator(model, loss_fn, (x, y[:-1]))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        GGNOperator(lambda t: t, loss_fn, (x, y))
    with pytest.raises(ValueError, match="at least one group"):
        GGNOperator(model, loss_fn, (x, y)).restrict([])


@pytest.mark.parametrize(
    "make",
    [
        lambda m, l, d: HessianOperator(m, l, d),
        lambda m, l, d: GGNOperator(m, l, d),
        lambda m, l, d: EmpiricalFisherOperator(m, l, d),
    ],
    ids=["hessian", "ggn", "empirical-fisher"],
)
def test_non_finite_values_raise_naming_the_quantity(make):
    """NaN parameters, inputs or a NaN vector give NonFiniteError naming what went non-finite, never
    a NaN result (issue 11, case 5): checked once per batch and on the first product."""
    model, loss_fn, x, y = CASES[0].build()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="parameter 0.weight"):
        make(model, loss_fn, (x, y))
    model, loss_fn, x, y = CASES[0].build()
    x[1, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="model outputs of batch 0"):
        make(model, loss_fn, (x, y))
    model, loss_fn, x, y = CASES[0].build()
    op = make(model, loss_fn, (x, y))
    v = torch.ones(op.shape[0], dtype=torch.float64)
    v[3] = float("nan")
    with pytest.raises(NonFiniteError, match="vector multiplied"):
        op @ v
