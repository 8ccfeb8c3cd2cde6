"""Loss adapters against autograd on the torch loss itself (float64), and every unsupported setting."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian as autograd_hessian

from curvlab.errors import UnsupportedLossError
from curvlab.losses import (
    BCEWithLogitsAdapter,
    CrossEntropyAdapter,
    MSEAdapter,
    combine_weight,
    loss_adapter,
)
from tests.cases import LOSSES

N, C = 4, 3


def loss_id(factory) -> str:
    loss = factory()
    return f"{type(loss).__name__}-{loss.reduction}"


@pytest.fixture(params=LOSSES, ids=loss_id)
def loss_fn(request) -> nn.Module:
    return request.param()


def make_batch(loss_fn: nn.Module, n: int = N, out_shape=(C,), dtype=torch.float64, seed: int = 0):
    """Outputs [n, *out_shape] and matching targets for ``loss_fn``."""
    gen = torch.Generator().manual_seed(seed)
    outputs = torch.randn(n, *out_shape, dtype=dtype, generator=gen)
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        targets = torch.randint(0, out_shape[0], (n,), generator=gen)
    elif isinstance(loss_fn, nn.BCEWithLogitsLoss):
        targets = torch.randint(0, 2, (n, *out_shape), generator=gen).to(dtype)
    else:
        targets = torch.randn(n, *out_shape, dtype=dtype, generator=gen)
    return outputs, targets


def expected_normalizer(loss_fn: nn.Module, outputs: torch.Tensor) -> int:
    """Z by the definition of torch's reductions: a mean over samples (CE) or over all entries."""
    if loss_fn.reduction == "sum":
        return 1
    return outputs.shape[0] if isinstance(loss_fn, nn.CrossEntropyLoss) else outputs.numel()


