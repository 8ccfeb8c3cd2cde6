"""The cached-chain J v (curvlab.optim.tangents) against functorch's jvp through the whole model, float64."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

from curvlab.autodiff import exact_kernels, stateless_copy
from curvlab.optim.gauss_newton import GaussNewtonQuadratic
from curvlab.optim.tangents import CachedChain, chain_units
from tests.cases import CASES
from tests.zoo import ZOO, BasicBlock


class Twice(nn.Sequential):
    """A Sequential whose forward is not the chain of its children."""

    def forward(self, x):
        return super().forward(x) * 2


def _tied():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 3))
    model[2].weight = model[0].weight
    return model


def _repeated():
    layer = nn.Linear(4, 4)
    return nn.Sequential(layer, nn.Tanh(), layer, nn.Linear(4, 3))


def _frozen():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))
    model[0].bias.requires_grad_(False)
    return model


CHAINS = {  # name -> (model factory, input shape, the chain route expected)
    "activations": (lambda: nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Sigmoid(), nn.Linear(6, 6), nn.ReLU(inplace=True),
        nn.Linear(6, 6), nn.LeakyReLU(0.2), nn.Linear(6, 6), nn.ELU(), nn.Linear(6, 6), nn.SiLU(),
        nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6), nn.GELU(approximate="tanh"), nn.Dropout(0.5).eval(),
        nn.Linear(6, 3)), (4,), True),
    "cnn": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", groups=2), nn.AvgPool2d(2), nn.Tanh(),
        nn.Conv2d(4, 6, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(6), nn.Linear(6, 3)),
        (2, 8, 8), True),
    "conv1d-nested": (lambda: nn.Sequential(
        nn.Sequential(nn.Conv1d(2, 3, 3, stride=2), nn.Sigmoid()), nn.Sequential(nn.Flatten(), nn.Identity()),
        nn.Linear(9, 3)), (2, 7), True),
    "residual-unit": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), BasicBlock(4, 4), nn.Flatten(),
                                            nn.Linear(4 * 16, 3)), (3, 4, 4), True),
    "frozen-bias": (_frozen, (4,), True),
    "tied-weights": (_tied, (4,), False),
    "module-used-twice": (_repeated, (4,), False),
    "custom-forward": (lambda: Twice(nn.Linear(4, 3)), (4,), False),
}


def _reference_jvp(model, x, tangents):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    _, out = jvp(lambda ps: functional_call(model, ps, (x,)), (params,), ({n: tangents[n] for n in names},))
    return out


@pytest.mark.parametrize("name", list(CHAINS))
def test_chain_jvp_matches_functorch(name):
    factory, shape, is_chain = CHAINS[name]
    torch.manual_seed(0)
    model = stateless_copy(factory().double())  # train-mode BatchNorm: the batch function
    x = torch.randn(5, *shape, dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    tangents = {n: torch.randn_like(p) for n, p in params.items()}
    if not is_chain:
        with pytest.raises(TypeError):
            CachedChain(model, params, x)
        return
    chain = CachedChain(model, params, x)
    torch.testing.assert_close(chain.outputs, model(x))
    torch.testing.assert_close(chain.jvp(tangents), _reference_jvp(model, x, tangents))


@pytest.mark.parametrize("case", CASES + ZOO, ids=lambda c: c.name)
def test_quadratic_jvp_on_every_model(case):
    """GaussNewtonQuadratic's J v (the chain route for Sequential models, else dual tensors) equals functorch's."""
    model, loss_fn, x, y = case.build(batch_size=4)
    quad = GaussNewtonQuadratic(model, loss_fn, x, y)
    assert (quad._chain is not None) == (chain_units(model) is not None)
    v = torch.randn(quad.num_params, dtype=torch.float64)
    tangents = dict(zip(quad._names, quad._unflat(v), strict=True))
    with exact_kernels():
        expected = _reference_jvp(stateless_copy(model), x, tangents)
    torch.testing.assert_close(quad.jvp(v), expected.reshape(expected.shape[0], -1))


def test_inplace_unit_keeps_the_cache():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.ReLU(inplace=True), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}
    chain = CachedChain(model, params, x)
    tangents = {n: torch.randn_like(p) for n, p in params.items()}
    torch.testing.assert_close(chain.jvp(tangents), _reference_jvp(model, x, tangents))
