"""Optimiser reliability (issue 11, cases 6, 7, 9 and the optimiser half of 12).

* 6  – a step into an infinite loss is rolled back and the optimiser recovers (before: kept, then every
  later step rejected, or NonFiniteError for methods without damping);
* 7  – ACP on an exactly fitted batch (α = max grad² = 0): before, ZeroDivisionError;
* 9  – KFAC under torch.distributed with a DDP-wrapped model: identical steps on every rank, equal to
  the full-batch step (before: the gradients were not averaged, ranks drifted by 1.46 after one step);
* 12 – ``load_state_dict`` from a differently shaped model is refused on load (before: accepted, the
  next step failed raw); a KFAC step interrupted mid-way leaves its factors as they were.
"""

from __future__ import annotations

import datetime
import json
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from curvlab import optim
from curvlab.errors import CurvlabWarning, NonFiniteError
from curvlab.optim.gauss_newton import GaussNewtonQuadratic

# ------------------------------------------------------------------ case 6: roll back a step into inf


def _regression(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-1.0], [0.5]])
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)), nn.MSELoss(), x, y


RECOVERING = {
    "centered-sgd": lambda m, l: optim.CenteredSGD(m, l, lr=0.1),
    "acp": lambda m, l: optim.ACP(m, l, alpha=1.0, lr=0.1),
    "kfac": lambda m, l: optim.KFAC(m, l, step_rescaling="none", lr=0.5),
}


@pytest.mark.parametrize("name", RECOVERING)
def test_a_step_into_an_infinite_loss_is_rolled_back_and_training_recovers(name):
    """An outlier batch (inputs 1e12, finite loss and gradient) throws the parameters so far that the next
    batch's loss overflows float32. That step is rolled back (parameters exactly as before it), the step is
    made more cautious, and training on ordinary batches goes on with finite losses."""
    model, loss_fn, x, y = _regression()
    model = nn.Sequential(nn.Linear(3, 1))  # linear: nothing saturates
    opt = RECOVERING[name](model, loss_fn)
    opt.step(x, y)
    before_outlier = [p.detach().clone() for p in model.parameters()]
    outlier = x * 1e12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step(outlier, y)  # finite loss (~1e24) and gradient here
    with torch.no_grad():
        thrown = float(loss_fn(model(x), y))
    assert not torch.isfinite(torch.tensor(thrown)), "the outlier step should make the loss overflow"
    with pytest.warns(CurvlabWarning, match="rolled back"):
        opt.step(x, y)
    assert opt.statistics()["rolled_back"] == 1.0
    for p, q in zip(before_outlier, model.parameters(), strict=True):
        assert torch.equal(p, q.detach())
    losses = [float(opt.step(x, y)) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_finite_update_that_overflows_the_parameters_is_undone():
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.fill_(3e38)
    x, y = torch.ones(4, 2), torch.zeros(4, 1)
    opt = optim.CenteredSGD(model, nn.MSELoss(), lr=1e-30)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match="loss is not finite"):  # the loss is already inf here: refused, parameters untouched
        opt.step(x, y)
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q.detach())


# ------------------------------------------------------------------ case 7: ACP on an exactly fitted batch


def test_acp_on_an_exactly_fitted_batch_takes_a_zero_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        y = model(x)  # zero residual: every output gradient, hence the heuristic α, is exactly 0
    opt = optim.ACP(model, nn.MSELoss())
    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(x, y)
    assert float(loss) == 0.0
    assert opt.statistics()["alpha_floored"] == 1.0
    assert bool((opt.statistics()["alpha"] > 0).all())
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q.detach())


# ------------------------------------------------------------------ case 12: state dicts and interrupted steps


@pytest.mark.parametrize("name", ["kfac", "sgn", "newton-summary", "acp", "second-order-adaptive"])
def test_load_state_dict_from_a_differently_shaped_model_is_refused(name):
    factories = {
        "kfac": optim.KFAC, "sgn": optim.SGN, "newton-summary": optim.NewtonSummary, "acp": optim.ACP,
        "second-order-adaptive": optim.SecondOrderAdaptive,
    }
    small = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    large = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    opt = factories[name](small, nn.MSELoss())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step(x, y)
    state = opt.state_dict()
    other = factories[name](large, nn.MSELoss())
    with pytest.raises(ValueError, match=r"parameter '0.weight' is \(5, 3\) here but \(4, 3\)"):
        other.load_state_dict(state)
    assert other.global_state["step"] == 0  # nothing was loaded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.isfinite(other.step(x, y))


