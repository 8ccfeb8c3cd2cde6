"""A fair optimiser benchmark: every curvlab optimiser at its defaults and at its paper's settings, against
Adam and SGD-momentum tuned by a learning-rate grid and (full-batch problems) L-BFGS, public API only.

Problems (``config.json``): the SGN paper's noisy sine (MLP 1-20-20-20-1 sigmoid, N(0, 1) init, batch
1000), diabetes standing in for Boston housing (10-100-100-1 sigmoid, batch 101, also full batch), the
MNIST-extract MLP (784-128-128-10 tanh, cross-entropy, batch 250) and the MNIST autoencoder
(784-256-64-256-784 sigmoid, BCE with logits, batch 250, the 10k images) and the pytorch-cifar ResNet
(depth 8, width 8, train-mode BatchNorm) on the generated ``gratings`` images (3 × 16 × 16, 10 classes,
batch 64); the methods that refuse a model are excluded there with the reason.

Every run makes ``updates`` optimiser updates (the baselines ``baseline_update_factor`` times as many, so
their curves span the curvlab optimisers' CPU time) on mini-batches of a per-seed shuffle; the training
loss on a fixed evaluation subset is recorded every ``eval_every`` updates with the CPU time
(``time.process_time``, evaluation excluded) spent so far. A run whose loss becomes non-finite or
whose optimiser raises is marked diverged (NaN from there on). Besides the learning-rate grids, Adam and
SGD-momentum are tuned by biased random search (``curvlab.optim.biased_random_search``, George's algorithm
1; ``tuner`` in the config: the learning rate, and SGD's momentum, on a tuning seed that is not an
evaluation seed, each trial a full baseline run). "Tuned" Adam / SGD-momentum is the setting of the grid or
the search with the lowest mean loss over the seeds at the curvlab update budget.

Outputs (``--out``, default ``data/optimizer_benchmark/``): ``<problem>.nc`` (loss and CPU seconds against
updates, dims setting × seed × checkpoint, with provenance; the curvlab settings are NaN past their
update budget), ``<problem>.png``/``.svg`` (median over seeds
against updates and against CPU seconds), ``comparison.csv`` (every setting against tuned Adam) and
``summary.md`` (tables and which paper claims reproduce, with the numbers).

Usage: ``python analyses/optimizer_benchmark/run.py [--quick] [--out DIR] [--problems a,b]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from curvlab import optim
from curvlab.datasets import load_dataset
from curvlab.io import write_netcdf
from curvlab.models import mlp, resnet
from curvlab.provenance import provenance

HERE = Path(__file__).resolve().parent
CONFIG_BASELINES: dict = {}  # the config's baselines (a problem may override its grids)
DEFAULT_OUT = HERE.parents[1] / "data" / "optimizer_benchmark"
SHARED = [HERE.parents[2] / "shared" / "data", Path("/work/shared/data")]
LOSSES = {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss}
DEFAULT_FACTORIES = optim.DEFAULTS  # every curvlab optimiser at its defaults, by name
#: the colour and marker order of the methods in every figure
METHOD_ORDER = ["adam", "sgd-momentum", "lbfgs", "sgn", "kfac", "kflr", "kfra", "ekfac", "newton-summary", "acp",
                "prong", "centered-sgd", "second-order-adaptive"]
PAPER_CLASSES = {"sgn": optim.SGN, "kfac": optim.KFAC, "acp": optim.ACP, "prong": optim.PRONG,
                 "newton-summary": optim.NewtonSummary}


class TorchStepper:
    """A ``torch.optim`` optimiser driven like a curvlab one (``step(x, y)``); L-BFGS gets a closure."""

    def __init__(self, model, loss_fn, cls, **kw):
        self.model, self.loss_fn, self.opt = model, loss_fn, cls(model.parameters(), **kw)

    def step(self, x, y):
        def closure():
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            return loss

        return self.opt.step(closure)


# ------------------------------------------------------------------ problems


def find_data(name: str) -> Path | None:
    return next((folder / name for folder in SHARED if (folder / name).is_file()), None)


def load_problem(spec: dict, seed: int, limit: int | None):
    if "skip" in spec:
        return None
    path = find_data(spec["path"]) if "path" in spec else None
    if spec["dataset"] == "mnist" and path is None:
        raise FileNotFoundError(f"the shared MNIST extract {spec['path']} is not in {[str(s) for s in SHARED]}")
    ds = load_dataset(spec["dataset"], path, seed=seed, limit=limit)
    x, y = ds.train
    if x.ndim > 2 and spec.get("model", "mlp") == "mlp":
        x = x.reshape(len(x), -1)
    return x, y


def build_model(spec: dict, in_shape: tuple[int, ...], out_features: int, seed: int, hidden_scale: float) -> nn.Module:
    torch.manual_seed(seed)
    if spec.get("model") == "resnet":  # the pytorch-cifar ResNet, in train mode (BatchNorm on batch statistics)
        width = max(2, int(round(spec["width"] * hidden_scale)))
        return resnet(in_shape[0], out_features, depth=spec["depth"], width=width).train()
    in_features = in_shape[0]
    hidden = [max(2, int(round(h * hidden_scale))) for h in spec["hidden"]]
    model = mlp(in_features, hidden, out_features, spec["activation"])
    if spec["init"] == "normal":  # the SGN reference code: W ~ N(0, 1), no fan-in scaling
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 1.0)
    return model


BASELINE_CLASSES = {"adam": torch.optim.Adam, "sgd-momentum": torch.optim.SGD}


def tune_baselines(name: str, spec: dict, config: dict, n_updates: int) -> list[tuple[str, str, float, object]]:
    """Adam and SGD-momentum tuned by biased random search (George, alg. 1; ``optim.biased_random_search``)
    over the learning rate (and SGD's momentum), each trial a run of ``n_updates`` updates on the tuning seed
    (not one of the evaluation seeds), its cost the final training loss. The settings found are baselines
    beside the grid; "tuned" is then the best of both."""
    tuner = config.get("tuner")
    if not tuner:
        return []
    data = load_problem(spec, tuner["seed"], config.get("limit"))
    x, y = data
    out_features = y.shape[1] if spec["loss"] != "ce" else 10
    eval_data = (x[: config["eval_samples"]], y[: config["eval_samples"]])
    out = []
    for family, space in tuner["space"].items():
        cls = BASELINE_CLASSES[family]

        def objective(hp, cls=cls):
            model = build_model(spec, tuple(x.shape[1:]), out_features, tuner["seed"], config.get("hidden_scale", 1.0))
            losses, _, error = train(lambda m, l: TorchStepper(m, l, cls, **hp), model, LOSSES[spec["loss"]](), data,
                                     eval_data, spec["batch_size"], n_updates, n_updates, tuner["seed"])
            return math.inf if error else losses[-1]

        found = optim.biased_random_search(objective, {k: tuple(v) for k, v in space.items()}, tuner["budget"],
                                           seed=tuner["seed"])
        hp = {k: float(f"{v:.3g}") for k, v in found.best.items()}
        label = f"{family} (random search: " + ", ".join(f"{k}={v:g}" for k, v in hp.items()) + ")"
        print(f"{name:18s} {label}: tuning loss {found.best_cost:.4g} over {tuner['budget']} trials", flush=True)
        out.append((label, family, hp["lr"], lambda m, l, cls=cls, hp=hp: TorchStepper(m, l, cls, **hp)))
    return out


def settings(config: dict, full_batch: bool) -> list[tuple[str, str, float, object]]:
    """(label, family, hyperparameter, factory(model, loss)) for every setting of a problem."""
    out = []
    base = config["baselines"]
    for lr in base["adam"]:
        out.append((f"adam(lr={lr:g})", "adam", lr, lambda m, l, lr=lr: TorchStepper(m, l, torch.optim.Adam, lr=lr)))
    for lr in base["sgd-momentum"]:
        out.append((f"sgd-momentum(lr={lr:g})", "sgd-momentum", lr, lambda m, l, lr=lr: TorchStepper(
            m, l, torch.optim.SGD, lr=lr, momentum=base["momentum"])))
    if full_batch:
        lbfgs = base["lbfgs"]
        out.append(("lbfgs (full batch)", "lbfgs", lbfgs["lr"], lambda m, l, kw=lbfgs: TorchStepper(
            m, l, torch.optim.LBFGS, max_iter=1, **kw)))
    for name in config["defaults"]:
        out.append((f"{name} (defaults)", "default", math.nan, DEFAULT_FACTORIES[name]))
    for label in config["paper_labels"]:
        kw = dict(config["papers"][label])
        cls = PAPER_CLASSES[kw.pop("method")]
        out.append((label, "paper", math.nan, lambda m, l, cls=cls, kw=kw: cls(m, l, **kw)))
    return out


# ------------------------------------------------------------------ training


@torch.no_grad()
def evaluate(model, loss_fn, data) -> float:
    return float(loss_fn(model(data[0]), data[1]))


def train(factory, model, loss_fn, data, eval_data, batch: int | None, updates: int, eval_every: int, seed: int):
    """Losses and CPU seconds at updates 0, eval_every, …; NaN once diverged. Returns (losses, seconds, error)."""
    x, y = data
    try:
        stepper = factory(model, loss_fn)
    except Exception as err:  # noqa: BLE001  (a refusal is a result: recorded, the run goes on)
        n = updates // eval_every + 1
        return [evaluate(model, loss_fn, eval_data)] + [math.nan] * (n - 1), [0.0] + [math.nan] * (n - 1), \
            f"{type(err).__name__}: {str(err)[:200]}"
    gen = torch.Generator().manual_seed(1000 + seed)
    order, cursor = torch.randperm(len(x), generator=gen), 0
    losses, seconds, cpu, error = [evaluate(model, loss_fn, eval_data)], [0.0], 0.0, ""
    for u in range(1, updates + 1):
        if batch is None:
            xb, yb = x, y
        else:
            if cursor + batch > len(x):
                order, cursor = torch.randperm(len(x), generator=gen), 0
            idx = order[cursor : cursor + batch]
            cursor += batch
            xb, yb = x[idx], y[idx]
        start = time.process_time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stepper.step(xb, yb)
        except Exception as err:  # noqa: BLE001  (a failing optimiser is a result, recorded as diverged)
            error = f"{type(err).__name__}: {str(err)[:200]}"
        cpu += time.process_time() - start
        if u % eval_every == 0 or error:
            value = evaluate(model, loss_fn, eval_data) if not error else math.nan
            losses.append(value if math.isfinite(value) else math.nan)
            seconds.append(cpu)
            if error or not math.isfinite(value):
                break
    n = updates // eval_every + 1
    losses += [math.nan] * (n - len(losses))
    seconds += [math.nan] * (n - len(seconds))
    return losses[:n], seconds[:n], error


def problem_config(spec: dict, config: dict) -> dict:
    """The run configuration of one problem: the shared one with the problem's own budgets and grids."""
    config = {**config, **{k: spec[k] for k in ("updates", "eval_every", "baseline_update_factor", "baselines")
                           if k in spec}}
    if "baselines" in spec:
        config["baselines"] = {**json.loads(json.dumps(CONFIG_BASELINES)), **spec["baselines"]}
    return config


def run_problem(name: str, spec: dict, config: dict, quick: bool, only: list | None = None) -> xr.Dataset | str:
    """Every setting of a problem on every seed (or only the settings ``only``, e.g. tuned baselines to add)."""
    if "skip" in spec:
        return spec["skip"]
    config = problem_config(spec, config)
    updates, every = config["updates"], config["eval_every"]
    factor = int(config.get("baseline_update_factor", 1))
    labels, results = None, {}
    tuned_baselines = tune_baselines(name, spec, config, updates * factor) if only is None else []
    for seed in config["seeds"]:
        data = load_problem(spec, seed, config.get("limit"))
        x, y = data
        out_features = y.shape[1] if spec["loss"] != "ce" else 10
        eval_data = (x[: config["eval_samples"]], y[: config["eval_samples"]])
        batch = None if (spec["full_batch"] and spec.get("force_full", False)) else spec["batch_size"]
        all_settings = only if only is not None else [
            s for s in tuned_baselines + settings(config, spec["full_batch"]) if s[0] not in spec.get("exclude", [])]
        labels = [s[0] for s in all_settings]
        for label, family, _, factory in all_settings:
            model = build_model(spec, tuple(x.shape[1:]), out_features, seed, config.get("hidden_scale", 1.0))
            n_updates = updates * (factor if family in ("adam", "sgd-momentum") else 1)
            run_batch = None if family == "lbfgs" else batch
            losses, secs, error = train(factory, model, LOSSES[spec["loss"]](), data, eval_data, run_batch,
                                        n_updates, every, seed)
            results[(label, seed)] = (losses, secs, error)
            print(f"{name:18s} {label:60s} seed {seed}: loss {losses[0]:.4g} -> {losses[updates // every]:.4g} "
                  f"({secs[updates // every]:.2f} s){'  ' + error if error else ''}", flush=True)
    meta = {s[0]: (s[1], s[2]) for s in (only or []) + tuned_baselines + settings(config, spec["full_batch"])}
    excluded = f"{', '.join(spec['exclude'])}: {spec.get('exclude_reason', '')}" if spec.get("exclude") else "none"
    n = updates * factor // every + 1
    loss = np.full((len(labels), len(config["seeds"]), n), np.nan)
    secs = np.full_like(loss, np.nan)
    errors = []
    for i, label in enumerate(labels):
        for j, seed in enumerate(config["seeds"]):
            ls, ss, err = results[(label, seed)]
            loss[i, j, : len(ls)], secs[i, j, : len(ss)] = ls, ss
            if err:
                errors.append(f"{label} seed {seed}: {err}")
    ds = xr.Dataset(
        {"loss": (("setting", "seed", "checkpoint"), loss, {"long_name": "training loss (evaluation subset)"}),
         "cpu_seconds": (("setting", "seed", "checkpoint"), secs, {"long_name": "CPU time spent training", "units": "s"})},
        coords={"setting": labels, "family": ("setting", [meta[s][0] for s in labels]),
                "lr": ("setting", [meta[s][1] for s in labels]), "seed": list(config["seeds"]),
                "checkpoint": np.arange(n), "updates": ("checkpoint", np.arange(n) * every)},
        attrs=provenance(loss_fn=LOSSES[spec["loss"]](), batch_size=spec["batch_size"], dtype=torch.float32,
                         config=config, study="optimizer_benchmark", problem=name, quick=int(quick),
                         curvlab_updates=updates, errors="; ".join(errors) or "none", excluded=excluded,
                         torch_threads=torch.get_num_threads(),
                         note="CPU seconds (time.process_time) on a shared machine; evaluation excluded"),
    )
    return ds


# ------------------------------------------------------------------ analysis


def budget_checkpoint(ds: xr.Dataset) -> int:
    """The last checkpoint within the curvlab update budget (the problem's own ``eval_every`` spacing)."""
    return int(np.searchsorted(ds.updates.values, int(ds.attrs["curvlab_updates"]), side="right")) - 1


def tuned(ds: xr.Dataset, family: str, budget_checkpoint: int) -> str | None:
    names = [str(s) for s, f in zip(ds.setting.values, ds.family.values, strict=True) if f == family]
    if not names:
        return None
    finals = {s: float(ds.loss.sel(setting=s).isel(checkpoint=budget_checkpoint).mean("seed")) for s in names}
    finite = {s: v for s, v in finals.items() if math.isfinite(v)}
    return min(finite, key=finite.get) if finite else names[0]


def curve(ds, setting, var="loss"):
    return np.nanmedian(ds[var].sel(setting=setting).values, axis=0)


def _per_second(row: dict) -> str:
    return ("≥" if row.get("beyond_adam") else "") + f"{row['per_second_loss_vs_adam']:.3g}"


def compare(ds: xr.Dataset, budget_checkpoint: int) -> list[dict]:
    """Every non-baseline setting against tuned Adam: per update and per CPU second (medians over seeds)."""
    adam = tuned(ds, "adam", budget_checkpoint)
    a_loss, a_sec = curve(ds, adam), curve(ds, adam, "cpu_seconds")
    rows = []
    for setting, family in zip(ds.setting.values, ds.family.values, strict=True):
        setting = str(setting)
        loss, sec = curve(ds, setting)[: budget_checkpoint + 1], curve(ds, setting, "cpu_seconds")[: budget_checkpoint + 1]
        final, t_final = loss[-1], sec[-1]
        per_update = final / a_loss[budget_checkpoint]
        ahead = bool(np.all(loss[1:] < a_loss[1 : budget_checkpoint + 1]))
        ok = np.isfinite(a_sec) & np.isfinite(a_loss)
        adam_at_t = np.interp(t_final, a_sec[ok], a_loss[ok]) if ok.any() and math.isfinite(t_final) else math.nan
        reached = np.where(ok & (a_loss <= final))[0] if math.isfinite(final) else []
        t_adam = float(a_sec[reached[0]]) if len(reached) else math.nan
        rows.append({"setting": setting, "family": str(family), "final_loss": float(final), "cpu_s": float(t_final),
                     "per_update_vs_adam": float(per_update), "ahead_every_update": ahead,
                     "per_second_loss_vs_adam": float(final / adam_at_t) if adam_at_t else math.nan,
                     # past the end of Adam's measured curve its last loss stands in: the ratio is a lower bound
                     "beyond_adam": bool(ok.any() and math.isfinite(t_final) and t_final > float(a_sec[ok].max())),
                     "adam_time_to_match_s": t_adam,
                     "speed_vs_adam": t_adam / t_final if (math.isfinite(t_adam) and t_final > 0) else math.nan})
    return rows


def plot(ds: xr.Dataset, name: str, out: Path, budget_checkpoint: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = [tuned(ds, "adam", budget_checkpoint), tuned(ds, "sgd-momentum", budget_checkpoint)]
    keep += [str(s) for s, f in zip(ds.setting.values, ds.family.values, strict=True) if f in ("default", "paper", "lbfgs")]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.2), sharey=True, layout="constrained")
    papers_seen: dict[str, int] = {}
    for setting in (s for s in keep if s):
        family = str(ds.family.sel(setting=setting).values)
        method = setting.split("(")[0].split(" ")[0]  # one colour and marker per method in every figure
        k = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        nth = papers_seen[method] = papers_seen.get(method, -1) + (family == "paper")  # a second paper row differs
        paper_style = ["-.", ":", (0, (5, 1, 1, 1, 1, 1))][max(nth, 0) % 3]
        style = dict(color=plt.cm.tab20(k / 20), marker="osD^v<>ph*XP"[(k + max(nth, 0) * 5) % 12], markevery=2,
                     markersize=4, markerfacecolor="none",
                     linestyle={"adam": "-", "sgd-momentum": "-", "lbfgs": ":", "default": "--"}.get(family, paper_style),
                     linewidth=2.5 if family in ("adam", "sgd-momentum") else 1.3,
                     label=setting + (" [tuned]" if family in ("adam", "sgd-momentum") else ""))
        loss, sec = curve(ds, setting), curve(ds, setting, "cpu_seconds")
        span = budget_checkpoint + 1
        axes[0].plot(ds.updates.values[:span], loss[:span], **style)
        axes[1].plot(sec, loss, **style)
    axes[0].set_xlabel("updates")
    axes[1].set_xlabel("CPU seconds")
    axes[1].set_xscale("symlog", linthresh=0.1)
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("training loss (median over seeds)")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside right center")
    fig.suptitle(f"{name}: curvlab optimisers (defaults --, paper settings -.) vs tuned Adam / SGD-momentum")
    for ext in ("png", "svg"):
        fig.savefig(out / f"{name}.{ext}", dpi=110)
    plt.close(fig)


