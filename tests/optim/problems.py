"""Shared problems and optimiser factories for the optimiser tests.

Problems (each builds a fresh model, a loss and one full batch in a given dtype):

* ``quadratic``      – ``nn.Linear(3, 1)`` (in an ``nn.Sequential``, as the engine needs) on an ill-conditioned design with zero-residual targets and
  'mean' MSE: a convex quadratic bowl in the parameters with minimum 0 (condition number ~10²);
* ``least-squares``  – ``nn.Linear(5, 2)`` on random inputs with noisy targets, 'mean' MSE;
* ``mlp-regression`` – a 3-8-1 tanh MLP on a smooth target, 'mean' MSE.

Optimiser factories take ``(model, loss_fn)`` and use settings that suit these tiny full-batch problems.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from curvlab import optim


def quadratic(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.3], dtype=torch.float64)
    theta = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    y = x @ theta.T + 0.7
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 1)).to(dtype)
    return model, nn.MSELoss(), x.to(dtype), y.to(dtype)


def least_squares(dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 5, generator=g, dtype=torch.float64)
    y = x @ torch.randn(5, 2, generator=g, dtype=torch.float64) + 0.1 * torch.randn(32, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 2)).to(dtype)
    return model, nn.MSELoss(), x.to(dtype), y.to(dtype)


def mlp_regression(dtype: torch.dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(48, 3, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(2 * x[:, :1]) * x[:, 1:2] + 0.5 * x[:, 2:]
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    return model, nn.MSELoss(), x.to(dtype), y.to(dtype)


PROBLEMS: dict[str, Callable] = {
    "quadratic": quadratic,
    "least-squares": least_squares,
    "mlp-regression": mlp_regression,
}

OPTIMIZERS: dict[str, Callable] = {
    "sgn": lambda m, l: optim.SGN(m, l, cg_iters=10),
    "sgn-momentum-precond": lambda m, l: optim.SGN(
        m, l, cg_iters=8, momentum=0.5, preconditioner="ggn-diagonal", trust_region=False,
        line_search=True, damping=1e-3, damping_schedule="cosine",
    ),
}

OPTIMIZERS.update({
    "acp": lambda m, l: optim.ACP(m, l, lr=0.3, alpha="heuristic", eps=1e-3, period=3),
    "acp-fixed-alpha": lambda m, l: optim.ACP(m, l, lr=0.5, alpha=1.0, eps=1e-2, period=1),
    "centered-sgd": lambda m, l: optim.CenteredSGD(m, l, lr=0.1),
    "prong": lambda m, l: optim.PRONG(m, l, period=3),
    "kfac-kflr": lambda m, l: optim.KFAC(m, l, curvature="kflr", damping=1e-3, ema_decay=0.5),
    "kfac-mc-klclip-momentum": lambda m, l: optim.KFAC(
        m, l, curvature="kfac", damping=1e-2, step_rescaling="kl-clip", kl_clip=1e-2, lr=0.5, momentum=0.5,
        stats_period=2, inverse_period=3, ema_decay=0.9,
    ),
    "kfac-kfra": lambda m, l: optim.KFAC(m, l, curvature="kfra", damping=1e-3, inverse_period=2),
    "kfac-quadratic-momentum": lambda m, l: optim.KFAC(m, l, step_rescaling="quadratic-momentum"),
    "kfac-ekfac": lambda m, l: optim.KFAC(m, l, curvature="ekfac", damping=1e-3),
    "newton-summary": lambda m, l: optim.NewtonSummary(m, l, damping=0.5, partition="canonical"),
    "newton-summary-adam-cubic": lambda m, l: optim.NewtonSummary(
        m, l, damping=0.5, partition="trivial", updater="adam", lambda_int=1.0, period=2,
        summary_method="double_backward",
    ),
    "second-order-adaptive": lambda m, l: optim.SecondOrderAdaptive(m, l, lr=0.05),
})

#: optimisers with damping: a non-finite step raises the damping instead of an error
DAMPED = {"prong", "kfac-quadratic-momentum", "kfac-kflr", "kfac-mc-klclip-momentum", "kfac-kfra", "kfac-ekfac", "sgn", "sgn-momentum-precond", "acp", "acp-fixed-alpha", "newton-summary", "newton-summary-adam-cubic"}

#: required final/initial loss ratio after the conformance steps (default 0.7). The ACP α heuristic
#: (max squared output gradient) overestimates the curvature while residuals are large, so it is slow.
REQUIRED_RATIO = {"acp": 0.99}


# ---------------------------------------------------------------------------------------------------------
# Problems for "every optimiser decreases the loss at its defaults": a tiny MLP regression, an MNIST MLP and
# the MNIST autoencoder (small subsets of the shared extracts, which CI has at ../shared/data).

SHARED_DATA = [Path(__file__).resolve().parents[2] / ".." / "shared" / "data", Path("/work/shared/data")]


def shared_data(name: str) -> Path | None:
    """The path of a shared data extract, or None if it is not there."""
    for folder in SHARED_DATA:
        if (folder / name).is_file():
            return folder / name
    return None


def _mnist(name: str, limit: int, dtype: torch.dtype):
    from curvlab.datasets import load_dataset

    path = shared_data(name)
    if path is None:
        pytest.skip(f"the shared MNIST extract {name} is not in {[str(p) for p in SHARED_DATA]}")
    ds = load_dataset("mnist", path, seed=0, dtype=dtype, limit=limit)
    return ds.train


def tiny_mlp_regression(dtype: torch.dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(128, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)
    return model, nn.MSELoss(), x.to(dtype), y.to(dtype)


def mnist_mlp(dtype: torch.dtype):
    x, y = _mnist("mnist-5k-labeled.npz", 320, dtype)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 10)).to(dtype)
    return model, nn.CrossEntropyLoss(), x[:256], y[:256]


def mnist_autoencoder(dtype: torch.dtype):
    x, _ = _mnist("mnist-10k-images.npz", 320, dtype)
    x = x[:256].reshape(256, -1)
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(784, 32), nn.Sigmoid(), nn.Linear(32, 8), nn.Sigmoid(),
                          nn.Linear(8, 32), nn.Sigmoid(), nn.Linear(32, 784)).to(dtype)
    return model, nn.BCEWithLogitsLoss(), x, x


DEFAULT_PROBLEMS: dict[str, Callable] = {
    "tiny-mlp-regression": tiny_mlp_regression,
    "mnist-mlp": mnist_mlp,
    "mnist-autoencoder": mnist_autoencoder,
}

#: every curvlab optimiser, built with its defaults only
DEFAULT_OPTIMIZERS: dict[str, Callable] = optim.DEFAULTS
