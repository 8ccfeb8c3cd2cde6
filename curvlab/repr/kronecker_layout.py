"""Where a layer's parameters sit in the matrix form used by Kronecker factors.

A layer with weight W [O, *in_shape] (I = prod(in_shape)) and optional bias b [O] has P = O·I (+ O)
parameters, ordered (W.flatten(), b) in the reference ordering. Kronecker factors act on the
*matrix form* V = [W, b] ∈ R^{O×I'} (I' = I + 1 with a bias), where (G ⊗ A) vec(V) = vec(G V A)
for row-major vec. :class:`KroneckerLayout` converts between the two and knows the bias convention.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from curvlab.partition import ParameterInfo, Partition

__all__ = ["BiasConvention", "KroneckerLayout"]


class BiasConvention(enum.Enum):
    """How a Kronecker-factored layer treats its bias.

    * ``AUGMENTED`` (Martens & Grosse 2015): A is over the homogeneous input [x; 1], so the Kronecker
      product covers [W, b] and includes weight–bias cross terms.
    * ``SEPARATE`` (BackPACK): A is over x only; the bias has its own block (G or a bias factor) and
      there are no cross terms.
    """

    AUGMENTED = "augmented"
    SEPARATE = "separate"

    @classmethod
    def parse(cls, value: BiasConvention | str) -> BiasConvention:
        """The member for ``value`` (a member or its string), or ValueError listing the options.

        Example:
            >>> BiasConvention.parse("separate")
            <BiasConvention.SEPARATE: 'separate'>
        """
        try:
            return cls(value)
        except ValueError:
            options = ", ".join(repr(c.value) for c in cls)
            raise ValueError(f"unknown bias_convention {value!r}; use one of {options}") from None


@dataclass(frozen=True)
class KroneckerLayout:
    """Shapes and orderings of one layer's Kronecker matrix form.

    Example:
        >>> layout = KroneckerLayout(out_features=2, in_features=2, bias=True)
        >>> layout.matrix_shape, layout.factor_size, layout.num_params
        ((2, 3), 3, 6)
        >>> layout.to_matrix(torch.arange(6.0)).tolist()    # W = [[0, 1], [2, 3]], b = [4, 5]
        [[0.0, 1.0, 4.0], [2.0, 3.0, 5.0]]
    """

    out_features: int
    in_features: int
    bias: bool = False
    convention: BiasConvention = BiasConvention.AUGMENTED

    @property
    def augmented(self) -> bool:
        """Whether A covers the homogeneous coordinate (a bias with the augmented convention)."""
        return self.bias and self.convention is BiasConvention.AUGMENTED

    @property
    def separate_bias(self) -> bool:
        """Whether the bias has its own block (a bias with the separate convention)."""
        return self.bias and self.convention is BiasConvention.SEPARATE

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(O, I'): the shape of the matrix form [W, b]."""
        return (self.out_features, self.in_features + (1 if self.bias else 0))

    @property
    def factor_size(self) -> int:
        """The size of the input factor A: I + 1 when augmented, else I."""
        return self.in_features + (1 if self.augmented else 0)

    @property
    def num_params(self) -> int:
        """P = O·I (+ O with a bias)."""
        return self.out_features * (self.in_features + (1 if self.bias else 0))

    def to_matrix(self, v: torch.Tensor) -> torch.Tensor:
        """Reference-ordered v [P] (or [P, K]) → matrix form [O, I'] (or [K, O, I'])."""
        o, i = self.out_features, self.in_features
        cols = v.mT if v.ndim == 2 else v
        weight = cols[..., : o * i].reshape(*cols.shape[:-1], o, i)
        if not self.bias:
            return weight
        return torch.cat([weight, cols[..., o * i :, None]], dim=-1)

    def from_matrix(self, V: torch.Tensor) -> torch.Tensor:
        """Matrix form [O, I'] (or [K, O, I']) → reference-ordered [P] (or [P, K])."""
        o, i = self.out_features, self.in_features
        flat = V[..., :i].reshape(*V.shape[:-2], o * i)
        if self.bias:
            flat = torch.cat([flat, V[..., i]], dim=-1)
        return flat.mT if V.ndim == 3 else flat

    def is_matrix_form(self, v: Any) -> bool:
        """Whether ``v`` is a tensor [O, I'] or [K, O, I']."""
        return (
            isinstance(v, torch.Tensor)
            and v.ndim in (2, 3)
            and tuple(v.shape[-2:]) == self.matrix_shape
        )

    def split(self, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Matrix form → (the columns the Kronecker product acts on, the separate bias column or None)."""
        if self.separate_bias:
            return V[..., : self.in_features], V[..., self.in_features]
        return V, None

    @staticmethod
    def join(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Inverse of :meth:`split`."""
        return weight if bias is None else torch.cat([weight, bias[..., None]], dim=-1)

    def reference_permutation(self, device: torch.device | None = None) -> torch.Tensor:
        """perm [P]: perm[r] is the row-major matrix-form index of reference index r.

        Weight entry r = o·I + i sits at o·I' + i; bias entry O·I + o sits at o·I' + I. With it, the
        reference-ordered block of an augmented layer is ``(G ⊗ A)[perm][:, perm]``.
        """
        o, i = self.out_features, self.in_features
        width = i + (1 if self.bias else 0)
        weight = (torch.arange(o)[:, None] * width + torch.arange(i)[None, :]).reshape(-1)
        parts = [weight, torch.arange(o) * width + i] if self.bias else [weight]
        return torch.cat(parts).to(device)

    def weight_shape(self, shape: Sequence[int] | None) -> tuple[int, ...]:
        """``shape`` checked against the layout (default ``(O, I)``)."""
        o, i = self.out_features, self.in_features
        if shape is None:
            return (o, i)
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or shape[0] != o or math.prod(shape[1:]) != i:
            raise ValueError(
                f"weight_shape {shape} does not match the factors: need [O={o}, *in_shape] with "
                f"prod(in_shape) = I = {i}"
            )
        return shape

    def default_partition(self, weight_shape: tuple[int, ...]) -> Partition:
        """A canonical partition over parameters named ``"weight"`` (and ``"bias"``)."""
        params = [ParameterInfo("weight", "", weight_shape, 0)]
        if self.bias:
            offset = math.prod(weight_shape)
            params.append(ParameterInfo("bias", "", (self.out_features,), offset))
        return Partition(params, {p.name: [(p.name, None)] for p in params}, "canonical")

    def check_partition(self, partition: Partition) -> None:
        """ValueError unless ``partition`` holds the weight (O·I entries) then the bias (O entries)."""
        o, i = self.out_features, self.in_features
        want = [o * i] + ([o] if self.bias else [])
        got = [p.numel for p in partition.params]
        if got != want:
            raise ValueError(
                f"partition parameters have sizes {got}, but the factors need {want} "
                f"(weight O*I = {o}*{i}{', then bias O' if self.bias else ''})"
            )
