"""SGN vs SGD on the SGN paper's noisy sine regression, at equal wall-clock budget.

Task (Gargiani et al. 2020, §4.2): 10 000 points x ~ U(−1, 1), y = sin(10x) + N(0, 0.01²), split
7 000 / 3 000 (``curvlab.datasets.load_dataset("sine", seed)``); MLP 1-20-20-20-1 with sigmoid, MSE,
mini-batches of 1 000. SGN with CG iterations {2, 3, 5, 10} (ρ₀ = 1e-4, ρ_min = 1e-6, trust region
and line search on, as in the paper's benchmarks) against SGD with learning rates {0.001, 0.01, 0.1, 1};
every run gets the same wall-clock training budget, for 5 seeds (the seed sets the data, the split,
the initialisation and the batch order). Weights are initialised N(0, 1) as in the paper's code.

Training time excludes evaluation: the clock stops while the full train and test losses are computed
after every epoch. Outputs (in ``--out``, default ``data/sgn_vs_sgd_sine/``):

* ``curves.nc``   – losses against epochs and against seconds (step interpolation on a common time
  grid: the loss of the last finished epoch), dims ``setting`` × ``seed`` × ``epoch``/``time``;
* ``curves.png``  – train/test loss against seconds and epochs, mean over seeds;
* ``final_losses.csv`` and ``final_losses.md`` – loss at the end of the budget, mean ± std over seeds.

Usage: ``python analyses/sgn_vs_sgd_sine/run.py [--smoke] [--out DIR] [--budget SECONDS]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from curvlab.datasets import load_dataset
from curvlab.io import write_netcdf
from curvlab.models import mlp
from curvlab.optim import SGN
from curvlab.provenance import provenance

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parents[1] / "data" / "sgn_vs_sgd_sine"


def build_model(config: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = mlp(1, config["hidden"], 1, config["activation"])
    if config["init"] == "normal":  # the SGN reference code: W ~ N(0, 1), no fan-in scaling
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 1.0)
    return model


@torch.no_grad()
def full_loss(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(nn.functional.mse_loss(model(data[0]), data[1]))


def train(method: str, value: float, config: dict, dataset, seed: int, budget: float) -> dict:
    """One run: losses after every epoch, with the training time spent so far."""
    model = build_model(config, seed)
    loss_fn = nn.MSELoss()
    if method == "SGN":
        opt = SGN(model, loss_fn, cg_iters=int(value), damping=config["sgn"]["damping"],
                  damping_min=config["sgn"]["damping_min"], trust_region=config["sgn"]["trust_region"],
                  line_search=config["sgn"]["line_search"])

        def step(x, y):
            opt.step(x, y)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=value)

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

    x_train, y_train = dataset.train
    generator = torch.Generator().manual_seed(seed)
    record = {"seconds": [0.0], "train": [full_loss(model, dataset.train)], "test": [full_loss(model, dataset.test)]}
    elapsed, diverged = 0.0, False
    while elapsed < budget and not diverged:
        order = torch.randperm(len(x_train), generator=generator)
        start = time.perf_counter()
        for i in range(0, len(order), config["batch_size"]):
            idx = order[i : i + config["batch_size"]]
            try:
                step(x_train[idx], y_train[idx])
            except FloatingPointError:
                diverged = True
                break
        elapsed += time.perf_counter() - start
        record["seconds"].append(elapsed)
        record["train"].append(full_loss(model, dataset.train))
        record["test"].append(full_loss(model, dataset.test))
        diverged |= not math.isfinite(record["train"][-1])
    return record


def on_time_grid(seconds: list[float], values: list[float], grid: np.ndarray) -> np.ndarray:
    """The value of the last epoch finished by each grid time (NaN after the run's last epoch ended
    before the grid point only if the run stopped early, i.e. diverged)."""
    idx = np.searchsorted(np.asarray(seconds), grid, side="right") - 1
    return np.asarray(values)[np.clip(idx, 0, None)]


def warm_up(config: dict) -> None:
    """One untimed step of each method, so one-off start-up costs (torch.func set-up) are not timed."""
    x, y = torch.rand(8, 1) * 2 - 1, torch.rand(8, 1)
    tiny = {**config, "batch_size": 8}
    for method, value in (("SGN", 2.0), ("SGD", 0.01)):
        dataset = type("Tiny", (), {"train": (x, y), "test": (x, y)})()
        train(method, value, tiny, dataset, seed=0, budget=1e-9)


def run(config: dict, out: Path, smoke: bool) -> xr.Dataset:
    torch.set_num_threads(int(config.get("threads", 1)))
    warm_up(config)
    limit = None
    if smoke:
        config = {**config, **config["smoke"]}
        limit = config["limit"]
    settings = [("SGN", float(k)) for k in config["sgn"]["cg_iters"]] + [("SGD", float(lr)) for lr in config["sgd"]["lr"]]
    budget = float(config["budget_seconds"])
    grid = np.linspace(0.0, budget, int(config["time_grid_points"]))
    records = {}
    for seed in config["seeds"]:
        dataset = load_dataset(config["dataset"], seed=seed, limit=limit)
        for method, value in settings:
            records[(method, value, seed)] = train(method, value, config, dataset, seed, budget)
            r = records[(method, value, seed)]
            print(f"{method}({value:g}) seed {seed}: {len(r['train']) - 1} epochs, train {r['train'][-1]:.4g}, test {r['test'][-1]:.4g}", flush=True)
    max_epochs = max(len(r["train"]) for r in records.values())
    shape_e = (len(settings), len(config["seeds"]), max_epochs)
    shape_t = (len(settings), len(config["seeds"]), len(grid))
    arrays = {k: np.full(shape_e, np.nan) for k in ("train_loss", "test_loss", "seconds")}
    timed = {k: np.full(shape_t, np.nan) for k in ("train_loss_at_time", "test_loss_at_time")}
    for i, (method, value) in enumerate(settings):
        for j, seed in enumerate(config["seeds"]):
            r = records[(method, value, seed)]
            n = len(r["train"])
            arrays["train_loss"][i, j, :n] = r["train"]
            arrays["test_loss"][i, j, :n] = r["test"]
            arrays["seconds"][i, j, :n] = r["seconds"]
            finished = np.asarray(r["seconds"][-1])
            for key, src in (("train_loss_at_time", r["train"]), ("test_loss_at_time", r["test"])):
                values = on_time_grid(r["seconds"], src, grid)
                if not math.isfinite(r["train"][-1]) or finished < budget:
                    values = np.where(grid > finished, np.nan, values)
                timed[key][i, j] = values
    labels = [f"{m}({v:g})" for m, v in settings]
    coords = {
        "setting": labels,
        "method": ("setting", [m for m, _ in settings]),
        "hyperparameter": ("setting", [v for _, v in settings]),
        "hyperparameter_name": ("setting", ["cg_iters" if m == "SGN" else "lr" for m, _ in settings]),
        "seed": list(config["seeds"]),
        "epoch": np.arange(max_epochs),
        "time": ("time", grid, {"long_name": "training time", "units": "s"}),
    }
    loss_attrs = {"long_name": "mean squared error", "units": "1"}
    ds = xr.Dataset(
        {
            "train_loss": (("setting", "seed", "epoch"), arrays["train_loss"], {**loss_attrs, "long_name": "train loss"}),
            "test_loss": (("setting", "seed", "epoch"), arrays["test_loss"], {**loss_attrs, "long_name": "test loss"}),
            "seconds": (("setting", "seed", "epoch"), arrays["seconds"], {"long_name": "training time at epoch end", "units": "s"}),
            "train_loss_at_time": (("setting", "seed", "time"), timed["train_loss_at_time"], {**loss_attrs, "long_name": "train loss"}),
            "test_loss_at_time": (("setting", "seed", "time"), timed["test_loss_at_time"], {**loss_attrs, "long_name": "test loss"}),
        },
        coords=coords,
        attrs=provenance(
            loss_fn=nn.MSELoss(), batch_size=config["batch_size"], dtype=torch.float32, config=config,
            study="sgn_vs_sgd_sine", smoke=int(smoke), torch_threads=torch.get_num_threads(),
            note="wall-clock timings on a shared machine; evaluation time excluded",
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    write_netcdf(ds, out / "curves.nc", overwrite=True)
    write_table(ds, out)
    plot(ds, out / "curves.png")
    return ds


def final_table(ds: xr.Dataset) -> list[dict]:
    rows = []
    for label in ds.setting.values:
        sub = ds.sel(setting=label)
        train = sub.train_loss_at_time.isel(time=-1).values
        test = sub.test_loss_at_time.isel(time=-1).values
        epochs = np.isfinite(sub.train_loss.values).sum(axis=-1) - 1
        rows.append({
            "setting": str(label),
            "train_mean": float(np.mean(train)), "train_std": float(np.std(train)),
            "test_mean": float(np.mean(test)), "test_std": float(np.std(test)),
            "epochs_mean": float(np.mean(epochs)),
        })
    return rows


def write_table(ds: xr.Dataset, out: Path) -> None:
    rows = final_table(ds)
    budget = float(ds.time.values[-1])
    with open(out / "final_losses.csv", "w") as fh:
        fh.write("setting,train_mean,train_std,test_mean,test_std,epochs_mean\n")
        for r in rows:
            fh.write(f"{r['setting']},{r['train_mean']:.6g},{r['train_std']:.3g},{r['test_mean']:.6g},{r['test_std']:.3g},{r['epochs_mean']:.1f}\n")
    lines = [f"Loss after {budget:g} s of training (mean ± std over {ds.sizes['seed']} seeds; NaN = diverged)", "",
             "| setting | train loss | test loss | epochs |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['train_mean']:.4g} ± {r['train_std']:.2g} | "
                     f"{r['test_mean']:.4g} ± {r['test_std']:.2g} | {r['epochs_mean']:.0f} |")
    (out / "final_losses.md").write_text("\n".join(lines) + "\n")


def plot(ds: xr.Dataset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    colors = plt.cm.viridis(np.linspace(0, 0.9, 4))
    for label, method, k in zip(ds.setting.values, ds.method.values, range(ds.sizes["setting"]), strict=True):
        style = dict(color=colors[k % 4], linestyle="--" if method == "SGN" else "-", label=str(label))
        sub = ds.sel(setting=label)
        for row, kind in enumerate(("train", "test")):
            axes[row, 0].plot(ds.time, sub[f"{kind}_loss_at_time"].mean("seed"), **style)
            # epochs reached by every seed only (a mean over the seeds that got further would be biased)
            axes[row, 1].plot(ds.epoch, sub[f"{kind}_loss"].mean("seed", skipna=False), **style)
    for row, kind in enumerate(("train", "test")):
        values = ds[f"{kind}_loss"].values
        finite = values[np.isfinite(values)]
        top = 3 * float(np.nanmax(ds[f"{kind}_loss"].isel(epoch=0).values))  # diverging runs leave the plot
        axes[row, 0].set_ylim(max(float(finite.min()) * 0.5, 1e-12), top)
        axes[row, 0].set_xlabel("training time [s]")
        axes[row, 1].set_xlabel("epoch")
        axes[row, 1].set_xscale("symlog", linthresh=1)
        axes[row, 1].set_xlim(left=0)
        for ax in axes[row]:
            ax.set_yscale("log")
            ax.set_ylabel(f"{kind} loss (MSE)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, ncol=2)
    fig.suptitle("Noisy sine, MLP 1-20-20-20-1 sigmoid, batch 1000: SGN(CG iterations, dashed) vs "
                 "SGD(learning rate, solid), mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> xr.Dataset:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=HERE / "config.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--smoke", action="store_true", help="tiny data and budget (seconds)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of training per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    if args.budget is not None:
        config["budget_seconds"] = args.budget
        config["smoke"]["budget_seconds"] = args.budget
    if args.seeds is not None:
        config["seeds"] = config["smoke"]["seeds"] = args.seeds
    return run(config, args.out, args.smoke)


if __name__ == "__main__":
    main()