def sample_loss(loss_fn: nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ℓ_n from torch itself: the loss of a batch of one with reduction 'sum'."""
    summed = type(loss_fn)(reduction="sum")
    return summed(output.unsqueeze(0), target.unsqueeze(0))


# ------------------------------------------------------------------ exact quantities
def test_loss_and_normalizer(loss_fn):
    outputs, targets = make_batch(loss_fn)
    adapter = loss_adapter(loss_fn)
    per_sample = adapter.per_sample_loss(outputs, targets)
    expected = torch.stack(
        [sample_loss(loss_fn, o, t) for o, t in zip(outputs, targets, strict=True)]
    )
    torch.testing.assert_close(per_sample, expected)
    z = adapter.normalizer(outputs)
    assert z == expected_normalizer(loss_fn, outputs)
    torch.testing.assert_close(adapter(outputs, targets), loss_fn(outputs, targets))
    torch.testing.assert_close(per_sample.sum() / z, loss_fn(outputs, targets))
    assert adapter.scale(outputs) == pytest.approx(1 / z)


def test_output_gradient_and_hessian_match_autograd(loss_fn):
    outputs, targets = make_batch(loss_fn)
    adapter = loss_adapter(loss_fn)
    grads, hessians = adapter.output_gradient(outputs, targets), adapter.output_hessian(outputs)
    assert grads.shape == (N, C) and hessians.shape == (N, C, C)
    for n in range(N):
        f_n = outputs[n].clone().requires_grad_(True)
        (grad_n,) = torch.autograd.grad(sample_loss(loss_fn, f_n, targets[n]), f_n)
        torch.testing.assert_close(grads[n], grad_n)
        hess_n = autograd_hessian(lambda f, n=n: sample_loss(loss_fn, f, targets[n]), outputs[n])
        torch.testing.assert_close(hessians[n], hess_n)
    torch.testing.assert_close(adapter.output_hessian_sum(outputs), hessians.sum(0))  # closed form vs [N, C, C]


@pytest.mark.parametrize("factory", [nn.MSELoss, lambda: nn.BCEWithLogitsLoss(reduction="sum")])
def test_multidimensional_outputs_are_flattened(factory):
    loss_fn = factory()
    outputs, targets = make_batch(loss_fn, out_shape=(2, 3))
    adapter = loss_adapter(loss_fn)
    assert adapter.num_outputs(outputs) == 6
    assert adapter.normalizer(outputs) == expected_normalizer(loss_fn, outputs)
    hessians = adapter.output_hessian(outputs)
    assert hessians.shape == (N, 6, 6)
    for n in range(N):
        hess_n = autograd_hessian(
            lambda f, n=n: sample_loss(loss_fn, f.view(2, 3), targets[n]), outputs[n].flatten()
        )
        torch.testing.assert_close(hessians[n], hess_n)
    torch.testing.assert_close(
        adapter.per_sample_loss(outputs, targets).sum() / adapter.normalizer(outputs),
        loss_fn(outputs, targets),
    )


def test_sqrt_hessian_squares_to_hessian(loss_fn):
    outputs, _ = make_batch(loss_fn)
    adapter = loss_adapter(loss_fn)
    sqrt = adapter.sqrt_hessian(outputs)
    assert sqrt.shape == (N, C, C)
    torch.testing.assert_close(sqrt @ sqrt.transpose(1, 2), adapter.output_hessian(outputs))


def test_output_hessian_is_psd_and_handles_extreme_logits(loss_fn):
    outputs, _ = make_batch(loss_fn)
    outputs = outputs * 30  # saturated softmax/sigmoid
    adapter = loss_adapter(loss_fn)
    hessians = adapter.output_hessian(outputs)
    assert torch.isfinite(hessians).all() and torch.isfinite(adapter.sqrt_hessian(outputs)).all()
    torch.testing.assert_close(hessians, hessians.transpose(1, 2))
    assert (torch.linalg.eigvalsh(hessians) > -1e-12).all()


def test_float32(loss_fn):
    outputs, targets = make_batch(loss_fn, dtype=torch.float32)
    adapter = loss_adapter(loss_fn)
    sqrt = adapter.sqrt_hessian(outputs)
    assert sqrt.dtype == torch.float32 and adapter.output_hessian(outputs).dtype == torch.float32
    torch.testing.assert_close(sqrt @ sqrt.transpose(1, 2), adapter.output_hessian(outputs))
    torch.testing.assert_close(adapter(outputs, targets), loss_fn(outputs, targets))


# ------------------------------------------------------------------ predictive sampling
def assert_statistically_close(draws: torch.Tensor, expected: torch.Tensor, sigmas: float = 5.0):
    """Mean of i.i.d. ``draws`` [M, ...] within ``sigmas`` standard errors of ``expected`` (entrywise)."""
    mean = draws.mean(0)
    stderr = draws.std(0) / draws.shape[0] ** 0.5
    excess = (mean - expected).abs() - (sigmas * stderr + 1e-12)
    assert (excess <= 0).all(), f"max excess over {sigmas} standard errors: {excess.max():.3g}"


MC = 20_000


def test_sampled_gradients_have_the_hessian_as_second_moment(loss_fn):
    outputs, targets = make_batch(loss_fn)
    adapter = loss_adapter(loss_fn)
    samples = adapter.sample_targets(outputs, MC, torch.Generator().manual_seed(1))
    assert samples.shape == (MC, *targets.shape)
    assert samples.dtype == targets.dtype or not targets.is_floating_point()
    grads = torch.stack(
        [adapter.output_gradient(outputs, y) for y in samples[:2]]
    )  # via the public path
    assert grads.shape == (2, N, C)
    sqrt = adapter.sqrt_hessian_mc(outputs, MC, torch.Generator().manual_seed(1))  # [N, C, M]
    assert sqrt.shape == (N, C, MC)
    torch.testing.assert_close(sqrt[..., :2].permute(2, 0, 1) * MC**0.5, grads)  # same draws
    columns = sqrt.permute(2, 0, 1) * MC**0.5  # g_m, [M, N, C]
    outer = columns[..., :, None] * columns[..., None, :]  # [M, N, C, C]
    assert_statistically_close(outer, adapter.output_hessian(outputs))
    assert_statistically_close(columns, torch.zeros_like(outputs))  # the score has mean zero


def test_predictive_samples_have_the_right_distribution(loss_fn):
    outputs, _ = make_batch(loss_fn)
    adapter = loss_adapter(loss_fn)
    samples = adapter.sample_targets(outputs, MC, torch.Generator().manual_seed(2))
    if isinstance(adapter, CrossEntropyAdapter):
        assert samples.dtype == torch.long and samples.min() >= 0 and samples.max() < C
        assert_statistically_close(nn.functional.one_hot(samples, C).double(), outputs.softmax(1))
    elif isinstance(adapter, BCEWithLogitsAdapter):
        assert set(samples.unique().tolist()) <= {0.0, 1.0}
        assert_statistically_close(samples, outputs.sigmoid())
    else:
        assert isinstance(adapter, MSEAdapter)
        assert_statistically_close(samples, outputs)
        assert_statistically_close((samples - outputs) ** 2, torch.full_like(outputs, 0.5))


def test_sampling_is_reproducible_with_a_generator(loss_fn):
    outputs, _ = make_batch(loss_fn)
    adapter = loss_adapter(loss_fn)
    first = adapter.sqrt_hessian_mc(outputs, 5, torch.Generator().manual_seed(3))
    again = adapter.sqrt_hessian_mc(outputs, 5, torch.Generator().manual_seed(3))
    other = adapter.sqrt_hessian_mc(outputs, 5, torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)


def test_sampling_may_draw_the_ignore_index_class():
    """An ignore_index that is a valid class is fine while the data do not use it; sampling may draw it."""
    loss_fn = nn.CrossEntropyLoss(ignore_index=0)
    outputs = torch.zeros(3, 2, dtype=torch.float64)
    adapter = loss_adapter(loss_fn)
    adapter.check(outputs, torch.ones(3, dtype=torch.long))
    sqrt = adapter.sqrt_hessian_mc(outputs, 200, torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        (sqrt @ sqrt.transpose(1, 2)).mean(0), adapter.output_hessian(outputs)[0], atol=0.1, rtol=0
    )


def test_mc_samples_must_be_positive():
    with pytest.raises(ValueError, match="mc_samples"):
        loss_adapter(nn.MSELoss()).sqrt_hessian_mc(torch.zeros(2, 2), 0)


# ------------------------------------------------------------------ batch combination
@pytest.mark.parametrize("factory", LOSSES, ids=loss_id)
def test_combine_weight_recovers_the_loss_of_all_batches(factory):
    loss_fn = factory()
    outputs, targets = make_batch(loss_fn, n=7)
    adapter = loss_adapter(loss_fn)
    parts = [(outputs[:2], targets[:2]), (outputs[2:], targets[2:])]
    weights = combine_weight([adapter.normalizer(o) for o, _ in parts], loss_fn.reduction)
    combined = sum(w * loss_fn(o, t) for w, (o, t) in zip(weights, parts, strict=True))
    torch.testing.assert_close(combined, loss_fn(outputs, targets))


# ------------------------------------------------------------------ unsupported settings
@pytest.mark.parametrize(
    "loss_fn, culprit",
    [
        (nn.L1Loss(), "L1Loss"),
        (nn.BCELoss(), "BCELoss"),
        (nn.HuberLoss(), "HuberLoss"),
        (type("MyMSE", (nn.MSELoss,), {})(), "MyMSE"),
        (nn.MSELoss(reduction="none"), "reduction='none'"),
        (nn.CrossEntropyLoss(reduction="none"), "reduction='none'"),
        (nn.BCEWithLogitsLoss(reduction="none"), "reduction='none'"),
        (nn.CrossEntropyLoss(weight=torch.ones(3)), "weight"),
        (nn.BCEWithLogitsLoss(weight=torch.ones(3)), "weight"),
        (nn.BCEWithLogitsLoss(pos_weight=torch.ones(3)), "pos_weight"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_losses_are_named(loss_fn, culprit):
    with pytest.raises(UnsupportedLossError, match=culprit.replace("(", r"\(")):
        loss_adapter(loss_fn)


@pytest.mark.parametrize(
    "loss_fn, outputs, targets, culprit",
    [
        (nn.CrossEntropyLoss(), torch.zeros(3, 2), torch.tensor([0, -100, 1]), "ignore_index=-100"),
        (
            nn.CrossEntropyLoss(ignore_index=1),
            torch.zeros(3, 2),
            torch.tensor([0, 1, 0]),
            "ignore_index=1",
        ),
        (nn.CrossEntropyLoss(), torch.zeros(3, 2), torch.full((3, 2), 0.5), "soft"),
        (
            nn.CrossEntropyLoss(),
            torch.zeros(3, 2, 4),
            torch.zeros(3, 5, dtype=torch.long),
            r"targets of shape \(3, 4\)",
        ),
        (
            nn.CrossEntropyLoss(),
            torch.zeros(3, 2),
            torch.zeros(3, 1, dtype=torch.long),
            "class-index targets",
        ),
        (
            nn.CrossEntropyLoss(),
            torch.zeros(3, 2),
            torch.tensor([0, 2, 1]),
            r"in \[0, 2\), got 0..2",
        ),
        (nn.MSELoss(), torch.zeros(3, 2), torch.zeros(3, 1), "must match outputs"),
        (nn.BCEWithLogitsLoss(), torch.zeros(3, 2), torch.zeros(3), "must match outputs"),
        (nn.MSELoss(), torch.zeros(3), torch.zeros(3), "batch dimension"),
    ],
    ids=[
        "ignore_index-default",
        "ignore_index-custom",
        "soft-targets",
        "ce-3d",
        "ce-target-shape",
        "ce-class-range",
        "mse-broadcast",
        "bce-shape",
        "no-batch-dim",
    ],
)
def test_unsupported_targets_are_named(loss_fn, outputs, targets, culprit):
    adapter = loss_adapter(loss_fn)
    for call in (adapter.check, adapter.per_sample_loss, adapter.output_gradient, adapter):
        with pytest.raises(UnsupportedLossError, match=culprit):
            call(outputs, targets)


def test_unused_ignore_index_is_fine():
    loss_fn = nn.CrossEntropyLoss(ignore_index=1)
    outputs, targets = torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 2, 3])
    adapter = loss_adapter(loss_fn)
    torch.testing.assert_close(adapter(outputs, targets), loss_fn(outputs, targets))


def test_an_adapter_passes_through():
    adapter = loss_adapter(nn.MSELoss())
    assert loss_adapter(adapter) is adapter
    assert "MSELoss(reduction='mean')" in repr(adapter)


@pytest.mark.parametrize("make_loss", LOSSES)
def test_symmetric_sqrt_hessian_is_symmetric_square_root(make_loss):
    adapter = loss_adapter(make_loss())
    outputs = torch.randn(6, 4, dtype=torch.float64)
    root = adapter.symmetric_sqrt_hessian(outputs)
    torch.testing.assert_close(root, root.transpose(1, 2))
    torch.testing.assert_close(root @ root, adapter.output_hessian(outputs))


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 5), (2, 3, 2, 2)], ids=["NC", "NCT", "NCHW"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_on_positions_matches_autograd(shape, reduction):
    """[N, C, d…] logits: loss, gradient, per-sample Hessian (block diagonal over positions), square
    root and output-Hessian products equal torch's autograd of ``nn.CrossEntropyLoss``."""
    torch.manual_seed(0)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    adapter = loss_adapter(loss_fn)
    f = torch.randn(*shape, dtype=torch.float64)
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    z = adapter.normalizer(f)
    assert z == (f[:, 0].numel() if reduction == "mean" else 1)
    assert torch.allclose(adapter.per_sample_loss(f, y).sum() / z, loss_fn(f, y))
    grad = torch.autograd.grad(loss_fn(f.requires_grad_(), y), f)[0].detach()
    f = f.detach()
    assert torch.allclose(adapter.output_gradient(f, y) / z, grad.flatten(1))
    n, c = shape[0], f[0].numel()
    full = torch.autograd.functional.hessian(lambda t: z * loss_fn(t, y), f).reshape(n, c, n, c)
    per_sample = torch.stack([full[i, :, i, :] for i in range(n)])
    assert torch.allclose(adapter.output_hessian(f), per_sample)
    root = adapter.sqrt_hessian(f)
    assert torch.allclose(root @ root.transpose(1, 2), per_sample)
    u = torch.randn(n, c, dtype=torch.float64)
    assert torch.allclose(adapter.output_hessian_product(f, u), (per_sample @ u[..., None])[..., 0])
    assert torch.allclose(adapter.output_hessian_sum(f), per_sample.sum(0))
