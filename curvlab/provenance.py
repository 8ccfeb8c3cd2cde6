"""Provenance attributes attached to every exported object (netCDF-safe: strings and numbers only)."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["provenance"]


@functools.cache
def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import xarray

    from curvlab import __version__

    return {
        "curvlab_version": __version__,
        "torch_version": str(torch.__version__),
        "xarray_version": str(xarray.__version__),
        "git_sha": _git_sha(),
    }


def provenance(
    *,
    model: torch.nn.Module | None = None,
    loss_fn: torch.nn.Module | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    config: Mapping[str, Any] | None = None,
    **extra: str | int | float,
) -> dict[str, str | int | float]:
    """Attributes describing how a result was made: versions, git SHA, model, loss, batch size, dtype, config.

    ``config`` is stored as a JSON string. Entries that are ``None`` are left out (netCDF has no null).

    Example:
        >>> attrs = provenance(batch_size=32, config={"steps": 10})
        >>> attrs["batch_size"], attrs["config"]
        (32, '{"steps": 10}')
    """
    attrs: dict[str, str | int | float] = dict(_versions())
    attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if model is not None:
        attrs["model"] = repr(model)
    if loss_fn is not None:
        attrs["loss"] = repr(loss_fn)
    if batch_size is not None:
        attrs["batch_size"] = int(batch_size)
    if dtype is not None:
        attrs["dtype"] = str(dtype).removeprefix("torch.")
    if config is not None:
        attrs["config"] = json.dumps(config, sort_keys=True, default=str)
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return attrs
