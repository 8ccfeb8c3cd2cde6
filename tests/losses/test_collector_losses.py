"""Losses on the collector route (issue 10, item 5): token-level cross-entropy with ignore_index and
label smoothing, NLLLoss after log_softmax, MSE/BCE on any trailing shape, any per-sample loss by autodiff."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from curvlab import compute, reference
from curvlab.errors import UnsupportedLossError
from curvlab.losses import CrossEntropyAdapter, PerSampleLoss
from tests.zoo import ZOO_BY_NAME


def _ggn_from_jacobian(model, x, hessians, normalizer):
    """(1/Z) Σ_n J_nᵀ H_n J_n with the batch Jacobian of the references (an independent route)."""
    J = reference.jacobian(model, x)  # [N, C, P]
    return torch.einsum("ncp,ncd,ndq->pq", J, hessians, J) / normalizer


def test_token_cross_entropy_with_ignore_index_and_label_smoothing():
    model, _, x, y = ZOO_BY_NAME["gpt-token-ce"].build(3)
    x, y = x.clone(), y.clone()  # the zoo's inputs and targets share storage
    y[0, 1:3] = -100
    y[2, 0] = -100
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    result = compute(model, loss_fn, (x, y), ["ggn", "diag_ggn", "ggn_block", "empirical_fisher", "kflr"],
                     progress=False)
    kept = (y != -100)
    logits = model(x).detach()  # [N, V, T]
    H = CrossEntropyAdapter(nn.CrossEntropyLoss()).output_hessian(logits)  # smoothing leaves H unchanged
    weights = kept.unsqueeze(1).expand(logits.shape).flatten(1).to(H.dtype)
    exact = _ggn_from_jacobian(model, x, H * weights[:, :, None] * weights[:, None, :], int(kept.sum()))
    torch.testing.assert_close(result["ggn"].dense(), exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result["diag_ggn"].diagonal(), exact.diagonal(), rtol=1e-9, atol=1e-12)
    # empirical Fisher: per-sample gradients of the smoothed, masked loss by autograd
    grads = []
    for n in range(x.shape[0]):
        model.zero_grad()
        ell = F.cross_entropy(model(x[n:n + 1]), y[n:n + 1], label_smoothing=0.1, reduction="sum")
        ell.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    G = torch.stack(grads)
    torch.testing.assert_close(result["empirical_fisher"].dense(), G.T @ G / int(kept.sum()), rtol=1e-9, atol=1e-12)
    assert torch.isfinite(result["kflr"].dense()).all()


def test_nll_after_log_softmax_is_cross_entropy_on_the_logits():
    logits_model, _, x, y = ZOO_BY_NAME["control-mlp-ce"].build(4)
    model = nn.Sequential(logits_model, nn.LogSoftmax(1))
    result = compute(model, nn.NLLLoss(), (x, y), ["ggn", "kflr"], progress=False)
    exact = reference.ggn(logits_model, nn.CrossEntropyLoss(), x, y)
    torch.testing.assert_close(result["ggn"].dense(), exact, rtol=1e-9, atol=1e-12)
    ce = compute(logits_model, nn.CrossEntropyLoss(), (x, y), ["kflr"], progress=False)["kflr"].dense()
    torch.testing.assert_close(result["kflr"].dense(), ce, rtol=1e-9, atol=1e-12)
    with pytest.raises(UnsupportedLossError, match="log-probabilities"):
        compute(logits_model, nn.NLLLoss(), (x, y), ["ggn"], progress=False)


@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.BCEWithLogitsLoss()], ids=["mse", "bce"])
def test_elementwise_losses_on_any_trailing_shape(loss_fn):
    model, _, x, _ = ZOO_BY_NAME["tokenwise-linear-mse"].build(3)  # outputs [N, T, O]
    y = torch.rand(3, 3, 2, dtype=torch.float64).round()
    result = compute(model, loss_fn, (x, y), ["ggn", "diag_ggn"], progress=False)
    exact = reference.ggn(model, loss_fn, x, y)
    torch.testing.assert_close(result["ggn"].dense(), exact, rtol=1e-9, atol=1e-12)


def test_any_per_sample_loss_by_autodiff():
    model, _, x, _ = ZOO_BY_NAME["functional-bce"].build(4)
    y = torch.randn(4, 3, dtype=torch.float64)
    loss_fn = PerSampleLoss(lambda f, t: F.huber_loss(f, t, delta=0.5, reduction="sum") + (f ** 4).sum() / 12)
    result = compute(model, loss_fn, (x, y), ["ggn", "diag_ggn", "kflr", "empirical_fisher_block"], progress=False)
    f = model(x).detach()
    H = torch.func.vmap(torch.func.hessian(loss_fn.fn))(f, y)
    exact = _ggn_from_jacobian(model, x, H, 4)
    torch.testing.assert_close(result["ggn"].dense(), exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result["diag_ggn"].diagonal(), exact.diagonal(), rtol=1e-9, atol=1e-12)
    with pytest.raises(UnsupportedLossError, match="no sampling distribution"):
        compute(model, loss_fn, (x, y), ["kfac"], progress=False)
    concave = PerSampleLoss(lambda f, t: -(f ** 2).sum())
    with pytest.raises(UnsupportedLossError, match="not convex in the outputs"):
        compute(model, concave, (x, y), ["ggn"], progress=False)
