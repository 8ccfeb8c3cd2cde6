"""``nn.MultiheadAttention``'s adapter: the replayed call, checked against an independent route.

The independent route is nanoGPT's attention written with a plain ``nn.Linear(E, 3E)`` (``c_attn``)
and ``nn.Linear(E, E)`` (``c_proj``) holding the same weights: its Kronecker factors come from the
Linear adapter alone, so the two models' KFLR/KFAC factors and exact blocks must agree.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from curvlab import compute, reference
from curvlab.collector.adapters import attention

E, H, L, N, C = 6, 2, 5, 4, 3


class MHAModel(nn.Module):
    def __init__(self, batch_first=True, causal=True, padding=False, need_weights=True, cross=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, H, batch_first=batch_first)
        self.head = nn.Linear(E, C)
        self.batch_first, self.causal, self.padding, self.need_weights, self.cross = (
            batch_first, causal, padding, need_weights, cross)

    def forward(self, x):
        mask = torch.ones(L, L, dtype=torch.bool).triu(1) if self.causal else None
        padding = None
        if self.padding:  # the last key of every other sample is padding
            padding = torch.zeros(x.shape[0], L, dtype=torch.bool)
            padding[::2, -1] = True
        seq = x if self.batch_first else x.transpose(0, 1)
        kv = torch.tanh(seq) if self.cross else seq
        out, _ = self.attn(seq, kv, kv, attn_mask=mask, key_padding_mask=padding, need_weights=self.need_weights)
        out = out if self.batch_first else out.transpose(0, 1)
        return self.head(out.mean(1))


class LinearAttention(nn.Module):
    """The same function with the projections as nn.Linear modules (nanoGPT's CausalSelfAttention)."""

    def __init__(self, mha_model: MHAModel):
        super().__init__()
        self.c_attn, self.c_proj, self.head = nn.Linear(E, 3 * E), nn.Linear(E, E), nn.Linear(E, C)
        with torch.no_grad():
            self.c_attn.weight.copy_(mha_model.attn.in_proj_weight)
            self.c_attn.bias.copy_(mha_model.attn.in_proj_bias)
            self.c_proj.load_state_dict(mha_model.attn.out_proj.state_dict())
            self.head.load_state_dict(mha_model.head.state_dict())

    def forward(self, x):
        q, k, v = (t.view(x.shape[0], L, H, E // H).transpose(1, 2) for t in self.c_attn(x).split(E, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(self.c_proj(y.transpose(1, 2).reshape(x.shape[0], L, E)).mean(1))


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, L, E, generator=gen, dtype=torch.float64), torch.randint(0, C, (N,), generator=gen)


def _structure(result, q="kflr"):
    return json.loads(json.loads(result[q].attrs["config"])["structure"])


@pytest.mark.parametrize("quantity", ["kflr", "ekfac"])
def test_factors_equal_those_of_the_same_attention_written_with_linear_layers(quantity):
    torch.manual_seed(0)
    mha = MHAModel(need_weights=False).double()
    plain = LinearAttention(mha).double()
    x, y = _data()
    a = compute(mha, nn.CrossEntropyLoss(), (x, y), [quantity], progress=False)[quantity]
    b = compute(plain, nn.CrossEntropyLoss(), (x, y), [quantity], progress=False, route="collector")[quantity]
    for mine, theirs in (("attn", "c_attn"), ("attn.out_proj", "c_proj"), ("head", "head")):
        ka, kb = a.layers[mine], b.layers[theirs]
        assert not isinstance(ka, torch.Tensor), f"{mine} fell back to {ka}"
        torch.testing.assert_close(ka.A, kb.A, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ka.G, kb.G, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ka.dense(), kb.dense(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("options", [
    {"batch_first": False, "causal": True, "padding": True, "need_weights": True},
    {"batch_first": True, "causal": False, "padding": True, "need_weights": False},
], ids=["seq-first-masks-weights", "batch-first-padding"])
def test_exact_quantities_with_masks_and_layouts(options):
    torch.manual_seed(1)
    model = MHAModel(**options).double()
    x, y = _data(1)
    result = compute(model, nn.CrossEntropyLoss(), (x, y), ["ggn", "diag_ggn", "kflr"], progress=False)
    exact = reference.ggn(model, nn.CrossEntropyLoss(), x, y)
    torch.testing.assert_close(result["ggn"].dense(), exact, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(result["diag_ggn"].diagonal(), exact.diagonal(), rtol=1e-9, atol=1e-12)
    assert "exact_route" not in _structure(result)
    assert not isinstance(result["kflr"].layers["attn"], torch.Tensor)


def test_cross_attention_takes_the_exact_route_with_its_reason():
    torch.manual_seed(2)
    model = MHAModel(cross=True).double()
    x, y = _data(2)
    result = compute(model, nn.CrossEntropyLoss(), (x, y), ["ggn", "kflr"], progress=False)
    torch.testing.assert_close(result["ggn"].dense(), reference.ggn(model, nn.CrossEntropyLoss(), x, y),
                               rtol=1e-9, atol=1e-12)
    route = _structure(result)["exact_route"]
    assert "cross-attention" in route["attn"] and "cross-attention" in route["attn.out_proj"]


def test_a_replay_that_differs_from_the_module_is_never_used(monkeypatch):
    original = attention.MultiheadAttentionAdapter.replay

    def wrong(self, module, args, kwargs, output):
        (out, weights), projection = original(self, module, args, kwargs, output)
        return (out * 1.01, weights), projection

    monkeypatch.setattr(attention.MultiheadAttentionAdapter, "replay", wrong)
    torch.manual_seed(3)
    model = MHAModel().double()
    x, y = _data(3)
    result = compute(model, nn.CrossEntropyLoss(), (x, y), ["ggn", "kflr"], progress=False)
    torch.testing.assert_close(result["ggn"].dense(), reference.ggn(model, nn.CrossEntropyLoss(), x, y),
                               rtol=1e-9, atol=1e-12)
    assert "differs" in _structure(result)["exact_route"]["attn"]
