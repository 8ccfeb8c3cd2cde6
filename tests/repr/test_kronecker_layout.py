"""KroneckerLayout: the map between the reference ordering and the matrix form [W, b]."""

from __future__ import annotations

import pytest
import torch

from curvlab.repr.kronecker_layout import BiasConvention, KroneckerLayout


@pytest.mark.parametrize("bias", [False, True])
def test_permutation_places_every_reference_entry(bias):
    layout = KroneckerLayout(out_features=3, in_features=2, bias=bias)
    v = torch.arange(float(layout.num_params))
    V = layout.to_matrix(v)
    perm = layout.reference_permutation()
    assert torch.equal(V.reshape(-1)[perm], v)  # row-major matrix form, read in reference order
    assert sorted(perm.tolist()) == list(range(layout.num_params))
    assert torch.equal(layout.from_matrix(V), v)
    many = torch.randn(layout.num_params, 4)
    assert layout.to_matrix(many).shape == (4, *layout.matrix_shape)
    assert torch.equal(layout.from_matrix(layout.to_matrix(many)), many)


def test_explicit_positions_with_a_bias():
    layout = KroneckerLayout(out_features=2, in_features=3, bias=True)
    # W = [[0, 1, 2], [3, 4, 5]], b = [6, 7] → rows [w_o, b_o] of width 4
    assert layout.reference_permutation().tolist() == [0, 1, 2, 4, 5, 6, 3, 7]


def test_conventions_set_the_factor_size():
    assert KroneckerLayout(2, 3, True, BiasConvention.AUGMENTED).factor_size == 4
    separate = KroneckerLayout(2, 3, True, BiasConvention.SEPARATE)
    assert separate.factor_size == 3 and separate.matrix_shape == (2, 4) and separate.separate_bias
    assert KroneckerLayout(2, 3).factor_size == 3 and not KroneckerLayout(2, 3).augmented


def test_weight_shape_and_partition_checks():
    layout = KroneckerLayout(2, 6, bias=True)
    assert layout.weight_shape(None) == (2, 6) and layout.weight_shape([2, 3, 2]) == (2, 3, 2)
    with pytest.raises(ValueError, match="weight_shape \\(3, 6\\) does not match"):
        layout.weight_shape((3, 6))
    part = layout.default_partition((2, 3, 2))
    assert part.group_names == ("weight", "bias") and part.param("bias").offset == 12
    layout.check_partition(part)
    weight_only = KroneckerLayout(2, 6).default_partition((2, 6))
    with pytest.raises(ValueError, match="sizes \\[12\\], but the factors need \\[12, 2\\]"):
        layout.check_partition(weight_only)
    with pytest.raises(
        ValueError, match="unknown bias_convention 'x'; use one of 'augmented', 'separate'"
    ):
        BiasConvention.parse("x")
