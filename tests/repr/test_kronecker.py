"""KroneckerFactors: exactness on a single datum (Linear and Conv, via autograd), bias conventions,
EKFAC scaling, factored Tikhonov, the matrix form, and the constructor's errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from curvlab.errors import NonFiniteError
from curvlab.partition import Partition
from curvlab.repr import BiasConvention, KroneckerFactors
from tests.repr.factories import kron_explicit, spd

F64 = torch.float64


def per_sample_gradient(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """∇_θ of gᵀ layer(x) for one datum, flattened in the reference ordering."""
    out = layer(x[None]).reshape(-1)
    grads = torch.autograd.grad(out @ g, list(layer.parameters()))
    return torch.cat([t.reshape(-1) for t in grads])


def test_single_datum_linear_with_augmented_bias_is_exact():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    x, g = torch.randn(3, dtype=F64), torch.randn(2, dtype=F64)
    x_aug = torch.cat([x, torch.ones(1, dtype=F64)])
    factors = KroneckerFactors(torch.outer(x_aug, x_aug), torch.outer(g, g), bias=True)
    gamma = per_sample_gradient(layer, x, g)
    torch.testing.assert_close(factors.dense(), torch.outer(gamma, gamma))
    # ... which is a permutation of G ⊗ A_aug, not G ⊗ A_aug itself
    assert not torch.allclose(factors.dense(), torch.kron(factors.G, factors.A))


def test_single_datum_conv_weight_is_flattened_like_w_flatten():
    torch.manual_seed(1)
    layer = nn.Conv2d(2, 3, kernel_size=(2, 3)).double()  # a 2x3 input gives one output location
    x, g = torch.randn(2, 2, 3, dtype=F64), torch.randn(3, dtype=F64)
    patch = torch.cat([x.reshape(-1), torch.ones(1, dtype=F64)])  # (C_in, kh, kw) flattened, then 1
    factors = KroneckerFactors(
        torch.outer(patch, patch), torch.outer(g, g), bias=True, weight_shape=layer.weight.shape
    )
    gamma = per_sample_gradient(layer, x, g)
    torch.testing.assert_close(factors.dense(), torch.outer(gamma, gamma))
    assert factors.weight_shape == (3, 2, 2, 3) and factors.in_features == 12


def test_separate_bias_drops_the_cross_terms():
    torch.manual_seed(2)
    layer = nn.Linear(3, 2).double()
    x, g = torch.randn(3, dtype=F64), torch.randn(2, dtype=F64)
    factors = KroneckerFactors(
        torch.outer(x, x), torch.outer(g, g), bias=True, bias_convention="separate"
    )
    gamma = per_sample_gradient(layer, x, g)
    exact = torch.outer(gamma, gamma)
    dense = factors.dense()
    torch.testing.assert_close(dense[:6, :6], exact[:6, :6])  # weight block exact on one datum
    torch.testing.assert_close(dense[6:, 6:], exact[6:, 6:])  # bias block G = g gᵀ
    assert torch.count_nonzero(dense[:6, 6:]) == 0 and torch.count_nonzero(exact[:6, 6:]) > 0


def test_ekfac_with_the_kronecker_eigenvalues_is_kfac():
    torch.manual_seed(3)
    A, G = spd(4, F64), spd(3, F64)
    kfac = KroneckerFactors(A, G, bias=True)
    scaling = torch.outer(torch.linalg.eigvalsh(G), torch.linalg.eigvalsh(A))
    ekfac = KroneckerFactors(A, G, bias=True, scaling=scaling)
    torch.testing.assert_close(ekfac.dense(), kfac.dense())
    torch.testing.assert_close(ekfac.dense(), kron_explicit(G, A, augmented_bias=True))


def test_ekfac_eigenvectors_are_kronecker_products_of_the_factor_eigenvectors():
    torch.manual_seed(4)
    A, G = spd(3, F64), spd(2, F64)
    scaling = torch.rand(2, 3, dtype=F64)
    ekfac = KroneckerFactors(A, G, scaling=scaling)
    _, q_g = torch.linalg.eigh(G)
    _, q_a = torch.linalg.eigh(A)
    for o in range(2):
        for i in range(3):
            q = torch.kron(q_g[:, o], q_a[:, i])
            torch.testing.assert_close(ekfac @ q, scaling[o, i] * q)
    torch.testing.assert_close(ekfac.eigvalsh(), scaling.reshape(-1).sort().values)
    torch.testing.assert_close(ekfac.trace(), scaling.sum())


@pytest.mark.parametrize("convention", list(BiasConvention))
def test_matrix_form_is_g_v_a(convention):
    torch.manual_seed(5)
    augmented = convention is BiasConvention.AUGMENTED
    A, G = spd(4 if augmented else 3, F64), spd(2, F64)
    factors = KroneckerFactors(A, G, bias=True, bias_convention=convention)
    assert factors.matrix_shape == (2, 4)
    W, b = torch.randn(2, 3, dtype=F64), torch.randn(2, dtype=F64)
    V = torch.cat([W, b[:, None]], 1)
    v = torch.cat([W.reshape(-1), b])
    torch.testing.assert_close(factors.to_matrix(v), V)
    torch.testing.assert_close(factors.from_matrix(V), v)
    out = factors @ V
    if augmented:
        torch.testing.assert_close(out, G @ V @ A)
    else:
        torch.testing.assert_close(out, torch.cat([G @ W @ A, (G @ b)[:, None]], 1))
    torch.testing.assert_close(factors.from_matrix(out), factors.dense() @ v)
    batch = torch.randn(5, 2, 4, dtype=F64)  # [K, O, I']
    torch.testing.assert_close(factors.matvec(batch), torch.stack([factors @ m for m in batch]))
    solved = factors.solve(V, damping=0.3)
    torch.testing.assert_close(factors @ solved + 0.3 * solved, V)


def test_solve_factored_matches_the_explicit_damped_kronecker_product():
    torch.manual_seed(6)
    A, G = spd(4, F64), spd(3, F64)
    factors = KroneckerFactors(A, G, bias=True)
    damping = 0.2
    pi = math.sqrt((A.trace() / 4) / (G.trace() / 3))
    assert factors.default_pi() == pytest.approx(float(pi))
    root = math.sqrt(damping)
    damped = kron_explicit(
        G + pi * root * torch.eye(3, dtype=F64), A + root / pi * torch.eye(4, dtype=F64), True
    )
    v = torch.randn(12, 2, dtype=F64)
    torch.testing.assert_close(factors.solve_factored(v, damping), torch.linalg.solve(damped, v))
    V = factors.to_matrix(v[:, 0])
    torch.testing.assert_close(
        factors.solve_factored(V, damping), factors.to_matrix(torch.linalg.solve(damped, v[:, 0]))
    )
    damped_2 = kron_explicit(
        G + 2.0 * root * torch.eye(3, dtype=F64), A + root / 2.0 * torch.eye(4, dtype=F64), True
    )
    torch.testing.assert_close(
        factors.solve_factored(v, damping, pi=2.0), torch.linalg.solve(damped_2, v)
    )


def test_solve_factored_with_separate_bias_damps_the_bias_block_exactly():
    torch.manual_seed(7)
    A, G = spd(3, F64), spd(2, F64)
    factors = KroneckerFactors(A, G, bias=True, bias_convention="separate")
    root, pi = math.sqrt(0.5), factors.default_pi()
    weight = torch.kron(
        G + pi * root * torch.eye(2, dtype=F64), A + root / pi * torch.eye(3, dtype=F64)
    )
    damped = torch.block_diag(weight, G + 0.5 * torch.eye(2, dtype=F64))
    v = torch.randn(8, dtype=F64)
    torch.testing.assert_close(factors.solve_factored(v, 0.5), torch.linalg.solve(damped, v))


def test_eigendecompositions_are_cached():
    factors = KroneckerFactors(spd(3, F64), spd(2, F64))
    factors.solve(torch.ones(6, dtype=F64), 1.0)
    first = factors._eig
    factors.solve_factored(torch.ones(6, dtype=F64), 1.0)
    assert factors._eig is first


def test_singular_solves_raise():
    A = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    factors = KroneckerFactors(A, torch.eye(1, dtype=F64))
    with pytest.raises(torch.linalg.LinAlgError, match="singular"):
        factors.solve(torch.ones(2, dtype=F64))
    torch.testing.assert_close(
        factors.solve(torch.ones(2, dtype=F64), 1.0), torch.tensor([0.5, 1.0], dtype=F64)
    )


def test_default_partition_and_a_model_partition():
    factors = KroneckerFactors(spd(4, F64), spd(2, F64), bias=True)
    assert factors.partition.group_names == ("weight", "bias")
    assert factors.shape == (8, 8)
    layer = nn.Linear(3, 2).double()
    part = Partition.from_model(layer)
    with_model = KroneckerFactors(spd(4, F64), spd(2, F64), bias=True, partition=part)
    assert with_model.partition is part and with_model.weight_shape == (2, 3)


def test_export_uses_factor_dims():
    torch.manual_seed(8)
    factors = KroneckerFactors(
        spd(3, F64),
        spd(2, F64),
        bias=True,
        bias_convention="separate",
        bias_factor=spd(2, F64),
        scaling=torch.rand(2, 3, dtype=F64),
    )
    ds = factors.to_xarray()
    assert ds["A"].dims == ("in_i", "in_j") and ds["G"].dims == ("out_i", "out_j")
    assert ds["scaling"].dims == ("out_eig", "in_eig") and ds["bias_factor"].dims == (
        "out_i",
        "out_j",
    )
    assert ds.attrs["bias_convention"] == "separate" and ds.attrs["bias"] == 1


def test_constructor_errors():
    A, G = spd(3, F64), spd(2, F64)
    with pytest.raises(TypeError, match="A \\(input factor\\) must be a torch.Tensor"):
        KroneckerFactors(A.tolist(), G)
    with pytest.raises(ValueError, match="G \\(output factor\\) must be square"):
        KroneckerFactors(A, torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="A \\(input factor\\) is not symmetric"):
        KroneckerFactors(A + torch.triu(torch.ones(3, 3, dtype=F64), 1), G)
    with pytest.raises(NonFiniteError, match="G \\(output factor\\)"):
        KroneckerFactors(A, torch.full((2, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="A must be \\[I\\+1, I\\+1\\] with I >= 1"):
        KroneckerFactors(torch.ones(1, 1, dtype=F64), G, bias=True)
    with pytest.raises(ValueError, match="unknown bias_convention 'both'"):
        KroneckerFactors(A, G, bias=True, bias_convention="both")
    with pytest.raises(
        ValueError, match="bias_factor needs bias=True and bias_convention='separate'"
    ):
        KroneckerFactors(A, G, bias=True, bias_factor=G)
    with pytest.raises(ValueError, match="bias_factor must have shape \\[2, 2\\]"):
        KroneckerFactors(A, G, bias=True, bias_convention="separate", bias_factor=A)
    with pytest.raises(ValueError, match="scaling must have shape \\[2, 3\\]"):
        KroneckerFactors(A, G, scaling=torch.ones(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="G is torch.float32 on cpu but A is torch.float64"):
        KroneckerFactors(A, G.float())
    with pytest.raises(ValueError, match="weight_shape \\(2, 4\\) does not match"):
        KroneckerFactors(A, G, weight_shape=(2, 4))
    with pytest.raises(ValueError, match="partition parameters have sizes \\[6, 2\\]"):
        KroneckerFactors(A, G, partition=Partition.from_model(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="attrs may not set 'bias_convention'"):
        KroneckerFactors(A, G, attrs={"bias_convention": "x"})
    factors = KroneckerFactors(A, G)
    with pytest.raises(ValueError, match="pi must be > 0"):
        factors.solve_factored(torch.ones(6, dtype=F64), 1.0, pi=0.0)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        factors.solve_factored(torch.ones(6, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="pass pi explicitly"):
        KroneckerFactors(torch.zeros(3, 3, dtype=F64), G).solve_factored(
            torch.ones(6, dtype=F64), 1.0
        )
    with pytest.raises(ValueError, match="with an EKFAC scaling use solve"):
        KroneckerFactors(A, G, scaling=torch.ones(2, 3, dtype=F64)).solve_factored(
            torch.ones(6, dtype=F64), 1.0
        )


@settings(max_examples=30, deadline=None)
@given(
    out_features=st.integers(1, 3),
    in_features=st.integers(1, 3),
    bias=st.booleans(),
    convention=st.sampled_from(list(BiasConvention)),
    ekfac=st.booleans(),
    separate_factor=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_layers_agree_with_their_dense_block(
    out_features, in_features, bias, convention, ekfac, separate_factor, seed
):
    torch.manual_seed(seed)
    augmented = bias and convention is BiasConvention.AUGMENTED
    size_a = in_features + (1 if augmented else 0)
    A, G = spd(size_a, F64), spd(out_features, F64)
    scaling = torch.rand(out_features, size_a, dtype=F64) + 0.1 if ekfac else None
    bias_factor = None
    if separate_factor and bias and convention is BiasConvention.SEPARATE:
        bias_factor = spd(out_features, F64)
    factors = KroneckerFactors(
        A, G, bias=bias, bias_convention=convention, scaling=scaling, bias_factor=bias_factor
    )
    if scaling is None:  # the explicit construction, entry by entry
        expected = kron_explicit(G, A, augmented)
        if bias and not augmented:
            expected = torch.block_diag(expected, bias_factor if bias_factor is not None else G)
        torch.testing.assert_close(factors.dense(), expected)
    dense = factors.dense()
    p = dense.shape[0]
    v = torch.randn(p, 2, dtype=F64)
    torch.testing.assert_close(factors @ v, dense @ v)
    torch.testing.assert_close(factors.diagonal(), dense.diagonal())
    torch.testing.assert_close(factors.trace(), dense.trace())
    torch.testing.assert_close(factors.eigvalsh(), torch.linalg.eigvalsh(dense))
    values, vectors = factors.eigh()
    torch.testing.assert_close((vectors * values) @ vectors.T, dense)
    shifted = dense + 0.7 * torch.eye(p, dtype=F64)
    torch.testing.assert_close(factors.solve(v, 0.7), torch.linalg.solve(shifted, v))
    back = KroneckerFactors.from_xarray(factors.to_xarray())
    assert torch.equal(back.dense(), dense) and back.layout == factors.layout
