"""The collector on layer variants beyond the zoo: every padding mode / dilation / dimension of
convolution, GroupNorm, padded Embedding, nn.MultiheadAttention, tied weights, a batch-coupling
functional op, a model-level parameter, frozen parameters; and the configuration's errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from curvlab import compute, reference
from curvlab.engine.result import model_partition
from tests.cases import Case
from tests.zoo import TiedLM


class ConvVariants(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 3, 3, padding=2, dilation=2, padding_mode="reflect")
        self.c2 = nn.Conv2d(1, 2, 2, padding="same", padding_mode="circular")
        self.c3 = nn.Conv3d(1, 2, 2, stride=2)
        self.gn = nn.GroupNorm(1, 2)
        self.fc = nn.Linear(3 + 2 + 2, 3)

    def forward(self, x):
        a = self.c1(x.reshape(x.shape[0], 2, 8)).mean(2)
        b = self.gn(self.c2(x.reshape(x.shape[0], 1, 4, 4))).mean((2, 3))
        c = self.c3(x.reshape(x.shape[0], 1, 2, 2, 4)).flatten(2).mean(2)
        return self.fc(torch.tanh(torch.cat([a, b, c], 1)))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 4, padding_idx=0)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens):
        h = self.embed(tokens)
        out, _ = self.attn(h, h, h, need_weights=False)
        return self.head(out.mean(1))


class Centered(nn.Module):
    """Samples coupled by a functional op (x − mean over the batch): no BatchNorm to see."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(torch.tanh(h - h.mean(0))) * self.scale


def _frozen():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.LayerNorm(2))
    net[0].weight.requires_grad_(False)
    net[3].bias.requires_grad_(False)
    return net


CASES = [
    Case("conv-variants", ConvVariants, nn.CrossEntropyLoss, lambda n: (torch.randn(n, 16), torch.randint(0, 3, (n,)))),
    Case("mha-embedding", Attention, nn.CrossEntropyLoss, lambda n: (torch.randint(0, 6, (n, 4)), torch.randint(0, 3, (n,)))),
    Case("tied-lm", TiedLM, nn.CrossEntropyLoss, lambda n: (torch.randint(0, 5, (n, 3)), torch.randint(0, 5, (n, 3)))),
    Case("centered", Centered, nn.MSELoss, lambda n: (torch.randn(n, 3), torch.randn(n, 2))),
    Case("frozen", _frozen, nn.MSELoss, lambda n: (torch.randn(n, 3), torch.randn(n, 2))),
]


def _structure(result):
    return json.loads(json.loads(result.attrs["config"])["structure"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_exact_quantities_on_layer_variants(case):
    model, loss_fn, x, y = case.build(3)
    result = compute(model, loss_fn, (x, y), ["ggn", "ggn_block", "diag_ggn", "kflr"], progress=False)
    exact = reference.ggn(model, loss_fn, x, y)
    mask = torch.zeros_like(exact, dtype=torch.bool)
    for group in model_partition(model, "layer").groups:
        mask[group.indices[:, None], group.indices[None, :]] = True
    torch.testing.assert_close(result["ggn"].dense(), exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result["ggn_block"].dense(), torch.where(mask, exact, 0), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result["diag_ggn"].diagonal(), exact.diagonal(), rtol=1e-9, atol=1e-12)
    assert torch.isfinite(result["kflr"].dense()).all()


def test_the_result_records_what_each_layer_holds():
    model, loss_fn, x, y = CASES[1].build(3)
    structure = _structure(compute(model, loss_fn, (x, y), ["kflr"], progress=False))
    assert "kflr/attn" not in structure.get("fallbacks", {}) and "exact_route" not in structure  # MHA adapted
    model, loss_fn, x, y = CASES[2].build(3)
    structure = _structure(compute(model, loss_fn, (x, y), ["kflr"], progress=False))
    assert "tied" in structure["exact_route"]["wte"] or "outside its call" in structure["exact_route"]["wte"]
    model, loss_fn, x, y = CASES[3].build(3)
    structure = _structure(compute(model, loss_fn, (x, y), ["kflr"], progress=False))
    assert "not probed" in structure["batch_coupled"]  # Kronecker factors alone: computed alike either way
    structure = _structure(compute(model, loss_fn, (x, y), ["kflr", "diag_ggn"], progress=False))
    assert "sample 0 reaches other samples" in structure["batch_coupled"]


def test_approximation_map_and_weight_sharing_are_validated():
    model, loss_fn, x, y = CASES[0].build(3)
    result = compute(model, loss_fn, (x, y), ["kflr", "ggn_block", "diag_ggn"], progress=False,
                     approximations={"c*": "diag", "gn": "block"})
    kfac = result["kflr"]  # blocks and diagonals inside a Kronecker quantity use its source (GGN here)
    torch.testing.assert_close(kfac.block("gn", "gn"), result["ggn_block"].block("gn", "gn"))
    idx = kfac.partition.group("c2").indices
    torch.testing.assert_close(kfac.block("c2", "c2"), torch.diag(result["diag_ggn"].diagonal()[idx]))
    with pytest.raises(ValueError, match="matches no layer"):
        compute(model, loss_fn, (x, y), ["kfac"], progress=False, approximations={"fcc": "kflr"})
    with pytest.raises(ValueError, match="not one of"):
        compute(model, loss_fn, (x, y), ["kfac"], progress=False, approximations={"fc": "shampoo"})
    with pytest.raises(ValueError, match="weight_sharing"):
        compute(model, loss_fn, (x, y), ["kfac"], progress=False, weight_sharing="mean")


def test_kfra_off_chains_is_a_clear_error():
    from curvlab.errors import UnsupportedModuleError

    model, loss_fn, x, y = CASES[0].build(3)
    with pytest.raises(UnsupportedModuleError, match="kfra needs the rule engine"):
        compute(model, loss_fn, (x, y), ["kfra"], progress=False)
