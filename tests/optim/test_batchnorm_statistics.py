"""BatchNorm running statistics: one update per optimiser step, from the step's batch before the update."""

import copy
import warnings

import pytest
import torch
from torch import nn

from curvlab import optim
from curvlab.errors import UnsupportedModuleError


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).train()


@pytest.mark.parametrize("name", optim.DEFAULTS)
def test_one_running_statistics_update_per_step(name):
    model, loss_fn = _cnn(), nn.CrossEntropyLoss()
    try:
        opt = optim.build_default(name, model, loss_fn)
    except UnsupportedModuleError:
        pytest.skip(f"{name} refuses convolutions")
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 2, 4, 4, generator=g) + 1, torch.randint(0, 4, (8,), generator=g)) for _ in range(3)]
    twin = copy.deepcopy(model)  # replays the updates a plain SGD step would make
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, (x, y) in enumerate(batches, start=1):
            twin.load_state_dict({**twin.state_dict(), **{n: p for n, p in model.named_parameters()}})
            with torch.no_grad():
                twin(x)
            try:
                opt.step(x, y)
            except UnsupportedModuleError:
                pytest.skip(f"{name} refuses train-mode BatchNorm")
            assert int(model[1].num_batches_tracked) == k
            torch.testing.assert_close(model[1].running_mean, twin[1].running_mean)
            torch.testing.assert_close(model[1].running_var, twin[1].running_var)
