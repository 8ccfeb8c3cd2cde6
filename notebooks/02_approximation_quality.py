# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How good are KFAC, KFLR, KFRA, EKFAC and the diagonals against the exact GGN, across training?
#
# We train a small MLP on digits in our own loop and, every few steps, let a `curvlab.analysis.Tracker` call
# `curvlab.analysis.measure`: the exact GGN on a fixed batch, each approximation, and their
# comparison (relative Frobenius and spectral errors, cosine, top-k eigenspace overlap, and the quality of the
# damped Newton step each one gives). The tracker appends along `step` and saves after every measurement.
# Set `CURVLAB_SMOKE=1` for a tiny run.

# %%
# %matplotlib inline
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

import curvlab
from curvlab.analysis import Tracker, measure, plot_damping_curves, plot_metric_curves, summarize

SMOKE = os.environ.get("CURVLAB_SMOKE") == "1"
HIDDEN, STEPS, EVERY, SAMPLES = ((6,), 4, 2, 32) if SMOKE else ((16, 16), 300, 100, 256)
APPROXIMATIONS = ["kfac", "kflr", "kfra", "ekfac", "diag_ggn", "diag_ggn_mc", "ggn_block", "summary"]
torch.manual_seed(0)
data = curvlab.load_dataset("digits", seed=0, dtype=torch.float64, limit=300 if SMOKE else None).flat()
model = curvlab.models.build_model("mlp", data.sample_shape, data.num_outputs, hidden=HIDDEN).double()
loss_fn = nn.CrossEntropyLoss()
batch = (data.train[0][:SAMPLES], data.train[1][:SAMPLES])
out = Path(tempfile.mkdtemp()) / "quality.nc"

# %%
tracker = Tracker(
    {"quality": lambda: measure(model, loss_fn, batch, reference="ggn", approximations=APPROXIMATIONS,
                                partition="layer", dampings=[1e-3, 1e-2, 1e-1, 1.0]).quality},
    every=EVERY, path=out)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
generator = torch.Generator().manual_seed(0)
with tracker:
    for step in range(STEPS + 1):
        tracker(step)
        idx = torch.randint(0, len(data.train[0]), (64,), generator=generator)
        optimizer.zero_grad()
        loss_fn(model(data.train[0][idx]), data.train[1][idx]).backward()
        optimizer.step()
quality = tracker.dataset
quality  # noqa: B018 (notebook display)

# %%
plot_metric_curves(quality, ["rel_frobenius_error", "eigenspace_overlap", "step_cosine"],
                   title="approximations of the GGN across training (whole matrix)")

# %%
plot_metric_curves(quality, ["rel_frobenius_error", "cosine_similarity"], block=str(quality.block.values[0]),
                   title="first layer's block only")

# %%
plot_damping_curves(quality, title="step quality against damping at the last step")

# %% [markdown]
# The summary table at the last step, with the best approximation by each metric:

# %%
print(summarize(quality))

# %% [markdown]
# The file on disk holds every measurement so far, so an interrupted run loses nothing:

# %%
print(curvlab.analysis.netcdf.read(out).step.values)
