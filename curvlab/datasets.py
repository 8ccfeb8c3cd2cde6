"""Data sets for the CLI, the studies and the benchmarks, read locally (nothing is downloaded).

* ``digits``   – scikit-learn's 8×8 digits (1797 images, 10 classes), pixels scaled to [0, 1];
* ``diabetes`` – scikit-learn's diabetes regression (442 × 10), features and target standardised;
* ``sine``     – the SGN paper's noisy sine: x ~ U(−1, 1), y = sin(10x) + N(0, 0.01²), 10 000 points;
* ``text``     – next-character prediction on the source of Python's own ``argparse`` module (it ships
  with every Python): windows of ``TEXT_BLOCK`` characters as [N, T] token ids, their next characters
  as [N, T] targets, the characters that occur as the vocabulary;
* ``gratings`` – a generated CIFAR-style image task (for convolutional networks): 3 × 16 × 16 colour
  gratings of 10 orientations (the class), with random phase, frequency, contrast and pixel noise,
  3 000 images;
* ``mnist``    – MNIST from a user-given ``.npz`` (keys ``images``/``labels``, or ``x``/``y``, or
  ``data`` for unlabelled images) or an IDX file (``*-images-idx3-ubyte[.gz]`` with the matching
  labels file beside it); pixels scaled to [0, 1].

Example:
    >>> ds = load_dataset("sine", seed=0)
    >>> ds.train[0].shape, ds.test[0].shape, ds.task
    (torch.Size([7000, 1]), torch.Size([3000, 1]), 'regression')
"""

from __future__ import annotations

import gzip
import math
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curvlab.errors import MemoryBudgetError
from curvlab.guards import format_bytes, get_memory_budget

__all__ = ["DATASETS", "SplitDataset", "load_dataset", "read_idx", "regular_file"]

DATASETS = ("digits", "diabetes", "sine", "text", "gratings", "mnist")
#: characters per sequence of the ``text`` data set
TEXT_BLOCK = 32


