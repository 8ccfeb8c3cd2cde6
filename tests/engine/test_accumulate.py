"""Batches and processes combine exactly: the result is that of one batch holding all the data."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from curvlab.engine import compute
from tests.engine.engine_cases import ENGINE_CASES

EXACT = ["ggn_block", "hessian_block", "empirical_fisher_block", "ggn", "empirical_fisher", "hessian",
         "diag_ggn", "diag_hessian", "diag_empirical_fisher", "kflr", "ekfac"]
CASES = {c.name: c for c in ENGINE_CASES}


def _dense(result, name):
    return result[name].dense()


@pytest.mark.parametrize("name", ["mlp-sigmoid-ce", "mlp-tanh-mse-sum", "cnn-ce"])
def test_one_batch_of_64_equals_two_batches_of_32(name):
    model, loss_fn, x, y = CASES[name].build(batch_size=64)
    whole = compute(model, loss_fn, (x, y), EXACT, progress=False)
    halves = compute(model, loss_fn, [(x[:32], y[:32]), (x[32:], y[32:])], EXACT, progress=False)
    for q in EXACT:
        a, b = _dense(whole, q), _dense(halves, q)
        assert torch.allclose(a, b, atol=1e-12 * a.abs().max(), rtol=1e-10), q
    assert halves.attrs["batch_size"] == 32 and '"batches": 2' in halves.attrs["config"]


def test_unequal_batches_and_kfra_rule():
    model, loss_fn, x, y = CASES["mlp-tanh-mse"].build(batch_size=7)
    whole = compute(model, loss_fn, (x, y), ["ggn", "kfra"], progress=False)
    parts = compute(model, loss_fn, [(x[:2], y[:2]), (x[2:], y[2:])], ["ggn", "kfra"], progress=False)
    assert torch.allclose(whole["ggn"].dense(), parts["ggn"].dense(), atol=1e-12)
    # KFRA averages inside each batch: A is the union mean, G the Z-weighted mean of per-batch factors
    layer = parts["kfra"].layers["2"]
    first = compute(model, loss_fn, (x[:2], y[:2]), ["kfra"], progress=False)["kfra"].layers["2"]
    second = compute(model, loss_fn, (x[2:], y[2:]), ["kfra"], progress=False)["kfra"].layers["2"]
    assert torch.allclose(layer.G, (2 * first.G + 5 * second.G) / 7)
    assert torch.allclose(layer.A, (2 * first.A + 5 * second.A) / 7)


DIST_QUANTITIES = ["ggn", "ggn_block", "empirical_fisher", "diag_hessian", "kflr", "hessian", "ekfac"]


def _rank_batches(x, y, rank):
    cuts = [(0, 3)] if rank == 0 else [(3, 5), (5, 8)]
    return [(x[a:b], y[a:b]) for a, b in cuts]


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, loss_fn, x, y = CASES["mlp-sigmoid-ce"].build(batch_size=8)
        result = compute(model, loss_fn, _rank_batches(x, y, rank), DIST_QUANTITIES, progress=False)
        torch.save({q: result[q].dense() for q in DIST_QUANTITIES}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_all_data(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model, loss_fn, x, y = CASES["mlp-sigmoid-ce"].build(batch_size=8)
    single = compute(model, loss_fn, _rank_batches(x, y, 0) + _rank_batches(x, y, 1), DIST_QUANTITIES,
                     progress=False)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for q in DIST_QUANTITIES:
            want = single[q].dense()
            assert torch.allclose(got[q], want, atol=1e-12 * want.abs().max(), rtol=1e-10), (rank, q)


def test_result_mid_stream_is_kept_and_later_batches_still_combine_exactly():
    from curvlab.engine import CurvatureHooks

    model, loss_fn, x, y = CASES["mlp-tanh-mse"].build(batch_size=6)
    quantities = ["ggn", "diag_ggn", "kflr"]
    with CurvatureHooks(model, loss_fn, quantities) as hooks:
        model(x[:2])
        early = hooks.result()
        snapshot = {q: early[q].dense().clone() for q in quantities}
        model(x[2:])
    late = hooks.result()
    whole = compute(model, loss_fn, (x, y), quantities, progress=False)
    first = compute(model, loss_fn, (x[:2], y[:2]), quantities, progress=False)
    for q in quantities:
        assert torch.equal(early[q].dense(), snapshot[q]), q  # untouched by the later batch
        assert torch.allclose(early[q].dense(), first[q].dense(), atol=1e-13), q
        assert torch.allclose(late[q].dense(), whole[q].dense(), atol=1e-13), q
