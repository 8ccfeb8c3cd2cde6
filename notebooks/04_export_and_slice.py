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
# # Export, reload and slice curvature with xarray
#
# Curvature representations export to `xarray` with named dims and coordinates (layer, parameter and flat
# element of every row and column); analysis results are ordinary `xarray.Dataset`s. Both go to netCDF and come
# back identical. Set `CURVLAB_SMOKE=1` for a tiny run.

# %%
# %matplotlib inline
import os
import tempfile
from pathlib import Path

import torch
import xarray as xr
from torch import nn

import curvlab
from curvlab.analysis import measure, netcdf

SMOKE = os.environ.get("CURVLAB_SMOKE") == "1"
HIDDEN, SAMPLES = ((6,), 32) if SMOKE else ((16, 16), 256)
torch.manual_seed(0)
data = curvlab.load_dataset("digits", seed=0, dtype=torch.float64, limit=300 if SMOKE else None).flat()
model = curvlab.models.build_model("mlp", data.sample_shape, data.num_outputs, hidden=HIDDEN).double()
loss_fn = nn.CrossEntropyLoss()
batch = (data.train[0][:SAMPLES], data.train[1][:SAMPLES])
folder = Path(tempfile.mkdtemp())

# %% [markdown]
# Measure the exact GGN and two approximations, then write the curvature (one group per quantity) and the
# comparison to netCDF.

# %%
m = measure(model, loss_fn, batch, approximations=["kflr", "diag_ggn"], dampings=[0.01, 0.1])
netcdf.write(m.curvature_tree(), folder / "curvature.nc")
netcdf.write(m.quality, folder / "quality.nc")
sorted(p.name for p in folder.iterdir())

# %% [markdown]
# ## Reload and check the round trip

# %%
tree = netcdf.read(folder / "curvature.nc")
quality = netcdf.read(folder / "quality.nc")
xr.testing.assert_identical(quality, m.quality)
ggn = curvlab.DenseCurvature.from_xarray(tree["ggn"].to_dataset())
assert torch.equal(ggn.dense(), m.curvature["ggn"].dense())
tree  # noqa: B018 (notebook display)

# %% [markdown]
# ## Slice by coordinates
#
# Rows and columns carry `row_layer`, `row_param` and `row_element` coordinates, so a block is a selection by
# label, not by offset arithmetic.

# %%
matrix = tree["ggn"].to_dataset().matrix
last = matrix.row_layer.values[-1]
block = matrix.where(matrix.row_layer == last, drop=True).where(matrix.col_layer == last, drop=True)
print(f"block of layer {last}: {block.shape}; equals the representation's block:",
      torch.allclose(torch.from_numpy(block.values), ggn.block(last, last)))
bias = matrix.where(matrix.row_param == f"{last}.bias", drop=True).where(matrix.col_param == f"{last}.bias", drop=True)
bias.to_pandas().round(4)

# %% [markdown]
# ## Slice the comparison
#
# Metrics are labelled by approximation, block, metric and damping; `to_pandas` gives tables.

# %%
quality.matrix_quality.sel(block="all").to_pandas()

# %%
quality.step_quality.sel(step_metric="decrease_ratio").sel(damping=0.1).to_pandas()

# %%
quality.interaction.to_pandas().round(3)
