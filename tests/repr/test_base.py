"""The shared interface, checked for every representation kind against an independently built matrix."""

from __future__ import annotations

import pytest
import torch
import xarray as xr

from curvlab.errors import MemoryBudgetError
from curvlab.guards import memory_budget
from curvlab.repr import CurvatureRepresentation
from tests.repr.factories import ATTRS, KINDS, build


def close(actual, expected, dtype=torch.float64, scale=1.0):
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol * scale)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def expected_block(rep, expected, g, h):
    if rep.kind == "summary_matrix":
        return expected[g : g + 1, h : h + 1]
    rows, cols = rep.partition.groups[g].indices, rep.partition.groups[h].indices
    return expected[rows][:, cols]


def test_dense_matches_independent_construction(kind, dtype):
    rep, expected = build(kind, dtype)
    assert isinstance(rep, CurvatureRepresentation)
    assert rep.dtype == dtype and rep.shape == tuple(expected.shape)
    close(rep.dense(), expected, dtype)
    close(rep.dense(), rep.dense().T, dtype)  # symmetric


def test_matvec_diagonal_trace_blocks(kind, dtype):
    rep, expected = build(kind, dtype)
    n = expected.shape[0]
    v, V = torch.randn(n, dtype=dtype), torch.randn(n, 3, dtype=dtype)
    close(rep.matvec(v), expected @ v, dtype, n)
    close(rep @ V, expected @ V, dtype, n)
    close(rep.diagonal(), expected.diagonal(), dtype)
    close(rep.trace(), expected.trace(), dtype, n)
    for g in range(rep.partition.num_groups):
        for h in range(rep.partition.num_groups):
            close(rep.block(g, h), expected_block(rep, expected, g, h), dtype)
    name = rep.partition.group_names[-1]
    close(
        rep.block(name, name),
        expected_block(rep, expected, rep.partition.num_groups - 1, rep.partition.num_groups - 1),
        dtype,
    )


def test_spectrum(kind, dtype):
    rep, expected = build(kind, dtype)
    expected = expected.double()
    reference = torch.linalg.eigvalsh(expected)
    scale = float(reference.abs().max())
    close(rep.eigvalsh(), reference, dtype, scale)
    values, vectors = rep.eigh()
    close(values, reference, dtype, scale)
    assert bool((values[1:] >= values[:-1]).all())
    eye = torch.eye(expected.shape[0], dtype=torch.float64)
    close(vectors.T.double() @ vectors.double(), eye, dtype)
    close((vectors * values) @ vectors.T, expected, dtype, scale)


@pytest.mark.parametrize("damping", [0.5, 2.0])
def test_solve(kind, dtype, damping):
    rep, expected = build(kind, dtype)
    n = expected.shape[0]
    shifted = expected.double() + damping * torch.eye(n, dtype=torch.float64)
    v = torch.randn(n, 2, dtype=torch.float64)
    close(rep.solve(v[:, 0].to(dtype), damping), torch.linalg.solve(shifted, v[:, 0]), dtype, 10)
    close(rep.solve(v.to(dtype), damping), torch.linalg.solve(shifted, v), dtype, 10)


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("square_root", "layered_square_root", "summary_matrix")])
def test_undamped_solve_of_a_nonsingular_matrix(kind):
    rep, expected = build(
        kind, torch.float64
    )  # (square_root has K < P: singular; see its own tests)
    v = torch.randn(expected.shape[0], dtype=torch.float64)
    close(rep.solve(v), torch.linalg.solve(expected, v), torch.float64, 1e3)


def test_xarray_round_trip_is_exact(kind, dtype):
    rep, expected = build(kind, dtype)
    exported = rep.to_xarray()
    assert isinstance(exported, xr.Dataset | xr.DataTree)
    assert exported.attrs["curvlab_kind"] == rep.kind
    assert exported.attrs["quantity"] == rep.quantity
    for key, value in ATTRS.items():
        assert exported.attrs[key] == value
    back = type(rep).from_xarray(exported)
    assert type(back) is type(rep)
    assert (
        back.partition == rep.partition
        and back.quantity == rep.quantity
        and back.attrs == rep.attrs
    )
    assert back.dtype == dtype
    xr.testing.assert_identical(back.to_xarray(), exported)
    assert torch.equal(back.dense(), rep.dense())


def test_every_variable_has_a_long_name(kind):
    rep, _ = build(kind)
    exported = rep.to_xarray()
    nodes = exported.subtree if isinstance(exported, xr.DataTree) else [exported]
    count = 0
    for node in nodes:
        for name, var in node.variables.items():
            assert var.attrs.get("long_name"), f"{rep.kind}: {name} has no long_name"
            count += 1
    assert count > 0


def test_bad_vectors_and_damping_are_refused(kind):
    rep, expected = build(kind)
    n = expected.shape[0]
    with pytest.raises(ValueError, match=f"P={n}"):
        rep.matvec(torch.ones(n + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        rep.matvec(torch.ones(n, 1, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        rep.matvec([1.0] * n)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        rep.solve(torch.ones(n, dtype=torch.float64), damping=-1.0)
    with pytest.raises(KeyError, match="no group 'nope'"):
        rep.block("nope", 0)


def test_dense_results_are_guarded(kind):
    rep, expected = build(kind)
    with memory_budget(expected.numel() * 8 - 1):
        with pytest.raises(MemoryBudgetError, match="dense"):
            rep.dense()
        with pytest.raises(MemoryBudgetError, match="eigenvectors"):
            rep.eigh()
    with memory_budget(expected.numel() * 8):
        rep.dense()


def test_repr_names_the_kind(kind):
    rep, expected = build(kind)
    assert type(rep).__name__ in repr(rep) and f"P={expected.shape[0]}" in repr(rep)


def test_corrupt_exports_are_refused(kind):
    rep, _ = build(kind)
    exported = rep.to_xarray()
    wrong = exported.copy()
    wrong.attrs = {**exported.attrs, "curvlab_kind": "something_else"}
    with pytest.raises(ValueError, match=f"curvlab_kind='{rep.kind}', got 'something_else'"):
        type(rep).from_xarray(wrong)
    missing = exported.copy()
    missing.attrs = {k: v for k, v in exported.attrs.items() if k != "partition"}
    with pytest.raises(ValueError, match="lacks its 'partition' attribute"):
        type(rep).from_xarray(missing)
    if isinstance(exported, xr.Dataset):
        main = next(iter(exported.data_vars))
        with pytest.raises(ValueError, match=f"lacks the variable '{main}'"):
            type(rep).from_xarray(exported.drop_vars(main))


def test_provenance_attributes_survive_the_round_trip(kind):
    from curvlab.provenance import provenance
    from tests.repr.factories import tiny_model

    rep, _ = build(kind)
    attrs = provenance(
        model=tiny_model(),
        loss_fn=torch.nn.MSELoss(),
        batch_size=4,
        dtype=torch.float64,
        config={"damping": 0.1, "partition": "layer"},
    )
    rep.attrs = attrs
    exported = rep.to_xarray()
    for key in ("curvlab_version", "torch_version", "xarray_version", "model", "loss", "config"):
        assert exported.attrs[key] == attrs[key]
    assert exported.attrs["batch_size"] == 4 and exported.attrs["dtype"] == "float64"
    assert type(exported.attrs["torch_version"]) is str  # HDF5 cannot store torch's TorchVersion
    assert type(rep).from_xarray(exported).attrs == attrs
