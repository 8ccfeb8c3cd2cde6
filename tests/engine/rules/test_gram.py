"""gram: XᵀX from the upper block triangle equals the plain product."""

from __future__ import annotations

import pytest
import torch

from curvlab.engine.rules import gram as gram_module
from curvlab.engine.rules.gram import gram

F64 = torch.float64


@pytest.mark.parametrize("rows", [7, 600], ids=["one-product", "blocks"])
@pytest.mark.parametrize("width", [1, 5, 128, 129, 300])
@pytest.mark.parametrize("homogeneous", [False, True])
def test_gram_equals_the_augmented_product(rows, width, homogeneous):
    torch.manual_seed(width)
    x = torch.randn(rows, width, dtype=F64)
    augmented = torch.cat([x, torch.ones(rows, 1, dtype=F64)], 1) if homogeneous else x
    result = gram(x, homogeneous=homogeneous)
    torch.testing.assert_close(result, augmented.T @ augmented)
    if width > 128 and rows >= 4 * gram_module.BLOCK:  # blocks: the lower one is a copy of the upper
        assert torch.equal(result[128:width, :128], result[:128, 128:width].T)


def test_small_blocks_cover_every_entry(monkeypatch):
    monkeypatch.setattr(gram_module, "BLOCK", 2)  # 5 columns -> 3 blocks of uneven width
    x = torch.randn(9, 5, dtype=F64)  # 9 ≥ 4 · BLOCK rows: the block path
    torch.testing.assert_close(gram(x, homogeneous=True)[:5, :5], x.T @ x)
