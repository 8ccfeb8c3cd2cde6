"""Square-root curvature C = Fᵀ F whose factor F [R, P] is kept per layer, never materialised.

For a Linear layer y = W x + b the rows of F over the layer's parameters are outer products: row
r = (n, k) (sample n, factor column k; R = N·K) is

    F[r, (o, i)] = S[r, o] · X[n, i]   (weight, row-major),      F[r, O·I + o] = S[r, o]   (bias),

with S [R, O] the backpropagated square roots at the layer's output and X [N, I] the layer's input.
Storing S and X costs R·O + N·I numbers instead of R·O·(I + 1) (the GGN of an MLP 784-256-256-10 on
128 samples: 3.5 MB instead of 1.4 GB). Other layers keep their dense columns F_l [R, P_l].

Costs with P_l = O·I: F v and Fᵀ u O(N·O·I + R·O) per layer and right-hand side; diagonal
Σ_k S²ᵀ X² O(N·O·I); Gram matrix F Fᵀ = Σ_l (S Sᵀ) ⊙ (X Xᵀ + 1) O(R²(O + I)). ``factor``, ``dense``
and ``eigh`` materialise and go through the memory budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from curvlab.guards import check_dense_allocation
from curvlab.partition import Partition
from curvlab.repr._checks import check_attrs, check_same_dtype_device, check_tensor
from curvlab.repr._export import decode_common, long_name, require, to_numpy, to_tensor
from curvlab.repr.base import CurvatureRepresentation
from curvlab.repr.square_root import SquareRootCurvature

__all__ = ["LayerFactor", "LayeredSquareRootCurvature"]

_EXTRA_ATTRS = ("layers",)


@dataclass(frozen=True)
class LayerFactor:
    """The columns of F over one layer's parameters (a contiguous range starting at ``start``).

    Attributes:
        start: first flat parameter index of the layer.
        outputs: S [R, O] (with ``inputs``) or the dense columns F_l [R, P_l] (without).
        inputs: X [N, I] with R = N·K, or ``None`` for dense columns.
        bias: whether the last O columns are the bias (only with ``inputs``).
    """

    start: int
    outputs: torch.Tensor
    inputs: torch.Tensor | None = None
    bias: bool = False

    @property
    def size(self) -> int:
        """P_l, the number of columns."""
        if self.inputs is None:
            return self.outputs.shape[1]
        return self.outputs.shape[1] * (self.inputs.shape[1] + int(self.bias))

    def _split(self):
        n, (r, o) = self.inputs.shape[0], self.outputs.shape
        return n, r // n, o, self.inputs.shape[1]

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """F_l v for v [P_l, m] → [R, m]."""
        if self.inputs is None:
            return self.outputs @ v
        n, k, o, i = self._split()
        m = v.shape[1]
        weight = v[: o * i].view(o, i, m).permute(1, 0, 2).reshape(i, o * m)
        y = (self.inputs @ weight).view(n, o, m)  # Σ_i W_oi x_ni per column
        if self.bias:
            y = y + v[o * i :].unsqueeze(0)
        return torch.bmm(self.outputs.view(n, k, o), y).view(n * k, m)

    def apply_t(self, u: torch.Tensor) -> torch.Tensor:
        """F_lᵀ u for u [R, m] → [P_l, m]."""
        if self.inputs is None:
            return self.outputs.mT @ u
        n, k, o, i = self._split()
        m = u.shape[1]
        t = torch.bmm(self.outputs.view(n, k, o).transpose(1, 2), u.view(n, k, m))  # [N, O, m]
        weight = (t.permute(1, 2, 0).reshape(o * m, n) @ self.inputs).view(o, m, i).transpose(1, 2)
        parts = [weight.reshape(o * i, m)] + ([t.sum(0)] if self.bias else [])
        return torch.cat(parts)

    def diagonal(self) -> torch.Tensor:
        """Σ_r F_l[r]², [P_l]."""
        if self.inputs is None:
            return self.outputs.pow(2).sum(0)
        n, k, o, _ = self._split()
        squared = self.outputs.view(n, k, o).pow(2).sum(1)  # [N, O]
        parts = [(squared.T @ self.inputs.pow(2)).flatten()] + ([squared.sum(0)] if self.bias else [])
        return torch.cat(parts)

    def gram(self) -> torch.Tensor:
        """F_l F_lᵀ, [R, R]."""
        if self.inputs is None:
            return self.outputs @ self.outputs.mT
        k = self._split()[1]
        inner = self.inputs @ self.inputs.T + (1.0 if self.bias else 0.0)
        return (self.outputs @ self.outputs.T) * inner.repeat_interleave(k, 0).repeat_interleave(k, 1)

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """The columns ``index`` (local, [c]) of F_l, [R, c]."""
        if self.inputs is None:
            return self.outputs[:, index]
        k, o, i = self._split()[1:]
        weight = index < o * i
        out_index = torch.where(weight, index.div(max(i, 1), rounding_mode="floor"), index - o * i)
        ones = self.inputs.new_ones(self.inputs.shape[0], 1)
        x = torch.cat([self.inputs, ones], 1)[:, torch.where(weight, index % max(i, 1), i)]
        return self.outputs[:, out_index] * x.repeat_interleave(k, 0)


class LayeredSquareRootCurvature(SquareRootCurvature):
    """C = Fᵀ F with F kept per layer as S ⊗ X outer products (see the module docstring).

    A :class:`~curvlab.repr.SquareRootCurvature`: ``factor`` materialises F [R, P] on access (memory
    budget guarded); matvec, diagonal, trace, blocks, Gram eigenvalues and the Woodbury solve work
    on the per-layer pieces.

    Args:
        layers: :class:`LayerFactor` per layer, in order, covering the columns 0 … P−1 contiguously.
        partition: groups labelling the P columns.
        quantity: e.g. ``"ggn"``; attrs: provenance attributes.

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(2, 1), "canonical")          # W [1, 2], b [1]
        >>> S, X = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0, 3.0], [0.0, 1.0]])   # N = 2, K = 1
        >>> C = LayeredSquareRootCurvature([LayerFactor(0, S, X, bias=True)], part, quantity="ggn")
        >>> C.factor.tolist()                                                  # rows S[r] · [x_n, 1]
        [[1.0, 3.0, 1.0], [0.0, 2.0, 2.0]]
        >>> C.diagonal().tolist(), C.matvec(torch.tensor([1.0, 0.0, 0.0])).tolist()
        ([1.0, 13.0, 5.0], [1.0, 3.0, 1.0])
    """

    kind = "layered_square_root"

    def __init__(
        self,
        layers: Sequence[LayerFactor],
        partition: Partition,
        *,
        quantity: str,
        attrs: Mapping[str, Any] | None = None,
    ):
        layers = list(layers)
        if not layers or not all(isinstance(layer, LayerFactor) for layer in layers):
            raise TypeError("layers must be a non-empty sequence of LayerFactor")
        rows, position, tensors = layers[0].outputs.shape[0] if layers[0].outputs.ndim == 2 else -1, 0, {}
        for j, layer in enumerate(layers):
            check_tensor(layer.outputs, f"layers[{j}].outputs", (rows, None))
            if layer.inputs is not None:
                check_tensor(layer.inputs, f"layers[{j}].inputs", ndim=2)
                if layer.inputs.shape[0] == 0 or rows % layer.inputs.shape[0]:
                    raise ValueError(
                        f"layers[{j}]: the {rows} factor rows are not a multiple of the "
                        f"{layer.inputs.shape[0]} input samples"
                    )
                tensors[f"layers[{j}].inputs"] = layer.inputs
            elif layer.bias:
                raise ValueError(f"layers[{j}]: bias=True needs inputs (dense columns carry their bias)")
            if layer.start != position:
                raise ValueError(f"layers[{j}] starts at column {layer.start}, expected {position}")
            tensors[f"layers[{j}].outputs"] = layer.outputs
            position += layer.size
        if position != partition.num_params:
            raise ValueError(f"the layers cover {position} columns but the partition has {partition.num_params}")
        if rows == 0:
            raise ValueError("the factor must have at least one row (K >= 1)")
        check_same_dtype_device(tensors)
        self.layers = layers
        CurvatureRepresentation.__init__(self, partition, quantity=quantity, attrs=check_attrs(attrs, _EXTRA_ATTRS))

    @property
    def rank(self) -> int:
        return self.layers[0].outputs.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].outputs.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].outputs.device

    @property
    def factor(self) -> torch.Tensor:
        """F [R, P], materialised (memory budget guarded)."""
        check_dense_allocation((self.rank, self.shape[0]), self.dtype, f"{self.quantity} square-root factor")
        return torch.cat([layer.columns(torch.arange(layer.size, device=self.device)) for layer in self.layers], 1)

    def _pieces(self, v: torch.Tensor):
        for layer in self.layers:
            yield layer, v[layer.start : layer.start + layer.size]

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        matrix = v if v.ndim == 2 else v[:, None]
        out = sum(layer.apply(part) for layer, part in self._pieces(matrix))
        return out if v.ndim == 2 else out[:, 0]

    def _apply_t(self, u: torch.Tensor) -> torch.Tensor:
        matrix = u if u.ndim == 2 else u[:, None]
        out = torch.cat([layer.apply_t(matrix) for layer in self.layers])
        return out if u.ndim == 2 else out[:, 0]

    def _gram(self) -> torch.Tensor:
        check_dense_allocation((self.rank, self.rank), self.dtype, f"{self.quantity} Gram matrix")
        return sum(layer.gram() for layer in self.layers)

    def _diagonal(self) -> torch.Tensor:
        return torch.cat([layer.diagonal() for layer in self.layers])

    def trace(self) -> torch.Tensor:
        """tr(C) = ‖F‖²_F, a 0-d tensor (from the per-layer diagonals)."""
        return self._diagonal().sum()

    def _columns(self, index: torch.Tensor) -> torch.Tensor:
        out = self.layers[0].outputs.new_empty(self.rank, index.numel())
        for layer in self.layers:
            mask = (index >= layer.start) & (index < layer.start + layer.size)
            if bool(mask.any()):
                out[:, mask] = layer.columns(index[mask] - layer.start)
        return out

    def _block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        rows, cols = rows.to(self.device), cols.to(self.device)
        return self._columns(rows).mT @ self._columns(cols)

    def _dense(self) -> torch.Tensor:
        factor = self.factor
        return factor.mT @ factor

    def _to_xarray(self) -> xr.Dataset:
        variables, meta = {}, []
        for j, layer in enumerate(self.layers):
            dense = layer.inputs is None
            meta.append({"start": layer.start, "bias": layer.bias, "dense": dense})
            what = "dense factor columns F_l" if dense else "backpropagated output factors S_l"
            what += f" of the {long_name(self.quantity)}"
            variables[f"outputs_{j}"] = (("row", f"out_{j}"), to_numpy(layer.outputs), {"long_name": what})
            if not dense:
                variables[f"inputs_{j}"] = (("sample", f"in_{j}"), to_numpy(layer.inputs),
                                            {"long_name": f"inputs X_l of layer {j}"})
        ds = xr.Dataset(variables, coords={"row": ("row", np.arange(self.rank, dtype=np.int64),
                                                       {"long_name": "row (sample, factor column) of F"})})
        ds.attrs["layers"] = json.dumps(meta)
        return ds

    @classmethod
    def _from_xarray(cls, obj) -> LayeredSquareRootCurvature:
        if isinstance(obj, xr.DataTree):
            obj = obj.to_dataset()
        if "layers" not in obj.attrs:
            raise ValueError(f"the {cls.kind!r} export lacks its 'layers' attribute")
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind, _EXTRA_ATTRS)
        metas = json.loads(str(obj.attrs["layers"]))
        names = [f"{kind}_{j}" for j, meta in enumerate(metas) for kind in ("outputs", "inputs")[: 2 - meta["dense"]]]
        require(obj, names, cls.kind)
        layers = []
        for j, meta in enumerate(metas):
            outputs = to_tensor(obj[f"outputs_{j}"].transpose("row", f"out_{j}").values)
            inputs = None if meta["dense"] else to_tensor(obj[f"inputs_{j}"].transpose("sample", f"in_{j}").values)
            layers.append(LayerFactor(int(meta["start"]), outputs, inputs, bool(meta["bias"])))
        return cls(layers, partition, quantity=quantity, attrs=attrs)