def claims(rows_by_problem: dict[str, list[dict]]) -> list[str]:
    """The papers' claims, checked on the numbers."""

    def row(problem, prefix):
        return next((r for r in rows_by_problem.get(problem, []) if r["setting"].startswith(prefix)), None)

    lines = []
    for problem in ("mnist-mlp", "sine"):
        sgn = row(problem, "sgn (Gargiani")
        if sgn:
            holds = sgn["per_second_loss_vs_adam"] < 1
            verdict = ("undetermined (its CPU time is past Adam's measured curve)" if holds and sgn["beyond_adam"]
                       else "reproduces" if holds else "does not reproduce")
            lines.append(f"- **Gargiani (SGN beats tuned Adam per second), {problem}: {verdict}.** At its CPU time "
                         f"SGN(3) is at {_per_second(sgn)}× tuned Adam's loss; per update {sgn['per_update_vs_adam']:.3g}×.")
    for problem in ("mnist-autoencoder", "mnist-mlp"):
        for prefix in ("kflr (Botev", "kfra (Botev"):
            r = row(problem, prefix)
            if r:
                lines.append(f"- **Botev ({prefix.split()[0].upper()} beats Adam per iteration), {problem}: "
                             f"{'reproduces' if r['ahead_every_update'] else ('partly' if r['per_update_vs_adam'] < 1 else 'does not reproduce')}"
                             f".** Final loss {r['per_update_vs_adam']:.3g}× tuned Adam's at the same updates"
                             f"{', ahead at every checkpoint' if r['ahead_every_update'] else ''}.")
    for problem in ("mnist-autoencoder", "mnist-mlp"):
        acp, kfac = row(problem, "acp (George"), row(problem, "kfac (M&G")
        if acp and kfac:
            per_s = acp["final_loss"] / kfac["final_loss"]
            cheaper = acp["cpu_s"] < kfac["cpu_s"]
            lines.append(f"- **George (ACP comparable to KFAC at lower cost), {problem}: "
                         f"{'reproduces' if (cheaper and per_s < 2) else 'does not reproduce'}.** ACP's loss is "
                         f"{per_s:.3g}× KFAC's after the same updates, in {acp['cpu_s']:.3g} s against {kfac['cpu_s']:.3g} s.")
    for problem in rows_by_problem:
        ours = [r for r in rows_by_problem[problem] if r["family"] in ("default", "paper")]
        ahead = [r["setting"] for r in ours if r["ahead_every_update"]]
        lines.append(f"- Ahead of tuned Adam per update through the whole budget on {problem}: "
                     f"{', '.join(ahead) if ahead else 'none'}.")
        timed = [r for r in ours if math.isfinite(r["per_second_loss_vs_adam"]) and not r["beyond_adam"]]
        if timed:
            best = min(timed, key=lambda r: r["per_second_loss_vs_adam"])
            lines.append(f"- Best per CPU second on {problem} (within Adam's measured time): {best['setting']}, at "
                         f"{_per_second(best)}× tuned Adam's loss at its CPU time ({best['cpu_s']:.3g} s).")
    return lines


