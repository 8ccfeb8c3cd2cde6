"""Model presets of the CLI, the studies and the benchmarks, built by name for a data set.

* ``mlp``, ``autoencoder`` – fully connected (:mod:`curvlab.models.mlp`);
* ``lenet``                – LeNet-5 (:mod:`curvlab.models.lenet`);
* ``resnet``               – a CIFAR-style ResNet-20 with BatchNorm (:mod:`curvlab.models.resnet`);
* ``transformer``          – a character-level GPT (:mod:`curvlab.models.transformer`).

Example:
    >>> build_model("resnet", (1, 8, 8), 10, depth=8, width=4).linear
    Linear(in_features=16, out_features=10, bias=True)
    >>> build_model("transformer", (32,), 65).lm_head
    Linear(in_features=64, out_features=65, bias=False)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from curvlab.models.lenet import lenet
from curvlab.models.mlp import ACTIVATIONS, activation_type, autoencoder, mlp
from curvlab.models.resnet import ResNet, resnet
from curvlab.models.transformer import GPT

__all__ = ["ACTIVATIONS", "GPT", "MODELS", "ResNet", "activation_type", "autoencoder", "build_model", "lenet",
           "mlp", "resnet"]

MODELS = ("mlp", "lenet", "autoencoder", "resnet", "transformer")
#: what each preset takes: flat vectors, images [C, H, W] or token sequences [T]
INPUTS = {"mlp": "flat", "autoencoder": "flat", "lenet": "images", "resnet": "images", "transformer": "tokens"}


def build_model(name: str, sample_shape: Sequence[int], num_outputs: int, *, hidden: Sequence[int] = (32, 32),
                activation: str = "tanh", **options) -> nn.Module:
    """A preset by name for data of ``sample_shape`` with ``num_outputs`` outputs (classes, or the vocabulary).

    ``hidden`` and ``activation`` shape the mlp and autoencoder; ``options`` go to the factory of
    ``resnet`` (``depth``, ``width``) or ``transformer`` (``n_layer``, ``n_head``, ``n_embd``).
    """
    features = 1
    for s in sample_shape:
        features *= int(s)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), *mlp(features, hidden, num_outputs, activation))
    if name == "autoencoder":
        return nn.Sequential(nn.Flatten(), *autoencoder(features, hidden, activation))
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    expected = INPUTS[name]
    if (expected == "images") != (len(sample_shape) == 3) or (expected == "tokens") != (len(sample_shape) == 1):
        raise ValueError(f"{name} needs {expected} as inputs, got samples of shape {tuple(sample_shape)}")
    if name == "lenet":
        return lenet(sample_shape[0], sample_shape[-1], num_outputs, activation)
    if name == "resnet":
        return resnet(sample_shape[0], num_outputs, **options)
    return GPT(num_outputs, block_size=int(sample_shape[0]), **options)
