"""Extra cases for the engine: every supported module type, in small float64 models."""

from __future__ import annotations

import torch
from torch import nn

from tests.cases import SEQUENTIAL_CASES, Case, _classification, _regression


def _eval(build):
    """A factory whose model is in eval mode with non-trivial BatchNorm running statistics."""

    def make():
        model = build()
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
        return model.eval()

    return make


def conv1d_net():
    return nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=2, stride=2, dilation=2),
        nn.ELU(),
        nn.Conv1d(3, 2, 2, bias=False),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def pooling_net():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, stride=1, dilation=1),
        nn.BatchNorm2d(2),
        nn.Softplus(),
        nn.AvgPool2d(2),
        nn.Conv2d(2, 2, 2, padding=1, dilation=2),
        nn.GELU(),
        nn.AdaptiveAvgPool2d((1, 2)),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 2),
    )


def maxpool_net():
    return nn.Sequential(
        nn.Conv2d(1, 2, 2, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.MaxPool2d(2, stride=1),
        nn.Flatten(),
        nn.Identity(),
        nn.Linear(18, 2),
    )


def bn_mlp():
    return nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.SELU(),
        nn.Sequential(nn.Linear(4, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 2)),
    )


ENGINE_CASES: list[Case] = [
    *SEQUENTIAL_CASES,
    Case("conv1d-elu-mse", conv1d_net, nn.MSELoss, _regression((2, 7), 3)),
    Case("pool-bn-softplus-gelu-ce", _eval(pooling_net), nn.CrossEntropyLoss, _classification((1, 4, 4), 2)),
    Case("maxpool-leaky-ce-sum", maxpool_net, lambda: nn.CrossEntropyLoss(reduction="sum"),
         _classification((1, 6, 6), 2)),
    Case("bn1d-selu-gelutanh-mse", _eval(bn_mlp), nn.MSELoss, _regression((3,), 2)),
]

#: MLPs of plain Linear layers and one activation each (exact-regime tests of Kronecker factors).
MLP_CASES: list[Case] = [c for c in SEQUENTIAL_CASES if c.name.startswith("mlp")]

DEEP_LINEAR = Case(
    "deep-linear-mse",
    lambda: nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 2)),
    nn.MSELoss,
    _regression((3,), 2),
)


def layer_mask(model: nn.Module) -> torch.Tensor:
    """[P, P] boolean mask of the per-layer diagonal blocks in the reference ordering."""
    from curvlab.partition import Partition

    part = Partition.from_model(model, "layer")
    ids = part.group_ids()
    return ids[:, None] == ids[None, :]
