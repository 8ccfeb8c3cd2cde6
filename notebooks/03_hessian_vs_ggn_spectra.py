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
# # Hessian vs GGN: eigenvalue densities
#
# The GGN drops the second-order term of the model from the Hessian: G = Jᵀ H_out J is positive semi-definite,
# while the Hessian H = G + Σ (∂ℓ/∂f) ∇²f can have negative eigenvalues. We compare their spectra on a digits
# MLP with stochastic Lanczos quadrature (`curvlab.spectra.density`, matrix-free through
# `curvlab.HessianOperator` / `curvlab.GGNOperator`) and check it against the exact eigenvalues.
# Set `CURVLAB_SMOKE=1` for a tiny run.

# %%
# %matplotlib inline
import os

import torch
from torch import nn

import curvlab
from curvlab.analysis import plot_density, plot_spectrum

SMOKE = os.environ.get("CURVLAB_SMOKE") == "1"
HIDDEN, STEPS, SAMPLES, PROBES, LANCZOS = ((6,), 5, 64, 2, 20) if SMOKE else ((16, 16), 300, 512, 8, 80)
torch.manual_seed(0)
data = curvlab.load_dataset("digits", seed=0, dtype=torch.float64, limit=300 if SMOKE else None).flat()
model = curvlab.models.build_model("mlp", data.sample_shape, data.num_outputs, hidden=HIDDEN).double()
loss_fn = nn.CrossEntropyLoss()
batch = (data.train[0][:SAMPLES], data.train[1][:SAMPLES])


# %%
def spectra(tag):
    generator = torch.Generator().manual_seed(0)
    densities, exact = {}, {}
    for name, operator, reference in (("Hessian", curvlab.HessianOperator, curvlab.reference.hessian),
                                      ("GGN", curvlab.GGNOperator, curvlab.reference.ggn)):
        op = operator(model, loss_fn, batch)
        densities[f"{name} ({tag})"] = curvlab.spectra.density(op, num_probes=PROBES, lanczos_steps=LANCZOS,
                                                               generator=generator).density
        exact[f"{name} ({tag})"] = torch.linalg.eigvalsh(reference(model, loss_fn, *batch))
    return densities, exact


densities_init, exact_init = spectra("init")

# %% [markdown]
# Train for a while with SGD, then measure again.

# %%
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
generator = torch.Generator().manual_seed(0)
for _ in range(STEPS):
    idx = torch.randint(0, len(data.train[0]), (64,), generator=generator)
    optimizer.zero_grad()
    loss_fn(model(data.train[0][idx]), data.train[1][idx]).backward()
    optimizer.step()
densities_trained, exact_trained = spectra("trained")

# %%
plot_density(densities_trained, eigenvalues=exact_trained, title="SLQ densities (lines) and exact histograms")

# %%
plot_spectrum({**exact_init, **exact_trained}, title="sorted |eigenvalues|; hollow markers: negative ones")

# %% [markdown]
# The GGN has no negative eigenvalues; the Hessian's negative ones are the curvature the GGN leaves out.

# %%
for name, values in {**exact_init, **exact_trained}.items():
    scale = values.abs().max()
    print(f"{name:18s} λ_max {values.max():.3g}   λ_min {values.min():.3g}   "
          f"negative (< -1e-10·λ_max): {int((values < -1e-10 * scale).sum())}")
