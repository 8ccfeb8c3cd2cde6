"""Closed-form predictive second moments against the loss Hessians and against direct enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from curvlab.errors import UnsupportedLossError
from curvlab.losses import LossAdapter, loss_adapter
from curvlab.reference.predictive import MSE_PREDICTIVE_VARIANCE, gradient_second_moment
from tests.cases import LOSSES


@pytest.mark.parametrize("factory", LOSSES)
def test_second_moment_equals_the_output_hessian(factory):
    adapter = loss_adapter(factory())
    outputs = 3 * torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        gradient_second_moment(adapter, outputs), adapter.output_hessian(outputs)
    )


def test_bernoulli_moment_by_enumerating_all_outcomes():
    outputs = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s = outputs.sigmoid()
    expected = torch.zeros(2, 3, 3, dtype=torch.float64)
    for bits in itertools.product([0.0, 1.0], repeat=3):
        y = torch.tensor(bits, dtype=torch.float64)
        prob = (s**y * (1 - s) ** (1 - y)).prod(1)
        g = s - y
        expected += prob[:, None, None] * g[:, :, None] * g[:, None, :]
    moment = gradient_second_moment(loss_adapter(nn.BCEWithLogitsLoss()), outputs)
    torch.testing.assert_close(moment, expected)


def test_gaussian_variance_makes_mse_a_negative_log_likelihood():
    f, y = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    gaussian = torch.distributions.Normal(f, MSE_PREDICTIVE_VARIANCE**0.5)
    nll = -gaussian.log_prob(y).sum()
    constant = 1.5 * torch.log(
        torch.tensor(2 * torch.pi * MSE_PREDICTIVE_VARIANCE, dtype=torch.float64)
    )
    torch.testing.assert_close(nll - constant, ((f - y) ** 2).sum())


def test_an_adapter_without_a_predictive_distribution_is_refused():
    class Custom(LossAdapter):
        output_hessian = sqrt_hessian = sample_targets = _per_sample_loss = _output_gradient = None

    with pytest.raises(UnsupportedLossError, match="no closed-form predictive"):
        gradient_second_moment(Custom(nn.MSELoss()), torch.zeros(2, 2))
