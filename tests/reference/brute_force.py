"""Brute-force ground truth for the reference tests, written independently of curvlab.

Everything here uses ``torch.autograd.functional`` on a flat-parameter closure and Python loops over
samples, and the loss functions themselves (never the loss adapters): Z comes from torch's definition
of the reductions, per-sample losses from a batch of one with reduction 'sum'.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.autograd.functional import hessian as autograd_hessian
from torch.autograd.functional import jacobian as autograd_jacobian
from torch.func import functional_call


def trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def theta_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for _, p in trainable(model)])


def closure(model: nn.Module, inputs: torch.Tensor):
    """θ ↦ model(inputs) with the trainable parameters replaced by the flat θ."""
    named = trainable(model)

    def call(theta):
        params, offset = {}, 0
        for name, p in named:
            params[name] = theta[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        return functional_call(model, params, (inputs,))

    return call


def normalizer(loss_fn: nn.Module, outputs: torch.Tensor) -> int:
    if loss_fn.reduction == "sum":
        return 1
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return outputs.numel() // outputs.shape[1]  # N·T: one term per sample and position
    return outputs.numel()


def sample_loss_fn(loss_fn: nn.Module) -> nn.Module:
    """The same loss with reduction 'sum': applied to a batch of one, it is the unscaled ℓ_n."""
    return type(loss_fn)(reduction="sum")


def hessian(model, loss_fn, inputs, targets) -> torch.Tensor:
    f = closure(model, inputs)
    # torch's flash attention kernel has no double backward: the math kernel computes the same function
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        return autograd_hessian(lambda t: loss_fn(f(t), targets), theta_of(model))


def ggn(model, loss_fn, inputs, targets) -> torch.Tensor:
    """Jᵀ (∂²L/∂F²) J with F all outputs of the batch flattened: no per-sample structure assumed."""
    f = closure(model, inputs)
    outputs = f(theta_of(model)).detach()
    jac = autograd_jacobian(lambda t: f(t).flatten(), theta_of(model))  # [N·C, P]
    out_hessian = autograd_hessian(
        lambda o: loss_fn(o.view_as(outputs), targets), outputs.flatten()
    )
    return jac.T @ out_hessian @ jac


def per_sample_gradients(model, loss_fn, inputs, targets) -> torch.Tensor:
    summed, rows = sample_loss_fn(loss_fn), []
    for x, y in zip(inputs, targets, strict=True):
        model.zero_grad()
        summed(model(x.unsqueeze(0)), y.unsqueeze(0)).backward()
        rows.append(torch.cat([p.grad.flatten() for _, p in trainable(model)]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def empirical_fisher(model, loss_fn, inputs, targets) -> torch.Tensor:
    grads = per_sample_gradients(model, loss_fn, inputs, targets)
    with torch.no_grad():
        z = normalizer(loss_fn, model(inputs))
    return sum(torch.outer(g, g) for g in grads) / z


def fisher_by_enumeration(model, loss_fn, inputs) -> torch.Tensor:
    """(1/Z) Σ_n Σ_ŷ p(ŷ | f_n) ∇ℓ(f_n, ŷ) ∇ℓ(f_n, ŷ)ᵀ, summing over every outcome ŷ (CE and BCE only)."""
    with torch.no_grad():
        outputs = model(inputs)
    num_classes = outputs[0].numel()
    total = 0
    for n in range(outputs.shape[0]):
        x = inputs[n : n + 1]
        if isinstance(loss_fn, nn.CrossEntropyLoss):
            probs = outputs[n].softmax(0)
            outcomes = [(probs[c], torch.tensor([c])) for c in range(num_classes)]
        elif isinstance(loss_fn, nn.BCEWithLogitsLoss):
            s = outputs[n].sigmoid()
            outcomes = []
            for bits in itertools.product([0.0, 1.0], repeat=num_classes):
                y = torch.tensor(bits, dtype=outputs.dtype)
                outcomes.append(
                    ((s**y * (1 - s) ** (1 - y)).prod(), y.view_as(outputs[n]).unsqueeze(0))
                )
        else:
            raise ValueError("the Gaussian predictive distribution cannot be enumerated")
        for prob, y in outcomes:
            g = per_sample_gradients(model, loss_fn, x, y)[0]
            total = total + prob * torch.outer(g, g)
    return total / normalizer(loss_fn, outputs)


def per_sample_ggn(model, loss_fn, inputs, targets) -> torch.Tensor:
    """(1/Z) Σ_n J_nᵀ (∂²ℓ_n/∂f_n²) J_n with J_n from a batch of one: valid where samples are independent."""
    summed, total = sample_loss_fn(loss_fn), 0
    for x, y in zip(inputs, targets, strict=True):
        f = closure(model, x.unsqueeze(0))
        out = f(theta_of(model)).detach()
        jac = autograd_jacobian(lambda t, f=f: f(t).flatten(), theta_of(model))
        h = autograd_hessian(lambda o, y=y, out=out: summed(o.view_as(out), y.unsqueeze(0)), out.flatten())
        total = total + jac.T @ h @ jac
    with torch.no_grad():
        z = normalizer(loss_fn, model(inputs))
    return total / z
