import math

import pytest

from curvlab.optim.damping import (
    DampingSchedule,
    ReduceOnPlateau,
    reduction_ratio,
    scheduled_damping,
    trust_region_damping,
)
from curvlab.optim.hyperparameters import HyperparameterError


def test_schedules_hand_computed():
    assert [scheduled_damping("constant", 2.0, 0.1, t, 5) for t in (1, 9)] == [2.0, 2.0]
    lin = [scheduled_damping(DampingSchedule.LINEAR, 1.0, 0.2, t, 5) for t in range(1, 8)]
    assert lin == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2])
    cos = [scheduled_damping("cosine", 1.0, 0.3, t, 4) for t in range(1, 6)]
    expected = [math.cos(math.pi / 8), math.cos(math.pi / 4), 0.3, 0.3, 0.3]  # cos(3π/8) ≈ 0.38 > 0.3
    expected[2] = math.cos(3 * math.pi / 8)
    assert cos == pytest.approx(expected)
    with pytest.raises(ValueError):
        scheduled_damping("exponential", 1.0, 0.1, 1, 3)


def test_trust_region_rule():
    assert trust_region_damping(1.0, 0.2) == 1.5
    assert trust_region_damping(1.0, float("nan")) == 1.5
    assert trust_region_damping(1.0, 0.25) == 1.0
    assert trust_region_damping(1.0, 0.75) == 1.0
    assert trust_region_damping(1.0, 0.8) == pytest.approx(2 / 3)
    assert trust_region_damping(1e-6, 0.9, 1e-6) == 1e-6
    assert reduction_ratio(-1.0, -2.0) == 0.5
    assert reduction_ratio(-1.0, 0.0) == -math.inf


def test_reduce_on_plateau_matches_torch():
    import torch

    losses = [5.0, 4.0, 4.0, 3.9999, 3.0, 3.0, 3.0, 2.0]
    for patience in (0, 1):
        plateau, value = ReduceOnPlateau(0.5, patience, 1e-4), 1.0
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=patience, threshold=1e-4)
        for loss in losses:
            value = plateau.update(value, loss)
            sched.step(loss)
            assert value == pytest.approx(opt.param_groups[0]["lr"])
    with pytest.raises(HyperparameterError, match="factor"):
        ReduceOnPlateau(factor=1.5)
