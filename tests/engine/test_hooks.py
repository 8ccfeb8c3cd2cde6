"""The hook lifecycle: hooks are owned by the context, the model is untouched, errors name the culprit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import curvlab
from curvlab import reference
from curvlab.engine import CurvatureHooks, compute
from curvlab.errors import NonFiniteError, UnsupportedLossError, UnsupportedModuleError
from tests.engine.engine_cases import ENGINE_CASES


class _Functional(nn.Module):
    """A forward with a functional operation between modules: refused (the rules cannot see it)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_hooks_are_removed_after_an_exception_and_torch_func_still_works():
    model, loss_fn, x, y = ENGINE_CASES[0].build()
    before = _hook_count(model)
    with pytest.raises(KeyError, match="boom"):
        with CurvatureHooks(model, loss_fn, ["ggn_block", "diag_hessian"]):
            loss_fn(model(x), y).backward()
            assert _hook_count(model) > before
            raise KeyError("boom")
    assert _hook_count(model) == before
    # torch.func-based references run on the model afterwards and agree with a fresh computation
    ggn = reference.ggn(model, loss_fn, x, y)
    assert torch.allclose(compute(model, loss_fn, (x, y), "ggn", progress=False)["ggn"].dense(), ggn)
    assert _hook_count(model) == before


def test_several_batches_inside_one_context_and_no_backward_for_ggn():
    model, loss_fn, x, y = ENGINE_CASES[1].build(batch_size=6)
    with CurvatureHooks(model, loss_fn, ["ggn_block", "kflr"]) as hooks:
        with torch.no_grad():
            for sl in (slice(0, 2), slice(2, 6)):
                model(x[sl])
    result = hooks.result()
    want = compute(model, loss_fn, (x, y), ["ggn_block", "kflr"], progress=False)
    for name in ("ggn_block", "kflr"):
        assert torch.allclose(result[name].dense(), want[name].dense(), atol=1e-12)
    assert _hook_count(model) == 0 and all(p.grad is None for p in model.parameters())


def test_gradient_quantities_need_a_backward_pass():
    model, loss_fn, x, y = ENGINE_CASES[0].build()
    with pytest.raises(RuntimeError, match="backward"):
        with CurvatureHooks(model, loss_fn, ["diag_hessian"]):
            model(x)
    assert _hook_count(model) == 0


def test_ekfac_hooks_need_kflr_factors_and_then_match_compute():
    model, loss_fn, x, y = ENGINE_CASES[0].build()
    with pytest.raises(ValueError, match="needs the KFLR factors of layer '2'"):
        with CurvatureHooks(model, loss_fn, ["ekfac"]):
            model(x)
    kflr = compute(model, loss_fn, (x, y), "kflr", progress=False)["kflr"]
    factors = {name: (layer.A, layer.G) for name, layer in kflr.layers.items()}
    with CurvatureHooks(model, loss_fn, ["ekfac"], ekfac_factors=factors) as hooks:
        model(x)
    want = compute(model, loss_fn, (x, y), "ekfac", progress=False)["ekfac"].dense()
    assert torch.allclose(hooks.result()["ekfac"].dense(), want, atol=1e-13)


@pytest.mark.parametrize(
    "model, match",
    [
        (nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Tanh(), nn.LSTM(2, 2))), r"'1\.1' \(LSTM\)"),
        (nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), r"'1' \(BatchNorm1d\) is in training mode"),
        (nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.2)), r"'1' \(Dropout\) is in training mode"),
        (nn.Sequential(nn.Linear(2, 2), nn.ReLU(inplace=True)), r"'1' \(ReLU\) is in-place"),
        (nn.Sequential(nn.Conv2d(1, 1, 2, groups=1, padding_mode="circular")), r"'0' \(Conv2d\).*circular"),
        (nn.Linear(2, 2), "wrap it in nn.Sequential"),
        (_Functional(), r"_Functional: node 'relu' \(call_function relu\) is not supported"),
    ],
    ids=["lstm", "bn-train", "dropout-train", "inplace", "circular", "bare", "functional"],
)
def test_unsupported_modules_are_named_before_any_forward(model, match):
    with pytest.raises(UnsupportedModuleError, match=match):
        CurvatureHooks(model, nn.MSELoss(), ["ggn"])
    assert _hook_count(model) == 0


