"""Distributed runs fail loudly (issue 11, case 8): two gloo processes on 127.0.0.1.

Before: a rank that raised left the other blocked in its all-reduce until the process-group timeout;
mismatched keys or shapes aborted a rank inside gloo; different weights were merged silently.
After: the ranks agree before reducing, and every rank raises the same DistributedError.

One pair of processes runs every scenario in turn (one start-up), with a process-group timeout of a
few seconds and a deadline on the whole run, so a regression fails the test instead of hanging CI.
"""

from __future__ import annotations

import datetime
import json
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from curvlab import compute
from curvlab.errors import DistributedError

PG_TIMEOUT_S = 20
DEADLINE_S = 120


class _FailingData:
    """Batches that raise on the given rank after one good batch (a broken reader, say)."""

    def __init__(self, batches, fail: bool):
        self.batches, self.fail = batches, fail

    def __iter__(self):
        yield self.batches[0]
        if self.fail:
            raise OSError("rank-local disk read failed")
        yield from self.batches[1:]


def _model(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2)).double()


def _data(rank: int):
    gen = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 2, (6,), generator=gen)
    return [(x[:3], y[:3]), (x[3:], y[3:])]


def _scenarios(rank: int):
    """(name, callable) per scenario; each is run on both ranks in the same order."""
    loss = nn.CrossEntropyLoss()
    q = ["diag_ggn", "kflr", "ggn"]
    return [
        ("rank_raises", lambda: compute(_model(4, 0), loss, _FailingData(_data(rank), rank == 1), q, progress=False)),
        ("other_quantities", lambda: compute(_model(4, 0), loss, _data(rank), ["kflr"] if rank else q,
                                             progress=False)),
        ("other_shapes", lambda: compute(_model(4 + rank, 0), loss, _data(rank), q, progress=False)),
        ("other_weights", lambda: compute(_model(4, rank), loss, _data(rank), q, progress=False)),
        ("raises_in_second_pass", lambda: compute(_model(4, 0), loss, _SecondPassFails(_data(rank), rank == 0),
                                                  ["ekfac"], progress=False)),
        ("agreeing", lambda: compute(_model(4, 0), loss, _data(rank), q, progress=False)),
        # the collector route (models the rule engine does not take) agrees the same way
        ("collector_rank_raises", lambda: compute(_model(4, 0), loss, _FailingData(_data(rank), rank == 0), q,
                                                  route="collector", progress=False)),
        ("collector_other_weights", lambda: compute(_model(4, rank), loss, _data(rank), q, route="collector",
                                                    progress=False)),
        ("collector_agreeing", lambda: compute(_model(4, 0), loss, _data(rank), q, route="collector",
                                               progress=False)),
        # every rank fails alike: each raises its own error, nobody waits
        ("all_fail_alike", lambda: compute(_model(4, 0), loss, [(x, y + 5) for x, y in _data(rank)], q,
                                           progress=False)),
    ]


class _SecondPassFails:
    """Re-iterable data whose second pass (ekfac's refit) raises on one rank."""

    def __init__(self, batches, fail: bool):
        self.batches, self.fail, self.passes = batches, fail, 0

    def __iter__(self):
        self.passes += 1
        if self.fail and self.passes == 2:
            raise RuntimeError("second pass broke")
        return iter(self.batches)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    outcomes = {}
    try:
        for name, run in _scenarios(rank):
            start = time.perf_counter()
            try:
                result = run()
                outcomes[name] = {"ok": True, "ggn": result["ggn"].dense().tolist()}
            except Exception as err:  # noqa: BLE001  (recorded for the parent to compare)
                outcomes[name] = {"ok": False, "type": type(err).__name__, "message": str(err)}
            outcomes[name]["seconds"] = time.perf_counter() - start
            with open(f"{out_dir}/rank{rank}.json", "w") as fh:
                json.dump(outcomes, fh)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(_worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                break
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        pass  # a rank raised or died (e.g. aborted inside gloo): the outcomes it recorded are compared below
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    return [json.loads((tmp / f"rank{r}.json").read_text()) if (tmp / f"rank{r}.json").exists() else {}
            for r in range(2)]


def _same_error(outcomes, name: str) -> str:
    got = [o.get(name) for o in outcomes]
    assert all(g is not None for g in got), f"{name}: a rank never finished the scenario (blocked?)"
    assert [g["ok"] for g in got] == [False, False], got
    assert {g["type"] for g in got} == {DistributedError.__name__}, got
    assert got[0]["message"] == got[1]["message"]  # every rank raises the same error
    assert max(g["seconds"] for g in got) < PG_TIMEOUT_S / 2, got  # at once, not after a timeout
    return got[0]["message"]


@pytest.mark.distributed
def test_a_rank_that_raises_makes_every_rank_raise_at_once(outcomes):
    message = _same_error(outcomes, "rank_raises")
    assert "rank 1 raised OSError: rank-local disk read failed" in message and "nothing was reduced" in message


@pytest.mark.distributed
def test_a_rank_that_raises_in_the_second_pass_makes_every_rank_raise(outcomes):
    assert "rank 0 raised RuntimeError: second pass broke" in _same_error(outcomes, "raises_in_second_pass")


@pytest.mark.distributed
def test_mismatched_quantities_are_named(outcomes):
    message = _same_error(outcomes, "other_quantities")
    assert "missing on rank 1: diag_ggn/0/diag" in message


@pytest.mark.distributed
def test_mismatched_shapes_are_named(outcomes):
    message = _same_error(outcomes, "other_shapes")
    assert "diag_ggn/0/diag: [16] float64 on rank 0, [20] float64 on rank 1" in message


@pytest.mark.distributed
def test_same_shaped_models_with_different_weights_are_refused(outcomes):
    message = _same_error(outcomes, "other_weights")
    assert "different model parameters or buffers (ranks 0 vs ranks 1)" in message


@pytest.mark.distributed
def test_the_collector_route_agrees_too(outcomes):
    assert "rank 0 raised OSError: rank-local disk read failed" in _same_error(outcomes, "collector_rank_raises")
    assert "different model parameters" in _same_error(outcomes, "collector_other_weights")


@pytest.mark.distributed
def test_ranks_failing_alike_raise_their_own_error(outcomes):
    got = [o.get("all_fail_alike") for o in outcomes]
    assert all(g is not None and not g["ok"] and g["type"] == "UnsupportedLossError" for g in got), got
    assert got[0]["message"] == got[1]["message"] and "class indices must lie in [0, 2)" in got[0]["message"]


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["agreeing", "collector_agreeing"])
def test_agreeing_ranks_still_reduce_exactly(outcomes, name):
    got = [o.get(name) for o in outcomes]
    assert all(g is not None and g["ok"] for g in got), got
    single = compute(_model(4, 0), nn.CrossEntropyLoss(), _data(0) + _data(1), ["ggn"], progress=False)
    for g in got:
        assert torch.allclose(torch.tensor(g["ggn"], dtype=torch.float64), single["ggn"].dense(), atol=1e-12)
