"""On small variants of the CLI's ``resnet`` and ``transformer`` presets (BatchNorm in train mode; causal
attention with LayerNorm and token-level cross-entropy), the matrix-free metrics agree with the dense ones
within their reported error bars, with the presets' partitions and approximations (float64)."""

import warnings

import pytest
import torch

from curvlab.analysis import lanczos
from curvlab.analysis.measurement import measure
from curvlab.cli.analyze import PRESETS
from curvlab.errors import CurvlabWarning
from curvlab.models import build_model
from tests.analysis.test_matrix_free import _within


def _resnet():
    torch.manual_seed(0)
    model = build_model("resnet", (1, 6, 6), 4, depth=8, width=2).double().train()
    return model, torch.randn(10, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (10,))


def _transformer():
    torch.manual_seed(0)
    model = build_model("transformer", (5,), 7, n_layer=1, n_head=2, n_embd=8).double()
    tokens = torch.randint(0, 7, (4, 6))
    return model, tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("preset, factory", [("resnet", _resnet), ("transformer", _transformer)])
def test_preset_metrics_agree_dense_vs_matrix_free(preset, factory, monkeypatch):
    monkeypatch.setattr(lanczos, "DENSE_BLOCK", 4)  # Lanczos, not materialisation, on every block
    model, x, y = factory()
    config = PRESETS[preset]
    kwargs = dict(reference="ggn", approximations=config["quantities"].split(","), partition=config["partition"],
                  dampings=[1e-2, 1.0], k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CurvlabWarning)
        dense = measure(model, torch.nn.CrossEntropyLoss(), (x, y), method="dense", **kwargs).quality
        free = measure(model, torch.nn.CrossEntropyLoss(), (x, y), method="matrix-free", num_probes=60,
                       block_steps=True, block_spectra=True, **kwargs).quality
    names = [n for n in free.approximation.values if n != "summary"]
    assert set(names) == set(kwargs["approximations"]) - {"summary"}  # nothing skipped
    assert len(free.block) > 3  # the preset's partition, not one block
    _within(free.matrix_quality.sel(approximation=names), dense.matrix_quality.sel(approximation=names),
            free.matrix_quality_error.sel(approximation=names))
    _within(free.step_quality, dense.step_quality, free.step_quality_error, atol=1e-7)
    _within(free.interaction, dense.interaction, free.interaction_error)
    assert torch.allclose(torch.as_tensor(free.summary_hbar.values), torch.as_tensor(dense.summary_hbar.values),
                          rtol=1e-8, atol=1e-10)
