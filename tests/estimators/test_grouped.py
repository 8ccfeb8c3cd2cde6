"""Grouped convolutions: per-group Kronecker factors, checked against the same layer split into g
ungrouped convolutions (an independent route: only the plain Conv adapter, no grouping code)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab import compute, reference
from curvlab.repr import GroupedKroneckerFactors

GROUPS = 3


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 9, 3, groups=GROUPS, padding=1, stride=2)
        self.head = nn.Linear(9 * 3 * 3, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


class Split(nn.Module):
    """The same function: one ungrouped convolution per group, on its channel block."""

    def __init__(self, grouped: Grouped):
        super().__init__()
        conv, out_g = grouped.conv, grouped.conv.out_channels // GROUPS
        self.parts = nn.ModuleList()
        for j in range(GROUPS):
            part = nn.Conv2d(conv.in_channels // GROUPS, out_g, 3, padding=1, stride=2)
            with torch.no_grad():
                part.weight.copy_(conv.weight[j * out_g:(j + 1) * out_g])
                part.bias.copy_(conv.bias[j * out_g:(j + 1) * out_g])
            self.parts.append(part)
        self.head = grouped.head

    def forward(self, x):
        h = torch.cat([p(c) for p, c in zip(self.parts, x.chunk(GROUPS, 1), strict=True)], 1)
        return self.head(torch.tanh(h).flatten(1))


@pytest.mark.parametrize("quantity", ["kflr", "kfac", "ekfac"])
@pytest.mark.parametrize("sharing", ["expand", "reduce"])
def test_per_group_factors_equal_those_of_the_split_layer(quantity, sharing):
    torch.manual_seed(0)
    grouped = Grouped().double()
    split = Split(grouped).double()
    x, y = torch.randn(5, 6, 5, 5, dtype=torch.float64), torch.randint(0, 4, (5,))
    options = dict(progress=False, route="collector", weight_sharing=sharing)
    a = compute(grouped, nn.CrossEntropyLoss(), (x, y), [quantity], generator=torch.Generator().manual_seed(1),
                **options)[quantity]
    b = compute(split, nn.CrossEntropyLoss(), (x, y), [quantity], generator=torch.Generator().manual_seed(1),
                **options)[quantity]
    layer = a.layers["conv"]
    assert isinstance(layer, GroupedKroneckerFactors) and len(layer.groups) == GROUPS
    for j, factors in enumerate(layer.groups):
        theirs = b.layers[f"parts.{j}"]
        torch.testing.assert_close(factors.A, theirs.A, rtol=1e-10, atol=1e-12)
        if quantity != "kfac":  # MC samples differ with the backward order; the GGN factors do not
            torch.testing.assert_close(factors.G, theirs.G, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(factors.dense(), theirs.dense(), rtol=1e-9, atol=1e-12)


def test_grouped_layer_through_the_representation_interface(tmp_path):
    torch.manual_seed(1)
    model = Grouped().double()
    x, y = torch.randn(4, 6, 5, 5, dtype=torch.float64), torch.randint(0, 4, (4,))
    result = compute(model, nn.CrossEntropyLoss(), (x, y), ["kflr", "ggn_block"], progress=False)
    kflr = result["kflr"]
    dense = kflr.dense()
    block = dense[: model.conv.weight.numel() + 9, : model.conv.weight.numel() + 9]
    out_g, per_row = 3, model.conv.weight[0].numel()  # entries of different groups never couple
    for j in range(GROUPS):
        rows = torch.arange(j * out_g * per_row, (j + 1) * out_g * per_row)
        cols = torch.arange((j + 1) * out_g * per_row, GROUPS * out_g * per_row)
        assert torch.count_nonzero(block[rows[:, None], cols[None, :]]) == 0
    v = torch.randn(dense.shape[0], dtype=torch.float64)
    torch.testing.assert_close(kflr @ v, dense @ v)
    torch.testing.assert_close(kflr.solve(v, damping=0.1), torch.linalg.solve(dense + 0.1 * torch.eye(len(v), dtype=v.dtype), v))
    torch.testing.assert_close(kflr.eigvalsh(), torch.linalg.eigvalsh(dense), rtol=1e-8, atol=1e-10)
    from curvlab.io import load, save

    again = load(save(kflr, tmp_path / "kflr.nc"))
    assert torch.equal(again.dense(), dense)
    # the GGN block of the layer is exact; KFLR approximates it per group (not exact with weight sharing)
    exact = reference.ggn(model, nn.CrossEntropyLoss(), x, y)
    n = model.conv.weight.numel() + 9
    torch.testing.assert_close(result["ggn_block"].block("conv", "conv"), exact[:n, :n])
