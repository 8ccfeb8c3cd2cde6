"""LeNet-5 (LeCun et al. 1998) as a plain ``nn.Sequential``, with padding that keeps small images valid.

Example:
    >>> import torch
    >>> lenet(1, 28, 10)(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from torch import nn

from curvlab.models.mlp import activation_type

__all__ = ["lenet"]


def lenet(in_channels: int = 1, image_size: int = 28, num_classes: int = 10, activation: str = "tanh") -> nn.Sequential:
    """LeNet-5 style CNN: conv5(6) → pool → conv5(16) → pool → 120 → 84 → classes (padding keeps small images valid)."""
    act = activation_type(activation)
    size = image_size // 2  # conv1 keeps the size (padding 2), then pool
    conv2_pad = 0 if size >= 8 else 2  # unpadded conv2 on 28x28 as in LeNet-5; padded on small images
    size2 = (size - 4 + 2 * conv2_pad) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), act(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=conv2_pad), act(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * size2 * size2, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, num_classes),
    )
