"""Kronecker factors of a grouped layer: one :class:`KroneckerFactors` per group, zero across groups.

A convolution with g groups, weight W [O, C_in/g, *k] and bias b [O], is g independent convolutions:
group j maps input channels j·C_in/g … to output channels j·O/g … (O_g = O/g each). Its curvature
block is therefore blockdiag_j(G_j ⊗ A_j) over the entries of group j (its O_g weight rows, then its
O_g bias entries), with A_j [I'_g, I'_g] and G_j [O_g, O_g] the factors of that group alone: the
factors of the same layer split into g ungrouped convolutions. Every operation costs the sum over the
groups. The exact curvature block couples the groups (through the output-side factors that reach
all channels); like KFAC for any two layers, the approximation drops those cross terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import xarray as xr

from curvlab.partition import ParameterInfo, Partition
from curvlab.repr._checks import check_attrs, check_same_dtype_device
from curvlab.repr._export import child_dataset, decode_common, export_attrs_node
from curvlab.repr.block_diagonal import BlockStructured
from curvlab.repr.kronecker import KroneckerFactors

__all__ = ["GroupedKroneckerFactors"]


def _layer_partition(weight_shape: tuple[int, ...], bias: bool) -> Partition:
    numel = 1
    for size in weight_shape:
        numel *= size
    params = [ParameterInfo("weight", "", tuple(weight_shape), 0)]
    if bias:
        params.append(ParameterInfo("bias", "", (weight_shape[0],), numel))
    return Partition(params, {p.name: [(p.name, None)] for p in params}, "canonical")


class GroupedKroneckerFactors(BlockStructured):
    """blockdiag over the g groups of a grouped layer of G_j ⊗ A_j (see the module docstring).

    Args:
        groups: one :class:`KroneckerFactors` per group, all with the same shapes and bias flag
            (each over its group's [O_g, *in] weight rows and O_g bias entries).
        weight_shape: the whole layer's weight shape [g·O_g, *in] (default (g·O_g, I)).
        partition: over the layer's own parameters (default: ``weight`` then ``bias``).
        quantity: e.g. ``"kflr"``.
        attrs: provenance attributes.

    Example:
        >>> a, b = KroneckerFactors(torch.eye(2), torch.tensor([[2.0]])), KroneckerFactors(torch.eye(2), torch.tensor([[3.0]]))
        >>> C = GroupedKroneckerFactors([a, b])                       # W [2, 2]: row 0 group 0, row 1 group 1
        >>> C.dense().diagonal().tolist(), C.solve(torch.ones(4), damping=1.0).tolist()
        ([2.0, 2.0, 3.0, 3.0], [0.3333333432674408, 0.3333333432674408, 0.25, 0.25])
    """

    kind = "grouped_kronecker_factors"

    def __init__(
        self,
        groups: Sequence[KroneckerFactors],
        *,
        weight_shape: Sequence[int] | None = None,
        partition: Partition | None = None,
        quantity: str = "kfac",
        attrs: Mapping[str, Any] | None = None,
    ):
        groups = list(groups)
        if not groups or not all(isinstance(k, KroneckerFactors) for k in groups):
            raise TypeError("groups must be a non-empty sequence of KroneckerFactors")
        first = groups[0]
        shape = (first.out_features, first.in_features, first.bias)
        for j, k in enumerate(groups):
            if (k.out_features, k.in_features, k.bias) != shape:
                raise ValueError(
                    f"groups[{j}] covers (O_g, I, bias) = {(k.out_features, k.in_features, k.bias)}, "
                    f"groups[0] {shape}: every group of a layer has the same shapes"
                )
        check_same_dtype_device({f"groups[{j}].G": k.G for j, k in enumerate(groups)})
        out_g, inputs, bias = shape
        count = len(groups)
        weight_shape = tuple(weight_shape) if weight_shape is not None else (count * out_g, inputs)
        per_row = 1
        for size in weight_shape[1:]:
            per_row *= size
        if weight_shape[0] != count * out_g or per_row != inputs:
            raise ValueError(
                f"weight_shape {weight_shape} does not hold {count} groups of [{out_g}, {inputs}] weight rows"
            )
        self.weight_shape = weight_shape
        self._groups = groups
        self._parts = groups
        self._dtype, self._device = first.dtype, first.device
        weights = count * out_g * inputs
        self._group_indices = []
        for j in range(count):
            idx = [torch.arange(j * out_g * inputs, (j + 1) * out_g * inputs)]
            if bias:
                idx.append(weights + torch.arange(j * out_g, (j + 1) * out_g))
            self._group_indices.append(torch.cat(idx))
        partition = partition if partition is not None else _layer_partition(weight_shape, bias)
        if partition.num_params != weights + (count * out_g if bias else 0):
            raise ValueError(f"partition covers {partition.num_params} entries, the groups {weights + count * out_g * bias}")
        super().__init__(partition, quantity=quantity, attrs=check_attrs(attrs, ("weight_shape",)))

    @property
    def groups(self) -> list[KroneckerFactors]:
        """The per-group factors, in group order."""
        return list(self._groups)

    @property
    def bias(self) -> bool:
        return self._groups[0].bias

    def _indices(self, g: int) -> torch.Tensor:
        return self._group_indices[g].to(self.device)

    def _block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self._dense()[rows.to(self.device)[:, None], cols.to(self.device)[None, :]]

    def _to_xarray(self) -> xr.DataTree:
        nodes = {"/": xr.Dataset(attrs=export_attrs_node(weight_shape=list(self.weight_shape)))}
        for j, factors in enumerate(self._groups):
            nodes[f"group{j}"] = factors.to_xarray()
        return xr.DataTree.from_dict(nodes)

    @classmethod
    def _from_xarray(cls, obj) -> GroupedKroneckerFactors:
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind, ("weight_shape",))
        groups, j = [], 0
        while f"group{j}" in obj.children:
            groups.append(KroneckerFactors.from_xarray(child_dataset(obj, f"group{j}", cls.kind)))
            j += 1
        weight_shape = [int(s) for s in obj.attrs["weight_shape"]]
        return cls(groups, weight_shape=weight_shape, partition=partition, quantity=quantity, attrs=attrs)
