"""Study: approximation quality of curvature approximations against the exact GGN across training.

A digits MLP (or MNIST with ``--dataset mnist --data PATH``) is trained with SGD + momentum; every
``measure_every`` steps ``curvlab.analysis.measure`` compares KFAC, KFLR, KFRA, EKFAC, the diagonals, the
block-diagonal GGN and the GroupedNewton summary with the exact GGN on a fixed batch: relative Frobenius and
spectral errors, cosine, top-k eigenspace overlap, and damped Newton step quality over a range of dampings.
The tracker saves ``quality.nc`` after every measurement. Uses only the public curvlab API.

    python analyses/approximation_quality/run.py            # full size (minutes)
    python analyses/approximation_quality/run.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import curvlab
from curvlab.analysis import (
    Tracker,
    measure,
    netcdf,
    plot_damping_curves,
    plot_metric_curves,
    save_figure,
    summarize,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=HERE / "config.json")
    parser.add_argument("--dataset", default=None, help="digits, diabetes, sine or mnist (default: config's)")
    parser.add_argument("--data", type=Path, default=None, help="MNIST .npz or IDX file for --dataset mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "approximation_quality")
    parser.add_argument("--quick", action="store_true", help="tiny model, 20 steps")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--save-curvature", action="store_true",
                        help="also write the last step's matrices (dense: about 140 MB at full size)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = json.loads(args.config.read_text())
    quick = config.pop("quick")
    if args.quick:
        config.update(quick)
    if args.dataset:
        config["dataset"] = args.dataset
    out = args.out / ("quick" if args.quick else "")
    if (out / "quality.nc").exists() and not args.overwrite:
        raise SystemExit(f"{out} holds results; pass --overwrite to replace them")
    torch.set_num_threads(1)
    data = curvlab.load_dataset(config["dataset"], args.data, seed=config["seed"], dtype=torch.float64).flat()
    torch.manual_seed(config["seed"])
    model = curvlab.models.build_model("mlp", data.sample_shape, data.num_outputs, hidden=config["hidden"],
                                       activation=config["activation"]).double()
    loss_fn = nn.CrossEntropyLoss() if data.task == "classification" else nn.MSELoss()
    batch = (data.train[0][: config["samples"]], data.train[1][: config["samples"]])
    attrs = curvlab.provenance.provenance(model=model, loss_fn=loss_fn, batch_size=config["samples"],
                                          dtype=torch.float64, config={**config, "quick": args.quick},
                                          dataset=config["dataset"])

    def quality():
        result = measure(model, loss_fn, batch, reference=config["reference"],
                         approximations=config["approximations"], partition=config["partition"],
                         summary_partition=config["summary_partition"], dampings=config["dampings"],
                         k=config["top_k"], mc_samples=config["mc_samples"], seed=config["seed"], attrs=attrs)
        state["last"] = result
        with torch.no_grad():
            result.quality["test_loss"] = float(loss_fn(model(data.test[0]), data.test[1]))
        return result.quality

    state: dict = {}
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    generator = torch.Generator().manual_seed(config["seed"])
    start = time.perf_counter()
    with Tracker({"quality": quality}, every=config["measure_every"], path=out / "quality.nc", attrs=attrs,
                 overwrite=args.overwrite) as tracker:
        for step in range(config["steps"] + 1):
            if tracker(step):
                print(f"step {step}: measured ({time.perf_counter() - start:.0f} s)", flush=True)
            if step == config["steps"]:
                break
            idx = torch.randint(0, len(data.train[0]), (config["batch_size"],), generator=generator)
            optimizer.zero_grad()
            loss_fn(model(data.train[0][idx]), data.train[1][idx]).backward()
            optimizer.step()
    ds = tracker.dataset
    if args.save_curvature:
        tree = state["last"].curvature_tree()
        tree.attrs.update(attrs, step=int(ds.step[-1]))
        netcdf.write(tree, out / "curvature_last_step.nc")
    metrics = ["rel_frobenius_error", "rel_spectral_error", "eigenspace_overlap", "step_cosine", "decrease_ratio"]
    save_figure(plot_metric_curves(ds, metrics, title="whole matrix"), out / "quality_curves.png")
    first_block = str(ds.block.values[0])
    save_figure(plot_metric_curves(ds, metrics, block=first_block, title=f"block {first_block} (first layer)"),
                out / "quality_curves_first_layer.png")
    save_figure(plot_damping_curves(ds, title="step quality against damping, last step"), out / "damping.png")
    text = summarize(ds)
    (out / "summary.md").write_text(f"# approximation quality ({config['dataset']}, hidden {config['hidden']})\n\n"
                                    + text)
    print(text)


if __name__ == "__main__":
    main()
