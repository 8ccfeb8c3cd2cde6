"""CIFAR-style ResNets (He et al. 2016, §4.2), written as public code writes them (kuangliu/pytorch-cifar).

A 3×3 stem, three stages of :class:`BasicBlock` at widths w, 2w, 4w (stride 2 between stages), global
average pooling and a linear classifier. ``depth = 6n + 2``: ResNet-20 is ``n = 3``. The shortcut is an
empty ``nn.Sequential()`` (identity) or a 1×1 convolution with BatchNorm where the shape changes
(option B); ``F.relu`` is called in ``forward`` and the residual is added in place, as in that code.
BatchNorm uses batch statistics in train mode: curvlab treats the mini-batch as one function.

Example:
    >>> import torch
    >>> net = resnet(in_channels=1, num_classes=10, depth=8, width=4)
    >>> net(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in net.parameters())
    5142
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

__all__ = ["BasicBlock", "ResNet", "resnet"]


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """Stem, three stages of ``num_blocks`` blocks each, pooling and a linear head."""

    def __init__(self, num_blocks: tuple[int, int, int], in_channels: int = 3, num_classes: int = 10,
                 width: int = 16):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], stride=2)
        self.linear = nn.Linear(4 * width, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def resnet(in_channels: int = 3, num_classes: int = 10, depth: int = 20, width: int = 16) -> ResNet:
    """The CIFAR ResNet of ``depth = 6n + 2`` layers (20, 32, 44, 56, 110) and stem width ``width``."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 32, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet((n, n, n), in_channels, num_classes, width)
