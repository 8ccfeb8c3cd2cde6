"""Synthetic representations of every kind, each with its [P, P] matrix built independently.

``build(kind, dtype)`` returns ``(representation, expected_dense)``; the expected matrix is assembled
here by explicit loops or Kronecker products, never through the representation's own ``dense()``.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.partition import Partition
from curvlab.repr import (
    BlockDiagonalCurvature,
    DenseCurvature,
    DiagonalCurvature,
    GroupedKroneckerFactors,
    KroneckerCurvature,
    KroneckerFactors,
    LayeredSquareRootCurvature,
    LayerFactor,
    SquareRootCurvature,
    SummaryMatrix,
)

KINDS = [
    "dense",
    "block_diagonal",
    "diagonal",
    "square_root",
    "square_root_tall",
    "layered_square_root",
    "kronecker_factors",
    "kronecker_factors_separate",
    "kronecker_factors_ekfac",
    "kronecker_factors_ekfac_basis",
    "grouped_kronecker_factors",
    "kronecker",
    "kronecker_grouped_layer",
    "summary_matrix",
]

ATTRS = {"model": "tiny MLP", "batch_size": 4, "config": '{"seed": 0}'}


def tiny_model() -> nn.Module:
    """Linear(3, 2) – Tanh – Linear(2, 2): P = 8 + 6 = 14; a bias-free head keeps the groups uneven."""
    return nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2, bias=False), nn.Linear(2, 1))


def spd(n: int, dtype: torch.dtype, rank: int | None = None) -> torch.Tensor:
    x = torch.randn(rank or n + 1, n, dtype=dtype)
    return x.T @ x / x.shape[0]


def kron_explicit(G: torch.Tensor, A: torch.Tensor, augmented_bias: bool) -> torch.Tensor:
    """Entry by entry: C[r, s] = G[o_r, o_s] A[i_r, i_s] with (o, i) of reference index r.

    Weight entry r < O·I is (r // I, r % I); with an augmented bias, bias entry O·I + o is (o, I).
    """
    o_dim = G.shape[0]
    i_dim = A.shape[0] - (1 if augmented_bias else 0)
    coords = [(r // i_dim, r % i_dim) for r in range(o_dim * i_dim)]
    if augmented_bias:
        coords += [(o, i_dim) for o in range(o_dim)]
    p = len(coords)
    out = torch.empty(p, p, dtype=G.dtype)
    for r, (o_r, i_r) in enumerate(coords):
        for s, (o_s, i_s) in enumerate(coords):
            out[r, s] = G[o_r, o_s] * A[i_r, i_s]
    return out


def place_blocks(partition: Partition, blocks: dict[str, torch.Tensor], dtype) -> torch.Tensor:
    p = partition.num_params
    out = torch.zeros(p, p, dtype=dtype)
    for g in partition.groups:
        for a, r in enumerate(g.indices.tolist()):
            for b, c in enumerate(g.indices.tolist()):
                out[r, c] = blocks[g.name][a, b]
    return out


def _grouped(dtype, attrs=None):
    """Two groups of W [2, 2, 3] and b [2] each: group j holds weight entries 12j … 12j+11 (its two
    output channels' rows) and bias entries 24 + 2j, 24 + 2j + 1."""
    pairs = [(spd(7, dtype), spd(2, dtype)) for _ in range(2)]  # augmented: I = 2·3 = 6, O_g = 2
    groups = [KroneckerFactors(A, G, bias=True, weight_shape=(2, 2, 3)) for A, G in pairs]
    expected = torch.zeros(28, 28, dtype=dtype)
    for j, (A, G) in enumerate(pairs):
        idx = torch.tensor([*range(12 * j, 12 * j + 12), 24 + 2 * j, 24 + 2 * j + 1])
        expected[idx[:, None], idx[None, :]] = kron_explicit(G, A, augmented_bias=True)
    return GroupedKroneckerFactors(groups, weight_shape=(4, 2, 3), attrs=attrs), expected


def build(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    model = tiny_model()
    if kind == "dense":
        part = Partition.from_model(model, "canonical")
        m = spd(part.num_params, dtype)
        return DenseCurvature(m, part, quantity="ggn", attrs=ATTRS), m.clone()
    if kind == "block_diagonal":
        part = Partition.from_model(model, "layer")
        blocks = {g.name: spd(g.size, dtype) for g in part.groups}
        expected = place_blocks(part, blocks, dtype)
        return BlockDiagonalCurvature(blocks, part, quantity="ggn", attrs=ATTRS), expected
    if kind == "diagonal":
        part = Partition.from_model(model, "canonical")
        d = torch.rand(part.num_params, dtype=dtype) + 0.1
        return DiagonalCurvature(d, part, quantity="ggn", attrs=ATTRS), torch.diag(d)
    if kind in ("square_root", "square_root_tall"):
        part = Partition.from_model(model, "layer")
        k = 5 if kind == "square_root" else part.num_params + 3
        f = torch.randn(k, part.num_params, dtype=dtype)
        return SquareRootCurvature(f, part, quantity="empirical_fisher", attrs=ATTRS), f.T @ f
    if kind == "layered_square_root":
        part = Partition.from_model(model, "layer")  # "0": W [2, 3] + b, "2": W [2, 2], "3": W [1, 2] + b
        n, k = 3, 2
        s0, x0 = torch.randn(n * k, 2, dtype=dtype), torch.randn(n, 3, dtype=dtype)
        f2 = torch.randn(n * k, 4, dtype=dtype)
        s3, x3 = torch.randn(n * k, 1, dtype=dtype), torch.randn(n, 2, dtype=dtype)
        layers = [LayerFactor(0, s0, x0, bias=True), LayerFactor(8, f2), LayerFactor(12, s3, x3, bias=True)]
        f = torch.empty(n * k, part.num_params, dtype=dtype)  # row (sample, column): S[r, o] · [x; 1][i]
        for r in range(n * k):
            for s_mat, x, start in ((s0, x0, 0), (s3, x3, 12)):
                o_dim, i_dim = s_mat.shape[1], x.shape[1]
                for o in range(o_dim):
                    for i in range(i_dim):
                        f[r, start + o * i_dim + i] = s_mat[r, o] * x[r // k, i]
                    f[r, start + o_dim * i_dim + o] = s_mat[r, o]
            f[r, 8:12] = f2[r]
        rep = LayeredSquareRootCurvature(layers, part, quantity="ggn", attrs=ATTRS)
        return rep, f.T @ f
    if kind == "kronecker_factors":
        A, G = spd(4, dtype), spd(2, dtype)  # augmented: I = 3, O = 2
        factors = KroneckerFactors(A, G, bias=True, attrs=ATTRS)
        return factors, kron_explicit(G, A, augmented_bias=True)
    if kind == "kronecker_factors_separate":
        A, G, B = spd(3, dtype), spd(2, dtype), spd(2, dtype)
        factors = KroneckerFactors(
            A,
            G,
            bias=True,
            bias_convention="separate",
            bias_factor=B,
            weight_shape=(2, 3, 1),
            attrs=ATTRS,
        )
        return factors, torch.block_diag(kron_explicit(G, A, False), B)
    if kind in ("kronecker_factors_ekfac", "kronecker_factors_ekfac_basis"):
        A, G = spd(4, dtype), spd(2, dtype)
        scaling = torch.rand(2, 4, dtype=dtype) + 0.5
        if kind == "kronecker_factors_ekfac":
            _, q_g = torch.linalg.eigh(G)
            _, q_a = torch.linalg.eigh(A)
            basis = None
        else:  # any orthonormal basis (not eigh's): the representation must use it, not recompute one
            q_a, q_g = torch.linalg.qr(torch.randn(4, 4, dtype=dtype))[0], torch.linalg.qr(torch.randn(2, 2, dtype=dtype))[0]
            basis = (q_a, q_g)
        factors = KroneckerFactors(A, G, bias=True, scaling=scaling, eigenbasis=basis, quantity="ekfac", attrs=ATTRS)
        # Σ_{o,i} s_oi (q_g[:, o] ⊗ q_a[:, i])(...)ᵀ, then permuted into the reference ordering.
        mf = sum(
            scaling[o, i]
            * torch.outer(torch.kron(q_g[:, o], q_a[:, i]), torch.kron(q_g[:, o], q_a[:, i]))
            for o in range(2)
            for i in range(4)
        )
        perm = [o * 4 + i for o in range(2) for i in range(3)] + [o * 4 + 3 for o in range(2)]
        return factors, mf[perm][:, perm]
    if kind == "grouped_kronecker_factors":
        return _grouped(dtype, attrs=ATTRS)
    if kind == "kronecker_grouped_layer":
        conv = nn.Sequential(nn.Conv1d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 1, bias=False))
        part = Partition.from_model(conv, "layer")  # "0": W [4, 2, 3] + b (2 groups of 2 channels), "2": W [1, 4]
        grouped, block0 = _grouped(dtype)
        dense2 = spd(4, dtype)
        expected = place_blocks(part, {"0": block0, "2": dense2}, dtype)
        return KroneckerCurvature({"0": grouped, "2": dense2}, part, attrs=ATTRS), expected
    if kind == "kronecker":
        part = Partition.from_model(
            model, "layer"
        )  # groups "0" (3→2, bias), "2" (2→2), "3" (2→1, bias)
        A0, G0 = spd(4, dtype), spd(2, dtype)
        A2, G2 = spd(2, dtype), spd(2, dtype)
        dense3 = spd(3, dtype)
        layers = {
            "0": KroneckerFactors(A0, G0, bias=True),
            "2": KroneckerFactors(A2, G2),
            "3": dense3,
        }
        expected = place_blocks(
            part,
            {"0": kron_explicit(G0, A0, True), "2": kron_explicit(G2, A2, False), "3": dense3},
            dtype,
        )
        return KroneckerCurvature(layers, part, attrs=ATTRS), expected
    if kind == "summary_matrix":
        part = Partition.from_model(model, "canonical")
        s = part.num_groups
        m = torch.randn(s, s, dtype=dtype)
        m = m + m.T  # symmetric, indefinite
        return SummaryMatrix(m, part, quantity="newton_summary", attrs=ATTRS), m.clone()
    raise KeyError(kind)
