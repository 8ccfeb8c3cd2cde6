"""Helpers shared by the ``to_xarray``/``from_xarray`` of every representation.

The schema they implement is documented in ``docs/export-schema.md``: a ``row``/``col`` dimension
carries the flat index (reference ordering) as its coordinate, plus the non-dimension coordinates
``<dim>_group``, ``<dim>_param``, ``<dim>_layer`` and ``<dim>_element`` from
:meth:`curvlab.partition.Partition.flat_labels`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from curvlab.partition import Partition
from curvlab.repr._checks import RESERVED_ATTRS

#: Human-readable names of the quantities, used in CF ``long_name`` attributes.
QUANTITY_NAMES: dict[str, str] = {
    "ggn": "generalised Gauss-Newton matrix",
    "hessian": "Hessian of the loss",
    "fisher": "Fisher information matrix",
    "fisher_mc": "Monte-Carlo Fisher information matrix",
    "empirical_fisher": "empirical Fisher matrix",
    "kfac": "Kronecker-factored curvature (KFAC)",
    "ekfac": "eigenvalue-corrected Kronecker-factored curvature (EKFAC)",
    "kflr": "Kronecker-factored low-rank curvature (KFLR)",
    "kfra": "Kronecker-factored recursive approximation (KFRA)",
    "newton_summary": "GroupedNewton summary matrix",
}

_COORD_NAMES = {
    "group": "parameter group",
    "param": "parameter name",
    "layer": "layer (qualified name of the owning module)",
    "element": "index inside the flattened parameter tensor",
}


def long_name(quantity: str, what: str = "") -> str:
    """CF ``long_name`` for a variable holding ``what`` of ``quantity``."""
    name = QUANTITY_NAMES.get(quantity, quantity)
    return f"{what} of the {name}" if what else name


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy of ``tensor`` with the same dtype (bfloat16 has no numpy dtype and is refused)."""
    if tensor.dtype == torch.bfloat16:
        raise TypeError("bfloat16 tensors cannot be exported: convert to float32 first")
    return tensor.detach().cpu().numpy().copy()


def to_tensor(values: Any) -> torch.Tensor:
    """A CPU tensor owning a copy of ``values`` (same dtype)."""
    return torch.from_numpy(np.array(values, copy=True))


def flat_coords(
    partition: Partition,
    dim: str,
    indices: Sequence[int] | torch.Tensor | None = None,
    labels: Mapping[str, list] | None = None,
) -> dict[str, tuple]:
    """Coordinates for a dimension ``dim`` running over flat parameter ``indices`` (default: all P).

    Returns ``{dim: flat index, f"{dim}_group": ..., f"{dim}_param": ..., f"{dim}_layer": ...,
    f"{dim}_element": ...}`` as ``(dims, values, attrs)`` tuples for ``xarray.Dataset``.

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(2, 1), "canonical")
        >>> c = flat_coords(part, "row")
        >>> c["row"][1].tolist(), c["row_param"][1].tolist()
        ([0, 1, 2], ['weight', 'weight', 'bias'])
    """
    labels = labels if labels is not None else partition.flat_labels()
    if indices is None:
        idx = np.arange(partition.num_params, dtype=np.int64)
    else:
        idx = np.asarray(
            indices.tolist() if isinstance(indices, torch.Tensor) else indices, np.int64
        )
    coords: dict[str, tuple] = {
        dim: (dim, idx, {"long_name": "flat parameter index (reference ordering)", "units": "1"})
    }
    for key, description in _COORD_NAMES.items():
        column = labels[key]
        values = [column[i] for i in idx.tolist()]
        array = np.asarray(values, dtype=np.int64 if key == "element" else str)
        coords[f"{dim}_{key}"] = (dim, array, {"long_name": description})
    return coords


def export_attrs_node(**attrs: Any) -> dict[str, Any]:
    """netCDF-safe node attributes: booleans become 0/1, tuples become lists, ``None`` is left out."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def decode_common(
    attrs: Mapping[str, Any], kind: str, extra_reserved: Sequence[str] = ()
) -> tuple[Partition, str, dict[str, Any]]:
    """``(partition, quantity, user attrs)`` from the root attributes written by ``to_xarray``."""
    found = attrs.get("curvlab_kind")
    if found != kind:
        raise ValueError(f"expected an export with curvlab_kind={kind!r}, got {found!r}")
    for key in ("partition", "quantity"):
        if key not in attrs:
            raise ValueError(f"the {kind!r} export lacks its {key!r} attribute")
    reserved = RESERVED_ATTRS.union(extra_reserved)
    user = {k: _plain(v) for k, v in attrs.items() if k not in reserved}
    return Partition.from_json(str(attrs["partition"])), str(attrs["quantity"]), user


def require(ds: Any, names: Sequence[str], kind: str) -> None:
    """Raise ValueError naming the first variable of ``names`` missing from ``ds``."""
    for name in names:
        if name not in ds.variables:
            raise ValueError(f"the {kind!r} export lacks the variable {name!r}")


def child_dataset(tree: Any, name: str, kind: str) -> xr.Dataset:
    """The dataset of the child group ``name`` of a DataTree export, or an error naming what is wrong."""
    if not isinstance(tree, xr.DataTree):
        raise TypeError(f"a {kind!r} export is an xarray.DataTree, got {type(tree).__qualname__}")
    if name not in tree.children:
        raise ValueError(f"the {kind!r} export lacks the group {name!r}")
    return tree[name].to_dataset()
