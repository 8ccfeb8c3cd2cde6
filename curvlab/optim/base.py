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
  issued and ``statistics()["rejected"] == 1``) or raises :class:`curvlab.errors.NonFiniteError`;
* roll-back of a step into a non-finite region: a step whose parameters are not finite is undone at
  once; when the loss of the next batch is not finite but was finite before the last step (the
  parameters of before that step are kept, one copy), the last step is rolled back, the step is made
  more cautious (damping raised, or the learning rate halved for methods without damping) and a
  :class:`CurvlabWarning` says so (``statistics()["rolled_back"] == 1``): the optimiser recovers
  instead of rejecting every later step;
* BatchNorm running statistics are updated once per step, from the step's batch at the parameters
  before the update (as a plain SGD step does): the extra loss evaluations of line searches, trust
  regions and curvature passes leave them untouched (one no-grad forward pass per step, only for models
  with train-mode BatchNorm);
* ``load_state_dict`` validates the saved state against this model's parameters (count and shapes)
  before loading anything, and raises ``ValueError`` naming the mismatch.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from curvlab.autodiff import batch_coupled_modules, exact_kernels
from curvlab.errors import CurvlabWarning, NonFiniteError
from curvlab.losses import loss_adapter
from curvlab.partition import trainable_parameters

__all__ = ["CurvatureOptimizer", "all_finite"]


