"""Matrix-free operators agree with the dense ground truth, and Lanczos finds the top of the spectrum.

``GGNOperator @ v`` equals ``reference.ggn(...) @ v``; the top eigenvalues by Lanczos equal those of the dense
matrix.
"""

import torch
from torch import nn

import curvlab

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2)).double()
loss_fn = nn.MSELoss()
x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)

dense = curvlab.reference.ggn(model, loss_fn, x, y)
op = curvlab.operators.GGNOperator(model, loss_fn, (x, y))
v = torch.randn(dense.shape[0], 3, dtype=torch.float64)
assert torch.allclose(op @ v, dense @ v, atol=1e-12)

top = curvlab.spectra.top_eigenvalues(op, 3)["eigenvalues"].values
exact = torch.linalg.eigvalsh(dense).flip(0)[:3].numpy()
print("Lanczos:", top.round(8), " dense:", exact.round(8))
assert abs(top - exact).max() < 1e-8
