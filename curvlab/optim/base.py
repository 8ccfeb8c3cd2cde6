"""The shared stateful shell of every curvlab optimiser (the maths lives in small pure modules).

A :class:`CurvatureOptimizer` is a :class:`torch.optim.Optimizer` built from ``(model, loss_fn,
**hyperparameters)``. It holds one parameter group of the model's trainable parameters (reference
ordering, see :mod:`curvlab.partition`), so learning-rate schedulers and ``param_groups`` work. It adds:

* ``step(inputs, targets) -> loss``: one update on a batch; returns the loss *before* the update;
* ``statistics()``: a dict of floats / tensors describing the last step (for tracking along ``step``);
* ``state_dict`` / ``load_state_dict`` that also round-trip the optimiser-wide state (step counter,
  damping, running statistics), so training resumes identically;
* the non-finite guard: a NaN/inf loss, gradient or step is rejected, the parameters stay untouched,
  and the optimiser either raises its damping (methods with damping; a :class:`CurvlabWarning` is
  issued and ``statistics()["rejected"] == 1``) or raises :class:`curvlab.errors.NonFiniteError`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from curvlab.errors import CurvlabWarning, NonFiniteError
from curvlab.losses import loss_adapter
from curvlab.partition import trainable_parameters

__all__ = ["CurvatureOptimizer", "all_finite"]


def all_finite(tensors: torch.Tensor | Sequence[torch.Tensor]) -> bool:
    """True if every entry of ``tensors`` (a tensor or a sequence of tensors) is finite.

    Example:
        >>> all_finite([torch.ones(2), torch.tensor([1.0, float("inf")])])
        False
    """
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class CurvatureOptimizer(torch.optim.Optimizer):
    """Base class: ``(model, loss_fn, defaults)`` → a ``torch.optim.Optimizer`` stepping on batches.

    Subclasses implement :meth:`_step` and, if they have damping, :meth:`_raise_damping`.
    Optimiser-wide state lives in ``self.global_state`` (a dict of floats and tensors) and is saved
    under the ``"curvlab"`` key of :meth:`state_dict`.
    """

    #: whether a rejected (non-finite) step raises the damping instead of raising an error
    has_damping: bool = False

    def __init__(self, model: nn.Module, loss_fn: nn.Module, defaults: dict[str, Any]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__qualname__}")
        named = trainable_parameters(model)
        if not named:
            raise ValueError(f"{type(model).__qualname__} has no trainable parameters")
        self.adapter = loss_adapter(loss_fn)
        super().__init__([p for _, p in named], defaults)
        self.model = model
        self.loss_fn = loss_fn
        self.param_names = tuple(n for n, _ in named)
        self.global_state: dict[str, Any] = {"step": 0}
        self._statistics: dict[str, Any] = {}

    # ------------------------------------------------------------------ public API
    @property
    def params(self) -> list[torch.Tensor]:
        """The trainable parameters in the reference ordering."""
        return [p for group in self.param_groups for p in group["params"]]

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """One update on the batch ``(inputs, targets)``; returns the loss before the update (a 0-dim tensor)."""
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__}.step(inputs, targets) takes two tensors, got "
                f"{type(inputs).__qualname__} and {type(targets).__qualname__}"
            )
        self._statistics = {"rejected": 0.0}
        with torch.enable_grad():
            loss = self._step(inputs, targets)
        self.global_state["step"] += 1
        self._statistics.setdefault("loss", float(loss))
        return loss.detach()

    def statistics(self) -> dict[str, Any]:
        """Statistics of the last step: floats and tensors (see each optimiser for its keys)."""
        return dict(self._statistics)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["curvlab"] = copy.deepcopy(self.global_state)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("curvlab", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.global_state = copy.deepcopy(extra)

    # ------------------------------------------------------------------ helpers for subclasses
    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _raise_damping(self) -> str:
        """Raise the damping after a rejected step; returns a description for the warning."""
        raise NotImplementedError

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of the model on a batch (graph kept for differentiation)."""
        outputs = self.model(inputs)
        return self.adapter(outputs, targets)

    def _loss_and_grad(
        self, inputs: torch.Tensor, targets: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(loss, gradients)``; gradients shaped like the parameters (zeros where unused)."""
        loss = self._loss(inputs, targets)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        return loss, grads

    @torch.no_grad()
    def _evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._loss(inputs, targets)

    def _reject(self, what: str, loss: torch.Tensor) -> torch.Tensor:
        """Reject the step because ``what`` is not finite; the parameters are left untouched."""
        name = type(self).__name__
        if not self.has_damping:
            raise NonFiniteError(f"{name}: the {what} is not finite; the parameters were left untouched")
        note = self._raise_damping()
        warnings.warn(
            f"{name}: the {what} is not finite; step rejected, parameters untouched, {note}",
            CurvlabWarning,
            stacklevel=3,
        )
        self._statistics["rejected"] = 1.0
        return loss.detach()

    @torch.no_grad()
    def _apply(self, updates: Sequence[torch.Tensor], loss: torch.Tensor) -> bool:
        """Add ``updates`` to the parameters if all are finite; else reject. Returns True if applied."""
        if not all_finite(updates):
            self._reject("step", loss)
            return False
        for p, u in zip(self.params, updates, strict=True):
            p.add_(u)
        return True

    def _group(self) -> dict[str, Any]:
        """The (single) parameter group's hyperparameters."""
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} supports one parameter group, found {len(self.param_groups)}")
        return self.param_groups[0]
