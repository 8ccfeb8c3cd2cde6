"""Per-group spectra against eigvalsh of the dense diagonal blocks."""

import numpy as np
import torch
from torch import nn

from curvlab import reference
from curvlab.operators import HessianOperator
from curvlab.partition import Partition
from curvlab.repr import DenseCurvature
from curvlab.spectra import block_spectra


def test_block_spectra_match_dense_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 10), nn.Tanh(), nn.Linear(10, 2)
    ).double()  # groups of 80, 10, 20, 2
    x, y = torch.randn(12, 8, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    op = HessianOperator(model, nn.MSELoss(), (x, y))
    dense = reference.hessian(model, nn.MSELoss(), x, y)
    spectra = block_spectra(op, k=3, generator=torch.Generator().manual_seed(0))
    assert spectra.dims == ("group", "eigenvalue") and list(spectra.method.values) == [
        "lanczos",
        "dense",
        "dense",
        "dense",
    ]
    for name in op.partition.group_names:
        idx = op.partition.group(name).indices
        exact = torch.linalg.eigvalsh(dense[idx][:, idx]).flip(0)[:3].numpy()
        got = spectra.sel(group=name).values
        np.testing.assert_allclose(got[: exact.size], exact, rtol=1e-7, atol=1e-10)
        assert np.isnan(got[exact.size :]).all()
    same = block_spectra(
        DenseCurvature(dense, Partition.from_model(model), quantity="hessian"), ["0.weight"], k=3
    )
    np.testing.assert_allclose(
        same.values, spectra.sel(group=["0.weight"]).values, rtol=1e-7, atol=1e-10
    )
