"""Data sets for the CLI, the studies and the benchmarks, read locally (nothing is downloaded).

* ``digits``   – scikit-learn's 8×8 digits (1797 images, 10 classes), pixels scaled to [0, 1];
* ``diabetes`` – scikit-learn's diabetes regression (442 × 10), features and target standardised;
* ``sine``     – the SGN paper's noisy sine: x ~ U(−1, 1), y = sin(10x) + N(0, 0.01²), 10 000 points;
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "SplitDataset", "load_dataset", "read_idx"]

DATASETS = ("digits", "diabetes", "sine", "mnist")


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


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), as used by the original MNIST distribution."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\x00\x00":
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[raw[2]]
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)


def _read_mnist(path: str | Path | None):
    if path is None:
        raise ValueError("the mnist data set needs a path: a .npz file or an IDX images file")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MNIST file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path) as npz:
            keys = set(npz.files)
            if {"images", "labels"} <= keys:
                x, y = npz["images"], npz["labels"]
            elif {"x", "y"} <= keys:
                x, y = npz["x"], npz["y"]
            elif "data" in keys:
                x, y = npz["data"], None
            else:
                raise ValueError(f"{path}: expected keys images/labels, x/y or data; found {sorted(keys)}")
    else:
        x = read_idx(path)
        label_path = Path(str(path).replace("images-idx3", "labels-idx1"))
        y = read_idx(label_path) if label_path != path and label_path.exists() else None
    x = x.astype(np.float64)
    if x.max() > 1.0:
        x = x / 255.0
    return x.reshape(len(x), 1, 28, 28), (None if y is None else y.astype(np.int64))


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
