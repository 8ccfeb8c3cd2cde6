"""Writing and reading the analysis' result files (quality datasets, curvature trees) as netCDF-4.

Thin wrappers over :func:`curvlab.io.write_netcdf` (atomic: a temporary file in the target's directory,
then ``os.replace``) and :func:`curvlab.io.load` with ``raw=True``. Unlike :func:`curvlab.save`, they
take any ``Dataset``/``DataTree`` and replace an existing file, because the tracker rewrites its file
after every measurement.

Example:
    >>> import tempfile, pathlib, xarray as xr
    >>> tree = xr.DataTree.from_dict({"/a": xr.Dataset({"x": ("n", [1.0, 2.0])}, attrs={"kind": "demo"})})
    >>> path = write(tree, pathlib.Path(tempfile.mkdtemp()) / "t.nc")
    >>> back = read(path)
    >>> back["a"]["x"].values.tolist(), back["a"].attrs["kind"]
    ([1.0, 2.0], 'demo')
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from curvlab.io import load, write_netcdf

__all__ = ["compact", "read", "write"]


def _compact_dataset(ds: xr.Dataset, float32: bool, level: int) -> xr.Dataset:
    out = ds.copy()
    for name, var in out.variables.items():
        if float32 and var.dtype == "float64" and name not in out.dims:
            out[name] = var.astype("float32")
            out[name].attrs["stored_as"] = "float32"
        if out[name].ndim and out[name].dtype.kind in "fiu":
            out[name].encoding.update(zlib=True, complevel=level, shuffle=True)
    return out


def compact(obj: xr.Dataset | xr.DataTree, *, float32: bool = True, level: int = 4):
    """A copy for storage: float64 variables as float32 (``float32``), every numeric array gzip-compressed.

    A variable converted to float32 gets the attribute ``stored_as = "float32"`` (reading gives float32 arrays;
    representations load them at that precision).

    Example:
        >>> import numpy as np
        >>> ds = compact(xr.Dataset({"x": ("n", np.arange(3.0))}))
        >>> ds.x.dtype, ds.x.encoding["zlib"]
        (dtype('float32'), True)
    """
    if isinstance(obj, xr.DataTree):
        return xr.DataTree.from_dict({node.path: _compact_dataset(node.to_dataset(inherit=False), float32, level)
                                      for node in obj.subtree})
    return _compact_dataset(obj, float32, level)


def write(obj: xr.Dataset | xr.DataTree, path: str | os.PathLike) -> Path:
    """Write a Dataset or DataTree to ``path`` atomically (creating its directory); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_netcdf(obj, path, overwrite=True)


def read(path: str | os.PathLike) -> xr.Dataset | xr.DataTree:
    """Read a netCDF file fully into memory: a DataTree if it has groups, else a Dataset."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return load(path, raw=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a netCDF file ({err})") from err
