"""The Hessian of the loss as a matrix-free operator, H v = ∇_θ (∇_θ L · v).

Two ways to the same product (Pearlmutter 1994):

* ``HVPMethod.DOUBLE_BACKWARD``: reverse-over-reverse. With ``cache=True`` the gradient graph
  (``create_graph=True``) is built once per batch and each product is one backward pass through it.
* ``HVPMethod.FORWARD_OVER_REVERSE``: a forward-mode jvp of the gradient function (``torch.func``),
  recomputed for every product (``cache`` has no effect: ``torch.func.linearize`` replays in-place
  ops wrongly in torch 2.13, so its trace is never reused). The loss is written with elementary
  operations (:mod:`curvlab.losses.elementary`): forward-mode AD through the fused ``mse_loss``
  backward fails in torch 2.13.

Caching keeps one graph per batch alive (memory of about one training step per batch). Both routes
are exact for in-place ops; the default (double backward) needs only reverse mode.
"""

from __future__ import annotations

import enum

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from curvlab.autodiff import forward_ad_kernels, quiet_forward_ad
from curvlab.data import Data
from curvlab.losses import LossAdapter
from curvlab.losses.elementary import elementary_loss
from curvlab.operators.cg import DEFAULT_CG, CGSettings
from curvlab.operators.model_operator import ModelCurvatureOperator
from curvlab.partition import Partition, PartitionSpec

__all__ = ["HVPMethod", "HessianOperator"]


class HVPMethod(enum.Enum):
    """How the Hessian-vector product is differentiated."""

    DOUBLE_BACKWARD = "double_backward"
    FORWARD_OVER_REVERSE = "forward_over_reverse"


class HessianOperator(ModelCurvatureOperator):
    """H = ∇²_θ L over all batches of ``data``, [P, P], through products H v.

    Args:
        model: the network; evaluated at a copy of its current trainable parameters.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (mean or sum).
        data: an ``(inputs, targets)`` batch or an iterable of batches (combined exactly).
        method: :class:`HVPMethod` or its value string.
        cache: keep the per-batch gradient graphs (double backward) between products: faster, more
            memory. No effect on forward over reverse.
        partition: the groups used by :meth:`restrict` (``"canonical"``, ``"layer"``, ...).
        cg: stopping rule of :meth:`solve`.

    Cost per product, in gradients (MLP 784-256-256-10, CPU time; ``benchmarks/operators.py``): double
    backward about 1.5 with ``cache=True`` and 2.7 without; forward over reverse about 4.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> data = (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))
        >>> op = HessianOperator(model, nn.CrossEntropyLoss(), data)
        >>> v = torch.randn(op.shape[0], dtype=torch.float64)
        >>> fr = HessianOperator(model, nn.CrossEntropyLoss(), data, method="forward_over_reverse")
        >>> torch.allclose(op @ v, fr @ v)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | LossAdapter,
        data: Data,
        *,
        method: HVPMethod | str = HVPMethod.DOUBLE_BACKWARD,
        cache: bool = True,
        partition: PartitionSpec | Partition = "canonical",
        cg: CGSettings = DEFAULT_CG,
    ):
        self.method = HVPMethod(method)
        self.cache = cache
        super().__init__(
            model,
            loss_fn,
            data,
            quantity="hessian",
            partition=partition,
            cg=cg,
            method=self.method.value,
            cache=cache,
        )
        self._cached: dict[int, object] = {}

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        vs = self.unflatten(v)
        total = None
        for b in range(len(self.batches)):
            if self.method is HVPMethod.DOUBLE_BACKWARD:
                part = self._double_backward(b, vs)
            else:
                part = self._forward_over_reverse(b, vs)
            total = part if total is None else total.add_(part)  # no extra pass for a single batch
        return total

    def _apply_block(self, v: torch.Tensor) -> torch.Tensor:
        """K columns at once (batched backward / ``vmap``); falls back to a loop if unsupported."""
        if not self.__dict__.get("_vectorize", True):
            return super()._apply_block(v)
        vs = tuple(t.movedim(-1, 0) for t in self.unflatten(v))  # [K, *param shape]
        try:
            total = None
            for b in range(len(self.batches)):
                if self.method is HVPMethod.DOUBLE_BACKWARD:
                    part = self._double_backward(b, vs, batched=True)
                else:
                    gradient = self._gradient_function(b)
                    with quiet_forward_ad(), forward_ad_kernels(self.model):
                        hv = vmap(lambda *t, g=gradient: jvp(g, self.params, t)[1])(*vs)
                    part = torch.cat([h.reshape(h.shape[0], -1) for h in hv], dim=1).T
                total = part if total is None else total.add_(part)
            return total
        except (RuntimeError, NotImplementedError):
            self._vectorize = False
            return super()._apply_block(v)

    # ------------------------------------------------------------------ reverse over reverse
    def _gradient_graph(self, b: int):
        leaves = tuple(p.clone().requires_grad_() for p in self.params)
        with torch.enable_grad():
            grads = torch.autograd.grad(
                self.batch_loss(leaves, b), leaves, create_graph=True, allow_unused=True
            )
        return leaves, grads

    def _double_backward(self, b: int, vs, batched: bool = False) -> torch.Tensor:
        """H v as the vjp of the gradient with cotangent v (H is symmetric); ``batched``: vs are [K, ...]."""
        if self.cache:
            if b not in self._cached:
                self._cached[b] = self._gradient_graph(b)
            leaves, grads = self._cached[b]
        else:
            leaves, grads = self._gradient_graph(b)
        pairs = [
            (g, u) for g, u in zip(grads, vs, strict=True) if g is not None and g.requires_grad
        ]
        if not pairs:  # the gradient does not depend on θ: H = 0
            shape = (self.shape[0], vs[0].shape[0]) if batched else (self.shape[0],)
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            hv = torch.autograd.grad(
                [g for g, _ in pairs],
                leaves,
                grad_outputs=[u for _, u in pairs],
                retain_graph=self.cache,
                allow_unused=True,
                materialize_grads=True,
                is_grads_batched=batched,
            )
        if batched:
            return torch.cat([h.reshape(h.shape[0], -1) for h in hv], dim=1).T
        return self.flatten(hv)

    # ------------------------------------------------------------------ forward over reverse
    def _gradient_function(self, b: int):
        """θ ↦ ∇_θ (w_b L_b), with the loss from elementary operations (no fused loss kernels, see
        :mod:`curvlab.losses.elementary`), so that forward-mode AD and tracing go through."""
        x, y = self.batches[b]
        weight = self.weights[b]

        def batch_loss(*ps):
            return weight * elementary_loss(self.loss, self.forward(ps, x), y)

        return grad(batch_loss, argnums=tuple(range(len(self.params))))

    def _forward_over_reverse(self, b: int, vs) -> torch.Tensor:
        with quiet_forward_ad(), forward_ad_kernels(self.model):
            return self.flatten(jvp(self._gradient_function(b), self.params, vs)[1])
