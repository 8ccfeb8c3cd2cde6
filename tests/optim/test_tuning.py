import math

import pytest
import torch
from torch import nn

from curvlab import optim
from curvlab.optim import HyperparameterError
from curvlab.optim.tuning import biased_random_search


def _bowl(hp):
    return (math.log10(hp["lr"]) + 2.0) ** 2 + (hp["momentum"] - 0.8) ** 2


def test_biased_search_beats_random_search_on_average():
    """George's table 4 in miniature: the best cost after 20 experiments, mean over 30 searches."""
    space = {"lr": (1e-6, 1.0, "log"), "momentum": (0.0, 1.0)}
    biased = [biased_random_search(_bowl, space, 20, seed=s).best_cost for s in range(30)]
    plain = [biased_random_search(_bowl, space, 20, seed=s, bias=False).best_cost for s in range(30)]
    assert sum(biased) / 30 < sum(plain) / 30


def test_diverged_runs_count_as_worst_and_history_is_kept():
    result = biased_random_search(lambda hp: math.nan if hp["x"] > 0.5 else hp["x"], {"x": (0.0, 1.0)}, 15, seed=1)
    assert len(result.history) == 15 and result.best["x"] <= 0.5
    assert all(c == math.inf for hp, c in result.history if hp["x"] > 0.5)


def test_tunes_an_optimiser_factory():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def objective(hp):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 1))
        opt = optim.CenteredSGD(model, nn.MSELoss(), lr=hp["lr"])
        try:
            for _ in range(10):
                opt.step(x, y)
        except Exception:  # noqa: BLE001  (a diverged run)
            return math.inf
        with torch.no_grad():
            return float(nn.MSELoss()(model(x), y))

    result = biased_random_search(objective, {"lr": (1e-4, 10.0, "log")}, 12, seed=0)
    assert 1e-2 < result.best["lr"] < 1.5 and result.best_cost < 0.1


@pytest.mark.parametrize("space", [{}, {"lr": (1.0, 0.1)}, {"lr": (0.0, 1.0, "log")}, {"lr": (0.1, 1.0, "cubic")}])
def test_bad_space(space):
    with pytest.raises(HyperparameterError):
        biased_random_search(lambda hp: 0.0, space, 3)
