"""The three benchmark problems of the engine benchmark (issue 6), at full and at smoke-test size.

=====  ==================================================  =========  =======  ==========================
key    model                                               loss       batch N  quick (smoke) version
=====  ==================================================  =========  =======  ==========================
``a``  MLP 784-256-256-10, sigmoid                         CE (mean)  128      MLP 20-8-8-4, N=8
``b``  autoencoder 784-1000-500-250-30-250-500-1000-784,   MSE (mean) 256      AE 20-12-8-4-8-12-20, N=8
       sigmoid (Hinton & Salakhutdinov)
``c``  LeNet-5-style CNN on 1×28×28, tanh, max-pool        CE (mean)  128      mini LeNet (same layer types,
                                                                                 2 and 3 channels) on 1×8×8, N=4
``d``  CIFAR CNN on 3×32×32: conv3(16)-relu-pool-          CE (mean)  64       same layers, 2 and 3 channels,
       conv3(32)-relu-pool-fc(64)-relu-fc(10)                                    on 3×8×8, N=4
``e``  CIFAR ResNet (pytorch-cifar style, F.relu,          CE (mean)  64       width 2 on 3×8×8, N=4
       identity and 1×1 shortcuts, BatchNorm eval),
       width 16, on 3×32×32
=====  ==================================================  =========  =======  ==========================

Inputs are uniform in [0, 1] like MNIST pixels, labels uniform over the classes; with ``mnist_path`` the
first N images (and labels) of that file are used instead. The autoencoder's targets are its inputs.

Example:
    >>> p = build_problem("a", quick=True)
    >>> p.inputs.shape, p.targets.shape, p.num_params, p.num_outputs
    (torch.Size([8, 20]), torch.Size([8]), 276, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from curvlab.models import autoencoder, lenet, mlp

__all__ = ["MODEL_KEYS", "Problem", "build_problem"]

MODEL_KEYS = ("a", "b", "c", "d", "e")


@dataclass(frozen=True)
class Problem:
    """One model, loss and batch to benchmark on.

    Attributes:
        key: ``"a"``, ``"b"`` or ``"c"``.
        description: what it is, for the table header.
        model: the network (never modified by the benchmark: every library gets a deep copy).
        loss_fn: ``nn.CrossEntropyLoss()`` or ``nn.MSELoss()``, reduction ``"mean"``.
        inputs: [N, *sample_shape].
        targets: [N] class indices (CE) or [N, C] (MSE).
    """

    key: str
    description: str
    model: nn.Module
    loss_fn: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def num_outputs(self) -> int:
        """C, the model outputs per sample."""
        with torch.no_grad():
            return math.prod(self.model(self.inputs[:1]).shape[1:])

    @property
    def is_classification(self) -> bool:
        return isinstance(self.loss_fn, nn.CrossEntropyLoss)


def _mnist(path: str, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    from curvlab.datasets import load_dataset

    ds = load_dataset("mnist", path, limit=None, test_fraction=0.0, dtype=dtype)
    x, y = ds.train
    if x.shape[0] < n:
        raise ValueError(f"{path} holds {x.shape[0]} images, the batch needs {n}")
    if ds.task != "classification":
        y = torch.zeros(x.shape[0], dtype=torch.long)
    return x[:n], y[:n]


def _mini_lenet(classes: int) -> nn.Sequential:
    """LeNet's layer types at a size whose dense [P, P] curvature is cheap (P = 121 for 4 classes), on 1×8×8."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),   # 2×8×8 → 2×4×4
        nn.Conv2d(2, 3, 3), nn.Tanh(), nn.MaxPool2d(2),              # 3×2×2 → 3×1×1
        nn.Flatten(), nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, classes),
    )


def _cifar_cnn(channels: tuple[int, int], side: int, hidden: int, classes: int) -> nn.Sequential:
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * (side // 4) ** 2, hidden), nn.ReLU(), nn.Linear(hidden, classes),
    )


class _Block(nn.Module):
    """pytorch-cifar's BasicBlock: F.relu in forward, an identity or 1×1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self, width: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = _Block(width, width, 1)
        self.layer2 = _Block(width, 2 * width, 2)
        self.linear = nn.Linear(2 * width, classes)

    def forward(self, x):
        out = self.layer2(self.layer1(nn.functional.relu(self.bn1(self.conv1(x)))))
        return self.linear(nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def build_problem(key: str, quick: bool = False, mnist_path: str | None = None, *,
                  dtype: torch.dtype = torch.float32, seed: int = 0) -> Problem:
    """The problem ``key`` (see the module docstring), built with ``seed`` in ``dtype``."""
    if key not in MODEL_KEYS:
        raise ValueError(f"unknown benchmark model {key!r}; choose from {', '.join(MODEL_KEYS)}")
    if quick and mnist_path is not None:
        raise ValueError("--mnist cannot be combined with --quick (the quick models are not 28×28)")
    torch.manual_seed(seed)
    if key == "a":
        d, hidden, classes, n = (20, (8, 8), 4, 8) if quick else (784, (256, 256), 10, 128)
        model, loss_fn, sample = mlp(d, hidden, classes, "sigmoid"), nn.CrossEntropyLoss(), (d,)
        description = f"MLP {'-'.join(map(str, (d, *hidden, classes)))} sigmoid, CE, N={n}"
    elif key == "b":
        d, widths, n = (20, (12, 8, 4), 8) if quick else (784, (1000, 500, 250, 30), 256)
        model, loss_fn, sample, classes = autoencoder(d, widths, "sigmoid"), nn.MSELoss(), (d,), None
        sizes = (d, *widths, *reversed(widths[:-1]), d)
        description = f"autoencoder {'-'.join(map(str, sizes))} sigmoid, MSE, N={n}"
    elif key == "d":
        side, channels, hidden, classes, n = (8, (2, 3), 5, 4, 4) if quick else (32, (16, 32), 64, 10, 64)
        model, loss_fn, sample = _cifar_cnn(channels, side, hidden, classes), nn.CrossEntropyLoss(), (3, side, side)
        description = f"CIFAR CNN conv({channels[0]})-conv({channels[1]})-fc({hidden}) on 3x{side}x{side}, ReLU, CE, N={n}"
    elif key == "e":
        side, width, classes, n = (8, 2, 4, 4) if quick else (32, 16, 10, 64)
        model, loss_fn, sample = _ResNet(width, classes).eval(), nn.CrossEntropyLoss(), (3, side, side)
        description = f"CIFAR ResNet (2 blocks, width {width}, BatchNorm eval) on 3x{side}x{side}, CE, N={n}"
    else:
        side, classes, n = (8, 4, 4) if quick else (28, 10, 128)
        model = _mini_lenet(classes) if quick else lenet(1, side, classes, "tanh")
        loss_fn, sample = nn.CrossEntropyLoss(), (1, side, side)
        description = f"{'mini ' if quick else ''}LeNet-5 CNN on 1x{side}x{side}, tanh, max-pool, CE, N={n}"
    model = model.to(dtype)
    if mnist_path is not None:
        x, y = _mnist(mnist_path, n, dtype)
        inputs = x.reshape(n, *sample)
    else:
        inputs = torch.rand(n, *sample, dtype=dtype)
        y = torch.randint(0, classes, (n,)) if classes else None
    targets = inputs.reshape(n, -1).clone() if key == "b" else y
    return Problem(key, description, model, loss_fn, inputs, targets)
