"""Optimiser statistics feed the analysis layer's tracker along a ``step`` dimension."""

import numpy as np
import pytest
import torch

from curvlab.analysis import tracking
from tests.optim.problems import OPTIMIZERS, PROBLEMS


@pytest.mark.parametrize("name", ["sgn", "newton-summary", "kfac-kflr", "acp"])
def test_statistics_are_trackable(name):
    model, loss_fn, x, y = PROBLEMS["mlp-regression"](torch.float64)
    opt = OPTIMIZERS[name](model, loss_fn)
    tracker = tracking.Tracker({"optimizer": opt.statistics}, every=1)
    losses = []
    for step in range(3):
        losses.append(float(opt.step(x, y)))
        tracker(step)
    ds = tracker.dataset
    assert ds.step.values.tolist() == [0, 1, 2]
    np.testing.assert_allclose(ds["loss"].values, losses)
    assert set(opt.statistics()) <= set(ds.data_vars)
