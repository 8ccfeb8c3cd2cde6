"""Memory and size guards (issue 11, cases 1–4): every large allocation or read is refused before it happens,
with the size and the culprit in the message."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import h5netcdf
import numpy as np
import pytest
import torch
from torch import nn

import curvlab
from curvlab.errors import MemoryBudgetError
from curvlab.guards import get_memory_budget, memory_budget


def _mlp(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 3)).double()


# ---------------------------------------------------------------- 1: grouped_newton_summary and NewtonSummary
def test_grouped_newton_summary_refuses_hbar_over_the_budget_before_any_pass():
    """Before: partition='entries' returned an [S, S] H̄ far over the budget (236 MiB at P = 5,560 under
    memory_budget(2**20); at P = 200k it grew until killed). After: MemoryBudgetError before any forward."""
    model = _mlp()  # P = 8·16 + 16 + 16·3 + 3 = 195: H̄ is 195² · 8 B = 297 KiB
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    with memory_budget(2**17), pytest.raises(MemoryBudgetError, match=r"hbar over the S=195 groups.*\[195, 195\]"):
        curvlab.grouped_newton_summary(model, nn.CrossEntropyLoss(), (x, y), partition="entries", order=2)
    assert calls == []
    with memory_budget(2**17):  # small partitions still work under the same budget
        s = curvlab.grouped_newton_summary(model, nn.CrossEntropyLoss(), (x, y), partition="layer", order=2)
    assert s.hbar.shape == (2, 2)


def test_newton_summary_optimiser_refuses_before_changing_the_parameters():
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = curvlab.optim.NewtonSummary(model, nn.CrossEntropyLoss(), partition="entries")
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    with memory_budget(2**17), pytest.raises(MemoryBudgetError, match="hbar"):
        opt.step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ---------------------------------------------------------------- 2: load and show check declared sizes
@pytest.fixture
def bomb(tmp_path):
    """A small compressed netCDF whose one variable declares 8 MiB (never written: all fill values)."""
    path = tmp_path / "bomb.nc"
    with h5netcdf.File(path, "w") as fh:
        fh.attrs["curvlab_kind"] = "dense"
        fh.dimensions = {"row": 1024, "col": 1024}
        fh.create_variable("matrix", ("row", "col"), float, chunks=(256, 256), compression="gzip")
    assert path.stat().st_size < 64 * 2**10
    return path


def test_load_checks_declared_sizes_before_reading(bomb):
    """Before: load read the 8 MiB array whatever the budget. After: MemoryBudgetError naming the variable."""
    with memory_budget(2**20), pytest.raises(MemoryBudgetError, match=r"/matrix \[1024, 1024\] float64.*nothing"):
        curvlab.load(bomb)


def test_show_checks_declared_sizes_before_reading(bomb, capsys):
    from curvlab.cli.main import main

    with memory_budget(2**20), pytest.raises(SystemExit) as info:
        main(["show", str(bomb)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "over the memory budget" in err and "Traceback" not in err


# ---------------------------------------------------------------- 3: --data-path checked before reading
def test_data_path_fifo_is_refused_without_blocking(tmp_path):
    """Before: open() of a FIFO blocked forever (analyze hung). After: ValueError at once."""
    fifo = tmp_path / "mnist.npz"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-c", f"import curvlab; curvlab.load_dataset('mnist', {str(fifo)!r})"],
        capture_output=True, text=True, timeout=60,
    )  # a subprocess: the blocking open of today's code cannot hang the test run
    assert "is a FIFO (named pipe), not a regular file" in done.stderr


_DEV_ZERO = textwrap.dedent("""
    import resource, curvlab
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, hard))  # reading /dev/zero fails fast, not the host
    try:
        curvlab.load_dataset("mnist", "/dev/zero")
    except Exception as err:
        print(type(err).__name__, err)
""")


def test_data_path_device_is_refused_before_reading():
    """Before: /dev/zero was read until MemoryError. After: ValueError naming the device."""
    done = subprocess.run([sys.executable, "-c", _DEV_ZERO], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("ValueError MNIST file /dev/zero is a character device"), done.stdout + done.stderr


def test_data_path_declared_sizes_are_checked(tmp_path):
    """An IDX header that declares more than the budget is refused before its data is read."""
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (100_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
    with memory_budget(2**20), pytest.raises(MemoryBudgetError, match=r"declares shape \[100000, 28, 28\]"):
        curvlab.load_dataset("mnist", path)
    npz = tmp_path / "big.npz"
    np.savez_compressed(npz, images=np.zeros((2000, 28, 28), np.uint8), labels=np.zeros(2000, np.int64))
    with memory_budget(2**20), pytest.raises(MemoryBudgetError, match=r"array 'images' declares shape \[2000, 28, 28\]"):
        curvlab.load_dataset("mnist", npz)


# ---------------------------------------------------------------- 4: CURVLAB_MEMORY_BUDGET validated
@pytest.mark.parametrize("value", ["0", "-5", "abc", "1e400", "nan", "K"])
def test_bad_memory_budget_variable_is_refused_naming_it(monkeypatch, value):
    """Before: 0 and -5 were accepted; abc failed on first use without naming the variable."""
    monkeypatch.setenv("CURVLAB_MEMORY_BUDGET", value)
    with pytest.raises(ValueError, match=f"CURVLAB_MEMORY_BUDGET={value!r} is not a positive size"):
        get_memory_budget()


def test_bad_memory_budget_variable_is_one_line_exit_2_in_the_cli(monkeypatch, capsys, tmp_path):
    from curvlab.cli.main import main

    monkeypatch.setenv("CURVLAB_MEMORY_BUDGET", "abc")
    with pytest.raises(SystemExit) as info:
        main(["show", str(tmp_path / "any.nc")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CURVLAB_MEMORY_BUDGET='abc'" in err


@pytest.mark.parametrize(("value", "expected"), [("4096", 4096), ("2M", 2 * 2**20), ("1.5GiB", 3 * 2**29)])
def test_good_memory_budget_variable(monkeypatch, value, expected):
    monkeypatch.setenv("CURVLAB_MEMORY_BUDGET", value)
    assert get_memory_budget() == expected


def test_per_row_seeds_over_budget_are_refused_naming_the_layers():
    # the GPT's position embedding is a generic layer: exact KFLR needs one backward pass per sample and
    # output column (N·T·V rows), refused before allocating, with the MC quantities as the fix
    from curvlab.models import GPT

    torch.manual_seed(0)
    model = GPT(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=8).double()
    tokens = torch.randint(0, 7, (3, 7))
    data = (tokens[:, :-1], tokens[:, 1:])
    with memory_budget(2**16), pytest.raises(MemoryBudgetError, match=r"transformer\.wpe.*kfac, diag_ggn_mc"):
        curvlab.compute(model, nn.CrossEntropyLoss(), data, ["kflr"], progress=False)
    with memory_budget(2**16):  # the suggested fix works under the same budget
        assert curvlab.compute(model, nn.CrossEntropyLoss(), data, ["kfac"], progress=False)["kfac"] is not None
