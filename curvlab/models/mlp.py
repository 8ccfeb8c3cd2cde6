"""Fully connected presets: the MLP and the deep autoencoder, each a plain ``nn.Sequential``.

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

__all__ = ["ACTIVATIONS", "activation_type", "autoencoder", "mlp"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


def activation_type(name: str | type[nn.Module]) -> type[nn.Module]:
    """The module class of an activation named in :data:`ACTIVATIONS` (a module class passes through)."""
    if isinstance(name, type) and issubclass(name, nn.Module):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(in_features: int, hidden: Sequence[int], out_features: int,
        activation: str | type[nn.Module] = "tanh") -> nn.Sequential:
    """Linear layers of widths ``in_features → hidden… → out_features`` with ``activation`` (a name or a module
    class) between."""
    act = activation_type(activation)
    sizes = [in_features, *hidden, out_features]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def autoencoder(in_features: int = 784, widths: Sequence[int] = (1000, 500, 250, 30), activation: str = "sigmoid") -> nn.Sequential:
    """The deep autoencoder of Hinton & Salakhutdinov: 784-1000-500-250-30-250-500-1000-784 by default."""
    hidden = [*widths, *reversed(widths[:-1])]
    return mlp(in_features, hidden, in_features, activation)
