"""``curvlab analyze``: train a model, measure curvature approximations against the exact matrix as it trains.

At each measurement step it computes the exact reference (default: the GGN) on ``--samples`` training
samples, the chosen approximations and the GroupedNewton summary along the gradient, and compares them
(relative Frobenius / spectral errors, cosine, top-k eigenspace overlap, damped Newton step quality,
interaction strength between layers). It writes to ``--out``:

* ``quality.nc``   – the comparison along ``step`` (saved after every measurement, so an interrupted run keeps it);
* ``curvature.nc`` – the reference and the approximations at the last measurement (one group each);
* ``*.png``        – block norms, interactions, H̄/H̄⁻¹ at the first and last measurement, an exact block beside
  its approximations, the spectrum, metrics across training and across damping;
* ``summary.md``   – which approximation is best and how strongly the layers interact; ``config.json``.

Example:
    curvlab analyze --out curvlab-analysis          # digits, MLP 64-16-16-10, 300 SGD steps, 3 measurements
    curvlab analyze --smoke --out /tmp/smoke        # seconds: tiny model and data (CI)
    curvlab show curvlab-analysis/quality.nc
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

import curvlab
from curvlab.cli.common import (
    DTYPES,
    add_data_options,
    add_output_options,
    build_setup,
    non_negative_int,
    positive_int,
    prepare_output,
    train_sgd,
)

DEFAULT_QUANTITIES = ("kfac", "kflr", "kfra", "ekfac", "diag_ggn", "diag_hessian", "ggn_block", "summary")
SMOKE = {"steps": 4, "samples": 32, "limit": 200, "hidden": (6,), "measure_every": 4, "dampings": (1e-2, 1.0)}
#: defaults that ``--smoke`` replaces (options given explicitly are kept)
_SMOKE_REPLACES = {"steps": 300, "samples": 256, "limit": None, "hidden": (16, 16), "measure_every": None,
                   "dampings": curvlab.analysis.DEFAULT_DAMPINGS}


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative dampings, got {text!r}")
    return values


def add_parser(sub) -> None:
    """Register ``curvlab analyze`` on the sub-parsers."""
    parser = sub.add_parser("analyze", help="approximation quality and layer interactions across training",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_options(parser, hidden="16,16")
    add_output_options(parser, "curvlab-analysis")
    group = parser.add_argument_group("measurement")
    group.add_argument("--steps", type=non_negative_int, default=300, help="SGD steps (default 300)")
    group.add_argument("--measure-every", type=positive_int, default=None,
                       help="measure every this many steps (default: steps/2, i.e. start, middle, end)")
    group.add_argument("--samples", type=positive_int, default=256, help="training samples the curvature uses")
    group.add_argument("--reference", choices=curvlab.analysis.REFERENCES, default="ggn",
                       help="exact matrix the approximations are compared with")
    group.add_argument("--quantities", default=",".join(DEFAULT_QUANTITIES),
                       help=f"approximations, comma-separated from {','.join(curvlab.analysis.APPROXIMATIONS)}")
    group.add_argument("--partition", default="layer", help="blocks: canonical, layer, trivial, blocks-k")
    group.add_argument("--summary-partition", default="canonical", help="groups of the GroupedNewton summary")
    group.add_argument("--dampings", type=_floats, default=curvlab.analysis.DEFAULT_DAMPINGS,
                       help="dampings of the step metrics, e.g. 1e-3,1e-2,1e-1")
    group.add_argument("--top-k", type=positive_int, default=10, help="size of the compared top eigenspace")
    group.add_argument("--mc-samples", type=positive_int, default=1, help="MC samples of kfac / *_mc")
    group.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--state-dict", type=Path, default=None, help="start from these weights (torch.save'd)")
    group.add_argument("--max-params", type=positive_int, default=6000,
                       help="refuse models with more parameters: the exact reference is a dense [P, P] matrix "
                            "and its eigendecomposition costs O(P³) (default 6000)")
    group.add_argument("--threads", type=positive_int, default=1,
                       help="torch threads (default 1: the matrices are small, and threads contend on busy machines)")
    group.add_argument("--smoke", action="store_true",
                       help="tiny and fast (CI): 200 samples, hidden 6, 4 steps, 32 measurement samples "
                            "(options given explicitly are kept)")
    parser.set_defaults(run=run)


def _validate(args: argparse.Namespace) -> list[str]:
    if args.smoke:
        for key, value in SMOKE.items():
            if getattr(args, key) == _SMOKE_REPLACES[key]:
                setattr(args, key, value)
    quantities = _names(args.quantities)
    unknown = [q for q in quantities if q not in curvlab.analysis.APPROXIMATIONS]
    if unknown or not quantities:
        raise ValueError(f"unknown quantities {unknown or quantities}; choose from "
                         f"{', '.join(curvlab.analysis.APPROXIMATIONS)}")
    if args.lr <= 0 or not 0 <= args.momentum < 1:
        raise ValueError(f"--lr must be > 0 and --momentum in [0, 1), got {args.lr} and {args.momentum}")
    return quantities


def _load_state(model: torch.nn.Module, path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"--state-dict file not found: {path}")
    path = curvlab.datasets.regular_file(path, "--state-dict file")
    try:  # weights_only: a pickle that is not plain tensors is refused (UnpicklingError), never executed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol of a foreign file
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (any failure to parse the user's file is bad input)
        raise ValueError(
            f"--state-dict {path} is not a state dict of plain tensors (as torch.save(model.state_dict(), path) "
            "writes); it was refused without running any code from it"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"--state-dict {path} holds a {type(state).__qualname__}, not a state dict")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"--state-dict {path} does not fit the model: {str(err).splitlines()[0]}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``curvlab analyze``; returns the exit code."""
    start = time.perf_counter()
    quantities = _validate(args)
    torch.set_num_threads(args.threads)
    data, model, loss_fn = build_setup(args)
    if args.state_dict is not None:
        _load_state(model, args.state_dict)
    size = curvlab.Partition.from_model(model, args.partition).num_params  # bad partitions fail here, early
    if size > args.max_params:
        raise ValueError(f"{args.model} on {args.dataset} has P={size} parameters, more than --max-params "
                         f"{args.max_params}: the exact dense reference would be [{size}, {size}]. Use a smaller "
                         "model (e.g. --model mlp --hidden 16,16) or raise --max-params (cost grows as P³)")
    curvlab.Partition.from_model(model, args.summary_partition)
    out = prepare_output(args.out, args.overwrite)
    config = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
              for k, v in vars(args).items() if k != "run"}
    attrs = curvlab.provenance.provenance(model=model, loss_fn=loss_fn, batch_size=args.samples,
                                          dtype=DTYPES[args.dtype], config=config, dataset=args.dataset)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    inputs, targets = data.train[0][: args.samples], data.train[1][: args.samples]
    every = args.measure_every or max(args.steps // 2, 1)
    when = sorted({*range(0, args.steps + 1, every), args.steps})
    state: dict = {"measurements": []}

    def measure_now() -> object:
        result = curvlab.analysis.measure(
            model, loss_fn, (inputs, targets), reference=args.reference, approximations=quantities,
            partition=args.partition, summary_partition=args.summary_partition, dampings=args.dampings,
            k=args.top_k, mc_samples=args.mc_samples, seed=args.seed, attrs=attrs)
        state["measurements"].append(result)
        with torch.no_grad():
            test_loss = float(loss_fn(model(data.test[0]), data.test[1]))
        quality = result.quality
        quality["test_loss"] = test_loss
        quality["train_loss"] = float(loss_fn(model(inputs), targets).detach())
        return quality

    bar = tqdm(total=len(when), desc="measuring", disable=not args.progress, position=1)
    tracker = curvlab.analysis.Tracker({"quality": measure_now}, path=out / "quality.nc", attrs=attrs,
                                     overwrite=args.overwrite)

    def callback(step: int, _model) -> None:
        if step in when:
            tracker.record(step)
            bar.update()

    with tracker:
        train_sgd(model, loss_fn, data.train, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  momentum=args.momentum, seed=args.seed, progress=args.progress, callback=callback)
    bar.close()
    last = state["measurements"][-1]
    tree = last.curvature_tree()
    tree.attrs.update(attrs, step=int(when[-1]))
    curvlab.analysis.netcdf.write(tree, out / "curvature.nc")
    figures = _figures(out, tracker.dataset, state["measurements"], when, args)
    _write_summary(out, tracker.dataset, figures, time.perf_counter() - start, args)
    print(f"wrote {out}/quality.nc, curvature.nc, summary.md and {len(figures)} figures "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


def _figures(out: Path, ds, measurements, when, args) -> list[str]:
    plots = curvlab.analysis.plots
    first, last = measurements[0], measurements[-1]
    exact = last.curvature[args.reference]
    part = exact.partition
    figures = {
        "block_norms.png": plots.plot_block_norms(exact, part, title=f"{args.reference}: log₁₀ block norms "
                                                  f"(step {when[-1]})"),
        "interactions.png": plots.plot_block_norms(exact, part, interaction=True,
                                                   title=f"{args.reference}: interaction strength (step {when[-1]})"),
        "spectrum.png": plots.plot_spectrum({f"{args.reference}, step {w}": m.quality.eigenvalues
                                             for w, m in zip(when, measurements, strict=True)}),
    }
    approx = {n: r for n, r in last.curvature.items() if n != args.reference}
    if approx:
        figures["block_comparison.png"] = plots.plot_block_comparison(exact, approx, part, part.group_names[-1],
                                                                      max_entries=60)
        if "step_quality" in ds:
            figures["damping.png"] = plots.plot_damping_curves(ds)
    if "summary_hbar" in last.quality:
        for tag, m, w in (("init", first, when[0]), ("final", last, when[-1])):
            figures[f"summary_{tag}.png"] = plots.plot_summary(
                m.quality.summary_hbar, title=f"GroupedNewton summary of the {args.reference}, step {w}")
    if len(when) > 1 and (approx or "summary_hbar" in last.quality):
        figures["quality_curves.png"] = plots.plot_metric_curves(
            ds, ["rel_frobenius_error", "eigenspace_overlap", "step_cosine"])
    for name, fig in figures.items():
        plots.save_figure(fig, out / name)
    return list(figures)


def _write_summary(out: Path, ds, figures: list[str], seconds: float, args) -> None:
    lines = [
        "# curvlab analyze", "",
        f"{args.model} on {args.dataset} (hidden {','.join(map(str, args.hidden))}, {args.activation}), "
        f"{args.steps} SGD steps (lr {args.lr}, momentum {args.momentum}, batch {args.batch_size}), "
        f"measured at steps {', '.join(str(int(s)) for s in ds.step.values)} on {args.samples} training "
        f"samples against the exact {args.reference}; partition {args.partition}; {seconds:.0f} s.", "",
        curvlab.analysis.summarize(ds),
        "## Files", "",
        "- `quality.nc`: metrics along step (`curvlab show quality.nc`)",
        "- `curvature.nc`: reference and approximations at the last step",
        *[f"- `{name}`" for name in figures],
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
