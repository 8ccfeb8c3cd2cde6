"""The interface of a per-module rule, and the record of one module call it works on.

A rule knows how one module type transforms the three backward objects the engine propagates
(shape vocabulary of :mod:`curvlab.partition`; D = features per sample, flattened):

* square-root factors  V [N, K, *out]  ->  Jᵀ V [N, K, *in]         (:meth:`ModuleRule.backprop`)
* per-sample Hessians  H [N, Do, Do]   ->  Jᵀ H J + Σ_k g_k ∇²y_k   (:meth:`ModuleRule.backprop_hessian`)
* batch-averaged (KFRA) matrices  Ḡ [Do, Do] -> E_n[J_nᵀ Ḡ J_n]      (:meth:`ModuleRule.kfra_backprop`)

where J = ∂y/∂x is the module's per-sample input Jacobian and g = ∂ℓ/∂y the (unscaled) gradient of the
loss at its output. Modules with parameters add the parameter side (:class:`ParameterRule`):
Jθᵀ applied to factors, and the statistics built from it. Defaults here are exact but generic; rules
override them with faster closed forms. A rule is configuration: one stateless object per module type
in :data:`curvlab.engine.rules.RULES`; user modules are never subclassed or modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_dense_allocation

__all__ = ["ModuleRule", "ParameterRule", "Record"]


@dataclass
class Record:
    """One call of a supported module during the forward pass (tensors detached).

    Attributes:
        name: the module's qualified name in the model, e.g. ``"features.3"``.
        module: the module itself (read, never written).
        rule: the rule handling it.
        inputs: its input [N, *in].
        outputs: its output [N, *out].
        grad: ∂ℓ/∂y, the *unscaled* loss gradient at the output, [N, *out] (``None`` until backward).
        cache: per-call values a rule computes once and reuses across quantities (e.g. f'(x)).
    """

    name: str
    module: nn.Module
    rule: ModuleRule
    inputs: torch.Tensor
    outputs: torch.Tensor
    grad: torch.Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.outputs.shape[1:])

    def describe(self) -> str:
        return f"{self.name!r} ({type(self.module).__qualname__})"


class ModuleRule:
    """Backward transformations through one module type (see the module docstring)."""

    #: ``True`` if the module has trainable parameters this rule handles (see :class:`ParameterRule`).
    has_parameters = False
    #: ``True`` if the input Jacobian does not depend on the input (linear modules): KFRA needs one sample.
    input_independent_jacobian = False

    def check(self, name: str, module: nn.Module) -> None:
        """Raise :class:`UnsupportedModuleError` if this configuration of ``module`` is not supported."""

    def check_call(self, record: Record) -> None:
        """Raise if a recorded call (its input shapes) is not supported."""

    #: ``True`` if :meth:`backprop` always returns new memory (never a view of its input or of the module).
    backprop_allocates = False

    def backprop(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        """Jᵀ V: [N, K, *out] -> [N, K, *in]."""
        raise NotImplementedError

    def backprop_inplace(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        """:meth:`backprop`, allowed to overwrite ``factor`` (memory the caller holds exclusively).

        Saves an allocation of the factor's size for elementwise modules; the default just calls
        :meth:`backprop`.
        """
        return self.backprop(record, factor)

    def second_derivative_term(self, record: Record) -> torch.Tensor | None:
        """The residual Σ_k g_k ∇²_x y_k per sample, [N, Di, Di], or ``None`` if it vanishes."""
        return None

    def backprop_diagonal(self, record: Record, diag: torch.Tensor) -> torch.Tensor | None:
        """Jᵀ diag(d) J when that is again diagonal, [N, *out] -> [N, *in]; ``None`` when it is not."""
        return None

    def second_derivative_diagonal(self, record: Record) -> torch.Tensor | None:
        """The residual Σ_k g_k ∇²_x y_k when it is diagonal (elementwise modules), [N, *in], else ``None``."""
        return None

    def backprop_scaled_rows(
        self, record: Record, rows: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Jᵀ of a factor V_nk = rows_k ⊙ scale_n kept in that form ([K, *out], [N, *out]), or ``None``
        when the module mixes features (then the engine materialises V)."""
        return None

    def shared_jacobian_rows(self, record: Record) -> torch.Tensor | None:
        """The Jacobian rows [Do, *in] when they are the same for every sample (``None`` otherwise)."""
        return None

    def jacobian_rows(self, record: Record) -> torch.Tensor:
        """Jᵀ applied to every unit vector at the output: [N, Do, *in] (row j is ∂y_j/∂x)."""
        num, d_out = record.outputs.shape[0], record.outputs[0].numel()
        eye = torch.eye(d_out, dtype=record.outputs.dtype, device=record.outputs.device)
        return self.backprop(record, eye.expand(num, d_out, d_out).reshape(num, d_out, *record.out_shape))

    def sandwich(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        """Jᵀ H J per sample: [N, Do, Do] -> [N, Di, Di] (features flattened)."""
        num, d_out = hessian.shape[:2]
        right = self.backprop(record, hessian.reshape(num, d_out, *record.out_shape))  # H J
        right = right.reshape(num, d_out, -1).transpose(1, 2)  # (H J)ᵀ = Jᵀ H   [N, Di, Do]
        return self.backprop(record, right.reshape(num, -1, *record.out_shape)).flatten(2)

    def backprop_hessian(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        """Botev's recursion: [N, Do, Do] -> Jᵀ H J + Σ_k g_k ∇²y_k, [N, Di, Di]."""
        features = record.inputs[0].numel()
        check_dense_allocation((hessian.shape[0], features, features), hessian.dtype,
                               f"per-sample input Hessians of layer {record.name!r}")
        result = self.sandwich(record, hessian)
        residual = self.second_derivative_term(record)
        return result if residual is None else result + residual

    def kfra_backprop(self, record: Record, gbar: torch.Tensor) -> torch.Tensor:
        """E_n[J_nᵀ Ḡ J_n]: [Do, Do] -> [Di, Di] (no second-derivative terms, as in KFRA)."""
        if self.input_independent_jacobian:
            record = _samples(record, 0, 1)
        num, features = record.inputs.shape[0], record.inputs[0].numel()
        chunk = max(1, min(num, KFRA_CHUNK_ENTRIES // (features * features)))  # samples per sandwich
        check_dense_allocation((chunk, features, features), gbar.dtype,
                               f"kfra per-sample J_nᵀ Ḡ J_n of layer {record.name!r}")
        total = None
        for start in range(0, num, chunk):
            part = _samples(record, start, start + chunk)
            summed = self.sandwich(part, gbar.expand(part.inputs.shape[0], *gbar.shape)).sum(0)
            total = summed if total is None else total.add_(summed)
        return total.div_(num)


#: entries of the per-sample [c, Di, Di] sandwiches :meth:`ModuleRule.kfra_backprop` holds at once
KFRA_CHUNK_ENTRIES = 2**25


def _samples(record: Record, start: int, stop: int) -> Record:
    return Record(record.name, record.module, record.rule, record.inputs[start:stop], record.outputs[start:stop],
                  None if record.grad is None else record.grad[start:stop])


class ParameterRule(ModuleRule):
    """A module with trainable parameters: adds Jθᵀ and the statistics derived from it.

    The parameter vector of a layer is its trainable parameters in registration order (weight, then
    bias), each flattened: a slice of the reference ordering of :mod:`curvlab.partition`.
    """

    has_parameters = True
    #: parameter names the rule knows, in registration order.
    parameter_names: tuple[str, ...] = ("weight", "bias")
    #: ``True`` if the rule has Kronecker factors (:meth:`kron_input`, :meth:`kron_output`).
    has_kronecker = False

    def trainable(self, module: nn.Module) -> tuple[str, ...]:
        """Names of the module's trainable parameters, in the reference ordering."""
        return tuple(
            n for n in self.parameter_names
            if getattr(module, n, None) is not None and getattr(module, n).requires_grad
        )

    def check(self, name: str, module: nn.Module) -> None:
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        unknown = [n for n in own if n not in self.parameter_names]
        if unknown:
            raise UnsupportedModuleError(
                f"module {name!r} ({type(module).__qualname__}) has parameters {unknown} that no rule handles"
            )

    def param_factor(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        """Jθᵀ V per sample and column: [N, K, *out] -> [N, K, P_layer]."""
        raise NotImplementedError

    def outer_factor(self, record: Record, factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """``(S [N·K, O], X [N, I], bias)`` when Jθᵀ V_nk is the outer product V_nk [x_n; 1]ᵀ (weight
        row-major, then the bias if ``bias``), so a full factor can keep S and X instead of
        [N·K, P_layer] (:class:`curvlab.repr.LayeredSquareRootCurvature`); ``None`` otherwise."""
        return None

    def param_factor_into(self, record: Record, factor: torch.Tensor, out: torch.Tensor) -> None:
        """Write :meth:`param_factor` into ``out`` [N, K, P_layer] (a view into a full factor)."""
        out.copy_(self.param_factor(record, factor))

    def diag(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        """Σ_{n,k} (Jθᵀ V_nk)², the diagonal of the layer's block, [P_layer]."""
        return self.param_factor(record, factor).pow(2).sum((0, 1))

    def block(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        """Σ_{n,k} (Jθᵀ V_nk)(Jθᵀ V_nk)ᵀ, the layer's block, [P_layer, P_layer]."""
        rows = self.param_factor(record, factor).flatten(0, 1)
        return rows.T @ rows

    def signed_diag(self, record: Record, factor: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Σ_{n,k} w_nk (Jθᵀ V_nk)², the diagonal of Σ_nk w_nk (Jθᵀ V_nk)(Jθᵀ V_nk)ᵀ, [P_layer].

        ``weights`` [N, K] (``None``: all ones) lets a factor carry indefinite terms.
        """
        squared = self.param_factor(record, factor).pow(2)
        if weights is not None:
            squared = squared * weights[..., None]
        return squared.sum((0, 1))

    def signed_diag_scaled_rows(
        self, record: Record, rows: torch.Tensor, scale: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`signed_diag` of the factor V_nk = rows_k ⊙ scale_n ([K, *out], [N, *out])."""
        return self.signed_diag(record, rows.unsqueeze(0) * scale.unsqueeze(1), weights)

    def diag_from_diagonal(self, record: Record, diag: torch.Tensor) -> torch.Tensor:
        """diag Σ_n Jθ,nᵀ diag(d_n) Jθ,n for d [N, *out], [P_layer]."""
        num, d_out = diag.shape[0], diag[0].numel()
        eye = torch.eye(d_out, dtype=diag.dtype, device=diag.device)
        unit = eye.expand(num, d_out, d_out).reshape(num, d_out, *record.out_shape)
        return self.signed_diag(record, unit, diag.reshape(num, d_out))

    def hessian_block(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        """Σ_n Jθ,nᵀ H_n Jθ,n (the layer is linear in its parameters), [P_layer, P_layer]."""
        num, d_out = hessian.shape[:2]
        right = self.param_factor(record, hessian.reshape(num, d_out, *record.out_shape))  # H Jθ
        right = right.transpose(1, 2)  # Jθᵀ H   [N, P, Do]
        block = self.param_factor(record, right.reshape(num, -1, *record.out_shape)).sum(0)
        return (block + block.T) / 2

    def diag_hessian(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        """diag Σ_n Jθ,nᵀ H_n Jθ,n, [P_layer]."""
        return self.hessian_block(record, hessian).diagonal().clone()

    # Kronecker rules (``has_kronecker``): block ≈ A ⊗ G with augmented input (bias convention).
    def kron_input(self, record: Record) -> tuple[torch.Tensor, int]:
        """Σ_n x̃_n x̃_nᵀ (x̃ = [x; 1] if the bias is trainable) and the sample count N."""
        raise NotImplementedError

    def kron_output(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        """Σ_{n,k} V_nk V_nkᵀ at the layer's output, [out, out]."""
        raise NotImplementedError

    def kfra_output(self, gbar: torch.Tensor, record: Record) -> torch.Tensor:
        """The layer's G factor from the batch-averaged output matrix Ḡ."""
        return gbar

    def ekfac_scale(
        self, record: Record, factor: torch.Tensor, basis_in: torch.Tensor, basis_out: torch.Tensor
    ) -> torch.Tensor:
        """Σ_{n,k} (U_Gᵀ Ŵ_nk U_A)², Ŵ_nk the per-sample, per-column gradient matrix [out, in(+1)]."""
        raise NotImplementedError