def write_summary(rows_by_problem, skipped, out: Path, config: dict) -> None:
    lines = ["# Optimiser benchmark", "",
             f"{len(config['seeds'])} seeds, {config['updates']} updates per curvlab run (baselines "
             f"{config.get('baseline_update_factor', 1)}× as many), medians over seeds. Ratios are against *tuned* Adam "
             "(best learning rate of the grid at the update budget): `per update` = final loss / Adam's loss after the "
             "same updates; `per second` = final loss / Adam's loss at the same CPU time; `speed` = CPU time Adam needs "
             "to reach the same loss / this run's CPU time (> 1: faster than Adam); `≥` marks a run whose CPU time "
             "is past the end of Adam's measured curve (Adam's last loss stands in, so the true ratio is larger). "
             "Generated by `run.py`.", ""]
    lines += ["## Paper claims", ""] + claims(rows_by_problem) + [""]
    for problem, reason in skipped.items():
        lines += [f"## {problem}", "", f"Not run: {reason}", ""]
    with open(out / "comparison.csv", "w") as fh:
        fh.write("problem,setting,family,final_loss,cpu_s,per_update_vs_adam,per_second_loss_vs_adam,speed_vs_adam,ahead_every_update\n")
        for problem, rows in rows_by_problem.items():
            spec = config["problems"].get(problem, {})
            lines += [f"## {problem}", "", f"{spec.get('updates', config['updates'])} updates per curvlab run.", "",
                      f"![{problem}]({problem}.png)", "",
                      "| setting | final loss | CPU s | per update | per second | speed | ahead every update |",
                      "|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['setting']} | {r['final_loss']:.4g} | {r['cpu_s']:.3g} | {r['per_update_vs_adam']:.3g} | "
                             f"{_per_second(r)} | {r['speed_vs_adam']:.3g} | {'yes' if r['ahead_every_update'] else 'no'} |")
                fh.write(f"{problem},\"{r['setting']}\",{r['family']},{r['final_loss']:.6g},{r['cpu_s']:.4g},"
                         f"{r['per_update_vs_adam']:.4g},{r['per_second_loss_vs_adam']:.4g},{r['speed_vs_adam']:.4g},"
                         f"{int(r['ahead_every_update'])}\n")
            lines.append("")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, few updates (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--problems", default=None)
    parser.add_argument("--config", type=Path, default=HERE / "config.json")
    parser.add_argument("--seeds", default=None, help="comma-separated subset of the config's seeds (one process "
                        "per seed; files <problem>.seed<k>.nc, merged by --summarize)")
    parser.add_argument("--summarize", action="store_true", help="only rebuild figures and summary from the .nc files in --out")
    parser.add_argument("--add-tuned", action="store_true", help="tune Adam and SGD-momentum by biased random search "
                        "and add them to the existing .nc files in --out (then --summarize)")
    parser.add_argument("--add", default="", help="settings (labels of the config, '|'-separated) to run and add to "
                        "the existing .nc files in --out (then --summarize)")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    config["paper_labels"] = list(config["papers"])
    CONFIG_BASELINES.update(config["baselines"])
    problems = list(config["problems"])
    if args.quick:
        quick = config.pop("quick")
        problems = quick.pop("problems")
        config["baselines"] = {**config["baselines"], **quick.pop("baselines")}
        config["paper_labels"] = quick.pop("papers")
        config.update(quick)
        for spec in config["problems"].values():  # the quick run ignores per-problem budgets and grids
            for key in ("updates", "eval_every", "baseline_update_factor", "baselines"):
                spec.pop(key, None)
    config.pop("quick", None)
    if args.problems:
        problems = args.problems.split(",")
    suffix = ""
    if args.seeds:
        config["seeds"] = [int(s) for s in args.seeds.split(",")]
        suffix = ".seed" + "-".join(str(s) for s in config["seeds"])
    torch.set_num_threads(int(config["threads"]))
    args.out.mkdir(parents=True, exist_ok=True)
    rows_by_problem, skipped, datasets = {}, {}, {}
    for name in problems:
        if args.add_tuned or args.add:
            spec, path = config["problems"][name], args.out / f"{name}.nc"
            if "skip" in spec or not path.is_file():
                continue
            result = xr.load_dataset(path)
            have = {str(s) for s in result.setting.values}
            run_config = problem_config(spec, config)
            found = []
            if args.add_tuned and not any(s.startswith(("adam (random search", "sgd-momentum (random search"))
                                          for s in have):
                found = tune_baselines(name, spec, run_config, run_config["updates"] * int(
                    run_config.get("baseline_update_factor", 1)))
            wanted = [label for label in args.add.split("|") if label and label not in have
                      and label not in spec.get("exclude", [])]
            found += [s for s in settings({**run_config, "paper_labels": wanted, "defaults": []}, spec["full_batch"])
                      if s[0] in wanted]
            if not found:
                continue
            extra = run_problem(name, spec, {**config, "seeds": [int(s) for s in result.seed.values]}, False,
                                only=found)
            merged = xr.concat([result, extra], dim="setting", data_vars="minimal", coords="minimal",
                               compat="override", combine_attrs="override")
            merged.attrs["tuner"] = json.dumps(config.get("tuner"))
            write_netcdf(merged, path, overwrite=True)
            continue
        if args.summarize:
            spec = config["problems"][name]
            parts = sorted(args.out.glob(f"{name}.seed*.nc"))
            if "skip" not in spec and parts and not (args.out / f"{name}.nc").is_file():
                merged = xr.concat([xr.load_dataset(p) for p in parts], dim="seed").sortby("seed")
                merged.attrs["errors"] = "; ".join(xr.load_dataset(p).attrs["errors"] for p in parts)
                write_netcdf(merged, args.out / f"{name}.nc", overwrite=True)
            if "skip" in spec or not (args.out / f"{name}.nc").is_file():
                skipped[name] = spec.get("skip", "not run")
                continue
            result = xr.load_dataset(args.out / f"{name}.nc")
            budget = budget_checkpoint(result)
            rows_by_problem[name] = compare(result, budget)
            plot(result, name, args.out, budget)
            if result.attrs.get("excluded", "none") != "none":
                skipped[f"{name} (excluded settings)"] = result.attrs["excluded"]
            continue
        result = run_problem(name, config["problems"][name], config, args.quick)
        if isinstance(result, str):
            skipped[name] = result
            print(f"{name}: refused: {result}")
            continue
        datasets[name] = result
        budget = budget_checkpoint(result)
        write_netcdf(result, args.out / f"{name}{suffix}.nc", overwrite=True)
        if suffix:
            continue  # per-seed part: merged and summarised by --summarize
        plot(result, name, args.out, budget)
        rows_by_problem[name] = compare(result, budget)
        if result.attrs.get("excluded", "none") != "none":
            skipped[f"{name} (excluded settings)"] = result.attrs["excluded"]
    if not suffix:
        write_summary(rows_by_problem, skipped, args.out, config)
    return {"datasets": datasets, "rows": rows_by_problem, "skipped": skipped}


if __name__ == "__main__":
    main()