def all_finite(tensors: torch.Tensor | Sequence[torch.Tensor]) -> bool:
    """True if every entry of ``tensors`` (a tensor or a sequence of tensors) is finite.

    One synchronisation: the sum of a tensor is finite whenever all its entries are (a NaN or ±inf
    entry makes the sum NaN or ±inf), so the per-tensor sums are checked together; only when one of them
    is not finite (which a sum overflowing to inf also gives) are the entries checked one by one.

    Example:
        >>> all_finite([torch.ones(2), torch.tensor([1.0, float("inf")])])
        False
        >>> all_finite([torch.full((4,), 3e38)])  # the sum overflows, the entries are finite
        True
    """
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    floating = [t for t in tensors if (t.is_floating_point() or t.is_complex()) and t.numel()]
    if not floating:
        return True
    if bool(torch.isfinite(torch.stack([t.detach().sum() for t in floating])).all()):
        return True
    return all(bool(torch.isfinite(t).all()) for t in floating)


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
        self._statistics = {"rejected": 0.0, "rolled_back": 0.0}
        self._batch = (inputs, targets)
        before = self._before = [p.detach().clone() for p in self.params]
        state_before = dict(self.global_state)  # shallow: subclasses replace state entries, never mutate them
        norms = batch_coupled_modules(self.model)
        if norms:  # one running-statistics update, then none from the step's internal evaluations
            with torch.no_grad():
                self.model(inputs)
            modules = dict(self.model.named_modules())
            running = {n: [b.clone() for b in modules[n].buffers(recurse=False)] for n in norms}
        try:
            with torch.enable_grad():
                loss = self._step(inputs, targets)
        finally:
            self._batch = self._before = None
            if norms:
                with torch.no_grad():
                    for n, saved in running.items():
                        for b, v in zip(modules[n].buffers(recurse=False), saved, strict=True):
                            b.copy_(v)
        if self._statistics["rejected"] == 0.0 and self._statistics["rolled_back"] == 0.0:
            self._previous = (before, state_before)  # before the accepted step, for a roll-back
        self.global_state["step"] += 1
        self._statistics.setdefault("loss", float(loss))
        return loss.detach()

    def statistics(self) -> dict[str, Any]:
        """Statistics of the last step: floats and tensors (see each optimiser for its keys)."""
        return dict(self._statistics)

    def state_dict(self) -> dict[str, Any]:
        state = torch.optim.Optimizer.state_dict(self)
        state["curvlab"] = copy.deepcopy(self.global_state)
        state["curvlab_param_shapes"] = [tuple(p.shape) for p in self.params]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; refuses (``ValueError``, nothing loaded) one saved from a different model."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"{type(self).__name__}.load_state_dict takes a dict, got {type(state_dict).__qualname__}")
        state_dict = dict(state_dict)
        extra = state_dict.pop("curvlab", None)
        shapes = state_dict.pop("curvlab_param_shapes", None)
        name = type(self).__name__
        mine = [tuple(p.shape) for p in self.params]
        if shapes is not None:
            shapes = [tuple(s) for s in shapes]
            if len(shapes) != len(mine):
                raise ValueError(f"{name}.load_state_dict: the state was saved for {len(shapes)} parameter tensors, "
                                 f"this model has {len(mine)}")
            for i, (a, b) in enumerate(zip(shapes, mine, strict=True)):
                if a != b:
                    raise ValueError(f"{name}.load_state_dict: parameter {self.param_names[i]!r} is {b} here but "
                                     f"{a} in the saved state (a differently shaped model)")
        numel = sum(p.numel() for p in self.params)
        for key, value in (extra or {}).items():
            if isinstance(value, torch.Tensor) and value.ndim == 1 and key.endswith(("buffer", "exp_avg", "exp_avg_sq",
                                                                                     "g_hat", "s", "drift", "eta")):
                if value.numel() != numel:
                    raise ValueError(f"{name}.load_state_dict: the saved {key!r} has {value.numel()} entries, this "
                                     f"model has {numel} parameters")
        if extra is not None:
            self._check_loaded_state(extra)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.global_state = copy.deepcopy(extra)
        self._previous = None

    def _check_loaded_state(self, state: dict[str, Any]) -> None:
        """Subclass hook: raise ``ValueError`` if the saved optimiser-wide ``state`` does not fit this model."""

    # ------------------------------------------------------------------ helpers for subclasses
    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _raise_damping(self) -> str:
        """Raise the damping after a rejected step; returns a description for the warning."""
        raise NotImplementedError

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of the model on a batch (graph kept for differentiation; exact kernels, so that
        Hessian–vector products through attention have their double backward)."""
        with exact_kernels():
            outputs = self.model(inputs)
        return self.adapter(outputs, targets)

    def _loss_and_grad(
        self, inputs: torch.Tensor, targets: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(loss, gradients)``; gradients shaped like the parameters (zeros where unused)."""
        _, loss, grads = self._forward_backward(inputs, targets, create_graph)
        return loss, grads

    def _forward_backward(
        self, inputs: torch.Tensor, targets: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(detached outputs, loss, gradients)`` of one plain forward/backward pass."""
        with exact_kernels():
            outputs = self.model(inputs)
        loss = self.adapter(outputs, targets)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        return outputs.detach(), loss, grads

    def _rejected_unless_finite(self, loss: torch.Tensor, grads: Sequence[torch.Tensor]) -> torch.Tensor | None:
        """None if the loss and the gradients are finite; otherwise the rejected step's return value."""
        if not all_finite(loss):
            return self._reject("loss", loss)
        if not all_finite(grads):
            return self._reject("gradient", loss)
        return None

    @torch.no_grad()
    def _evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._loss(inputs, targets)

    def _recover(self) -> str:
        """Make the next steps more cautious after a roll-back (damping up, or the learning rate halved)."""
        if self.has_damping:
            return self._raise_damping()
        group = self._group()
        group["lr"] *= 0.5
        return f"learning rate halved to {group['lr']:.3g}"

    def _after_roll_back(self) -> None:
        """Subclass hook: drop caches derived from the optimiser state (it was just restored)."""

    @torch.no_grad()
    def _roll_back(self, loss: torch.Tensor) -> bool:
        """If the last accepted step made this batch's loss non-finite, undo it; True if it did."""
        previous, batch = getattr(self, "_previous", None), getattr(self, "_batch", None)
        if previous is None or batch is None:
            return False
        current = [p.detach().clone() for p in self.params]
        for p, q in zip(self.params, previous[0], strict=True):
            p.copy_(q)
        if all_finite(self._loss(*batch)):
            self._previous = None
            step = self.global_state["step"]
            self.global_state = dict(previous[1])  # the optimiser state from before that step, too
            self.global_state["step"] = step
            self._after_roll_back()
            note = self._recover()
            warnings.warn(
                f"{type(self).__name__}: the loss became non-finite after the last step; that step was rolled "
                f"back, {note}",
                CurvlabWarning,
                stacklevel=4,
            )
            self._statistics["rolled_back"] = 1.0
            return True
        for p, q in zip(self.params, current, strict=True):  # the batch itself is bad: keep the step
            p.copy_(q)
        return False

    def _reject(self, what: str, loss: torch.Tensor) -> torch.Tensor:
        """Reject the step because ``what`` is not finite; the parameters are left untouched."""
        name = type(self).__name__
        if what in ("loss", "gradient") and self._roll_back(loss):
            return loss.detach()
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
        """Add ``updates`` to the parameters if the result is finite; else undo and reject. True if applied.

        One check covers both failures: the parameters are finite before the step, so a non-finite update
        makes them non-finite too; finite updates can also overflow them.
        """
        saved = getattr(self, "_before", None) or [p.detach().clone() for p in self.params]
        for p, u in zip(self.params, updates, strict=True):
            p.add_(u)
        if not all_finite(self.params):
            for p, q in zip(self.params, saved, strict=True):
                p.copy_(q)
            self._reject("step" if not all_finite(updates) else "updated parameters", loss)
            return False
        return True

    def _group(self) -> dict[str, Any]:
        """The (single) parameter group's hyperparameters."""
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} supports one parameter group, found {len(self.param_groups)}")
        return self.param_groups[0]
