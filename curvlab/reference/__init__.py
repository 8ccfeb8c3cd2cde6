"""Exact dense ground truth through torch.func: the matrices every approximation in curvlab is tested against.

For a model f(x; θ), a supported loss (:mod:`curvlab.losses`) L = (1/Z) Σ_n ℓ_n and data, each matrix
function has the signature ``(model, loss_fn, inputs, targets)`` or ``(model, loss_fn, data)`` (``data``:
an ``(inputs, targets)`` pair or an iterable of pairs, combined exactly as one batch) and returns a
[P, P] tensor in the reference ordering (concatenated ``p.flatten()`` over ``model.parameters()`` with
``requires_grad``; frozen parameters are constants). Scaling follows the loss.

=========================  ==========================================================  =============
function                   matrix                                                      notes
=========================  ==========================================================  =============
:func:`hessian`            ∇²_θ L                                                      HVPs, chunked
:func:`ggn`                (1/Z) Σ_n J_nᵀ H_n J_n,  H_n = ∂²ℓ_n/∂f_n²                   Jacobians
:func:`fisher`             (1/Z) Σ_n E_{ŷ~p(y|f_n)}[∇ℓ(f_n,ŷ) ∇ℓ(f_n,ŷ)ᵀ], closed form   = ggn here
:func:`fisher_mc`          the same with M sampled ŷ per sample                         unbiased
:func:`empirical_fisher`   (1/Z) Σ_n ∇ℓ_n ∇ℓ_nᵀ at the observed targets                  per-sample
=========================  ==========================================================  =============

Helpers: :func:`flat_parameters` (θ, [P]), :func:`loss_value`, :func:`gradient` ([P]),
:func:`per_sample_gradients` ([N, P], unscaled), :func:`jacobian` ([N, C, P]).

Every result is checked against the memory budget before it is allocated
(:func:`curvlab.guards.check_dense_allocation`) and for NaN/inf afterwards. The model is never changed,
nor its train/eval mode; per-sample quantities evaluate one sample at a time, so batch-norm layers in
training mode are refused.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    >>> H = hessian(model, nn.CrossEntropyLoss(), x, y)
    >>> H.shape, torch.allclose(ggn(model, nn.CrossEntropyLoss(), x, y), fisher(model, nn.CrossEntropyLoss(), x, y))
    (torch.Size([26, 26]), True)
"""

from curvlab.reference.derivatives import gradient, jacobian, loss_value, per_sample_gradients
from curvlab.reference.empirical_fisher import empirical_fisher
from curvlab.reference.functional import flat_parameters
from curvlab.reference.gauss_newton import fisher, fisher_mc, ggn
from curvlab.reference.hessian import hessian

__all__ = [
    "empirical_fisher",
    "fisher",
    "fisher_mc",
    "flat_parameters",
    "ggn",
    "gradient",
    "hessian",
    "jacobian",
    "loss_value",
    "per_sample_gradients",
]
