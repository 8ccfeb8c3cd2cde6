"""Study: layer interactions through the GroupedNewton summary (Wolinski, Figure 1), on an MLP trained on MNIST.

An MLP 784-1024-200-100-10 (tanh) is trained with SGD + momentum on an MNIST extract. Before every epoch the
full-batch gradient u of the training set is the direction, and the summary H̄_ij = u_iᵀ H_ij u_j of the Hessian
over the canonical partition (one group per weight and bias tensor) is computed exactly, full batch.
H̄ and H̄⁻¹ are shown normalised, H̄_ij / √(|H̄_ii| |H̄_jj|), at initialisation and at the epoch of the best
validation loss. Uses only the public curvlab API.

    python analyses/layer_interactions/run.py --data ../shared/data/mnist-5k-labeled.npz
    python analyses/layer_interactions/run.py --data ../shared/data/mnist-5k-labeled.npz --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

import curvlab
from curvlab.analysis import (
    Tracker,
    normalized_summary,
    offdiagonal_stats,
    plot_summary,
    save_figure,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="MNIST .npz or IDX file (default: config's)")
    parser.add_argument("--config", type=Path, default=HERE / "config.json")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "layer_interactions")
    parser.add_argument("--quick", action="store_true", help="small model, few samples, 2 epochs")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="redraw the figures from an existing summary.nc")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = json.loads(args.config.read_text())
    quick = config.pop("quick")
    if args.quick:
        config.update(quick)
    path = args.data or (ROOT / config["data"])
    out = args.out / ("quick" if args.quick else "")
    if args.plot_only:
        figures(curvlab.analysis.netcdf.read(out / "summary.nc"), out)
        return
    if (out / "summary.nc").exists() and not args.overwrite:
        raise SystemExit(f"{out} holds results; pass --overwrite to replace them")
    torch.set_num_threads(1)
    data = curvlab.load_dataset("mnist", path, seed=config["seed"], dtype=torch.float64,
                                test_fraction=config["validation_fraction"], limit=config.get("limit")).flat()
    torch.manual_seed(config["seed"])
    model = curvlab.models.build_model("mlp", data.sample_shape, data.num_outputs, hidden=config["hidden"],
                                       activation=config["activation"]).double()
    loss_fn = nn.CrossEntropyLoss()
    train_x, train_y = data.train
    summary_batch = (train_x[: config["summary_samples"]], train_y[: config["summary_samples"]])
    attrs = curvlab.provenance.provenance(model=model, loss_fn=loss_fn, batch_size=config["batch_size"],
                                          dtype=torch.float64, config={**config, "quick": args.quick},
                                          data_file=str(Path(path).name))

    def measure() -> dict:
        summary = curvlab.grouped_newton_summary(model, loss_fn, summary_batch, partition=config["partition"],
                                                 curvature=config["curvature"], order=2)
        names = list(summary.group_names)
        with torch.no_grad():
            val_loss = float(loss_fn(model(data.test[0]), data.test[1]))
            val_acc = float((model(data.test[0]).argmax(1) == data.test[1]).double().mean())
            train_loss = float(loss_fn(model(summary_batch[0]), summary_batch[1]))
        hbar = normalized_summary(summary.hbar, names).rename(group_i="summary_i", group_j="summary_j")
        inverse = normalized_summary(summary.hbar, names, inverse=True).rename(group_i="summary_i",
                                                                              group_j="summary_j")
        raw = hbar.copy(data=summary.hbar.detach().double().numpy())
        raw.attrs = {"long_name": "GroupedNewton summary H̄ of the Hessian along the gradient", "units": "loss"}
        return {"hbar": raw, "hbar_normalized": hbar, "hbar_inverse_normalized": inverse,
                "gbar": summary.gbar.detach(), "val_loss": val_loss, "val_accuracy": val_acc,
                "train_loss": train_loss}

    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    generator = torch.Generator().manual_seed(config["seed"])
    start = time.perf_counter()
    with Tracker({"summary": measure}, path=out / "summary.nc", attrs=attrs, overwrite=args.overwrite) as tracker:
        for epoch in range(config["epochs"] + 1):
            tracker(epoch)
            ds = tracker.dataset.isel(step=-1)
            print(f"epoch {epoch}: val loss {float(ds.val_loss):.4f}, val acc {float(ds.val_accuracy):.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            if epoch == config["epochs"]:
                break
            order = torch.randperm(len(train_x), generator=generator)
            for i in range(0, len(train_x), config["batch_size"]):
                idx = order[i : i + config["batch_size"]]
                optimizer.zero_grad()
                loss_fn(model(train_x[idx]), train_y[idx]).backward()
                optimizer.step()
    figures(tracker.dataset, out)


def figures(ds, out: Path) -> None:
    ds = ds.rename(step="epoch")
    best = int(ds.epoch[int(ds.val_loss.argmin("epoch"))])
    for tag, epoch in (("init", 0), ("best", best)):
        fig = plot_summary(ds.hbar.sel(epoch=epoch), title=f"normalised H̄ and H̄⁻¹ of the Hessian, epoch {epoch}"
                           + (" (best validation loss)" if tag == "best" else " (initialisation)"))
        save_figure(fig, out / f"summary_{tag}.png")
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax_loss, ax_int = fig.subplots(1, 2)
    ax_loss.plot(ds.epoch, ds.train_loss, marker="o", label="train")
    ax_loss.plot(ds.epoch, ds.val_loss, marker="s", label="validation")
    ax_loss.axvline(best, color="grey", linestyle=":")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    for var, label in (("hbar_normalized", "H̄"), ("hbar_inverse_normalized", "H̄⁻¹")):
        stats = [offdiagonal_stats(ds[var].sel(epoch=e)) for e in ds.epoch.values]
        ax_int.plot(ds.epoch, [s[0] for s in stats], marker="o", label=f"{label}: mean |off-diagonal|")
        ax_int.plot(ds.epoch, [s[1] for s in stats], marker="^", linestyle="--", label=f"{label}: max |off-diagonal|")
    ax_int.set_xlabel("epoch")
    for ax in (ax_loss, ax_int):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_int.set_ylabel("normalised interaction")
    ax_int.set_yscale("log")
    ax_int.legend(fontsize=7)
    save_figure(fig, out / "training.png")
    lines = [f"best validation loss {float(ds.val_loss.sel(epoch=best)):.4f} at epoch {best}"]
    for tag, epoch in (("init", 0), ("best", best)):
        for var in ("hbar_normalized", "hbar_inverse_normalized"):
            mean, peak = offdiagonal_stats(ds[var].sel(epoch=epoch))
            lines.append(f"{tag:4s} {var:24s} off-diagonal |.|: mean {mean:.3f}, max {peak:.3f}")
    (out / "results.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
