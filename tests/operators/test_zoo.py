"""Every matrix-free operator on every zoo model, against the references, in float64.

Each operator takes four consecutive products (the first builds any cache, the later ones reuse it)
and one block product of three columns, compared with the dense reference matrix (itself checked by
two routes in ``tests/reference/test_zoo.py``) to 1e-8 relative. Whatever an operator cannot support
must raise a ``CurvlabError`` naming the module.
"""

from __future__ import annotations

import pytest
import torch

from curvlab import reference
from curvlab.errors import CurvlabError
from curvlab.operators import (
    ComplexStepHessianOperator,
    EmpiricalFisherOperator,
    FisherMCOperator,
    GGNOperator,
    HessianOperator,
)
from tests.zoo import ZOO, zoo_reference

BATCH = 4
PRODUCTS = 4

OPERATORS = {
    "hessian-double-backward": lambda m, l, d: HessianOperator(m, l, d),
    "hessian-double-backward-uncached": lambda m, l, d: HessianOperator(m, l, d, cache=False),
    "hessian-forward-over-reverse": lambda m, l, d: HessianOperator(
        m, l, d, method="forward_over_reverse"
    ),
    "ggn": lambda m, l, d: GGNOperator(m, l, d),
    "ggn-uncached": lambda m, l, d: GGNOperator(m, l, d, cache=False),
    "empirical-fisher-per-sample": lambda m, l, d: EmpiricalFisherOperator(
        m, l, d, strategy="per_sample_gradients"
    ),
    "empirical-fisher-jacobian": lambda m, l, d: EmpiricalFisherOperator(
        m, l, d, strategy="jacobian_products"
    ),
    "fisher-mc": lambda m, l, d: FisherMCOperator(
        m, l, d, mc_samples=2, generator=torch.Generator().manual_seed(0)
    ),
}


def expected_matrix(zoo, name, op, model, x):
    for prefix, quantity in (("hessian", "hessian"), ("ggn", "ggn"), ("empirical", "empirical_fisher")):
        if name.startswith(prefix):
            return zoo_reference(zoo.name, quantity, BATCH)
    jac = reference.jacobian(model, x)  # [N, C, P]
    s = op.sqrt_factors[0]  # [N, C, M]
    grads = torch.einsum("ncp,ncm->nmp", jac, s).reshape(-1, jac.shape[-1])
    return grads.T @ grads / op.normalizers[0]


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("zoo", ZOO, ids=lambda c: c.name)
def test_operator_products(zoo, name):
    model, loss_fn, x, y = zoo.build(BATCH)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    op = OPERATORS[name](model, loss_fn, (x, y))
    matrix = expected_matrix(zoo, name, op, model, x)
    gen = torch.Generator().manual_seed(1)
    for k in range(PRODUCTS):
        v = torch.randn(op.shape[0], dtype=torch.float64, generator=gen)
        err = relative_error(op @ v, matrix @ v)
        assert err < 1e-8, f"product {k + 1}: relative error {err:.1e}"
    block = torch.randn(op.shape[0], 3, dtype=torch.float64, generator=gen)
    assert relative_error(op @ block, matrix @ block) < 1e-8
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # buffers untouched


@pytest.mark.parametrize("zoo", ZOO, ids=lambda c: c.name)
def test_complex_step_is_right_or_refused(zoo):
    model, loss_fn, x, y = zoo.build(BATCH)
    try:
        op = ComplexStepHessianOperator(model, loss_fn, (x, y))
        vs = [torch.randn(op.shape[0], dtype=torch.float64) for _ in range(2)]
        products = [op @ v for v in vs]
    except CurvlabError as err:
        assert str(err)  # a clear refusal, naming the culprit
        return
    matrix = zoo_reference(zoo.name, "hessian", BATCH)
    for v, hv in zip(vs, products, strict=True):
        assert relative_error(hv, matrix @ v) < 1e-8