@dataclass(frozen=True)
class SplitDataset:
    """Train and test tensors of one data set.

    Attributes:
        name: data set name.
        train, test: ``(inputs, targets)``; inputs [N, *sample_shape], targets [N] class indices
            (classification) or [N, D] (regression, reconstruction).
        task: ``"classification"``, ``"regression"`` or ``"reconstruction"`` (targets are the inputs).
        sample_shape: shape of one input, e.g. ``(1, 8, 8)`` for digits images.
        num_outputs: classes or regression outputs.
    """

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    task: str
    sample_shape: tuple[int, ...]
    num_outputs: int

    def flat(self) -> SplitDataset:
        """The same data with inputs flattened to [N, D] (for MLPs)."""
        def f(pair):
            x, y = pair
            return x.flatten(1), (y.flatten(1) if self.task == "reconstruction" else y)
        return SplitDataset(self.name, f(self.train), f(self.test), self.task,
                            (int(np.prod(self.sample_shape)),), self.num_outputs)

    def as_reconstruction(self) -> SplitDataset:
        """Inputs as their own targets (autoencoders)."""
        return SplitDataset(self.name, (self.train[0], self.train[0].clone()),
                            (self.test[0], self.test[0].clone()), "reconstruction",
                            self.sample_shape, int(np.prod(self.sample_shape)))


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def _tensors(pair, dtype, classification):
    x, y = pair
    return (torch.as_tensor(x, dtype=dtype),
            torch.as_tensor(y, dtype=torch.long) if classification else torch.as_tensor(y, dtype=dtype))


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def regular_file(path: str | Path, what: str = "data file") -> Path:
    """``path`` as a :class:`~pathlib.Path` if it is a regular file; else a clear error, before any read.

    Directories, FIFOs (whose read would block), devices such as ``/dev/zero`` (endless) and sockets are
    refused: ``FileNotFoundError`` if nothing is there, ``ValueError`` otherwise.

    Example:
        >>> regular_file("/dev/zero")
        Traceback (most recent call last):
        ...
        ValueError: data file /dev/zero is a character device, not a regular file
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise ValueError(f"{what} {path} is {kind}, not a regular file")
    return path


def _check_declared(path: Path, shape: tuple[int, ...], itemsize: int, what: str) -> int:
    """Elements declared by a header, refused if they exceed the memory budget once read as float64."""
    count = math.prod(shape)
    needed = count * max(itemsize, 8)  # pixels become float64
    if needed > get_memory_budget():
        raise MemoryBudgetError(
            f"{path}: {what} declares shape {list(shape)}, {format_bytes(needed)} once read, over the memory "
            f"budget of {format_bytes(get_memory_budget())}; raise it with CURVLAB_MEMORY_BUDGET if this is right"
        )
    return count


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), as used by the original MNIST distribution.

    The header (magic number, element type, shape) is checked before the data is read: the declared
    size must fit the memory budget and match the bytes in the file.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t-images-idx3-ubyte"
        >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(path).tolist()
        [7, 8, 9]
    """
    path = regular_file(path, "IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_DTYPES or head[3] == 0:
                raise ValueError(f"{path} is not an IDX file (bad magic number {head.hex() or 'empty'})")
            dtype, ndim = np.dtype(_IDX_DTYPES[head[2]]), head[3]
            dims = fh.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path} is not an IDX file (its header is cut short)")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            count = _check_declared(path, shape, dtype.itemsize, "its IDX header")
            raw = fh.read(count * dtype.itemsize + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} cannot be read as an IDX file: {err}") from None
    if len(raw) != count * dtype.itemsize:
        raise ValueError(
            f"{path}: its IDX header declares shape {list(shape)} ({count * dtype.itemsize} bytes of data), but the "
            f"file holds {'more' if len(raw) > count * dtype.itemsize else len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz``, each header checked (no pickles, declared size within budget) before reading."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .npz archive (a zip of .npy arrays; np.save writes .npy, np.savez .npz)")
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename.removesuffix(".npy")
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = header(fh)
                    if dtype.hasobject:
                        raise ValueError(f"{path}: array {key!r} holds Python objects (pickles), which are not read")
                    count = _check_declared(path, shape, dtype.itemsize, f"array {key!r}")
                    if info.file_size < count * dtype.itemsize:
                        raise ValueError(f"{path}: array {key!r} declares shape {list(shape)} but is cut short")
                    data = np.frombuffer(fh.read(count * dtype.itemsize), dtype=dtype)
                    out[key] = data.reshape(shape[::-1]).T if fortran else data.reshape(shape)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path} cannot be read as a .npz archive: {err}") from None
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path} cannot be read as a .npz archive: {err}") from None
    return out


def _read_mnist(path: str | Path | None):
    if path is None:
        raise ValueError("the mnist data set needs a path: a .npz file or an IDX images file")
    path = regular_file(path, "MNIST file")
    if path.suffix == ".npz":
        arrays = _read_npz(path)
        keys = set(arrays)
        if {"images", "labels"} <= keys:
            x, y = arrays["images"], arrays["labels"]
        elif {"x", "y"} <= keys:
            x, y = arrays["x"], arrays["y"]
        elif "data" in keys:
            x, y = arrays["data"], None
        else:
            raise ValueError(f"{path}: expected keys images/labels, x/y or data; found {sorted(keys)}")
    else:
        x = read_idx(path)
        label_path = Path(str(path).replace("images-idx3", "labels-idx1"))
        y = read_idx(label_path) if label_path != path and label_path.exists() else None
    return _check_mnist(path, x, y)


