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
# # Layer interactions in an MLP, at initialisation and after training
#
# Do layers interact through the curvature, or is a block-diagonal view enough? We look at an MLP on
# scikit-learn's digits in two ways:
#
# * the **block norms** ‖H_ij‖_F of the exact Hessian cut by layer, and the **interaction strength**
#   ‖H_ij‖_F / √(‖H_ii‖_F ‖H_jj‖_F);
# * the **GroupedNewton summary** H̄_ij = u_iᵀ H_ij u_j along the gradient u (one group per tensor), normalised
#   as H̄_ij / √(|H̄_ii| |H̄_jj|), and the same for H̄⁻¹, as in Figure 1 of Wolinski's GroupedNewton paper.
#
# Set `CURVLAB_SMOKE=1` to run a tiny version (CI does).

# %%
# %matplotlib inline
import os

import torch
from torch import nn

import curvlab
from curvlab.analysis import group_labels_of, interaction_strength, offdiagonal_stats, plot_block_norms, plot_summary

SMOKE = os.environ.get("CURVLAB_SMOKE") == "1"
HIDDEN, STEPS, SAMPLES = ((8,), 5, 64) if SMOKE else ((32, 32), 400, 512)
torch.manual_seed(0)
data = curvlab.load_dataset("digits", seed=0, dtype=torch.float64, limit=300 if SMOKE else None).flat()
model = curvlab.models.build_model("mlp", data.sample_shape, data.num_outputs, hidden=HIDDEN).double()
loss_fn = nn.CrossEntropyLoss()
batch = (data.train[0][:SAMPLES], data.train[1][:SAMPLES])
layers = curvlab.Partition.from_model(model, "layer")
labels = group_labels_of(layers, model)  # "1 Linear (32×64 + 32)": every figure names layers by name and shape
print(model, f"\nP = {layers.num_params} parameters in layers {layers.group_names}")


# %% [markdown]
# A helper measuring everything at the current weights: the exact Hessian (dense, fine at this size) and the
# summary along the full-batch gradient.

# %%
def snapshot():
    hessian = curvlab.reference.hessian(model, loss_fn, *batch)
    summary = curvlab.grouped_newton_summary(model, loss_fn, batch, partition="canonical", curvature="hessian",
                                             order=2)
    return hessian, summary


hessian_init, summary_init = snapshot()

# %%
plot_block_norms(hessian_init, layers, labels=labels, title="Hessian block norms at initialisation")

# %%
plot_block_norms(hessian_init, layers, interaction=True, labels=labels, title="interaction strength at initialisation")

# %%
plot_summary(summary_init.hbar, summary_init.group_names, labels=labels,
             title="GroupedNewton H̄ and H̄⁻¹ at initialisation")

# %% [markdown]
# Now train with plain SGD with momentum in our own loop.

# %%
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
generator = torch.Generator().manual_seed(0)
for _ in range(STEPS):
    idx = torch.randint(0, len(data.train[0]), (64,), generator=generator)
    optimizer.zero_grad()
    loss = loss_fn(model(data.train[0][idx]), data.train[1][idx])
    loss.backward()
    optimizer.step()
with torch.no_grad():
    accuracy = (model(data.test[0]).argmax(1) == data.test[1]).double().mean()
print(f"after {STEPS} steps: training loss {loss.item():.3f}, test accuracy {accuracy:.3f}")

hessian_trained, summary_trained = snapshot()

# %%
plot_block_norms(hessian_trained, layers, interaction=True, labels=labels,
                 title=f"interaction strength after {STEPS} steps")

# %%
plot_summary(summary_trained.hbar, summary_trained.group_names, labels=labels,
             title=f"GroupedNewton H̄ and H̄⁻¹ after {STEPS} steps")

# %% [markdown]
# How strong are the interactions? Mean and maximum of the off-diagonal entries, before and after training.

# %%
from curvlab.analysis import normalized_summary  # noqa: E402

for when, hessian, summary in (("init", hessian_init, summary_init), ("trained", hessian_trained, summary_trained)):
    blocks = offdiagonal_stats(interaction_strength(hessian, layers))
    hbar = offdiagonal_stats(normalized_summary(summary.hbar, summary.group_names))
    inverse = offdiagonal_stats(normalized_summary(summary.hbar, summary.group_names, inverse=True))
    print(f"{when:8s} Hessian blocks mean/max {blocks[0]:.2f}/{blocks[1]:.2f}   "
          f"H̄ {hbar[0]:.2f}/{hbar[1]:.2f}   H̄⁻¹ {inverse[0]:.2f}/{inverse[1]:.2f}")
