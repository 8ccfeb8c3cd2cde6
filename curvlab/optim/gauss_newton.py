"""The Gauss–Newton quadratic model of the loss at the current parameters.

For L(θ) = (1/Z) Σ_n ℓ(f(x_n; θ), y_n) (:mod:`curvlab.losses`), with J_n = ∂f_n/∂θ [C, P] and the
per-sample output Hessian H_n [C, C] (applied in closed form by
:func:`curvlab.operators.sandwich.output_hessian_product`, never materialised: for BCE or MSE it is
diagonal, for cross-entropy diag(p) − ppᵀ), the generalised Gauss–Newton matrix is

    G = (1/Z) Σ_n J_nᵀ H_n J_n                                                           [P, P]

and the quadratic model of a step d is  m(d) = L + gᵀd + ½ dᵀ(G + ρI)d.  A product G v costs one
Jacobian–vector product (J v), one structured output-Hessian product (O(NC)) and one reverse-mode VJP
(Jᵀ u) on the forward pass's graph, which is kept for the batch and reused by every product (e.g. across
CG iterations). For an ``nn.Sequential`` chain the forward pass is cached unit by unit and J v is the
tangent recursion of :mod:`curvlab.optim.tangents` (no primal recomputation: 784-128-128-10 MLP, batch
250, one thread: J v 1.2 ms against 3.1 ms by dual tensors, G v 2.8 ms against 5.0 ms); other models get
forward-mode AD (dual tensors) through the whole model. The curvature along one direction,
dᵀGd = (1/Z) Σ_n (J_n d)ᵀ H_n (J_n d), needs the J v only (:meth:`GaussNewtonQuadratic.curvature_along`).
The model must be deterministic (no dropout in train mode) for the products to be consistent.

It exists beside :class:`~curvlab.operators.GGNOperator` because an optimiser step needs the loss, the gradient
and an exact GGN diagonal from one linearisation, and a per-batch ``GGNOperator`` made SGN slower (median step,
one thread, loaded machine: 1-20-20-20-1 MLP batch 1000 16–20 ms here vs 23–26 ms uncached operator + gradient,
150–175 ms cached, whose ``linearize`` traces per batch; 784-256-256-10 MLP batch 128 14–17 ms vs 24–26 ms).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn
from torch.func import functional_call, jacrev

from curvlab.autodiff import exact_kernels, forward_ad_kernels, stateless_copy
from curvlab.guards import check_dense_allocation
from curvlab.losses import loss_adapter
from curvlab.operators.sandwich import output_hessian_product
from curvlab.optim.tangents import CachedChain, chain_units
from curvlab.partition import trainable_parameters

__all__ = ["GaussNewtonQuadratic"]


class GaussNewtonQuadratic:
    """Loss, gradient and GGN-vector products of ``model`` on one batch, at the current parameters.

    Args:
        model: the network; its trainable parameters define θ (reference ordering).
        loss_fn: a supported loss (MSE, cross-entropy, BCE-with-logits; 'mean' or 'sum').
        inputs, targets: the batch.

    Attributes:
        loss: 0-dim tensor L(θ).
        gradient: [P] ∇L(θ).
        outputs: [N, ...] the model outputs f(x; θ).

    Example:
        >>> _ = torch.manual_seed(0); model = nn.Linear(3, 2).double()
        >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
        >>> q = GaussNewtonQuadratic(model, nn.MSELoss(), x, y)
        >>> v = torch.randn(8, dtype=torch.float64)
        >>> xa = torch.cat([x, torch.ones(5, 1, dtype=x.dtype)], 1)        # [N, 4]: bias column
        >>> G = torch.kron(torch.eye(2, dtype=x.dtype), 2 * xa.T @ xa / 10)  # rows (out, in), then biases
        >>> perm = torch.tensor([0, 1, 2, 4, 5, 6, 3, 7])                    # to W.flatten(), b order
        >>> torch.allclose(q.ggn_matvec(v), G[perm][:, perm] @ v)
        True
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
        self.adapter = loss_adapter(loss_fn)
        named = trainable_parameters(model)
        self._names = [n for n, _ in named]
        self._params = tuple(p.detach() for _, p in named)
        self._shapes = [p.shape for p in self._params]
        self._model = model
        function = stateless_copy(model)  # the batch function: train-mode BatchNorm updates no buffers
        names = self._names

        def forward(*params: torch.Tensor) -> torch.Tensor:
            with exact_kernels():  # no MHA fast path (no forward AD), math SDPA
                return functional_call(function, dict(zip(names, params, strict=True)), (inputs,))

        self._forward = forward
        # the batch function's own parameters
        leaves = [p for _, p in named] if function is model else [p for _, p in trainable_parameters(function)]
        self._chain = None
        with torch.enable_grad(), exact_kernels():
            if chain_units(function) is not None:  # cached unit by unit: products need no primal pass
                try:
                    self._chain = CachedChain(function, None, inputs)
                except TypeError:  # units sharing a parameter: forward-mode AD through the model
                    self._chain = None
            outputs = self._chain.outputs if self._chain is not None else function(inputs)
        self._graph = (outputs, leaves)  # retained: every VJP of this batch reuses it
        self.outputs = outputs.detach()
        self._out_shape = outputs.shape
        self.adapter.check(self.outputs, targets)
        self.scale = 1.0 / self.adapter.normalizer(self.outputs)
        self.loss = self.adapter(self.outputs, targets).detach()
        grad_out = self.adapter.output_gradient(self.outputs, targets).reshape(self._out_shape) * self.scale
        self.gradient = self._flat(self._vjp(grad_out))

    def _vjp(self, cotangent: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Jᵀ u on the retained graph of the forward pass (zeros for parameters the outputs do not use)."""
        outputs, leaves = self._graph
        if not outputs.requires_grad:
            return tuple(torch.zeros_like(p) for p in leaves)
        grads = torch.autograd.grad(outputs, leaves, cotangent, retain_graph=True, allow_unused=True)
        return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True))

    @property
    def num_params(self) -> int:
        """P."""
        return sum(p.numel() for p in self._params)

    def _flat(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _unflat(self, vector: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, start = [], 0
        for shape, p in zip(self._shapes, self._params, strict=True):
            out.append(vector[start : start + p.numel()].reshape(shape))
            start += p.numel()
        return tuple(out)

    def jvp(self, vector: torch.Tensor) -> torch.Tensor:
        """J v: [P] → [N, C] (outputs flattened per sample): the tangent recursion of a Sequential chain
        (:mod:`curvlab.optim.tangents`), else forward-mode AD (dual tensors) through the model."""
        if self._chain is not None:
            with forward_ad_kernels(self._model), exact_kernels():
                tangent_out = self._chain.jvp(dict(zip(self._names, self._unflat(vector), strict=True)))
            return tangent_out.reshape(tangent_out.shape[0], -1)
        with forward_ad_kernels(self._model), forward_ad.dual_level():
            duals = [forward_ad.make_dual(p, t) for p, t in zip(self._params, self._unflat(vector), strict=True)]
            tangent_out = forward_ad.unpack_dual(self._forward(*duals)).tangent
        if tangent_out is None:  # the outputs do not depend on the parameters
            tangent_out = torch.zeros_like(self.outputs)
        return tangent_out.reshape(tangent_out.shape[0], -1)

    def ggn_matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """G v for a [P] vector (see the module docstring)."""
        jv = self.jvp(vector)
        hjv = output_hessian_product(self.adapter, self.outputs, jv) * self.scale
        return self._flat(self._vjp(hjv.reshape(self._out_shape)))

    def curvature_along(self, vector: torch.Tensor) -> torch.Tensor:
        """dᵀ G d for a [P] vector d, from one JVP (no VJP): (1/Z) Σ_n (J_n d)ᵀ H_n (J_n d), a 0-dim tensor.

        Example:
            >>> _ = torch.manual_seed(0); model = nn.Linear(3, 2).double()
            >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
            >>> q = GaussNewtonQuadratic(model, nn.MSELoss(), x, y); d = torch.randn(8, dtype=torch.float64)
            >>> bool(torch.isclose(q.curvature_along(d), d @ q.ggn_matvec(d)))
            True
        """
        jv = self.jvp(vector)
        return (jv * output_hessian_product(self.adapter, self.outputs, jv)).sum() * self.scale

    def curvature_gram(self, vectors: list[torch.Tensor]) -> torch.Tensor:
        """[k, k] matrix of v_iᵀ G v_j for k [P] vectors, from k J v products (no VJP).

        Example:
            >>> _ = torch.manual_seed(0); model = nn.Linear(3, 2).double()
            >>> x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
            >>> q = GaussNewtonQuadratic(model, nn.MSELoss(), x, y); a, b = torch.randn(2, 8, dtype=torch.float64)
            >>> bool(torch.isclose(q.curvature_gram([a, b])[0, 1], a @ q.ggn_matvec(b)))
            True
        """
        jvs = [self.jvp(v) for v in vectors]
        hjvs = [output_hessian_product(self.adapter, self.outputs, jv) for jv in jvs]
        gram = torch.stack([torch.stack([(a * h).sum() for h in hjvs]) for a in jvs]) * self.scale
        return 0.5 * (gram + gram.T)

    def ggn_diagonal(self) -> torch.Tensor:
        """diag(G) [P], exactly, from per-sample Jacobians: (1/Z) Σ_n Σ_k ((S_nᵀ J_n)_k)², S_n S_nᵀ = H_n.

        Needs the per-sample Jacobians [N, C, P] in memory (checked against the memory budget).
        """
        n, c = self.outputs.shape[0], self.adapter.num_outputs(self.outputs)
        check_dense_allocation((n, c, self.num_params), self.outputs.dtype, "per-sample Jacobians")

        def single(*params):
            def f(*ps):
                return self._forward(*ps).reshape(n, -1)
            return f(*params)

        jac = jacrev(single, argnums=tuple(range(len(self._params))))(*self._params)
        jac = torch.cat([j.reshape(n, c, -1) for j in jac], dim=2)  # [N, C, P]
        sqrt_h = self.adapter.sqrt_hessian(self.outputs)  # [N, C, C]
        projected = torch.einsum("nck,ncp->nkp", sqrt_h, jac)
        return projected.pow(2).sum((0, 1)) * self.scale

    def quadratic(self, step: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
        """The predicted change gᵀd + ½ dᵀ(G + ρI)d of the loss for a [P] step d."""
        curv = self.curvature_along(step) + damping * torch.dot(step, step)
        return torch.dot(self.gradient, step) + 0.5 * curv
