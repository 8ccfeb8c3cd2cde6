"""Kronecker factors of one layer: G ⊗ A (KFAC, KFLR, KFRA) and the EKFAC eigenbasis rescaling.

For a weight W ∈ R^{O×I} (a Conv weight [O, C_in, kh, kw] counts as I = C_in·kh·kw), the layer's
curvature block over ``W.flatten()`` (row-major, index o·I + i) is approximated by G ⊗ A with an
*output factor* G ∈ R^{O×O} and an *input factor* A ∈ R^{I'×I'}. Acting on the *matrix form*
V ∈ R^{O×I'} of a vector, (G ⊗ A) vec(V) = vec(G V A).

Bias conventions (:class:`BiasConvention`):

* ``AUGMENTED`` (Martens & Grosse 2015): A is over the homogeneous input [x; 1], I' = I + 1, and the
  matrix form is [W, b]. The block over (W.flatten(), b) in the reference ordering is a *permutation*
  of G ⊗ A (the bias entries sit at o·I' + I in the Kronecker ordering but at O·I + o in the
  reference ordering); weight–bias cross terms are included.
* ``SEPARATE`` (BackPACK): the weight block is G ⊗ A with A [I, I]; the bias block is G (or a
  separate ``bias_factor``); no cross terms. The matrix form is still [W, b], I' = I + 1.

With an EKFAC ``scaling`` S ∈ R^{O×I_A} (I_A = size of A) the weight block is
(Q_G ⊗ Q_A) diag(vec S) (Q_G ⊗ Q_A)ᵀ, where G = Q_G Λ_G Q_Gᵀ and A = Q_A Λ_A Q_Aᵀ.

Costs (one layer, P = O·I'): matvec O(O²I' + OI'²); eigvalsh, solve and solve_factored O(O³ + I'³)
once (cached eigendecompositions), then O(O²I' + OI'²) per right-hand side; dense/eigh O(P²) memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
import xarray as xr

from curvlab.guards import check_finite
from curvlab.partition import Partition
from curvlab.repr._checks import (
    check_attrs,
    check_nonsingular,
    check_same_dtype_device,
    check_square,
    check_tensor,
)
from curvlab.repr._export import (
    decode_common,
    export_attrs_node,
    long_name,
    require,
    to_numpy,
    to_tensor,
)
from curvlab.repr.base import CurvatureRepresentation
from curvlab.repr.kronecker_layout import BiasConvention, KroneckerLayout

__all__ = ["BiasConvention", "KroneckerFactors"]

_EXTRA_ATTRS = ("bias", "bias_convention", "weight_shape")
_INDEX = {
    "in": "input feature index (augmented: the last is the constant 1)",
    "out": "output feature index",
}


class KroneckerFactors(CurvatureRepresentation):
    """The Kronecker-factored curvature block of one layer with weight W [O, *in_shape] and optional bias.

    Args:
        A: input factor [I', I'] (I' = I + 1 with an augmented bias, else I).
        G: output factor [O, O].
        bias: whether the layer has a bias.
        bias_convention: :class:`BiasConvention` (or its value) when ``bias`` is true.
        bias_factor: optional [O, O] factor of the bias block (``SEPARATE`` only; default G).
        scaling: optional EKFAC eigenvalues [O, I_A] replacing Λ_G ⊗ Λ_A (I_A = size of A).
        eigenbasis: with ``scaling``, the orthonormal eigenbases (U_A [I_A, I_A], U_G [O, O]) of A and G
            it was fitted in (default: ``torch.linalg.eigh`` of each). Pass it whenever the scaling
            came from another decomposition: eigenvectors are unique only up to the basis of each
            repeated eigenvalue (the whole null space of a rank-deficient factor).
        weight_shape: shape of W, default ``(O, I)`` (or the first parameter's shape of ``partition``).
        partition: groups over this layer's own parameters (P = O·I (+ O)); default a canonical
            partition with parameters ``"weight"`` and ``"bias"``.
        quantity: e.g. ``"kfac"``, ``"ekfac"``, ``"kflr"``.
        attrs: provenance attributes.
        validate: ``False`` skips the symmetry tests of A, G and ``bias_factor`` (for factors that are
            symmetric by construction, as the engine's Gram matrices); shapes and finiteness are
            always checked.

    Example:
        >>> G, A = torch.tensor([[2.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])
        >>> K = KroneckerFactors(A, G)                                    # no bias: O = 1, I = 2
        >>> K.dense().tolist(), K.eigvalsh().tolist()
        ([[2.0, 0.0], [0.0, 6.0]], [2.0, 6.0])
        >>> (K @ torch.tensor([[1.0, 1.0]])).tolist()                     # matrix form: G V A
        [[2.0, 6.0]]
        >>> K.solve(torch.tensor([3.0, 7.0]), damping=1.0).tolist()       # (G ⊗ A + I)⁻¹ v
        [1.0, 1.0]
    """

    kind = "kronecker_factors"

    def __init__(
        self,
        A: torch.Tensor,
        G: torch.Tensor,
        *,
        bias: bool = False,
        bias_convention: BiasConvention | str = BiasConvention.AUGMENTED,
        bias_factor: torch.Tensor | None = None,
        scaling: torch.Tensor | None = None,
        eigenbasis: tuple[torch.Tensor, torch.Tensor] | None = None,
        weight_shape: Sequence[int] | None = None,
        partition: Partition | None = None,
        quantity: str = "kfac",
        attrs: Mapping[str, Any] | None = None,
        validate: bool = True,
    ):
        self.A = check_square(A, "A (input factor)", symmetry=validate)
        self.G = check_square(G, "G (output factor)", symmetry=validate)
        convention = BiasConvention.parse(bias_convention)
        augmented = bool(bias) and convention is BiasConvention.AUGMENTED
        self.layout = KroneckerLayout(
            self.G.shape[0], self.A.shape[0] - (1 if augmented else 0), bool(bias), convention
        )
        o, i = self.layout.out_features, self.layout.in_features
        if i < 1 or o < 1:
            need = "[I+1, I+1] with I >= 1 (augmented bias)" if augmented else "[I, I] with I >= 1"
            raise ValueError(
                f"A must be {need} and G [O, O] with O >= 1; got A {tuple(self.A.shape)}, "
                f"G {tuple(self.G.shape)}"
            )
        tensors = {"A": self.A, "G": self.G}
        if bias_factor is not None:
            if not self.layout.separate_bias:
                raise ValueError("bias_factor needs bias=True and bias_convention='separate'")
            bias_factor = check_square(bias_factor, "bias_factor", o, symmetry=validate)
            tensors["bias_factor"] = bias_factor
        self.bias_factor = bias_factor
        if scaling is not None:
            scaling = check_tensor(scaling, "scaling", (o, self.A.shape[0]))
            tensors["scaling"] = scaling
        self.scaling = scaling
        if eigenbasis is not None:
            if scaling is None:
                raise ValueError("eigenbasis is the basis of an EKFAC scaling: pass scaling too")
            basis_a, basis_g = eigenbasis
            tensors["eigenbasis_A"] = check_tensor(basis_a, "eigenbasis U_A", tuple(self.A.shape))
            tensors["eigenbasis_G"] = check_tensor(basis_g, "eigenbasis U_G", tuple(self.G.shape))
            eigenbasis = (tensors["eigenbasis_A"].contiguous(), tensors["eigenbasis_G"].contiguous())
        self.eigenbasis = eigenbasis
        check_same_dtype_device(tensors)
        if partition is None:
            self.weight_shape = self.layout.weight_shape(weight_shape)
            partition = self.layout.default_partition(self.weight_shape)
        else:
            self.layout.check_partition(partition)
            self.weight_shape = self.layout.weight_shape(weight_shape or partition.params[0].shape)
        super().__init__(partition, quantity=quantity, attrs=check_attrs(attrs, _EXTRA_ATTRS))

    # ------------------------------------------------------------------ basic properties
    @property
    def dtype(self) -> torch.dtype:
        return self.G.dtype

    @property
    def device(self) -> torch.device:
        return self.G.device

    @property
    def out_features(self) -> int:
        """O, the number of output features (rows of W)."""
        return self.layout.out_features

    @property
    def in_features(self) -> int:
        """I, the number of input features per output (C_in·kh·kw for a convolution)."""
        return self.layout.in_features

    @property
    def bias(self) -> bool:
        """Whether the layer has a bias."""
        return self.layout.bias

    @property
    def bias_convention(self) -> BiasConvention:
        return self.layout.convention

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(O, I'): the shape of the matrix form [W, b] (I' = I + 1 with a bias)."""
        return self.layout.matrix_shape

    def to_matrix(self, v: torch.Tensor) -> torch.Tensor:
        """Reference-ordered v [P] (or [P, K]) → matrix form [O, I'] (or [K, O, I']): [W, b].

        Example:
            >>> K = KroneckerFactors(torch.eye(3), torch.eye(2), bias=True)   # O = 2, I = 2, P = 6
            >>> K.to_matrix(torch.arange(6.0)).tolist()                         # W = [[0, 1], [2, 3]], b = [4, 5]
            [[0.0, 1.0, 4.0], [2.0, 3.0, 5.0]]
        """
        return self.layout.to_matrix(v)

    def from_matrix(self, V: torch.Tensor) -> torch.Tensor:
        """Matrix form [O, I'] (or [K, O, I']) → reference-ordered [P] (or [P, K]); inverse of :meth:`to_matrix`.

        Example:
            >>> K = KroneckerFactors(torch.eye(3), torch.eye(2), bias=True)
            >>> K.from_matrix(torch.tensor([[0.0, 1.0, 4.0], [2.0, 3.0, 5.0]])).tolist()
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        """
        return self.layout.from_matrix(V)

    # ------------------------------------------------------------------ eigendecompositions (cached)
    @cached_property
    def _eig(self) -> dict[str, torch.Tensor]:
        if self.eigenbasis is not None:  # the scaling's own basis; λ as the Rayleigh quotients
            q_a, q_g = self.eigenbasis
            lam_a, lam_g = (((m @ q) * q).sum(0) for q, m in ((q_a, self.A), (q_g, self.G)))
        else:
            lam_g, q_g = torch.linalg.eigh(self.G)
            lam_a, q_a = torch.linalg.eigh(self.A)
        out = {"lam_g": lam_g, "q_g": q_g, "lam_a": lam_a, "q_a": q_a}
        out["weight"] = (
            self.scaling if self.scaling is not None else lam_g[:, None] * lam_a[None, :]
        )
        if self.layout.separate_bias:
            out["lam_b"], out["q_b"] = torch.linalg.eigh(
                self.bias_factor if self.bias_factor is not None else self.G
            )
        return out

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        """Curvature times matrix form V [..., O, I']."""
        W, b = self.layout.split(V)
        if self.scaling is None:
            out_w = self.G @ W @ self.A
        else:
            q_g, q_a = self._eig["q_g"], self._eig["q_a"]
            out_w = q_g @ ((q_g.mT @ W @ q_a) * self.scaling) @ q_a.mT
        if b is not None:
            factor = self.bias_factor if self.bias_factor is not None else self.G
            b = (factor @ b[..., None])[..., 0]
        return self.layout.join(out_w, b)

    def _inverse(
        self, V: torch.Tensor, weight_denominator: torch.Tensor, bias_shift: float
    ) -> torch.Tensor:
        """Σ q qᵀ v / denominator in the eigenbasis of the factors (matrix form V [..., O, I'])."""
        e = self._eig
        W, b = self.layout.split(V)
        check_nonsingular(
            weight_denominator, float(e["weight"].abs().max()), f"{self.quantity} solve"
        )
        out_w = e["q_g"] @ ((e["q_g"].mT @ W @ e["q_a"]) / weight_denominator) @ e["q_a"].mT
        if b is not None:
            denominator = e["lam_b"] + bias_shift
            check_nonsingular(
                denominator, float(e["lam_b"].abs().max()), f"{self.quantity} bias solve"
            )
            b = e["q_b"] @ ((e["q_b"].mT @ b[..., None])[..., 0] / denominator)[..., None]
            b = b[..., 0]
        return self.layout.join(out_w, b)

    # ------------------------------------------------------------------ public operations
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """C v for v [P] or [P, K] (reference ordering), or for the matrix form V [O, I'] / [K, O, I'],
        where it is G V A (weight columns) and B b (separate bias column, B = bias factor or G)."""
        if self.layout.is_matrix_form(v):
            return self._apply(v.to(self.dtype))
        return super().matvec(v)

    def solve(self, v: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
        """(C + λI)⁻¹ v exactly, through the cached eigendecompositions of the factors.

        The eigenvalues of the weight block are λ_G ⊗ λ_A (or ``scaling``), so
        (C + λI)⁻¹ vec(V) = vec(Q_G [(Q_Gᵀ V Q_A) / (Λ + λ)] Q_Aᵀ). Accepts [P], [P, K] or the matrix form.
        Raises ``torch.linalg.LinAlgError`` if an eigenvalue plus damping is zero to working precision.
        """
        if self.layout.is_matrix_form(v):
            if damping < 0:
                raise ValueError(f"damping must be >= 0, got {damping}")
            return check_finite(
                self._solve_matrix(v.to(self.dtype), float(damping)), f"{self.quantity} solve"
            )
        return super().solve(v, damping)

    def solve_factored(
        self, v: torch.Tensor, damping: float, pi: float | None = None
    ) -> torch.Tensor:
        """Factored-Tikhonov solve ((G + π√λ I) ⊗ (A + √λ/π I))⁻¹ v (Martens & Grosse 2015, §6.3).

        π defaults to sqrt((tr A / dim A) / (tr G / dim G)). With a ``SEPARATE`` bias the bias block is
        damped exactly, (B + λI)⁻¹ b. Accepts [P], [P, K] or the matrix form and returns the same form.
        Not defined with an EKFAC ``scaling`` (use :meth:`solve`).

        Example:
            >>> K = KroneckerFactors(torch.tensor([[4.0]]), torch.tensor([[1.0]]))   # π = sqrt(4 / 1) = 2
            >>> K.solve_factored(torch.tensor([7.0]), damping=1.0).tolist()            # 7 / ((1 + 2)(4 + 1/2))
            [0.5185185074806213]
        """
        if self.scaling is not None:
            raise ValueError(
                "solve_factored uses the factors G and A; with an EKFAC scaling use solve()"
            )
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if pi is None:
            pi = self.default_pi()
        elif not pi > 0:
            raise ValueError(f"pi must be > 0, got {pi}")
        root = math.sqrt(damping)
        e = self._eig
        denominator = (e["lam_g"] + pi * root)[:, None] * (e["lam_a"] + root / pi)[None, :]
        if self.layout.is_matrix_form(v):
            out = self._inverse(v.to(self.dtype), denominator, float(damping))
        else:
            v = self._check_vector(v, "solve_factored")
            out = self.from_matrix(self._inverse(self.to_matrix(v), denominator, float(damping)))
        return check_finite(out, f"{self.quantity} solve_factored")

    def default_pi(self) -> float:
        """π = sqrt((tr A / dim A) / (tr G / dim G)), the factored-Tikhonov balance of Martens & Grosse.

        Example:
            >>> KroneckerFactors(8 * torch.eye(3), 2 * torch.eye(2)).default_pi()
            2.0
        """
        mean_a = float(self.A.diagonal().mean())
        mean_g = float(self.G.diagonal().mean())
        if not (mean_a > 0 and mean_g > 0):
            raise ValueError(
                f"the default pi needs tr A > 0 and tr G > 0 (mean traces {mean_a:.3g}, {mean_g:.3g}); "
                "pass pi explicitly"
            )
        return math.sqrt(mean_a / mean_g)

    def trace(self) -> torch.Tensor:
        """tr(C): tr G · tr A (Σ scaling with EKFAC) plus the separate bias block's trace."""
        return self._diagonal().sum()

    # ------------------------------------------------------------------ hooks
    def _solve_matrix(self, V: torch.Tensor, damping: float) -> torch.Tensor:
        return self._inverse(V, self._eig["weight"] + damping, damping)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.from_matrix(self._apply(self.to_matrix(v)))

    def _solve(self, v: torch.Tensor, damping: float) -> torch.Tensor:
        return self.from_matrix(self._solve_matrix(self.to_matrix(v), damping))

    def _weight_dense(self) -> torch.Tensor:
        """The Kronecker block over the matrix form's columns that A covers, row-major [O·I_A, O·I_A]."""
        if self.scaling is None:
            return torch.kron(self.G, self.A)
        q = torch.kron(self._eig["q_g"], self._eig["q_a"])
        return (q * self.scaling.reshape(-1)) @ q.mT

    def _dense(self) -> torch.Tensor:
        block = self._weight_dense()
        if not self.bias:
            return block
        if not self.layout.separate_bias:
            perm = self.layout.reference_permutation(self.device)
            return block[perm][:, perm]
        factor = self.bias_factor if self.bias_factor is not None else self.G
        return torch.block_diag(block, factor)

    def _diagonal(self) -> torch.Tensor:
        if self.scaling is None:
            diag_w = self.G.diagonal()[:, None] * self.A.diagonal()[None, :]
        else:
            diag_w = (self._eig["q_g"] ** 2) @ self.scaling @ (self._eig["q_a"] ** 2).mT
        bias = None
        if self.layout.separate_bias:
            bias = (self.bias_factor if self.bias_factor is not None else self.G).diagonal()
        return self.from_matrix(self.layout.join(diag_w, bias))

    def _eigvalsh(self) -> torch.Tensor:
        values = [self._eig["weight"].reshape(-1)]
        if self.layout.separate_bias:
            values.append(self._eig["lam_b"])
        return torch.cat(values).sort().values

    def _eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        e = self._eig
        vectors = torch.kron(e["q_g"], e["q_a"])
        values = e["weight"].reshape(-1)
        if self.layout.separate_bias:
            vectors = torch.block_diag(vectors, e["q_b"])
            values = torch.cat([values, e["lam_b"]])
        elif self.bias:
            vectors = vectors[self.layout.reference_permutation(self.device)]
        values, order = values.sort()
        return values, vectors[:, order]

    # ------------------------------------------------------------------ export
    def _to_xarray(self) -> xr.Dataset:
        sizes = {"in": self.A.shape[0], "out": self.out_features}
        coords = {
            f"{side}_{ij}": (
                f"{side}_{ij}",
                np.arange(sizes[side]),
                {"long_name": _INDEX[side], "units": "1"},
            )
            for side in ("in", "out")
            for ij in ("i", "j")
        }
        name = long_name(self.quantity)
        data = {
            "A": (
                ("in_i", "in_j"),
                to_numpy(self.A),
                {"long_name": f"input factor A of the {name}"},
            ),
            "G": (
                ("out_i", "out_j"),
                to_numpy(self.G),
                {"long_name": f"output factor G of the {name}"},
            ),
        }
        if self.bias_factor is not None:
            attrs = {"long_name": f"bias factor B of the {name}"}
            data["bias_factor"] = (("out_i", "out_j"), to_numpy(self.bias_factor), attrs)
        if self.scaling is not None:
            for side, factor in (("out", "G"), ("in", "A")):
                attrs = {"long_name": f"eigenvector index of {factor}", "units": "1"}
                coords[f"{side}_eig"] = (f"{side}_eig", np.arange(sizes[side]), attrs)
            attrs = {"long_name": "EKFAC eigenvalues in the Kronecker eigenbasis"}
            data["scaling"] = (("out_eig", "in_eig"), to_numpy(self.scaling), attrs)
        if self.eigenbasis is not None:
            for factor, dims, tensor in (("A", ("in_i", "in_eig"), self.eigenbasis[0]),
                                         ("G", ("out_i", "out_eig"), self.eigenbasis[1])):
                attrs = {"long_name": f"eigenvectors of {factor} (columns) the EKFAC scaling refers to"}
                data[f"eigenbasis_{factor}"] = (dims, to_numpy(tensor), attrs)
        attrs = export_attrs_node(
            bias=self.bias,
            bias_convention=self.bias_convention.value,
            weight_shape=self.weight_shape,
        )
        return xr.Dataset(data, coords=coords, attrs=attrs)

    @classmethod
    def _from_xarray(cls, obj) -> KroneckerFactors:
        if isinstance(obj, xr.DataTree):
            obj = obj.to_dataset()
        partition, quantity, attrs = decode_common(obj.attrs, cls.kind, _EXTRA_ATTRS)
        require(obj, ["A", "G"], cls.kind)
        optional = {
            name: to_tensor(obj[name].transpose(*dims).values) if name in obj.variables else None
            for name, dims in (
                ("bias_factor", ("out_i", "out_j")),
                ("scaling", ("out_eig", "in_eig")),
            )
        }
        if "eigenbasis_A" in obj.variables:
            optional["eigenbasis"] = (to_tensor(obj["eigenbasis_A"].transpose("in_i", "in_eig").values),
                                      to_tensor(obj["eigenbasis_G"].transpose("out_i", "out_eig").values))
        return cls(
            to_tensor(obj["A"].transpose("in_i", "in_j").values),
            to_tensor(obj["G"].transpose("out_i", "out_j").values),
            bias=bool(int(obj.attrs.get("bias", 0))),
            bias_convention=str(obj.attrs.get("bias_convention", "augmented")),
            weight_shape=[int(s) for s in np.atleast_1d(obj.attrs["weight_shape"])],
            partition=partition,
            quantity=quantity,
            attrs=attrs,
            **optional,
        )
