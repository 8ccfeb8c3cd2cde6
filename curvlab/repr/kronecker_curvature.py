"""Kronecker-factored curvature of a model: block-diagonal over layers, one :class:`KroneckerFactors` each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import xarray as xr

from curvlab.partition import Partition
from curvlab.repr._checks import check_attrs, check_same_dtype_device, check_square
from curvlab.repr._export import child_dataset, decode_common, export_attrs_node, require, to_tensor
from curvlab.repr.block_diagonal import BlockStructured, DenseBlock
from curvlab.repr.grouped_kronecker import GroupedKroneckerFactors
from curvlab.repr.kronecker import KroneckerFactors

__all__ = ["KroneckerCurvature"]


class KroneckerCurvature(BlockStructured):
    """C = blockdiag over layers of G_l ⊗ A_l (each a :class:`KroneckerFactors`), zero across layers.

    A grouped layer (a convolution with ``groups`` g) holds :class:`GroupedKroneckerFactors` (one pair
    of factors per group). A layer that has no Kronecker rule (e.g. BatchNorm) holds a dense block
    tensor [n_l, n_l] instead, so that no parameter is silently left out. Every operation works block by block through the
    factors (see :mod:`curvlab.repr.kronecker` for the costs); ``dense``/``eigh`` are guarded.

    Args:
        layers: ``{layer name: KroneckerFactors | GroupedKroneckerFactors | tensor [n_l, n_l]}``, one entry
            per group of ``partition``.
        partition: one group per layer (kind ``"layer"``); a layer's group holds its weight then bias.
        quantity: e.g. ``"kfac"``.
        attrs: provenance attributes.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(1, 1, bias=False))
        >>> part = Partition.from_model(model, "layer")                # groups "0" (P=2) and "1" (P=1)
        >>> C = KroneckerCurvature({"0": KroneckerFactors(torch.eye(2), torch.tensor([[3.0]])),
        ...                         "1": torch.tensor([[5.0]])}, part)
        >>> C.dense().diagonal().tolist(), C.trace().item()
        ([3.0, 3.0, 5.0], 11.0)
    """

    kind = "kronecker"

    def __init__(
        self,
        layers: Mapping[str, KroneckerFactors | torch.Tensor],
        partition: Partition,
        *,
        quantity: str = "kfac",
        attrs: Mapping[str, Any] | None = None,
    ):
        if not isinstance(layers, Mapping):
            raise TypeError(
                f"layers must map layer names to factors, got {type(layers).__qualname__}"
            )
        names = partition.group_names
        missing = [n for n in names if n not in layers]
        unknown = [str(k) for k in layers if k not in names]
        if missing:
            raise ValueError(
                f"layers misses groups (layers) of the partition: {', '.join(missing)}"
            )
        if unknown:
            raise ValueError(
                f"layers has keys that are not groups of the partition: {', '.join(unknown)}"
            )
        checked: dict[str, KroneckerFactors | torch.Tensor] = {}
        for name in names:
            group = partition.group(name)
            layer_names = {p.layer or p.name for p in group.params}
            if len(layer_names) != 1:
                raise ValueError(
                    f"group {name!r} spans several layers ({', '.join(sorted(layer_names))}); "
                    "KroneckerCurvature needs a partition with one group per layer (kind 'layer')"
                )
            value = layers[name]
            if isinstance(value, KroneckerFactors):
                sizes = [p.numel for p in group.params]
                want = [value.out_features * value.in_features] + (
                    [value.out_features] if value.bias else []
                )
                if sizes != want or group.size != sum(want):
                    raise ValueError(
                        f"layers[{name!r}]: the factors cover parameters of sizes {want} (weight, bias), "
                        f"but the layer's parameters {', '.join(group.param_names)} have sizes {sizes}"
                    )
                checked[name] = value
            elif isinstance(value, GroupedKroneckerFactors):
                if value.shape[0] != group.size:
                    raise ValueError(
                        f"layers[{name!r}]: the grouped factors cover {value.shape[0]} entries, the layer {group.size}"
                    )
                checked[name] = value
            elif isinstance(value, torch.Tensor):
                checked[name] = check_square(value, f"layers[{name!r}]", group.size)
            else:
                raise TypeError(
                    f"layers[{name!r}] must be KroneckerFactors, GroupedKroneckerFactors or a tensor, "
                    f"got {type(value).__qualname__}"
                )
        check_same_dtype_device(
            {
                f"layers[{n!r}]": _any_tensor(v) for n, v in checked.items()
            }
        )
        first = checked[names[0]]
        first = _any_tensor(first)
        self._dtype, self._device = first.dtype, first.device
        self._layers = checked
        self._parts = [
            DenseBlock(v) if isinstance(v, torch.Tensor) else v for v in checked.values()
        ]
        super().__init__(partition, quantity=quantity, attrs=check_attrs(attrs))

    @property
    def layers(self) -> dict[str, KroneckerFactors | GroupedKroneckerFactors | torch.Tensor]:
        """``{layer name: KroneckerFactors, GroupedKroneckerFactors or dense block}`` in the partition's order."""
        return dict(self._layers)

    def _to_xarray(self) -> xr.DataTree:
        labels = self.partition.flat_labels()
        nodes = {"/": xr.Dataset()}
        for g, (name, value) in enumerate(self._layers.items()):
            group = self.partition.groups[g]
            info = export_attrs_node(
                layer=name,
                params=list(group.param_names),
                offset=int(group.indices[0]),
                block=_BLOCKS.get(type(value), "dense"),
            )
            if not isinstance(value, torch.Tensor):
                node = value.to_xarray()
            else:
                node = self._dense_block_dataset(g, value, labels)
            node.attrs.update(info)
            nodes[f"layer{g}"] = node
        return xr.DataTree.from_dict(nodes)

    @classmethod
    def _from_xarray(cls, obj) -> KroneckerCurvature:
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind)
        layers: dict[str, KroneckerFactors | torch.Tensor] = {}
        for g, name in enumerate(partition.group_names):
            node = child_dataset(obj, f"layer{g}", cls.kind)
            block = node.attrs.get("block")
            node.attrs = {k: v for k, v in node.attrs.items() if k not in _NODE_ATTRS}
            if block == "grouped_kronecker":
                tree = obj[f"layer{g}"].copy()
                tree.attrs = dict(node.attrs)
                layers[name] = GroupedKroneckerFactors.from_xarray(tree)
            elif block == "kronecker":
                layers[name] = KroneckerFactors.from_xarray(node)
            elif block == "dense":
                require(node, ["matrix"], cls.kind)
                layers[name] = to_tensor(node["matrix"].transpose("row", "col").values)
            else:
                raise ValueError(
                    f"the {cls.kind!r} export's group layer{g} has an unknown block {block!r}"
                )
        return cls(layers, partition, quantity=quantity, attrs=attrs)


_NODE_ATTRS = ("layer", "params", "offset", "block")
_BLOCKS = {KroneckerFactors: "kronecker", GroupedKroneckerFactors: "grouped_kronecker"}


def _any_tensor(value) -> torch.Tensor:
    """A tensor of a layer entry (for its dtype and device)."""
    if isinstance(value, torch.Tensor):
        return value
    return value.G if isinstance(value, KroneckerFactors) else value.groups[0].G
