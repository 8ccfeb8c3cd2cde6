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

import errno
import glob
import importlib
import importlib.util
import math
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from curvlab.errors import MemoryBudgetError
from curvlab.guards import format_bytes, get_memory_budget

__all__ = ["KINDS", "load", "remove_stale_temporaries", "resolve_kind", "save", "write_netcdf"]

#: ``curvlab_kind`` → ``"module:Class"``. Add a line here to make :func:`load` read a new kind; the
#: class must provide ``from_xarray(obj)``.
KINDS: Mapping[str, str] = {
    "dense": "curvlab.repr.dense:DenseCurvature",
    "block_diagonal": "curvlab.repr.block_diagonal:BlockDiagonalCurvature",
    "diagonal": "curvlab.repr.diagonal:DiagonalCurvature",
    "square_root": "curvlab.repr.square_root:SquareRootCurvature",
    "layered_square_root": "curvlab.repr.layered_square_root:LayeredSquareRootCurvature",
    "kronecker_factors": "curvlab.repr.kronecker:KroneckerFactors",
    "grouped_kronecker_factors": "curvlab.repr.grouped_kronecker:GroupedKroneckerFactors",
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


def resolve_kind(kind: Any, where: str = "the file"):
    """The class registered in :data:`KINDS` for ``kind``; ``ValueError`` naming ``where`` if unknown.

    Example:
        >>> resolve_kind("diagonal").__name__
        'DiagonalCurvature'
        >>> resolve_kind("os:system", "/x")
        Traceback (most recent call last):
        ...
        ValueError: /x has curvlab_kind='os:system', which load() does not know (known: dense, ...)
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{where} has curvlab_kind={kind!r}, which load() does not know (known: {', '.join(KINDS)})")
    module, _, name = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


_resolve = resolve_kind


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
    ``os.replace``, so an interrupted write never leaves half a file at ``path``, and the previous
    file stays intact on any failure. :func:`save` uses it for representations; the analysis layer
    for its result datasets. Details:

    * the file gets the mode the umask gives new files (as ``open`` would), not ``mkstemp``'s 0600;
    * a file that fits the memory budget is encoded in memory first and written with plain ``write``
      calls, so a full disk or a file-size limit is a clean ``OSError`` (HDF5 itself can crash the
      process when a write fails half-way); free space is checked against the encoded size first;
    * temporary files left by a killed writer on this host (``.NAME.HOST-PID.*.tmp``, PID dead) are
      removed before writing.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        FileNotFoundError: the directory of ``path`` does not exist.
        OSError: not enough free space (``errno.ENOSPC``), or the write failed; the old file is untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the directory {path.parent} of {path} does not exist")
    _require_backend()
    remove_stale_temporaries(path)
    estimate = _array_bytes(data)
    encoded = None
    if estimate <= get_memory_budget():
        encoded = memoryview(data.to_netcdf(engine=_ENGINE)).cast("B")
    _check_free_space(path, len(encoded) if encoded is not None else int(estimate * 1.1))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        if encoded is not None:
            written = 0
            while written < len(encoded):
                written += os.write(fd, encoded[written:])
            os.close(fd)
            fd = -1
        else:
            os.close(fd)
            fd = -1
            data.to_netcdf(tmp, engine=_ENGINE)
        os.replace(tmp, path)
    except BaseException as err:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, f"writing {path} failed ({err.strerror}); the previous file is untouched",
                          str(path)) from err
        raise
    return path


_HOST = socket.gethostname().replace(".", "_")  # temporary files are named .NAME.HOST-PID.XXXXXXXX.tmp
_MARGIN = 2**20  # bytes of free space kept beyond the file


def _umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _array_bytes(data: xr.Dataset | xr.DataTree) -> int:
    """Bytes of all arrays in ``data`` (an estimate of the encoded netCDF size)."""
    if isinstance(data, xr.DataTree):
        return sum(int(node.to_dataset(inherit=False).nbytes) for node in data.subtree)
    return int(data.nbytes)


def _check_free_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path.parent).free
    if free < needed + _MARGIN:
        raise OSError(
            errno.ENOSPC,
            f"not enough free space to write {path}: it needs {format_bytes(needed)}, "
            f"{format_bytes(free)} are free in {path.parent}; the previous file is untouched",
            str(path),
        )


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` left by killed writers on this host; returns those removed.

    A temporary file is named ``.NAME.HOST-PID.XXXXXXXX.tmp``; it is stale if HOST is this host and no
    process PID runs. Files of live writers, of other hosts, and anything else are left alone.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> stale = d / f".a.nc.{_HOST}-999999999.x1y2z3.tmp"  # no such PID
        >>> _ = stale.write_bytes(b"half a file")
        >>> [p.name == stale.name for p in remove_stale_temporaries(d / "a.nc")], stale.exists()
        ([True], False)
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_HOST)}-(\d+)\.[^.]+\.tmp$")
    removed = []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.match(candidate.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


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
    check_declared_size(path)
    tree = xr.load_datatree(path, engine=_ENGINE)
    data: xr.Dataset | xr.DataTree = tree if tree.children else tree.to_dataset()
    kind = data.attrs.get("curvlab_kind")
    if raw or kind is None:
        return data
    return resolve_kind(kind, str(path)).from_xarray(data)


def check_declared_size(path: str | os.PathLike) -> int:
    """Bytes the arrays of the netCDF-4/HDF5 file at ``path`` declare, checked before anything is read.

    A compressed file can declare far more than its size on disk; the total must fit the memory
    budget (:func:`curvlab.memory_budget`), else :class:`~curvlab.errors.MemoryBudgetError` naming the
    largest array. Only the headers are read. ``ValueError`` if ``path`` is not an HDF5 file.
    """
    import h5py  # noqa: PLC0415  (h5netcdf's backend; checked by _require_backend)

    path = Path(path)
    if not stat.S_ISREG(path.stat().st_mode):
        raise ValueError(f"{path} is not a regular file")
    arrays: list[tuple[int, str, tuple[int, ...], str]] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            arrays.append((math.prod(obj.shape) * obj.dtype.itemsize, name, obj.shape, str(obj.dtype)))

    try:
        with h5py.File(path, "r") as fh:
            fh.visititems(visit)
    except OSError as err:
        raise ValueError(f"{path} is not a netCDF-4 (HDF5) file: {err}") from None
    total, budget = sum(a[0] for a in arrays), get_memory_budget()
    if total > budget:
        size, name, shape, dtype = max(arrays)
        raise MemoryBudgetError(
            f"{path} declares {format_bytes(total)} of arrays (largest: /{name} {list(shape)} {dtype}, "
            f"{format_bytes(size)}), over the memory budget of {format_bytes(budget)}; nothing was read. "
            "Raise the budget with curvlab.memory_budget(...) if the file is trusted."
        )
    return total
