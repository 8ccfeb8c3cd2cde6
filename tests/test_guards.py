"""Guards: the memory budget (setter, environment variable, context manager) and finiteness checks."""

from __future__ import annotations

import pytest
import torch

from curvlab.errors import MemoryBudgetError, NonFiniteError
from curvlab.guards import (
    check_dense_allocation,
    check_finite,
    format_bytes,
    get_memory_budget,
    memory_budget,
    set_memory_budget,
)


@pytest.fixture(autouse=True)
def clean_budget(monkeypatch):
    monkeypatch.delenv("CURVLAB_MEMORY_BUDGET", raising=False)
    set_memory_budget(None)
    yield
    set_memory_budget(None)


def test_default_budget_is_4_gib():
    assert get_memory_budget() == 4 * 2**30


@pytest.mark.parametrize(
    "text, expected",
    [("1000", 1000), ("2K", 2048), ("1.5M", 1.5 * 2**20), ("3GiB", 3 * 2**30), ("1 GB", 2**30)],
)
def test_environment_variable(monkeypatch, text, expected):
    monkeypatch.setenv("CURVLAB_MEMORY_BUDGET", text)
    assert get_memory_budget() == int(expected)


def test_setter_overrides_the_environment_and_none_restores_it(monkeypatch):
    monkeypatch.setenv("CURVLAB_MEMORY_BUDGET", "1K")
    set_memory_budget(10)
    assert get_memory_budget() == 10
    set_memory_budget(None)
    assert get_memory_budget() == 1024
    with pytest.raises(ValueError, match="memory budget must be positive, got 0"):
        set_memory_budget(0)


def test_context_manager_restores_even_on_error():
    set_memory_budget(500)
    with pytest.raises(RuntimeError, match="boom"):
        with memory_budget(100):
            assert get_memory_budget() == 100
            raise RuntimeError("boom")
    assert get_memory_budget() == 500
    with memory_budget(100):
        with memory_budget(50):
            assert get_memory_budget() == 50
        assert get_memory_budget() == 100


def test_refusal_names_the_quantity_shape_and_size():
    with memory_budget(799):
        with pytest.raises(MemoryBudgetError) as info:
            check_dense_allocation((10, 10), torch.float64, "hessian of layer 3")
    message = str(info.value)
    assert "hessian of layer 3" in message and "[10, 10] float64" in message
    assert "800 B" in message and "799 B" in message
    with memory_budget(800):
        check_dense_allocation((10, 10), torch.float64, "fits exactly")
        check_dense_allocation((10, 20), torch.float16, "half precision is two bytes")


def test_refusal_is_a_memory_error_and_curvlab_error():
    from curvlab.errors import CurvlabError

    with memory_budget(1):
        with pytest.raises(MemoryError):
            check_dense_allocation((2,), torch.float32, "x")
        with pytest.raises(CurvlabError):
            check_dense_allocation((2,), torch.float32, "x")


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(2**50) == "1024.0 TiB"


def test_check_finite():
    t = torch.tensor([1.0, 2.0])
    assert check_finite(t, "x") is t
    assert check_finite(torch.tensor([1, 2]), "ints are always finite") is not None
    with pytest.raises(
        NonFiniteError, match="ggn diagonal contains 2 NaN and 1 inf entries \\(of 4\\)"
    ):
        check_finite(torch.tensor([float("nan"), float("nan"), -float("inf"), 0.0]), "ggn diagonal")
    with pytest.raises(FloatingPointError):
        check_finite(torch.tensor([complex(float("inf"), 0.0)]), "spectrum")
