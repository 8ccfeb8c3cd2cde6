"""The generic route: torch.func on φ(η) = L(θ + Uη), for any model.

* ḡ, H̄: forward-over-reverse, ``jvp(grad φ)`` at η = 0 along each unit vector e_s, vmapped over the S
  directions (H̄ = jacfwd(∇φ)(0)); cost about S Hessian-vector products, batched.
* GGN: the S output tangents J U e_s by ``jvp`` of the network (forward mode only), then
  H̄ = (JU)ᵀ H_out (JU) / Z with the loss adapter's per-sample output Hessians.
* D³_s = d³/dt³ φ(t e_s) at 0 by three nested ``jvp``, vmapped over s.

Slower than :mod:`curvlab.summary.layered` on layered networks (the tangents of every direction are
propagated densely through every layer), but it takes any model ``functional_call`` can evaluate.
"""

from __future__ import annotations

import torch
from torch.func import grad, jvp, vmap

from curvlab.autodiff import forward_ad_kernels, quiet_forward_ad
from curvlab.summary.problem import SummaryCurvature, SummaryProblem
from curvlab.summary.terms import BatchTerms

__all__ = ["functional_terms", "third_derivative"]


def functional_terms(problem: SummaryProblem, inputs: torch.Tensor, targets: torch.Tensor) -> BatchTerms:
    """ḡ_b [S], H̄_b [S, S] (and D³_b [S]) of one batch by torch.func (see the module docstring).

    Example:
        >>> from torch import nn
        >>> from curvlab.losses import loss_adapter
        >>> from curvlab.partition import Partition
        >>> from curvlab.summary.problem import SummaryCurvature, SummaryProblem
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
        >>> part = Partition.from_model(model)
        >>> u = torch.linspace(-1, 1, part.num_params, dtype=torch.float64)
        >>> problem = SummaryProblem.build(model, loss_adapter(nn.MSELoss()), part, u, SummaryCurvature.HESSIAN, 3)
        >>> x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
        >>> from curvlab.summary.double_backward import double_backward_terms
        >>> terms, ref = functional_terms(problem, x, y), double_backward_terms(problem, x, y)
        >>> torch.allclose(terms.hbar, ref.hbar) and torch.allclose(terms.d3, ref.d3)
        True
    """
    with quiet_forward_ad(), forward_ad_kernels(problem.model):
        return _functional_terms(problem, inputs, targets)


def _functional_terms(problem: SummaryProblem, inputs: torch.Tensor, targets: torch.Tensor) -> BatchTerms:
    s, dtype, device = problem.num_groups, problem.dtype, problem.params[0].device
    eta0 = torch.zeros(s, dtype=dtype, device=device)
    units = torch.eye(s, dtype=dtype, device=device)

    def outputs(eta: torch.Tensor) -> torch.Tensor:
        return problem.call(problem.perturbed(eta), inputs)

    out = outputs(eta0).detach()
    problem.adapter.check(out, targets)
    z = problem.adapter.normalizer(out)

    def loss(eta: torch.Tensor) -> torch.Tensor:
        # (1/Z) Σ_n ℓ_n written out: equal to loss_fn, and avoids a torch bug in mse_loss's
        # double backward under forward-mode AD ("ZeroTensors are immutable")
        return problem.adapter.per_sample_loss(outputs(eta), targets).sum() / z
    if problem.curvature is SummaryCurvature.HESSIAN:
        grad_phi = grad(loss)
        gbars, hbar = vmap(lambda e: jvp(grad_phi, (eta0,), (e,)))(units)
        gbar = gbars[0]
    else:
        tangents = vmap(lambda e: jvp(outputs, (eta0,), (e,))[1])(units).flatten(2)  # [S, N, C]
        h_out = problem.adapter.output_hessian(out) / z
        hbar = torch.einsum("snc,ncd,tnd->st", tangents, h_out, tangents)
        residual = problem.adapter.output_gradient(out, targets).flatten(1) / z
        gbar = torch.einsum("snc,nc->s", tangents, residual)
    d3 = None
    if problem.order == 3:
        d3 = vmap(lambda e: third_derivative(lambda t: loss(t * e), eta0.new_zeros(())))(units)
    return BatchTerms(gbar.detach(), hbar.detach(), None if d3 is None else d3.detach(), z)


def third_derivative(fn, t0: torch.Tensor) -> torch.Tensor:
    """d³/dt³ fn(t) at t0 for a scalar function of a scalar, by three nested ``jvp``.

    Example:
        >>> third_derivative(lambda t: t**4, torch.tensor(2.0))            # 24 t
        tensor(48.)
    """
    one = torch.ones_like(t0)

    def first(t):
        return jvp(fn, (t,), (one,))[1]

    def second(t):
        return jvp(first, (t,), (one,))[1]

    return jvp(second, (t0,), (one,))[1]
