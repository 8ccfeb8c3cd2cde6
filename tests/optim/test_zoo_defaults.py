"""Every optimiser at its defaults on the zoo's real architectures, float32 (issue 13: the CIFAR-style
ResNet in train mode; also the transformer, the GPT block and the LSTM).

Each (optimiser, model) pair either decreases the loss with finite parameters, or is one of the
listed refusals, which must be a ``CurvlabError`` naming the module (never a raw torch error).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from curvlab.errors import UnsupportedModuleError
from tests.optim.problems import DEFAULT_OPTIMIZERS
from tests.zoo import zoo_case

MODELS = ["resnet-torchvision-train", "transformer-train", "gpt-token-ce", "lstm-ce"]
STEPS = 8
#: The layer-wise methods of linear and convolutional layers (ACP, PRONG, CenteredSGD) on attention,
#: embeddings and recurrent layers, and KFRA's rule-engine recursion.
REFUSED = {
    ("kfra", m) for m in MODELS
} | {(opt, m) for opt in ("acp", "prong", "centered-sgd") for m in MODELS if not m.startswith("resnet")}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("name", DEFAULT_OPTIMIZERS)
def test_defaults_on_the_zoo(name, model_name):
    model, loss_fn, x, y = zoo_case(model_name).build(batch_size=32)
    model = model.float()
    x = x.float() if x.is_floating_point() else x
    if (name, model_name) in REFUSED:
        with pytest.raises(UnsupportedModuleError, match="module '"):
            DEFAULT_OPTIMIZERS[name](model, loss_fn).step(x, y)
        return
    opt = DEFAULT_OPTIMIZERS[name](model, loss_fn)
    with torch.no_grad():
        initial = float(loss_fn(model(x), y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rejected or rolled-back step warns; it is allowed
        for _ in range(STEPS):
            opt.step(x, y)
    with torch.no_grad():
        final = float(loss_fn(model(x), y))
    assert final < 0.99 * initial, (name, model_name, initial, final)
    assert all(torch.isfinite(p).all() for p in model.parameters())
