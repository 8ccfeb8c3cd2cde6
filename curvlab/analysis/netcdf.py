"""Writing and reading the analysis' netCDF files with whichever backend is installed.

netCDF-4 (HDF5 groups, through h5netcdf) needs the ``h5py`` package. Without it, files are written as
netCDF-3 through scipy, which has no groups: a ``DataTree`` is then flattened into one Dataset whose
variables, dims and attributes carry the node path as a prefix (``ggn__matrix``, ``ggn__row``,
``ggn__curvlab_kind``), and :func:`read` rebuilds the tree. Writes are atomic (a temporary file in the
target's directory, then ``os.replace``).

Example:
    >>> import tempfile, pathlib, xarray as xr
    >>> tree = xr.DataTree.from_dict({"/a": xr.Dataset({"x": ("n", [1.0, 2.0])}, attrs={"kind": "demo"})})
    >>> path = write(tree, pathlib.Path(tempfile.mkdtemp()) / "t.nc")
    >>> back = read(path)
    >>> back["a"]["x"].values.tolist(), back["a"].attrs["kind"]
    ([1.0, 2.0], 'demo')
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["engine", "read", "write"]

SEP = "__"
_TREE_FLAG = "curvlab_flattened_tree"


def engine() -> str:
    """``"h5netcdf"`` when h5py is installed, else ``"scipy"`` (netCDF-3)."""
    return "h5netcdf" if importlib.util.find_spec("h5py") is not None else "scipy"


def _flatten(tree: xr.DataTree) -> xr.Dataset:
    out = xr.Dataset(attrs={_TREE_FLAG: 1, **tree.attrs})
    for node in tree.subtree:
        if node.path == "/":
            ds = node.to_dataset(inherit=False)
            out = out.merge(ds)
            continue
        prefix = node.path.strip("/").replace("/", SEP) + SEP
        ds = node.to_dataset(inherit=False)
        ds = ds.rename({name: prefix + str(name) for name in [*ds.variables, *ds.dims]})
        out = out.merge(ds.drop_attrs(deep=False))
        out.attrs.update({prefix + k: v for k, v in node.attrs.items()})
        out.attrs[prefix + "node"] = node.path
    return out


def _unflatten(ds: xr.Dataset) -> xr.DataTree:
    paths = {v: k.removesuffix("node") for k, v in ds.attrs.items() if k.endswith(SEP + "node")}
    nodes: dict[str, xr.Dataset] = {}
    claimed: set[str] = set()
    for path, prefix in sorted(paths.items(), key=lambda item: -len(item[1])):
        names = [n for n in ds.variables if str(n).startswith(prefix) and n not in claimed]
        claimed.update(names)
        part = ds[names] if names else xr.Dataset()
        dims = [d for d in part.dims if str(d).startswith(prefix)]
        part = part.rename({n: str(n)[len(prefix):] for n in [*names, *dims] if n in part.variables or n in dims})
        part.attrs = {k[len(prefix):]: v for k, v in ds.attrs.items()
                      if k.startswith(prefix) and k != prefix + "node" and SEP not in k[len(prefix):]}
        nodes[path] = part
    root = ds[[n for n in ds.data_vars if n not in claimed]]
    root.attrs = {k: v for k, v in ds.attrs.items() if SEP not in k and k != _TREE_FLAG}
    ordered = {"/": root, **{path: nodes[path] for path in paths}}  # the order they were written in
    return xr.DataTree.from_dict(ordered)


_JSON = "json:"


def _encode_attrs(attrs: dict) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (list, tuple, np.ndarray)) and any(isinstance(v, str) for v in np.ravel(value)):
            value = _JSON + json.dumps([str(v) for v in np.ravel(value)])
        elif isinstance(value, (bool, np.bool_)):
            value = int(value)
        out[key] = value
    return out


def _decode_attrs(attrs: dict) -> dict:
    return {k: json.loads(v[len(_JSON):]) if isinstance(v, str) and v.startswith(_JSON) else v
            for k, v in attrs.items()}


def _scipy_safe(ds: xr.Dataset) -> xr.Dataset:
    """netCDF-3 has no int64 and no string-list attributes: int32 where it fits, lists as JSON strings."""
    ds.attrs = _encode_attrs(ds.attrs)
    for var in ds.variables.values():
        var.attrs = _encode_attrs(var.attrs)
    for name, var in ds.variables.items():
        if var.dtype == np.int64 and (var.size == 0 or np.abs(var.values).max() < 2**31):
            ds[name] = var.astype(np.int32) if name not in ds.dims else var
            ds[name].encoding["dtype"] = "int32"
    return ds


def write(obj: xr.Dataset | xr.DataTree, path: str | os.PathLike) -> Path:
    """Write a Dataset or DataTree to ``path`` atomically with :func:`engine`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    backend = engine()
    try:
        if backend == "scipy":
            flat = _flatten(obj) if isinstance(obj, xr.DataTree) else obj.copy()
            _scipy_safe(flat).to_netcdf(tmp, engine="scipy")
        else:
            obj.to_netcdf(tmp, engine=backend)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read(path: str | os.PathLike) -> xr.Dataset | xr.DataTree:
    """Read a file written by :func:`write` (or any netCDF file): a DataTree if it has groups, else a Dataset."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic.startswith(b"CDF"):
        ds = xr.load_dataset(path, engine="scipy")
        ds.attrs = _decode_attrs(ds.attrs)
        for var in ds.variables.values():
            var.attrs = _decode_attrs(var.attrs)
        return _unflatten(ds) if ds.attrs.get(_TREE_FLAG) else ds
    if not magic.startswith(b"\x89HDF"):
        raise ValueError(f"{path} is not a netCDF file")
    if engine() != "h5netcdf":
        raise ValueError(f"{path} is a netCDF-4/HDF5 file; reading it needs the h5py package")
    tree = xr.load_datatree(path, engine="h5netcdf")
    return tree if tree.children else tree.to_dataset()
