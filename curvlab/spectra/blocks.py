"""Per-group spectra: the top eigenvalues of each diagonal block C_ii of a partitioned curvature matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from curvlab.spectra.eigen import top_eigenvalues

__all__ = ["block_spectra"]


def block_spectra(
    op,
    groups: Sequence[str] | None = None,
    k: int = 5,
    *,
    dense_below: int = 64,
    generator: torch.Generator | None = None,
    **lanczos,
) -> xr.DataArray:
    """The k largest eigenvalues of each diagonal block C_gg, descending; NaN where a block has fewer than k.

    Operators are restricted (``op.restrict([g])``) and their blocks solved by Lanczos; blocks of fewer than
    ``dense_below`` entries (or representations without ``restrict``) are materialised with ``op.block(g, g)``
    and solved exactly.

    Args:
        op: a :class:`~curvlab.repr.base.CurvatureRepresentation` (its partition names the groups).
        groups: group names (default: all groups of the partition).
        k: eigenvalues per group.
        dense_below: block size under which the dense route is used.
        generator, **lanczos: passed to :func:`~curvlab.spectra.top_eigenvalues`.

    Returns:
        DataArray [S, k] with dims ``group``, ``eigenvalue`` and coordinates ``group_size`` and ``method``.

    Example:
        >>> import torch.nn as nn, curvlab
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> data = (torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,)))
        >>> op = curvlab.operators.GGNOperator(model, nn.CrossEntropyLoss(), data)
        >>> spectra = block_spectra(op, ["0.weight", "2.bias"], k=2)
        >>> spectra.dims, spectra.sel(group="2.bias").values.shape
        (('group', 'eigenvalue'), (2,))
    """
    names = list(groups) if groups is not None else list(op.partition.group_names)
    values = np.full((len(names), k), np.nan)
    sizes, methods = [], []
    for i, name in enumerate(names):
        size = op.partition.group(name).size
        sizes.append(size)
        if size < dense_below or size <= k or not hasattr(op, "restrict"):
            eig = torch.linalg.eigvalsh(op.block(name, name).to(torch.float64)).flip(0)[:k]
            values[i, : eig.numel()] = eig.cpu().numpy()
            methods.append("dense")
        else:
            values[i] = top_eigenvalues(op.restrict([name]), k, generator=generator, **lanczos)[
                "eigenvalues"
            ].values
            methods.append("lanczos")
    return xr.DataArray(
        values,
        dims=("group", "eigenvalue"),
        coords={
            "group": names,
            "eigenvalue": np.arange(k),
            "group_size": ("group", sizes),
            "method": ("group", methods),
        },
        name="block_eigenvalues",
        attrs={"long_name": "eigenvalue of the diagonal block", "order": "descending"},
    )