def test_kfac_state_saved_without_shapes_is_checked_against_the_layers():
    small = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    large = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    opt = optim.KFAC(small, nn.MSELoss())
    opt.step(x, y)
    state = opt.state_dict()
    del state["curvlab_param_shapes"]  # as an older state dict would be
    with pytest.raises(ValueError, match="layer '0' cover 16 parameters, this model's layer has 20"):
        optim.KFAC(large, nn.MSELoss()).load_state_dict(state)


@pytest.mark.parametrize("where", ["curvature_along", "solve"])
def test_an_interrupted_kfac_step_leaves_factors_and_parameters_untouched(where, monkeypatch):
    model, loss_fn, x, y = _regression()
    opt = optim.KFAC(model, loss_fn, inverse_period=1)
    opt.step(x, y)
    factors = opt.global_state["factors"]
    snapshot = {k: {n: t.clone() for n, t in v.items()} for k, v in factors.items()}
    params = [p.detach().clone() for p in model.parameters()]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    targets = ([GaussNewtonQuadratic] if where == "curvature_along"
               else [optim.kronecker_solve.LayerSolver, optim.kronecker_solve.FactoredInverse])
    for target in targets:
        monkeypatch.setattr(target, where, interrupt)
    with pytest.raises(KeyboardInterrupt):
        opt.step(x[:16], y[:16])  # the statistics of this batch were computed before the interruption
    monkeypatch.undo()
    assert opt.global_state["factors"] is factors
    for layer, entry in snapshot.items():
        for key, value in entry.items():
            assert torch.equal(opt.global_state["factors"][layer][key], value), (layer, key)
    for p, q in zip(params, model.parameters(), strict=True):
        assert torch.equal(p, q.detach())
    assert opt.global_state["step"] == 1
    assert torch.isfinite(opt.step(x, y))


# ------------------------------------------------------------------ case 9: KFAC under torch.distributed

PG_TIMEOUT_S = 30
DEADLINE_S = 180
STEPS = 3


def _dist_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _dist_data(rank: int):
    gen = torch.Generator().manual_seed(20 + rank)
    x = torch.randn(8, 3, dtype=torch.float64, generator=gen)
    return x, torch.sin(x[:, :2]) + x[:, 2:]


def _dist_kfac(model):
    return optim.KFAC(model, nn.MSELoss(), curvature="kflr", inverse_period=2, momentum=0.5)


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=PG_TIMEOUT_S))
    outcome: dict = {}
    try:
        model = nn.parallel.DistributedDataParallel(_dist_model())
        opt = _dist_kfac(model)
        x, y = _dist_data(rank)
        for _ in range(STEPS):
            opt.step(x, y)
        outcome = {"ok": True, "params": [p.detach().reshape(-1).tolist() for p in model.parameters()]}
    except Exception as err:  # noqa: BLE001  (recorded for the parent)
        outcome = {"ok": False, "type": type(err).__name__, "message": str(err)}
    finally:
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump(outcome, fh)
        dist.destroy_process_group()


@pytest.mark.distributed
def test_kfac_on_a_ddp_model_takes_identical_full_batch_steps_on_every_rank(tmp_path):
    ctx = mp.start_processes(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                break
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        pass  # the outcomes recorded by each rank are checked below
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) if (tmp_path / f"rank{r}.json").exists() else None
           for r in range(2)]
    assert all(g is not None and g["ok"] for g in got), got
    ranks = [torch.tensor(sum(g["params"], []), dtype=torch.float64) for g in got]
    assert torch.equal(ranks[0], ranks[1])  # identical steps on every rank
    # ... and they are the steps of one process on the whole batch
    model = _dist_model()
    opt = _dist_kfac(model)
    (x0, y0), (x1, y1) = _dist_data(0), _dist_data(1)
    for _ in range(STEPS):
        opt.step(torch.cat([x0, x1]), torch.cat([y0, y1]))
    single = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(ranks[0], single, rtol=1e-9, atol=1e-11)
