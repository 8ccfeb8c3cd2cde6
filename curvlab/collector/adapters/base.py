"""The layer-adapter interface: one module call in the normal form X [N, S, I], G [N, K, S, O].

A parameterised module whose call is y = Σ over S positions of a map shared by all positions turns
into two tensors (S = sequence tokens, convolution patches, normalised entries; S = 1 for a plain
``nn.Linear`` on [N, I]):

* ``inputs``  X [N, S, I]: what multiplies the weight at each position (detached);
* ``output``  y: the call's output, whose gradient (taken at its autograd edge, reshaped by
  ``to_normal`` to [..., N, S, O]) is the output-side factor G.

Two kinds of weight use cover every adapter:

* ``"dense"``: y_s = W x_s (+ b), W [O, I] (or W [I, O] for ``transposed`` layers such as
  ``nn.Embedding``); with ``groups`` g, W's rows and X's columns split into g independent blocks.
  The per-sample gradient of one factor column is Γ = Σ_s g_s x_sᵀ (+ Σ_s g_s for the bias).
* ``"elementwise"``: y_s = γ ⊙ x_s (+ β) (affine normalisation), Γ = Σ_s g_s ⊙ x_s.

Adding a layer type is one small file with a subclass registered in
:data:`curvlab.collector.adapters.ADAPTERS` (see ``docs/extending.md``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LayerAdapter"]


class LayerAdapter:
    """How one module type's call maps to the normal form (see the module docstring).

    Attributes:
        kind: ``"dense"`` or ``"elementwise"``.
        transposed: the weight is stored [I, O] (``nn.Embedding``) instead of [O, I].
    """

    kind = "dense"
    transposed = False
    #: the attribute names of the module's weight and bias
    weight_name = "weight"
    bias_name = "bias"
    #: the adapter recomputes the call (:meth:`replay`) from a tensor it records itself
    replays = False

    def matches(self, module: nn.Module) -> bool:
        """Whether this adapter handles ``module`` (exact type checks; a subclass may override)."""
        raise NotImplementedError

    def parameter_names(self, module: nn.Module) -> tuple[str, ...]:
        """The parameters whose use the normal form describes (the weight, and the bias when present)."""
        return tuple(n for n in (self.weight_name, self.bias_name) if getattr(module, n, None) is not None)

    def delegates(self, module: nn.Module) -> tuple[str, ...]:
        """Child modules whose parameters the module's own forward uses functionally, and which
        :meth:`replay` calls as modules instead (so their uses inside this call are not "outside")."""
        return ()

    def replay(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> tuple[Any, torch.Tensor]:
        """For ``replays`` adapters: (the output recomputed from a live tensor y, y) where y is what
        ``to_normal`` reads gradients of. The collector checks the recomputation against ``output``.
        Raise :class:`~curvlab.errors.UnsupportedModuleError` for a call it cannot replay."""
        raise NotImplementedError

    def linear_in_parameters(self, module: nn.Module) -> bool:
        """Whether the call's output is linear in the adapted parameters jointly, y(x; θ + v) =
        y(x; θ) + y(x; v): true of the "dense" and "elementwise" forms (a replaying adapter says no)."""
        return not self.replays

    def parameter_output(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: torch.Tensor,
                         name: str, value: torch.Tensor) -> torch.Tensor:
        """y(x; v), shaped like ``output``: the call on its (live) arguments with the parameter ``name``
        set to ``value`` and the other adapted parameters to zero. Where :meth:`linear_in_parameters`,
        this is exactly how the output moves when ``name`` moves by ``value``. The default calls the
        module through ``torch.func.functional_call``; Linear and convolutions override the weight's with
        one product (the layered summary's hook form injects it, :mod:`curvlab.summary.layer_hooks`)."""
        from torch.func import functional_call  # noqa: PLC0415

        values = {n: value if n == name else torch.zeros_like(getattr(module, n)) for n in self.parameter_names(module)}
        return functional_call(module, values, args, kwargs)

    def groups(self, module: nn.Module) -> int:
        """g, independent blocks of a grouped weight (1 unless grouped)."""
        return 1

    def inputs(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> torch.Tensor:
        """X [N, S, I], detached, from the call's arguments (``output``: the call's recorded output, with
        its ``shape``)."""
        raise NotImplementedError

    def weight_gradients(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any,
                         G: torch.Tensor) -> torch.Tensor | None:
        """Optional fast path: the per-sample, per-column weight gradients [N, K, *weight.shape] for G
        [N, K, S, O] of one call, computed without the normal form X (``None``: use X)."""
        return None

    def to_normal(self, module: nn.Module, grad: torch.Tensor, batch_dims: int) -> torch.Tensor:
        """A gradient w.r.t. the output, [*lead, N, ...] with ``batch_dims`` leading dims, as [*lead, N, S, O]."""
        raise NotImplementedError

    def describe(self, module: nn.Module) -> str:
        return type(module).__qualname__


def tokens_last(grad: torch.Tensor, batch_dims: int, features: int) -> torch.Tensor:
    """[*lead, N, *positions, O] -> [*lead, N, S, O] (features last, as Linear/Embedding/LayerNorm)."""
    lead = grad.shape[: batch_dims + 1]
    return grad.reshape(*lead, -1, features)


def channels_first(grad: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """[*lead, N, C, *spatial] -> [*lead, N, S, C] (Conv, BatchNorm, GroupNorm outputs)."""
    lead = grad.shape[: batch_dims + 2]
    return grad.reshape(*lead, -1).transpose(-1, -2)
