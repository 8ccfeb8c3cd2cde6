"""The elementary-operation losses equal PyTorch's losses and keep analytic complex extensions."""

import pytest
import torch

from curvlab.errors import UnsupportedLossError
from curvlab.losses import LossAdapter, loss_adapter
from curvlab.losses.elementary import elementary_loss
from tests.cases import LOSSES


def _targets(loss_fn, f, gen):
    if isinstance(loss_fn, torch.nn.CrossEntropyLoss):
        return torch.randint(0, f.shape[1], (f.shape[0],), generator=gen)
    if isinstance(loss_fn, torch.nn.BCEWithLogitsLoss):
        return torch.randint(0, 2, f.shape, generator=gen).double()
    return torch.randn(f.shape, dtype=torch.float64, generator=gen)


@pytest.mark.parametrize("make_loss", LOSSES)
def test_equals_the_torch_loss_also_for_large_logits(make_loss):
    loss_fn, gen = make_loss(), torch.Generator().manual_seed(0)
    f = 50 * torch.randn(6, 4, dtype=torch.float64, generator=gen)
    y = _targets(loss_fn, f, gen)
    torch.testing.assert_close(
        elementary_loss(loss_adapter(loss_fn), f, y), loss_fn(f, y), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("make_loss", LOSSES)
def test_complex_step_of_the_loss_is_its_directional_derivative(make_loss):
    loss_fn, gen = make_loss(), torch.Generator().manual_seed(1)
    f, u = (
        torch.randn(5, 3, dtype=torch.float64, generator=gen),
        torch.randn(5, 3, dtype=torch.float64, generator=gen),
    )
    y = _targets(loss_fn, f, gen)
    adapter = loss_adapter(loss_fn)
    step = elementary_loss(adapter, f + 1j * 2.0**-50 * u, y).imag / 2.0**-50
    f_leaf = f.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(f_leaf, y), f_leaf)
    torch.testing.assert_close(step, (g * u).sum(), rtol=1e-12, atol=1e-14)


class _CustomAdapter(LossAdapter):
    output_hessian = sqrt_hessian = sample_targets = _per_sample_loss = _output_gradient = None


def test_unknown_adapter_is_refused():
    adapter = _CustomAdapter(torch.nn.L1Loss())
    with pytest.raises(UnsupportedLossError, match=r"L1Loss.*no elementary formula"):
        elementary_loss(adapter, torch.zeros(2, 1), torch.zeros(2, 1))
