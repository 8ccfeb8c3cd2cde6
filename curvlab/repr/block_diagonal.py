"""Block-diagonal curvature: one dense block per group of a partition, zero across groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import xarray as xr

from curvlab.partition import Partition
from curvlab.repr._checks import check_attrs, check_same_dtype_device, check_square
from curvlab.repr._export import (
    child_dataset,
    decode_common,
    export_attrs_node,
    flat_coords,
    long_name,
    require,
    to_numpy,
    to_tensor,
)
from curvlab.repr.base import CurvatureRepresentation

__all__ = ["BlockDiagonalCurvature"]


class DenseBlock:
    """A symmetric [n, n] tensor behind the private hooks a block-structured representation calls."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix

    def _dense(self) -> torch.Tensor:
        return self.matrix

    def _diagonal(self) -> torch.Tensor:
        return self.matrix.diagonal().clone()

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v

    def _eigvalsh(self) -> torch.Tensor:
        return torch.linalg.eigvalsh(self.matrix)

    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.linalg.eigh(self.matrix)

    def _solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        eye = torch.eye(self.matrix.shape[0], dtype=self.matrix.dtype, device=self.matrix.device)
        return torch.linalg.solve(self.matrix + damping * eye, v)

    def trace(self) -> torch.Tensor:
        return self.matrix.diagonal().sum()


class BlockStructured(CurvatureRepresentation):
    """Shared machinery for matrices that are block-diagonal over the groups of their partition.

    Subclasses set ``self._parts``: one object per group, in group order, implementing ``_dense``,
    ``_diagonal``, ``_matvec``, ``_eigvalsh``, ``_eigh``, ``_solve`` and ``trace`` over that group's
    entries (in ascending flat order). Every operation then costs the sum over the blocks.
    """

    _parts: Sequence[Any]

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def _indices(self, g: int) -> torch.Tensor:
        return self.partition.groups[g].indices.to(self.device)

    def _dense(self) -> torch.Tensor:
        p = self.shape[0]
        out = torch.zeros(p, p, dtype=self.dtype, device=self.device)
        for g, part in enumerate(self._parts):
            idx = self._indices(g)
            out[idx[:, None], idx[None, :]] = part._dense()
        return out

    def _block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        rows, cols = rows.to(self.device), cols.to(self.device)
        gid = self.partition.group_ids().to(self.device)
        out = torch.zeros(rows.numel(), cols.numel(), dtype=self.dtype, device=self.device)
        for g, part in enumerate(self._parts):
            r = (gid[rows] == g).nonzero().flatten()
            c = (gid[cols] == g).nonzero().flatten()
            if r.numel() and c.numel():
                idx = self._indices(g)
                local_r = torch.searchsorted(idx, rows[r])
                local_c = torch.searchsorted(idx, cols[c])
                out[r[:, None], c[None, :]] = part._dense()[local_r[:, None], local_c[None, :]]
        return out

    def _diagonal(self) -> torch.Tensor:
        out = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        for g, part in enumerate(self._parts):
            out[self._indices(g)] = part._diagonal()
        return out

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for g, part in enumerate(self._parts):
            idx = self._indices(g)
            out[idx] = part._matvec(v[idx])
        return out

    def _eigvalsh(self) -> torch.Tensor:
        return torch.cat([part._eigvalsh() for part in self._parts]).sort().values

    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.shape[0]
        values, vectors, col = [], torch.zeros(p, p, dtype=self.dtype, device=self.device), 0
        for g, part in enumerate(self._parts):
            lam, q = part._eigh()
            idx = self._indices(g)
            vectors[idx, col : col + lam.numel()] = q
            values.append(lam)
            col += lam.numel()
        values, order = torch.cat(values).sort()
        return values, vectors[:, order]

    def _solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        out = torch.zeros_like(v)
        for g, part in enumerate(self._parts):
            idx = self._indices(g)
            out[idx] = part._solve(v[idx], damping)
        return out

    def trace(self) -> torch.Tensor:
        """tr(C), the sum of the blocks' traces (0-d tensor)."""
        return torch.stack([part.trace() for part in self._parts]).sum()

    def _dense_block_dataset(
        self, g: int, matrix: torch.Tensor, labels: Mapping[str, list]
    ) -> xr.Dataset:
        idx = self.partition.groups[g].indices
        coords = {
            **flat_coords(self.partition, "row", idx, labels),
            **flat_coords(self.partition, "col", idx, labels),
        }
        name = self.partition.groups[g].name
        attrs = {"long_name": long_name(self.quantity, f"block of group {name}")}
        return xr.Dataset(
            {"matrix": (("row", "col"), to_numpy(matrix), attrs)},
            coords=coords,
            attrs=export_attrs_node(group=name),
        )


