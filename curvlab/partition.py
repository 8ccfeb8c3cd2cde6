"""Partitions of a model's trainable parameters into named groups.

Shape vocabulary (used throughout curvlab):
    N  samples in a batch;  C  model outputs per sample;  P  trainable parameters;
    S  groups of a partition;  K  columns of a square-root factor or MC samples.

The *reference ordering* of the flat parameter vector θ ∈ R^P is the concatenation of ``p.flatten()``
over ``model.parameters()`` that have ``requires_grad``. Every [P, P] matrix in curvlab uses it.

A :class:`Partition` assigns every parameter entry to exactly one :class:`ParameterGroup`. Kinds:

* ``"canonical"`` – one group per parameter tensor, named as in ``named_parameters``;
* ``"layer"`` – one group per module owning parameters (its qualified name);
* ``"trivial"`` – a single group ``"all"``;
* ``"blocks-k"`` – the layers cut into k contiguous chunks, each split by role into weights and biases
  (GroupedNewton, appendix G): groups ``block0.weight``, ``block0.bias``, ...;
* ``"module-d"`` – one group per module at depth d of the module tree: the layers' qualified names cut to
  their first d components (``module-2`` of a ResNet: ``conv1``, ``bn1``, ``layer1.0``, ..., ``linear``;
  one group per residual block);
* ``"entries"`` – one group per scalar entry (tiny models: recovers Newton's method);
* a mapping – ``{param_name: group_name}`` or ``{group_name: [param_name, ...]}`` (custom).

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    >>> part = Partition.from_model(model, "layer")
    >>> part.group_names, part.num_params
    (('0', '2'), 11)
    >>> part.group("2").indices.tolist()
    [8, 9, 10]
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn

from curvlab.errors import PartitionError

__all__ = ["ParameterGroup", "ParameterInfo", "Partition", "PartitionSpec", "trainable_parameters"]

PartitionSpec = str | Mapping[str, str] | Mapping[str, Sequence[str]]


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs of ``model`` with ``requires_grad``, in the reference ordering."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@dataclass(frozen=True)
class ParameterInfo:
    """One trainable parameter tensor: its name, owning layer, shape and offset in the flat vector."""

    name: str
    layer: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def slice(self) -> slice:
        """The slice of the flat [P] vector holding this parameter."""
        return slice(self.offset, self.offset + self.numel)

    @property
    def role(self) -> str:
        """The last component of the name, e.g. ``"weight"`` or ``"bias"``."""
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class ParameterGroup:
    """A named group: whole parameters, or (for ``"entries"``) single entries of one parameter.

    Attributes:
        name: group name.
        params: the parameters the group touches.
        indices: LongTensor [n] of flat indices (reference ordering) of the group's entries, ascending.
    """

    name: str
    params: tuple[ParameterInfo, ...]
    indices: torch.Tensor = field(compare=False, repr=False)

    @property
    def size(self) -> int:
        return int(self.indices.numel())

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @cached_property
    def contiguous(self) -> slice | None:
        """A slice equal to ``indices`` if they are contiguous, else ``None``."""
        if self.size == 0:
            return None
        lo, hi = int(self.indices[0]), int(self.indices[-1]) + 1
        return slice(lo, hi) if hi - lo == self.size else None


class Partition:
    """Groups of trainable parameters, with offsets into the flat parameter vector.

    Build one with :meth:`from_model`; :meth:`to_dict`/:meth:`from_dict` round-trip it without the model.

    Args:
        params: all trainable parameters in the reference ordering.
        assignment: for each group name, the list of ``(param_name, entry_index or None)`` it holds;
            ``None`` means the whole parameter.
        kind: the kind name, kept for provenance.
    """

    def __init__(
        self,
        params: Sequence[ParameterInfo],
        assignment: Mapping[str, Sequence[tuple[str, int | None]]],
        kind: str = "custom",
    ) -> None:
        self.params = tuple(params)
        self.kind = kind
        by_name = {p.name: p for p in self.params}
        owner = torch.full((self.num_params,), -1, dtype=torch.long)
        groups = []
        for g, (gname, members) in enumerate(assignment.items()):
            idx, touched = [], []
            for pname, _ in members:
                if pname not in by_name:
                    raise PartitionError(
                        f"group {gname!r} names {pname!r}, which is not a trainable parameter "
                        f"(known: {', '.join(by_name)})"
                    )
            # members in flat order, so the concatenated indices are ascending without a sort
            ordered = sorted(members, key=lambda m: by_name[m[0]].offset + (m[1] or 0))
            for pname, entry in ordered:
                info = by_name[pname]
                if entry is None:
                    idx.append(torch.arange(info.offset, info.offset + info.numel))
                else:
                    idx.append(torch.tensor([info.offset + entry]))
                if info not in touched:
                    touched.append(info)
            indices = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
            clash = owner[indices] >= 0
            if bool(clash.any()):
                first = int(indices[clash][0])
                other = groups[int(owner[first])].name if int(owner[first]) < len(groups) else gname
                raise PartitionError(
                    f"parameter {self.param_at(first).name!r} is named twice (groups {other!r} and {gname!r})"
                )
            owner[indices] = g
            groups.append(ParameterGroup(gname, tuple(touched), indices))
        missing = (owner < 0).nonzero().flatten()
        if missing.numel():
            names = sorted({self.param_at(int(i)).name for i in missing})
            raise PartitionError(f"partition {kind!r} misses parameters: {', '.join(names)}")
        self.groups = tuple(groups)
        self._group_of_index = owner

    # ------------------------------------------------------------------ construction
    @staticmethod
    def describe(model: nn.Module) -> tuple[ParameterInfo, ...]:
        """The trainable parameters of ``model`` as :class:`ParameterInfo`, in the reference ordering."""
        infos, offset = [], 0
        for name, p in trainable_parameters(model):
            layer = name.rsplit(".", 1)[0] if "." in name else ""
            infos.append(ParameterInfo(name, layer, tuple(p.shape), offset))
            offset += p.numel()
        if not infos:
            raise PartitionError(f"{type(model).__qualname__} has no trainable parameters")
        return tuple(infos)

    @classmethod
    def from_model(cls, model: nn.Module, kind: PartitionSpec = "canonical") -> Partition:
        """Partition ``model``'s trainable parameters; see the module docstring for the kinds."""
        return cls.from_params(cls.describe(model), kind)

    @classmethod
    def from_params(cls, params: Sequence[ParameterInfo], kind: PartitionSpec = "canonical") -> Partition:
        """Partition a parameter description (see :meth:`describe`)."""
        if isinstance(kind, Partition):
            return kind
        if isinstance(kind, Mapping):
            return cls(params, _custom_assignment(kind), "custom")
        if not isinstance(kind, str):
            raise PartitionError(f"unknown partition {kind!r}: give a kind name or a mapping")
        if kind == "canonical":
            assignment = {p.name: [(p.name, None)] for p in params}
        elif kind == "layer":
            assignment = {}
            for p in params:
                assignment.setdefault(p.layer or p.name, []).append((p.name, None))
        elif kind == "trivial":
            assignment = {"all": [(p.name, None) for p in params]}
        elif kind == "entries":
            assignment = {
                f"{p.name}[{i}]": [(p.name, i)] for p in params for i in range(p.numel)
            }
        elif (match := re.fullmatch(r"blocks-(\d+)", kind)) is not None:
            assignment = _blocks_assignment(params, int(match.group(1)))
        elif (match := re.fullmatch(r"module-(\d+)", kind)) is not None and int(match.group(1)) >= 1:
            depth = int(match.group(1))
            assignment = {}
            for p in params:
                prefix = ".".join((p.layer or p.name).split(".")[:depth])
                assignment.setdefault(prefix, []).append((p.name, None))
        else:
            raise PartitionError(
                f"unknown partition kind {kind!r}: use canonical, layer, trivial, blocks-k, module-d (d >= 1), entries "
                "or a mapping"
            )
        return cls(params, assignment, kind)

    def to_dict(self) -> dict:
        """A JSON-serialisable description; :meth:`from_dict` rebuilds the partition exactly."""
        return {
            "kind": self.kind,
            "params": [
                {"name": p.name, "layer": p.layer, "shape": list(p.shape), "offset": p.offset}
                for p in self.params
            ],
            "groups": {
                g.name: [(p.name, None) for p in g.params]
                if g.size == sum(p.numel for p in g.params)
                else [(g.params[0].name, int(i) - g.params[0].offset) for i in g.indices]
                for g in self.groups
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Partition:
        params = [
            ParameterInfo(d["name"], d["layer"], tuple(d["shape"]), d["offset"]) for d in data["params"]
        ]
        groups = {k: [(n, e) for n, e in v] for k, v in data["groups"].items()}
        return cls(params, groups, data["kind"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Partition:
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ queries
    @property
    def num_params(self) -> int:
        """P, the length of the flat parameter vector."""
        return sum(p.numel for p in self.params)

    @property
    def num_groups(self) -> int:
        """S, the number of groups."""
        return len(self.groups)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Owning layers in order of first appearance."""
        return tuple(dict.fromkeys(p.layer or p.name for p in self.params))

    def group(self, name: str | int) -> ParameterGroup:
        """A group by name or position."""
        if isinstance(name, int):
            return self.groups[name]
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r}; groups are {', '.join(self.group_names)}")

    def param(self, name: str) -> ParameterInfo:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"no trainable parameter {name!r}")

    def param_at(self, index: int) -> ParameterInfo:
        """The parameter holding flat index ``index``."""
        for p in self.params:
            if p.offset <= index < p.offset + p.numel:
                return p
        raise IndexError(index)

    def group_ids(self) -> torch.Tensor:
        """LongTensor [P]: the group position of every flat index."""
        return self._group_of_index.clone()

    def restrict(self, names: Sequence[str]) -> torch.Tensor:
        """LongTensor of the flat indices covered by the named groups, ascending."""
        return torch.cat([self.group(n).indices for n in names]).sort().values

    def flat_labels(self) -> dict[str, list]:
        """Per flat index: ``group``, ``param``, ``layer`` and ``element`` (index inside its tensor).

        These are the coordinates curvlab attaches to every ``row``/``col`` dimension on export.
        """
        gid = self._group_of_index.tolist()
        labels: dict[str, list] = {"group": [], "param": [], "layer": [], "element": []}
        for p in self.params:
            labels["param"] += [p.name] * p.numel
            labels["layer"] += [p.layer] * p.numel
            labels["element"] += list(range(p.numel))
        labels["group"] = [self.groups[g].name for g in gid]
        return labels

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (shaped like the parameters) into a flat [P] vector."""
        if len(tensors) != len(self.params):
            raise ValueError(f"expected {len(self.params)} tensors, got {len(tensors)}")
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat [P] vector into tensors shaped like the parameters."""
        if vector.shape[0] != self.num_params:
            raise ValueError(f"expected a vector of length {self.num_params}, got {tuple(vector.shape)}")
        return [vector[p.slice].reshape(p.shape + vector.shape[1:]) for p in self.params]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Partition) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"Partition(kind={self.kind!r}, groups={self.num_groups}, params={self.num_params})"


def _custom_assignment(mapping: Mapping) -> dict[str, list[tuple[str, None]]]:
    values = list(mapping.values())
    if all(isinstance(v, str) for v in values):
        assignment: dict[str, list[tuple[str, None]]] = {}
        for pname, gname in mapping.items():
            assignment.setdefault(gname, []).append((pname, None))
        return assignment
    if all(isinstance(v, Sequence) and not isinstance(v, str) for v in values):
        seen: dict[str, str] = {}
        for gname, pnames in mapping.items():
            for pname in pnames:
                if pname in seen:
                    raise PartitionError(
                        f"parameter {pname!r} is named twice (groups {seen[pname]!r} and {gname!r})"
                    )
                seen[pname] = gname
        return {g: [(n, None) for n in ps] for g, ps in mapping.items()}
    raise PartitionError("a custom partition maps parameter -> group, or group -> [parameters]")


def _blocks_assignment(params: Sequence[ParameterInfo], k: int) -> dict[str, list[tuple[str, None]]]:
    layers = list(dict.fromkeys(p.layer or p.name for p in params))
    if not 1 <= k <= len(layers):
        raise PartitionError(f"blocks-{k} needs 1 <= k <= number of layers ({len(layers)})")
    base, extra = divmod(len(layers), k)
    chunk_of, start = {}, 0
    for c in range(k):
        size = base + (1 if c < extra else 0)
        for layer in layers[start : start + size]:
            chunk_of[layer] = c
        start += size
    assignment: dict[str, list[tuple[str, None]]] = {}
    for p in params:
        assignment.setdefault(f"block{chunk_of[p.layer or p.name]}.{p.role}", []).append((p.name, None))
    return assignment
