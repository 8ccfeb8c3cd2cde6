"""curvlab.io: atomic netCDF save, exact load for every kind, and every error case."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import xarray as xr

from curvlab.io import KINDS, load, save
from tests.repr.factories import KINDS as FACTORY_KINDS
from tests.repr.factories import build


@pytest.fixture
def h5py():
    """The HDF5 backend h5netcdf writes with (a declared dependency: never skipped)."""
    import h5py

    return h5py


def test_every_kind_is_loadable_and_resolves_to_its_class():
    from curvlab.io import _resolve

    for factory_kind in FACTORY_KINDS:
        rep, _ = build(factory_kind)
        assert rep.kind in KINDS
        assert _resolve(rep.kind) is type(rep)


@pytest.mark.parametrize("kind", FACTORY_KINDS)
def test_file_round_trip_is_exact(kind, dtype, tmp_path, h5py):
    rep, _ = build(kind, dtype)
    path = save(rep, tmp_path / "c.nc")
    assert path == tmp_path / "c.nc" and path.is_file()
    back = load(path)
    assert type(back) is type(rep) and back.dtype == dtype
    xr.testing.assert_identical(back.to_xarray(), rep.to_xarray())
    assert torch.equal(back.dense(), rep.dense())
    assert back.partition == rep.partition and back.attrs == rep.attrs
    assert [p.name for p in tmp_path.iterdir()] == ["c.nc"]  # no temporary file left


def test_raw_load_and_plain_files(tmp_path, h5py):
    rep, _ = build("block_diagonal")
    save(rep, tmp_path / "b.nc")
    raw = load(tmp_path / "b.nc", raw=True)
    assert isinstance(raw, xr.DataTree)
    xr.testing.assert_identical(raw, rep.to_xarray())
    plain = xr.Dataset({"x": ("i", [1.0, 2.0])}, attrs={"note": "not curvlab"})
    plain.to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")
    got = load(tmp_path / "plain.nc")
    assert isinstance(got, xr.Dataset)
    xr.testing.assert_identical(got, plain)


def test_existing_file_is_refused_unless_overwrite(tmp_path, h5py):
    rep, _ = build("diagonal")
    other, _ = build("diagonal", seed=1)
    path = tmp_path / "d.nc"
    save(rep, path)
    with pytest.raises(FileExistsError, match=str(path)):
        save(other, path)
    assert torch.equal(load(path).diag, rep.diag)
    save(other, path, overwrite=True)
    assert torch.equal(load(path).diag, other.diag)


def test_existing_file_is_refused_before_writing(tmp_path):
    path = tmp_path / "keep.nc"
    path.write_bytes(b"good")
    rep, _ = build("diagonal")
    with pytest.raises(FileExistsError, match="keep.nc"):
        save(rep, str(path))
    assert path.read_bytes() == b"good"


@pytest.mark.parametrize("kind", ["dense", "block_diagonal"])  # Dataset and DataTree writers
def test_interrupted_write_leaves_the_old_file(kind, tmp_path, monkeypatch):
    path = tmp_path / "c.nc"
    path.write_bytes(b"the good file")

    def broken(self, target=None, **kwargs):  # to a file, or to memory (target None)
        if target is not None:
            Path(target).write_bytes(b"half a fi")
        raise KeyboardInterrupt

    monkeypatch.setattr("curvlab.io._require_backend", lambda: None)  # runs without h5py too
    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    monkeypatch.setattr(xr.DataTree, "to_netcdf", broken)
    rep, _ = build(kind)
    with pytest.raises(KeyboardInterrupt):
        save(rep, path, overwrite=True)
    assert path.read_bytes() == b"the good file"
    assert [p.name for p in tmp_path.iterdir()] == ["c.nc"]


def test_save_errors(tmp_path):
    rep, _ = build("diagonal")
    with pytest.raises(FileNotFoundError, match="missing"):
        save(rep, tmp_path / "missing" / "c.nc")
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        save(rep, tmp_path, overwrite=True)
    with pytest.raises(TypeError, match="to_xarray"):
        save(torch.ones(2), tmp_path / "t.nc")

    class NotXarray:
        def to_xarray(self):
            return {"a": 1}

    with pytest.raises(TypeError, match="not an xarray.Dataset"):
        save(NotXarray(), tmp_path / "n.nc")

    class UnknownKind:
        def to_xarray(self):
            return xr.Dataset(attrs={"curvlab_kind": "mystery"})

    with pytest.raises(ValueError, match="'mystery'.*KINDS"):
        save(UnknownKind(), tmp_path / "u.nc")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [True, {"a": 1}, [1, "x", {}], (1.0, None)])
def test_attributes_netcdf_cannot_store_are_named(bad, tmp_path):
    rep, _ = build("diagonal")
    rep.attrs["oops"] = bad
    with pytest.raises(TypeError, match="'oops'"):
        save(rep, tmp_path / "a.nc")
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path, h5py):
    with pytest.raises(FileNotFoundError, match="nope.nc"):
        load(tmp_path / "nope.nc")
    xr.Dataset(attrs={"curvlab_kind": "mystery"}).to_netcdf(tmp_path / "m.nc", engine="h5netcdf")
    with pytest.raises(ValueError, match="'mystery'"):
        load(tmp_path / "m.nc")
    assert isinstance(load(tmp_path / "m.nc", raw=True), xr.Dataset)


def test_load_of_a_missing_file_needs_no_backend(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.nc"):
        load(tmp_path / "absent.nc")


def test_provenance_survives_the_file(tmp_path, h5py):
    from curvlab.provenance import provenance
    from tests.repr.factories import tiny_model

    rep, _ = build("kronecker", torch.float32)
    rep.attrs = provenance(
        model=tiny_model(),
        loss_fn=torch.nn.CrossEntropyLoss(),
        batch_size=8,
        dtype=torch.float32,
        config={"damping": 1e-3, "layers": [0, 2]},
    )
    back = load(save(rep, tmp_path / "k.nc"))
    assert back.attrs == rep.attrs
    xr.testing.assert_identical(back.to_xarray(), rep.to_xarray())


def test_a_missing_backend_is_named_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "h5py" else real(name, *a)
    )
    rep, _ = build("diagonal")
    with pytest.raises(ImportError, match="h5netcdf\\[h5py\\]"):
        save(rep, tmp_path / "c.nc")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "x.nc").write_bytes(b"")
    with pytest.raises(ImportError, match="needs h5py"):
        load(tmp_path / "x.nc")
