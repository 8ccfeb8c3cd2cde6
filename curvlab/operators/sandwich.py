"""Operators of the form Σ_b Jᵦᵀ Mᵦ Jᵦ, with Jᵦ = ∂f(xᵦ)/∂θ the [N·C, P] Jacobian of the model outputs.

A product is a Jacobian–vector product u = J v (outputs' tangent, [N, C]), a per-sample product in
output space u ↦ M u, and a vector–Jacobian product Jᵀ(M u). The middle matrix M is block diagonal
over samples and already carries the batch's scaling w_b / Z_b; subclasses give it through
``_output_product``.

With ``cache=True`` (the default) both products run through one retained autograd graph per batch,
built lazily by the first product: the outputs f and the vjp w ↦ Jᵀw for a symbolic cotangent w,
taken with ``create_graph=True``. Then Jᵀw is a backward pass through the forward graph and J v is
a backward pass through the vjp's own graph (the "double-vjp" trick: Jᵀw is linear in w, so its
vjp with cotangent v is J v). Plain reverse-mode autograd is exact for every op, in-place ones
(``out += identity``, ``ReLU(inplace=True)``) included; ``torch.func.linearize``, which replays
in-place ops wrongly in torch 2.13, is not used. Building costs about one gradient with
``create_graph``; a product then costs about 1.3 gradients (MLP 784-256-256-10,
``benchmarks/operators.py``). Without cache, each product is a fresh ``torch.func.jvp`` and ``vjp``
(about 2.2 gradients, no retained memory).
"""

from __future__ import annotations

import torch
from torch.func import jvp, vjp, vmap

from curvlab.autodiff import forward_ad_kernels, quiet_forward_ad
from curvlab.operators.model_operator import ModelCurvatureOperator

__all__ = ["OutputSandwichOperator", "output_hessian_product"]


class _RetainedJacobian:
    """J and Jᵀ of one batch through one retained graph (see the module docstring)."""

    def __init__(self, operator: ModelCurvatureOperator, b: int):
        self.leaves = tuple(p.clone().requires_grad_() for p in operator.params)
        with torch.enable_grad():
            self.outputs = operator.forward(self.leaves, operator.batches[b][0])
            self.cotangent = torch.zeros_like(self.outputs, requires_grad=True)
            vjps = torch.autograd.grad(
                self.outputs, self.leaves, self.cotangent, create_graph=True, allow_unused=True,
                materialize_grads=True,
            )  # fmt: skip
        # parameters whose vjp does not depend on w (unused ones) have J = 0
        self.linear = [(k, g) for k, g in enumerate(vjps) if g.requires_grad]

    def jvp(self, vs, batched: bool = False) -> torch.Tensor:
        """J v, shaped like the outputs ([K, *outputs] if ``batched``: vs are [K, *param])."""
        if not self.linear:
            shape = (vs[0].shape[0], *self.outputs.shape) if batched else self.outputs.shape
            return self.outputs.new_zeros(shape)
        (ju,) = torch.autograd.grad(
            [g for _, g in self.linear], self.cotangent, [vs[k] for k, _ in self.linear],
            retain_graph=True, is_grads_batched=batched, allow_unused=True, materialize_grads=True,
        )  # fmt: skip
        return ju

    def vjp(self, w: torch.Tensor, batched: bool = False) -> tuple[torch.Tensor, ...]:
        """Jᵀ w per parameter tensor ([K, *param] if ``batched``)."""
        return torch.autograd.grad(
            self.outputs, self.leaves, w, retain_graph=True, is_grads_batched=batched,
            allow_unused=True, materialize_grads=True,
        )  # fmt: skip


class OutputSandwichOperator(ModelCurvatureOperator):
    """Base of :class:`GGNOperator`, :class:`FisherMCOperator` and :class:`EmpiricalFisherOperator`.

    Subclasses implement ``_output_product(b, u)``: u [N, C] ↦ (w_b/Z_b) M_n u_n per sample, [N, C].
    Set ``self.cache`` before calling ``super().__init__``.
    """

    cache: bool = True

    def _output_product(self, b: int, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _retained(self, b: int) -> _RetainedJacobian:
        cached = self.__dict__.setdefault("_sandwich_cache", {})
        if b not in cached:
            cached[b] = _RetainedJacobian(self, b)
        return cached[b]

    def _middle(self, b: int, ju: torch.Tensor, batched: bool = False) -> torch.Tensor:
        """M u for u = J v shaped like the outputs ([K, *outputs] if ``batched``)."""
        n, c = self.outputs[b].shape[0], self.outputs[b][0].numel()
        if batched:
            return vmap(lambda u: self._output_product(b, u.reshape(n, c)))(ju).reshape(ju.shape)
        return self._output_product(b, ju.reshape(n, c)).reshape(ju.shape)

    def _fresh_product(self, b: int, vs) -> torch.Tensor:
        x = self.batches[b][0]

        def outputs(*ps):
            return self.forward(ps, x)

        with quiet_forward_ad(), forward_ad_kernels(self.model):
            ju = jvp(outputs, self.params, tuple(vs))[1]
        mu = self._middle(b, ju)
        return self.flatten(vjp(outputs, *self.params)[1](mu))

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        vs = self.unflatten(v)
        total = None
        for b in range(len(self.batches)):
            if self.cache:
                jac = self._retained(b)
                part = self.flatten(jac.vjp(self._middle(b, jac.jvp(vs))))
            else:
                part = self._fresh_product(b, vs)
            total = part if total is None else total.add_(part)  # no extra pass for a single batch
        return total

    def _apply_block(self, v: torch.Tensor) -> torch.Tensor:
        """K columns at once by batched backward passes through the retained graphs; falls back to
        the column loop where an op has no batching rule (or without cache)."""
        if not self.cache or not self.__dict__.get("_vectorize", True):
            return super()._apply_block(v)
        vs = [t.movedim(-1, 0) for t in self.unflatten(v)]  # [K, *param shape]
        try:
            total = None
            for b in range(len(self.batches)):
                jac = self._retained(b)
                grads = jac.vjp(self._middle(b, jac.jvp(vs, True), True), batched=True)
                part = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1).T
                total = part if total is None else total.add_(part)
            return total
        except (RuntimeError, NotImplementedError):
            self._vectorize = False
            return super()._apply_block(v)


def output_hessian_product(adapter, outputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """H_n u_n per sample, [N, C], for the loss Hessian w.r.t. the outputs (unscaled), in closed form.

    MSE: 2u;  cross-entropy: p ⊙ u − p (pᵀu) per position with p = softmax(f);  BCE with logits:
    σ(1−σ) ⊙ u (``LossAdapter.output_hessian_product``).

    Args:
        adapter: a :class:`curvlab.losses.LossAdapter`.
        outputs: model outputs [N, ...]; u: [N, C] with C the flattened output size.

    Example:
        >>> from curvlab.losses import loss_adapter
        >>> ce = loss_adapter(torch.nn.CrossEntropyLoss())
        >>> f, u = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
        >>> h = ce.output_hessian(f)
        >>> torch.allclose(output_hessian_product(ce, f, u), (h @ u[:, :, None])[..., 0])
        True
    """
    return adapter.output_hessian_product(outputs, u)