class BlockDiagonalCurvature(BlockStructured):
    """C = blockdiag(C_1, ..., C_S): one symmetric block per group of the partition, zero across groups.

    Costs add up over the blocks: matvec Σ n_g², eigvalsh/solve Σ n_g³, storage Σ n_g².
    If a group's entries are not contiguous, its block is still indexed by the group's entries in
    ascending flat order (``partition.group(name).indices``).

    Args:
        blocks: ``{group name: tensor [n_g, n_g]}`` with one entry for every group of ``partition``.
        partition: the groups (e.g. ``"layer"`` for per-layer blocks).
        quantity: e.g. ``"ggn"``.
        attrs: provenance attributes.
        validate: ``False`` skips the symmetry test of the blocks (for blocks symmetric by
            construction); shapes and finiteness are always checked.

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(1, 1), "canonical")   # groups: weight, bias
        >>> C = BlockDiagonalCurvature({"weight": torch.tensor([[2.0]]), "bias": torch.tensor([[3.0]])},
        ...                            part, quantity="ggn")
        >>> C.dense().tolist(), C.block("weight", "bias").tolist(), C.trace().item()
        ([[2.0, 0.0], [0.0, 3.0]], [[0.0]], 5.0)
    """

    kind = "block_diagonal"

    def __init__(
        self,
        blocks: Mapping[str, torch.Tensor],
        partition: Partition,
        *,
        quantity: str,
        attrs: Mapping[str, Any] | None = None,
        validate: bool = True,
    ):
        if not isinstance(blocks, Mapping):
            raise TypeError(
                f"blocks must map group names to tensors, got {type(blocks).__qualname__}"
            )
        names = partition.group_names
        missing = [n for n in names if n not in blocks]
        unknown = [str(k) for k in blocks if k not in names]
        if missing:
            raise ValueError(f"blocks misses groups of the partition: {', '.join(missing)}")
        if unknown:
            raise ValueError(
                f"blocks has keys that are not groups of the partition: {', '.join(unknown)}"
            )
        checked = {
            n: check_square(blocks[n], f"blocks[{n!r}]", partition.group(n).size, symmetry=validate)
            for n in names
        }
        check_same_dtype_device({f"blocks[{n!r}]": t for n, t in checked.items()})
        first = checked[names[0]]
        self._dtype, self._device = first.dtype, first.device
        self._blocks = checked
        self._parts = [DenseBlock(checked[n]) for n in names]
        super().__init__(partition, quantity=quantity, attrs=check_attrs(attrs))

    @property
    def blocks(self) -> dict[str, torch.Tensor]:
        """``{group name: block [n_g, n_g]}`` in group order (the stored tensors)."""
        return dict(self._blocks)

    def _to_xarray(self) -> xr.DataTree:
        labels = self.partition.flat_labels()
        nodes = {"/": xr.Dataset()}
        for g, name in enumerate(self.partition.group_names):
            nodes[f"block{g}"] = self._dense_block_dataset(g, self._blocks[name], labels)
        return xr.DataTree.from_dict(nodes)

    @classmethod
    def _from_xarray(cls, obj) -> BlockDiagonalCurvature:
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind)
        blocks = {}
        for g, name in enumerate(partition.group_names):
            node = child_dataset(obj, f"block{g}", cls.kind)
            require(node, ["matrix"], cls.kind)
            blocks[name] = to_tensor(node["matrix"].transpose("row", "col").values)
        return cls(blocks, partition, quantity=quantity, attrs=attrs)
