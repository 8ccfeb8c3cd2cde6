"""Model presets used by the CLI, the studies and the benchmarks. All are plain ``nn.Sequential``.

Example:
    >>> mlp(64, (32,), 10)
    Sequential(
      (0): Linear(in_features=64, out_features=32, bias=True)
      (1): Tanh()
      (2): Linear(in_features=32, out_features=10, bias=True)
    )
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["ACTIVATIONS", "MODELS", "autoencoder", "build_model", "lenet", "mlp"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU,
    "softplus": nn.Softplus,
}
MODELS = ("mlp", "lenet", "autoencoder")


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "tanh") -> nn.Sequential:
    """Linear layers of widths ``in_features → hidden… → out_features`` with ``activation`` between."""
    act = _activation(activation)
    sizes = [in_features, *hidden, out_features]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def lenet(in_channels: int = 1, image_size: int = 28, num_classes: int = 10, activation: str = "tanh") -> nn.Sequential:
    """LeNet-5 style CNN: conv5(6) → pool → conv5(16) → pool → 120 → 84 → classes (padding keeps small images valid)."""
    act = _activation(activation)
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


def autoencoder(in_features: int = 784, widths: Sequence[int] = (1000, 500, 250, 30), activation: str = "sigmoid") -> nn.Sequential:
    """The deep autoencoder of Hinton & Salakhutdinov: 784-1000-500-250-30-250-500-1000-784 by default."""
    hidden = [*widths, *reversed(widths[:-1])]
    return mlp(in_features, hidden, in_features, activation)


def build_model(name: str, sample_shape: Sequence[int], num_outputs: int, *, hidden: Sequence[int] = (32, 32),
                activation: str = "tanh") -> nn.Sequential:
    """A preset by name for data of ``sample_shape`` with ``num_outputs`` outputs."""
    features = 1
    for s in sample_shape:
        features *= int(s)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), *mlp(features, hidden, num_outputs, activation))
    if name == "lenet":
        if len(sample_shape) != 3:
            raise ValueError(f"lenet needs image inputs [C, H, W], got sample shape {tuple(sample_shape)}")
        return lenet(sample_shape[0], sample_shape[-1], num_outputs, activation)
    if name == "autoencoder":
        return nn.Sequential(nn.Flatten(), *autoencoder(features, hidden, activation))
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
