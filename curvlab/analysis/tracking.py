"""Record chosen quantities every k steps of your own training loop, saving as you go.

A :class:`Tracker` holds named *measures*: callables taking no arguments that return a mapping of
floats / tensors / arrays (e.g. ``optimizer.statistics`` or a closure around :func:`curvlab.analysis.compare`)
or an ``xarray.Dataset``. Calling ``tracker(step)`` on every step measures when ``step % every == 0``,
appends the results along a ``step`` dimension and, if the tracker has a ``path``, rewrites the netCDF
file atomically (:func:`curvlab.analysis.netcdf.write`: written beside it, then renamed), so an interrupted run keeps every completed
measurement. Values of shape [n, m, ...] get dims ``<name>_dim0``, ``<name>_dim1``, ...; a quantity
that is missing at some step is NaN there.

Example:
    >>> import torch
    >>> weights = torch.ones(3)
    >>> tracker = Tracker({"norm": lambda: {"weight_norm": weights.norm()}}, every=2)
    >>> for step in range(5):
    ...     _ = tracker(step)
    ...     weights *= 2
    >>> tracker.dataset.weight_norm.values.round(3).tolist(), tracker.dataset.step.values.tolist()
    ([1.732, 6.928, 27.713], [0, 2, 4])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from curvlab.analysis import netcdf

__all__ = ["Tracker"]

Measure = Callable[[], Mapping[str, Any] | xr.Dataset]


def _to_dataset(values: Mapping[str, Any] | xr.Dataset, source: str) -> xr.Dataset:
    if isinstance(values, xr.Dataset):
        return values
    if not isinstance(values, Mapping):
        raise TypeError(f"measure {source!r} returned {type(values).__qualname__}; expected a mapping or a Dataset")
    variables = {}
    for name, value in values.items():
        if isinstance(value, xr.DataArray):
            variables[name] = value
            continue
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            value = value.to(torch.float64) if value.is_floating_point() else value
            value = value.numpy()
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"measure {source!r}: value {name!r} of type {type(value).__qualname__} is not numeric")
        variables[name] = xr.DataArray(array, dims=[f"{name}_dim{i}" for i in range(array.ndim)])
    return xr.Dataset(variables)


class Tracker:
    """Measure every ``every`` steps and keep the results along ``step``.

    Args:
        measures: ``{name: callable}`` or one callable; each returns a mapping or a Dataset.
        every: measure on steps divisible by ``every``.
        path: netCDF file rewritten after every measurement (``None``: keep in memory only).
        overwrite: allow replacing an existing ``path``.
        attrs: attributes (provenance) for the saved dataset.

    Use it as a context manager to be sure the last state is written even when the loop raises.
    """

    def __init__(
        self,
        measures: Mapping[str, Measure] | Measure,
        *,
        every: int = 1,
        path: str | os.PathLike | None = None,
        overwrite: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        if callable(measures) and not isinstance(measures, Mapping):
            measures = {getattr(measures, "__name__", "measure"): measures}
        if not measures:
            raise ValueError("Tracker needs at least one measure")
        for name, fn in measures.items():
            if not callable(fn):
                raise TypeError(f"measure {name!r} is a {type(fn).__qualname__}, not a callable")
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.measures = dict(measures)
        self.every = int(every)
        self.path = None if path is None else Path(path)
        if self.path is not None and self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.attrs = dict(attrs or {})
        self._records: list[xr.Dataset] = []

    @classmethod
    def measuring(cls, model, loss_fn, data, *, every: int = 1, path: str | os.PathLike | None = None,
                  overwrite: bool = False, attrs: Mapping[str, Any] | None = None, **measure_options) -> Tracker:
        """A tracker of :func:`curvlab.analysis.measure` on ``data``: dense up to ``dense_limit`` parameters,
        matrix-free above (``method="auto"``, or as ``measure_options`` say); the saved dataset's ``method``
        attribute records which.

        Example:
            >>> from torch import nn
            >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
            >>> data = (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))
            >>> tracker = Tracker.measuring(model, nn.CrossEntropyLoss(), data, approximations=["kflr"],
            ...                             dampings=[0.1], k=1)
            >>> _ = tracker(0)
            >>> tracker.dataset.attrs["method"], tracker.dataset.step.values.tolist()
            ('dense', [0])
        """
        from curvlab.analysis.measurement import measure

        def quality() -> xr.Dataset:
            return measure(model, loss_fn, data, **measure_options).quality

        return cls({"quality": quality}, every=every, path=path, overwrite=overwrite, attrs=attrs)

    def __call__(self, step: int, *_: Any) -> bool:
        """Measure if ``step % every == 0``; returns whether it did. Extra arguments are ignored, so a
        tracker can be passed directly as a ``callback(step, model)``."""
        if int(step) % self.every != 0:
            return False
        self.record(int(step))
        return True

    def record(self, step: int, extra: Mapping[str, Any] | None = None) -> xr.Dataset:
        """Run every measure now and append the result at ``step`` (plus ``extra`` values); save if a path is set."""
        parts = [_to_dataset(fn(), name) for name, fn in self.measures.items()]
        if extra:
            parts.append(_to_dataset(extra, "extra"))
        record = xr.merge(parts, compat="override", join="outer", combine_attrs="drop_conflicts")
        self._records.append(record.expand_dims(step=[int(step)]))
        if self.path is not None:
            self.save()
        return record

    @property
    def steps(self) -> list[int]:
        return [int(r.step.values[0]) for r in self._records]

    @property
    def dataset(self) -> xr.Dataset:
        """Everything recorded so far, concatenated along ``step``."""
        if not self._records:
            return xr.Dataset(coords={"step": np.zeros(0, dtype=np.int64)}, attrs=self.attrs)
        ds = xr.concat(self._records, dim="step", join="outer", data_vars="all", coords="different",
                       compat="equals", combine_attrs="drop_conflicts", fill_value=np.nan)
        ds.attrs.update(self.attrs)
        ds["step"].attrs.update(long_name="training step", units="1")
        return ds

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write :attr:`dataset` to ``path`` (default: the tracker's) atomically, gzip-compressed and lossless
        (float64 kept); returns the path."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path: give one here or to Tracker(path=...)")
        return netcdf.write(netcdf.compact(self.dataset, float32=False), target)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.path is not None and self._records:
            self.save()

    def __repr__(self) -> str:
        return f"Tracker(measures={list(self.measures)}, every={self.every}, steps={len(self._records)}, path={self.path})"
