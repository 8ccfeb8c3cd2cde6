"""Test cases as data: small model / loss / data factories shared by every test module.

Each :class:`Case` builds a fresh float64 model, a loss and a batch from a seed, so a test is a loop
(or a ``pytest.mark.parametrize``) over ``CASES`` comparing something against ``curvlab.reference``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from curvlab.models import mlp as build_mlp


@dataclass(frozen=True)
class Case:
    name: str
    model: Callable[[], nn.Module]
    loss: Callable[[], nn.Module]
    data: Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # batch size -> (inputs, targets)

    def build(self, batch_size: int = 5, seed: int = 0):
        torch.manual_seed(seed)
        model = self.model().double()
        inputs, targets = self.data(batch_size)
        if inputs.is_floating_point():
            inputs = inputs.double()
        if targets.is_floating_point():
            targets = targets.double()
        return model, self.loss(), inputs, targets


class Residual(nn.Module):
    """x + f(x) around a small MLP block: a branching model for the references."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(x + self.inner(x))


def _classification(in_shape, classes):
    return lambda n: (torch.randn(n, *in_shape), torch.randint(0, classes, (n,)))


def _regression(in_shape, out_dim):
    return lambda n: (torch.randn(n, *in_shape), torch.randn(n, out_dim))


def _binary(in_shape, out_dim):
    return lambda n: (torch.randn(n, *in_shape), torch.randint(0, 2, (n, out_dim)).double())


def mlp(act: type[nn.Module], sizes=(4, 5, 3)) -> Callable[[], nn.Module]:
    return lambda: build_mlp(sizes[0], sizes[1:-1], sizes[-1], act)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 2, stride=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(2 * 1 * 1, 3),
    )


CASES: list[Case] = [
    Case("mlp-sigmoid-ce", mlp(nn.Sigmoid), nn.CrossEntropyLoss, _classification((4,), 3)),
    Case("mlp-tanh-mse", mlp(nn.Tanh), nn.MSELoss, _regression((4,), 3)),
    Case("mlp-relu-bce-sum", mlp(nn.ReLU), lambda: nn.BCEWithLogitsLoss(reduction="sum"), _binary((4,), 3)),
    Case("mlp-tanh-mse-sum", mlp(nn.Tanh, (3, 4, 4, 2)), lambda: nn.MSELoss(reduction="sum"), _regression((3,), 2)),
    Case("cnn-ce", small_cnn, nn.CrossEntropyLoss, _classification((1, 4, 4), 3)),
    Case("residual-ce", Residual, nn.CrossEntropyLoss, _classification((4,), 3)),
]

#: Cases with plain ``nn.Sequential`` models (what the hook engine supports without conversion).
SEQUENTIAL_CASES = [c for c in CASES if c.name != "residual-ce"]

#: The three losses in both reductions, for loss-level tests.
LOSSES: list[Callable[[], nn.Module]] = [
    nn.MSELoss,
    lambda: nn.MSELoss(reduction="sum"),
    nn.CrossEntropyLoss,
    lambda: nn.CrossEntropyLoss(reduction="sum"),
    nn.BCEWithLogitsLoss,
    lambda: nn.BCEWithLogitsLoss(reduction="sum"),
]
