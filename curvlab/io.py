"""Save and load curvature representations as netCDF (through h5netcdf).

:func:`save` writes ``obj.to_xarray()`` (an ``xarray.Dataset`` or ``xarray.DataTree``) atomically:
to a temporary file in the target's directory, then ``os.replace``, so an interrupted write never
leaves half a file where a good one was. :func:`load` reads the file back and dispatches on the root
attribute ``curvlab_kind`` through :data:`KINDS`, an explicit mapping from kind to the import path of
its class (imported lazily, so that this foundation module does not import the packages above it).
A file without ``curvlab_kind`` (or any file with ``raw=True``) loads as the plain xarray object.

The file schema is documented in ``docs/export-schema.md``.

Example:
    >>> import tempfile, pathlib, torch, torch.nn as nn
    >>> from curvlab.partition import Partition
    >>> from curvlab.repr import DiagonalCurvature
    >>> part = Partition.from_model(nn.Linear(2, 1), "canonical")
    >>> C = DiagonalCurvature(torch.tensor([1.0, 2.0, 3.0]), part, quantity="ggn")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "diag.nc"
    >>> _ = save(C, path)
    >>> load(path).diag.tolist()
    [1.0, 2.0, 3.0]
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["KINDS", "load", "save", "write_netcdf"]

#: ``curvlab_kind`` → ``"module:Class"``. Add a line here to make :func:`load` read a new kind; the
#: class must provide ``from_xarray(obj)``.
KINDS: Mapping[str, str] = {
    "dense": "curvlab.repr.dense:DenseCurvature",
    "block_diagonal": "curvlab.repr.block_diagonal:BlockDiagonalCurvature",
    "diagonal": "curvlab.repr.diagonal:DiagonalCurvature",
    "square_root": "curvlab.repr.square_root:SquareRootCurvature",
    "layered_square_root": "curvlab.repr.layered_square_root:LayeredSquareRootCurvature",
    "kronecker_factors": "curvlab.repr.kronecker:KroneckerFactors",
    "kronecker": "curvlab.repr.kronecker_curvature:KroneckerCurvature",
    "summary_matrix": "curvlab.repr.summary:SummaryMatrix",
    # results of layer-2 packages: named by string only, imported lazily when a file of that kind is loaded
    "curvature": "curvlab.engine.result:Curvature",
    "grouped_newton_summary": "curvlab.summary.result:GroupedNewtonSummary",
}

_ENGINE = "h5netcdf"


def _require_backend() -> None:
    """ImportError with the fix if h5netcdf's HDF5 backend, h5py, is not installed."""
    if importlib.util.find_spec("h5py") is None:
        raise ImportError(
            "curvlab.save/load write netCDF-4 through h5netcdf, which needs h5py: "
            "pip install 'h5netcdf[h5py]'"
        )


def _resolve(kind: str):
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def _check_attr_values(obj: xr.Dataset | xr.DataTree) -> None:
    """Raise TypeError naming an attribute netCDF cannot store (only str, numbers and lists of them).

    Subclasses of str are replaced by plain str in ``obj``'s attributes.
    """
    items: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(obj, xr.DataTree):
        for node in obj.subtree:
            items.append((node.path, node.attrs))
            items += [(f"{node.path}:{k}", v.attrs) for k, v in node.variables.items()]
    else:
        items.append(("/", obj.attrs))
        items += [(f"/:{k}", v.attrs) for k, v in obj.variables.items()]
    for where, attrs in items:
        for key, value in attrs.items():
            if isinstance(value, str) and type(value) is not str:
                attrs[key] = value = str(value)  # e.g. torch's TorchVersion: HDF5 needs a plain str
            values = value if isinstance(value, list | tuple | np.ndarray) else [value]
            for v in values:
                if isinstance(v, bool | np.bool_) or not isinstance(
                    v, str | int | float | np.number
                ):
                    raise TypeError(
                        f"attribute {key!r} at {where} is {type(value).__qualname__} {value!r}; netCDF "
                        "stores only strings, numbers and lists of numbers (convert it, e.g. with json.dumps)"
                    )


def save(obj: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``obj.to_xarray()`` to ``path`` as netCDF-4 (engine h5netcdf), atomically.

    Args:
        obj: a representation, or anything whose ``to_xarray()`` returns an ``xarray.Dataset`` or
            ``xarray.DataTree`` with a root attribute ``curvlab_kind`` listed in :data:`KINDS`.
        path: the target file; its directory must exist.
        overwrite: replace an existing file (otherwise ``FileExistsError`` naming ``path``).

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        FileNotFoundError: the directory of ``path`` does not exist.
        TypeError: ``obj`` has no ``to_xarray``, or an attribute is not netCDF-safe.
        ValueError: the export's ``curvlab_kind`` is missing or unknown to :func:`load`.
        ImportError: h5py (h5netcdf's HDF5 backend) is not installed.
    """
    path = Path(path)
    if not callable(getattr(obj, "to_xarray", None)):
        raise TypeError(f"save needs an object with to_xarray(), got {type(obj).__qualname__}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory {path.parent} of {path} does not exist")
    data = obj.to_xarray()
    if not isinstance(data, xr.Dataset | xr.DataTree):
        raise TypeError(
            f"{type(obj).__qualname__}.to_xarray() returned {type(data).__qualname__}, "
            "not an xarray.Dataset or xarray.DataTree"
        )
    kind = data.attrs.get("curvlab_kind")
    if kind not in KINDS:
        raise ValueError(
            f"{type(obj).__qualname__}.to_xarray() has curvlab_kind={kind!r}, which load() cannot read "
            f"back (known: {', '.join(KINDS)}); add it to curvlab.io.KINDS"
        )
    _check_attr_values(data)
    return write_netcdf(data, path, overwrite=overwrite)


def write_netcdf(data: xr.Dataset | xr.DataTree, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write any xarray ``Dataset``/``DataTree`` to ``path`` as netCDF-4 (h5netcdf), atomically.

    The file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so an interrupted write never leaves half a file at ``path``. :func:`save` uses it
    for representations; the analysis layer for its result datasets.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        FileNotFoundError: the directory of ``path`` does not exist.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory {path.parent} of {path} does not exist")
    _require_backend()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        data.to_netcdf(tmp, engine=_ENGINE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, *, raw: bool = False) -> Any:
    """Read a file written by :func:`save` back into the same representation.

    The class is chosen by the root attribute ``curvlab_kind`` through :data:`KINDS`. A file without
    that attribute, or any file when ``raw=True``, is returned as a plain ``xarray.Dataset`` (a file
    without groups) or ``xarray.DataTree`` (with groups), fully loaded into memory, without warning.
    Tensors come back on the CPU with the dtype they were saved with.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``curvlab_kind`` names a kind not in :data:`KINDS`.
        ImportError: h5py (h5netcdf's HDF5 backend) is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    _require_backend()
    tree = xr.load_datatree(path, engine=_ENGINE)
    data: xr.Dataset | xr.DataTree = tree if tree.children else tree.to_dataset()
    kind = data.attrs.get("curvlab_kind")
    if raw or kind is None:
        return data
    if kind not in KINDS:
        raise ValueError(
            f"{path} has curvlab_kind={kind!r}, which load() does not know "
            f"(known: {', '.join(KINDS)})"
        )
    return _resolve(str(kind)).from_xarray(data)