def test_run_time_checks_name_the_module():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedModuleError, match="called twice"):
        compute(model, nn.MSELoss(), (x, y), "ggn", progress=False, route="rules")
    # lifted on the default route: the collector takes over, exactly
    assert torch.allclose(compute(model, nn.MSELoss(), (x, y), "ggn", progress=False)["ggn"].dense(),
                          reference.ggn(model, nn.MSELoss(), x, y))
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x3 = torch.randn(4, 5, 3, dtype=torch.float64)
    data = (x3, torch.randn(4, 5, 2, dtype=torch.float64))
    with pytest.raises(UnsupportedModuleError, match=r"'0' \(Linear\) got input of shape \(4, 5, 3\)"):
        compute(model, nn.MSELoss(), data, "ggn", progress=False, route="rules")
    assert torch.allclose(compute(model, nn.MSELoss(), data, "ggn", progress=False)["ggn"].dense(),
                          reference.ggn(model, nn.MSELoss(), *data))
    assert _hook_count(model) == 0


def test_bad_losses_quantities_and_values():
    model, loss_fn, x, y = ENGINE_CASES[0].build()
    with pytest.raises(UnsupportedLossError, match="L1Loss"):
        compute(model, nn.L1Loss(), (x, y), "ggn", progress=False)
    with pytest.raises(ValueError, match="valid names: hessian_block"):
        compute(model, loss_fn, (x, y), ["ggn", "gnn"], progress=False)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="model output"):
        compute(model, loss_fn, (bad, y), "diag_ggn", progress=False)
    with pytest.raises(ValueError, match="mc_samples"):
        compute(model, loss_fn, (x, y), "kfac", mc_samples=0, progress=False)
    assert _hook_count(model) == 0


class _ChainNet(nn.Module):
    """A custom container whose forward is a chain: accepted through torch.fx."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_custom_chain_models_go_through_fx():
    torch.manual_seed(0)
    model = _ChainNet().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    loss_fn = nn.CrossEntropyLoss()
    result = compute(model, loss_fn, (x, y), ["ggn", "diag_hessian"], progress=False)
    assert torch.allclose(result["ggn"].dense(), reference.ggn(model, loss_fn, x, y))
    assert torch.allclose(result["diag_hessian"].diagonal(), reference.hessian(model, loss_fn, x, y).diagonal())
    assert _hook_count(model) == 0


def test_blocks_and_factors_respect_the_memory_budget():
    model, loss_fn, x, y = ENGINE_CASES[0].build()
    with curvlab.memory_budget(100 * 8):  # 100 float64 numbers; the last layer's block has 18² (reached first)
        with pytest.raises(curvlab.MemoryBudgetError, match=r"ggn_block block of layer '2': a dense \[18, 18\]"):
            compute(model, loss_fn, (x, y), "ggn_block", progress=False)
        # the full GGN keeps S_l and X_l per layer: its [N·C, P] factor is only formed on request
        ggn = compute(model, loss_fn, (x, y), "ggn", progress=False)["ggn"]
        assert ggn.diagonal().shape == (43,)
        with pytest.raises(curvlab.MemoryBudgetError, match="ggn square-root factor"):
            _ = ggn.factor
        small = compute(model, loss_fn, (x, y), "diag_ggn", progress=False)  # O(P): fine
    assert small["diag_ggn"].diagonal().shape == (43,)
    torch.testing.assert_close(ggn.diagonal(), small["diag_ggn"].diagonal())
    assert _hook_count(model) == 0


def test_kfra_refuses_an_oversized_per_sample_allocation_before_making_it():
    import curvlab
    from curvlab.errors import MemoryBudgetError

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))
    with curvlab.memory_budget(2**12), pytest.raises(MemoryBudgetError, match="kfra"):
        curvlab.compute(model, nn.CrossEntropyLoss(), (x, y), ["kfra"], progress=False)
