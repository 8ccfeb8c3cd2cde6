"""Every optimiser decreases the loss at its defaults, without tuning (issue 13, "defaults that work").

Problems (tests/optim/problems.py): a tiny MLP regression, an MNIST MLP and the MNIST autoencoder, in
float32, trained on four minibatches of 64 in turn; the loss is measured on all 256 samples before and
after. The real architectures (the train-mode ResNet, transformers, LSTM) are in test_zoo_defaults.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.optim.problems import DEFAULT_OPTIMIZERS, DEFAULT_PROBLEMS

STEPS = {"tiny-mlp-regression": 10, "mnist-mlp": 10, "mnist-autoencoder": 6}
#: final / initial loss required. First-order-like methods sit on the autoencoder's plateau (the mean
#: image, loss ≈ 0.70) for many steps, so there only a clear decrease is required.
REQUIRED = {"tiny-mlp-regression": 0.8, "mnist-mlp": 0.8, "mnist-autoencoder": 0.9995}
#: EKFAC refits C = 784 eigenvalue columns per sample on the autoencoder: a shorter run there
SHORT = {("ekfac", "mnist-autoencoder"): 3}


@pytest.mark.parametrize("problem", DEFAULT_PROBLEMS)
@pytest.mark.parametrize("name", DEFAULT_OPTIMIZERS)
def test_decreases_loss_at_defaults(name, problem):
    model, loss_fn, x, y = DEFAULT_PROBLEMS[problem](torch.float32)
    opt = DEFAULT_OPTIMIZERS[name](model, loss_fn)
    with torch.no_grad():
        initial = float(loss_fn(model(x), y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rejected or rolled-back step warns; it is allowed
        for i in range(SHORT.get((name, problem), STEPS[problem])):
            start = (64 * i) % len(x)
            opt.step(x[start : start + 64], y[start : start + 64])
    with torch.no_grad():
        final = float(loss_fn(model(x), y))
    assert final < REQUIRED[problem] * initial, (name, problem, initial, final)
    assert all(torch.isfinite(p).all() for p in model.parameters())
