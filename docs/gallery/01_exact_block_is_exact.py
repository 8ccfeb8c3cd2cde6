"""An exact block-diagonal approximation has zero error on its blocks, densely and matrix-free.

The layer blocks of the GGN (``ggn_block``) equal the blocks of the exact GGN (``curvlab.reference.ggn``),
so their relative Frobenius error is 0 per block; the matrix-free estimate agrees within its standard error.
"""

import torch
from torch import nn

import curvlab

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
loss_fn = nn.CrossEntropyLoss()
x, y = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))

exact = curvlab.reference.ggn(model, loss_fn, x, y)
part = curvlab.Partition.from_model(model, "layer")
blocks = curvlab.compute(model, loss_fn, (x, y), ["ggn_block", "kflr"], partition=part, progress=False)
for group in part.groups:
    idx = group.indices
    assert torch.allclose(blocks["ggn_block"].block(group.name, group.name), exact[idx][:, idx], atol=1e-12)

dense = curvlab.analysis.compare(exact, {"kflr": blocks["kflr"]}, partition=part, method="dense")
free = curvlab.analysis.compare(exact, {"kflr": blocks["kflr"]}, partition=part, method="matrix-free",
                                num_probes=200)
d = dense.matrix_quality.sel(metric="rel_frobenius_error", approximation="kflr")
f = free.matrix_quality.sel(metric="rel_frobenius_error", approximation="kflr")
e = free.matrix_quality_error.sel(metric="rel_frobenius_error", approximation="kflr")
for block in d.block.values:
    print(f"block {block}: dense {float(d.sel(block=block)):.4f}, "
          f"matrix-free {float(f.sel(block=block)):.4f} ± {float(e.sel(block=block)):.4f}")
    assert abs(float(f.sel(block=block)) - float(d.sel(block=block))) <= 4 * float(e.sel(block=block)) + 1e-9