def _check_mnist(path: Path, x: np.ndarray, y: np.ndarray | None):
    """Images as [N, 1, 28, 28] in [0, 1] and labels [N] in 0..9, or a ValueError naming what is wrong."""
    if x.dtype.kind not in "uif" or x.ndim < 2 or x.shape[0] == 0 or math.prod(x.shape[1:]) != 784:
        raise ValueError(f"{path}: images must be a non-empty numeric [N, 28, 28] array, got {x.dtype} {list(x.shape)}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: images contain NaN or inf")
    if x.max() > 1.0:
        x = x / 255.0
    if y is not None:
        if y.dtype.kind not in "ui" or y.ndim != 1:
            raise ValueError(f"{path}: labels must be a 1-d integer array, got {y.dtype} {list(y.shape)}")
        if len(y) != len(x):
            raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
        if y.min() < 0 or y.max() > 9:
            raise ValueError(f"{path}: labels must lie in 0..9, got {int(y.min())}..{int(y.max())}")
        y = y.astype(np.int64)
    return x.reshape(len(x), 1, 28, 28), y


def _gratings(rng: np.random.Generator, n: int = 3000, size: int = 16, classes: int = 10):
    """[n, 3, size, size] float images, labels [n]: a grating at orientation π·label/classes, random phase,
    frequency (1.5–3 cycles per image), contrast (0.3–1) and colour phase, plus N(0, 1) pixel noise."""
    labels = rng.integers(0, classes, n)
    angle = np.pi * labels / classes
    freq = rng.uniform(1.5, 3.0, n) * 2 * np.pi / size
    phase, contrast = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.3, 1.0, n)
    colour = rng.uniform(0, 2 * np.pi, (n, 3))
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    along = np.cos(angle)[:, None, None] * i + np.sin(angle)[:, None, None] * j  # [n, size, size]
    wave = freq[:, None, None] * along + phase[:, None, None]
    x = contrast[:, None, None, None] * np.cos(wave[:, None] + colour[:, :, None, None])
    x = x + rng.normal(0.0, 1.0, x.shape)
    return x.astype(np.float64), labels.astype(np.int64)


def _text(seed: int, test_fraction: float, limit: int | None) -> SplitDataset:
    """The ``text`` data set (module docstring): non-overlapping windows of the argparse source, split at random."""
    import argparse

    text = Path(argparse.__file__).read_text(encoding="utf-8")
    index = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    windows = ids[: len(ids) // (TEXT_BLOCK + 1) * (TEXT_BLOCK + 1)].view(-1, TEXT_BLOCK + 1)
    if limit is not None:
        windows = windows[:limit]
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(windows)))
    n_test = int(round(len(windows) * test_fraction))
    test, train = windows[order[:n_test]], windows[order[n_test:]]
    return SplitDataset("text", (train[:, :-1], train[:, 1:]), (test[:, :-1], test[:, 1:]), "classification",
                        (TEXT_BLOCK,), len(index))


def load_dataset(
    name: str,
    path: str | Path | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> SplitDataset:
    """Load a data set by name (see the module docstring), shuffled and split with ``seed``.

    ``limit`` keeps only the first ``limit`` samples before splitting (smoke runs).
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        raw = load_digits()
        x, y = raw.images[:, None] / 16.0, raw.target
        task, outputs = "classification", 10
    elif name == "diabetes":
        from sklearn.datasets import load_diabetes

        raw = load_diabetes()
        x = (raw.data - raw.data.mean(0)) / raw.data.std(0)
        y = ((raw.target - raw.target.mean()) / raw.target.std())[:, None]
        task, outputs = "regression", 1
    elif name == "sine":
        rng = np.random.default_rng(seed)
        x = rng.uniform(-1.0, 1.0, size=(10_000, 1))
        y = np.sin(10 * x) + rng.normal(0.0, 0.01, size=x.shape)
        task, outputs, test_fraction = "regression", 1, 0.3
    elif name == "text":
        return _text(seed, test_fraction, limit)
    elif name == "gratings":
        x, y = _gratings(np.random.default_rng(seed))
        task, outputs = "classification", 10
    elif name == "mnist":
        x, y = _read_mnist(path)
        if y is None:
            y, task, outputs = x.reshape(len(x), -1), "reconstruction", 784
        else:
            task, outputs = "classification", 10
    else:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    train, test = _split(x, y, test_fraction, seed)
    classification = task == "classification"
    return SplitDataset(name, _tensors(train, dtype, classification), _tensors(test, dtype, classification),
                        task, tuple(x.shape[1:]), outputs)
