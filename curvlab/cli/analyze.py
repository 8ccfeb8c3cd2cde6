"""``curvlab analyze``: train a model, measure curvature approximations against the exact matrix as it trains.

At each measurement step it computes the exact reference (default: the GGN) on ``--samples`` training
samples, the chosen approximations and the GroupedNewton summary along the gradient, and compares them
(relative Frobenius / spectral errors, cosine, top-k eigenspace overlap, damped Newton step quality,
interaction strength between layers). Up to ``--dense-limit`` parameters the reference is a dense [P, P]
matrix and the metrics are exact; above it they come from products only (matrix-free, with error bars).
The ``resnet`` and ``transformer`` presets change the defaults of the options not given (listed at the
end: fewer samples, groups by residual or transformer block, the MC approximations, two measurements) so
that they finish within 10 minutes on 2 CPU cores. It writes to ``--out``:

* ``quality.nc``   – the comparison along ``step`` (saved after every measurement, so an interrupted run keeps it);
* ``curvature.nc`` – the approximations at the last measurement (``--save-curvature``; float32, compressed);
* figures          – block norms, interactions, H̄/H̄⁻¹ at the first and last measurement, an exact block beside
  its approximations, the spectra, metrics across training and across damping, the training curves
  (``--format png,svg,pdf``);
* ``summary.md``   – which approximation is best, the metric definitions, how strongly the layers interact;
  ``config.json``.

Example:
    curvlab analyze --out curvlab-analysis          # digits, MLP 64-16-16-10, 300 SGD steps, 3 measurements
    curvlab analyze --smoke --out /tmp/smoke        # seconds: tiny model and data (CI)
    curvlab analyze --model lenet --out lenet       # P = 21,386 > --dense-limit: matrix-free metrics
    curvlab analyze --model resnet --out resnet     # ResNet-20, BatchNorm in train mode, P = 272,186 (< 10 min)
    curvlab analyze --model transformer --out gpt   # char-level GPT on argparse's source, P = 113,408 (< 10 min)
    curvlab analyze --model mypkg.models:build --data mypkg.data:load --out mine
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
    HelpFormatter,
    add_data_options,
    add_output_options,
    build_setup,
    non_negative_int,
    plain,
    positive_int,
    prepare_output,
    train_sgd,
)

DEFAULT_QUANTITIES = ("kfac", "kflr", "kfra", "ekfac", "diag_ggn", "diag_hessian", "ggn_block", "summary")
#: Matrix-free runs leave exact dense blocks out of the default quantities when a block is larger.
BLOCK_LIMIT = 4000
SMOKE = {"steps": 4, "samples": 32, "limit": 200, "hidden": (6,), "measure_every": 4, "dampings": (1e-2, 1.0)}
#: Defaults of the large presets, sized to finish within 10 minutes on 2 CPU cores. A measurement costs
#: about probes × groups + 2·(top-k + 1)·20 + CG products with the exact GGN (each ~3 gradients). Exact KFLR
#: and diagonals take one backward pass per sample and class where BatchNorm in train mode couples the batch
#: (a measurement of the ResNet with kflr and diag_ggn ran past 5 minutes) and are out of reach for sequences
#: (T·V outputs per sample), so the presets measure the MC ones. On a fitted model one MC sample is almost
#: always the predicted label, whose term is ~0: on the trained ResNet-20, diag_ggn_mc's trace was 0.002 against
#: the exact 0.63, with 1 or 8 MC samples alike; the transformer, far from fitted, takes 8.
PRESETS = {
    "resnet": {"samples": 32, "partition": "module-2", "summary_partition": "module-2",
               "quantities": "kfac,diag_ggn_mc,summary", "probes": 20, "top_k": 5, "dampings": (0.1, 1.0),
               "steps": 200, "measure_every": 200, "batch_size": 64, "threads": 2},
    "transformer": {"samples": 16, "partition": "module-3", "summary_partition": "module-3",
                    "quantities": "kfac,diag_ggn_mc,summary", "probes": 20, "top_k": 5, "dampings": (0.1, 1.0),
                    "mc_samples": 8, "steps": 300, "measure_every": 300, "batch_size": 32, "lr": 0.5, "threads": 2},
}


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


def _formats(text: str) -> tuple[str, ...]:
    values = tuple(_names(text.lower()))
    bad = [v for v in values if v not in ("png", "svg", "pdf")]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of png,svg,pdf, got {text!r}")
    return values


def _shown(value) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)


def add_parser(sub) -> None:
    """Register ``curvlab analyze`` on the sub-parsers."""
    presets = "\n".join(f"  --model {name}: " + ", ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in values.items())
                         for name, values in PRESETS.items())
    parser = sub.add_parser("analyze", help="approximation quality and layer interactions across training",
                            description=plain(__doc__), formatter_class=HelpFormatter,
                            epilog=f"preset defaults (options given explicitly are kept):\n{presets}")
    add_data_options(parser, hidden="16,16")
    add_output_options(parser, "curvlab-analysis")
    group = parser.add_argument_group("measurement")
    group.add_argument("--steps", type=non_negative_int, default=300, help="SGD steps")
    group.add_argument("--measure-every", type=positive_int, default=None,
                       help="measure every this many steps (None: steps/2, i.e. start, middle, end)")
    group.add_argument("--samples", type=positive_int, default=256, help="training samples the curvature uses")
    group.add_argument("--reference", choices=curvlab.analysis.REFERENCES, default="ggn",
                       help="exact matrix the approximations are compared with")
    group.add_argument("--quantities", default=",".join(DEFAULT_QUANTITIES),
                       help=f"approximations, comma-separated from {','.join(curvlab.analysis.APPROXIMATIONS)}")
    group.add_argument("--partition", default="layer",
                       help="blocks of the per-block metrics: canonical, layer, module-d, trivial, blocks-k or entries")
    group.add_argument("--summary-partition", default="canonical", help="groups of the GroupedNewton summary")
    group.add_argument("--dampings", type=_floats, default=",".join(f"{d:g}" for d in curvlab.analysis.DEFAULT_DAMPINGS),
                       help="dampings of the step metrics, comma-separated")
    group.add_argument("--top-k", type=positive_int, default=10, help="size of the compared top eigenspace")
    group.add_argument("--mc-samples", type=positive_int, default=1, help="MC samples of kfac / *_mc")
    group.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--state-dict", type=Path, default=None, help="start from these weights (torch.save'd)")
    group.add_argument("--method", choices=("auto", "dense", "matrix-free"), default="auto",
                       help="dense: exact metrics from the [P, P] reference (cost O(P³)); matrix-free: products "
                            "only, with error bars; auto: dense up to --dense-limit parameters")
    group.add_argument("--dense-limit", type=positive_int, default=curvlab.analysis.DENSE_LIMIT,
                       help="largest P compared densely by --method auto")
    group.add_argument("--probes", type=positive_int, default=30,
                       help="Rademacher probes per block of the matrix-free metrics (standard errors ~ 1/√probes)")
    group.add_argument("--max-params", type=positive_int, default=10_000_000,
                       help="refuse models with more parameters (a safety net; matrix-free costs grow about "
                            "linearly in P)")
    group.add_argument("--threads", type=positive_int, default=1,
                       help="torch threads (1: the matrices are small, and threads contend on busy machines)")
    group.add_argument("--format", type=_formats, default="png", help="figure formats, comma-separated: png,svg,pdf")
    group.add_argument("--save-curvature", choices=("approximations", "all", "none"), default="approximations",
                       help="what curvature.nc holds: the approximations (compact), also the dense reference "
                            "(P² values), or nothing")
    group.add_argument("--storage", choices=("float32", "float64"), default="float32",
                       help="precision of curvature.nc (compressed either way)")
    group.add_argument("--smoke", action="store_true",
                       help="tiny and fast (CI): 200 samples, hidden 6, 4 steps, 32 measurement samples "
                            "(options given explicitly are kept)")
    parser.set_defaults(run=run)
    parser.set_defaults(option_dests={o: a.dest for a in parser._actions for o in a.option_strings})


def _given(args: argparse.Namespace) -> set[str]:
    """The options given on the command line (as ``dest`` names; argparse's prefixes such as ``--samp`` too)."""
    options = args.option_dests
    given = set()
    for token in getattr(args, "argv", ()):
        name = token.split("=", 1)[0]
        matches = [o for o in options if o == name] or [o for o in options if name.startswith("--") and
                                                        o.startswith(name)]
        if len(matches) == 1:
            given.add(options[matches[0]])
    return given


def _replace_defaults(args: argparse.Namespace, values: dict) -> None:
    """Set ``values`` on ``args`` for the options not given on the command line."""
    given = _given(args)
    for key, value in values.items():
        if key not in given:
            setattr(args, key, value)


def _validate(args: argparse.Namespace) -> list[str]:
    _replace_defaults(args, PRESETS.get(args.model, {}))
    if args.smoke:
        _replace_defaults(args, SMOKE)
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
    import sys

    from curvlab.cli.analysis_outputs import (
        group_labels,
        write_curvature,
        write_figures,
        write_summary,
    )

    start = time.perf_counter()
    quantities = _validate(args)
    torch.set_num_threads(args.threads)
    args.progress = args.progress and sys.stderr.isatty()  # no escape codes in logs and pipes
    data, model, loss_fn = build_setup(args)
    if args.state_dict is not None:
        _load_state(model, args.state_dict)
    size = curvlab.Partition.from_model(model, args.partition).num_params  # bad partitions fail here, early
    where = f"{args.model} on {args.data or args.dataset}"
    if size > args.max_params:
        raise ValueError(f"{where} has P={size:,} parameters, more than --max-params {args.max_params:,}; "
                         f"raise --max-params to at least {size} (the matrix-free metrics cost about "
                         f"{args.probes} products per block plus Lanczos and CG)")
    method = curvlab.analysis.choose_method(size, args.method, args.dense_limit)
    if method == "dense" and size > args.dense_limit:
        raise ValueError(f"{where} has P={size:,} parameters, more than --dense-limit {args.dense_limit:,}: the "
                         f"dense reference would be [{size}, {size}] and cost O(P³). Use --method auto (the "
                         "default: matrix-free above the limit) or raise --dense-limit")
    curvlab.Partition.from_model(model, args.summary_partition)
    largest = max(g.size for g in curvlab.Partition.from_model(model, args.partition).groups)
    if method == "matrix-free" and args.quantities == ",".join(DEFAULT_QUANTITIES) and largest > BLOCK_LIMIT:
        # exact dense blocks of this size cost largest² memory and largest³ per solve: not a default
        quantities = [q for q in quantities if q not in ("ggn_block", "hessian_block")]
        print(f"note: leaving ggn_block out of the default quantities (a block has {largest:,} parameters); "
              "name it in --quantities to include it")
    out = prepare_output(args.out, args.overwrite)
    config = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
              for k, v in vars(args).items() if k not in ("run", "option_dests", "argv")}
    attrs = curvlab.provenance.provenance(model=model, loss_fn=loss_fn, batch_size=args.samples,
                                          dtype=DTYPES[args.dtype], config=config, dataset=args.data or args.dataset)
    labels = group_labels(curvlab.Partition.from_model(model, args.partition), model)
    attrs["group_labels"] = json.dumps(labels)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    inputs, targets = data.train[0][: args.samples], data.train[1][: args.samples]
    every = args.measure_every or max(args.steps // 2, 1)
    when = sorted({*range(0, args.steps + 1, every), args.steps})
    state: dict = {"measurements": []}
    classification = data.task == "classification"

    def evaluate(x, y) -> dict[str, float]:
        training = model.training
        model.eval()  # BatchNorm with its running statistics, as a trained model is evaluated
        try:
            with torch.no_grad():
                outputs = model(x)  # [N, C] or, for sequences, [N, C, T]
                values = {"loss": float(loss_fn(outputs, y))}
                if classification:
                    values["accuracy"] = float((outputs.argmax(1) == y).to(torch.float64).mean())
        finally:
            model.train(training)
        return values

    def measure_now() -> object:
        tic = time.perf_counter()
        result = curvlab.analysis.measure(
            model, loss_fn, (inputs, targets), reference=args.reference, approximations=quantities,
            partition=args.partition, summary_partition=args.summary_partition, dampings=args.dampings,
            k=args.top_k, mc_samples=args.mc_samples, seed=args.seed, attrs=attrs, method=method,
            dense_limit=args.dense_limit, num_probes=args.probes, progress=args.progress)
        state["measurements"].append(result)
        quality = result.quality
        for split, (x, y) in (("train", (inputs, targets)), ("test", data.test)):
            for key, value in evaluate(x, y).items():
                quality[f"{split}_{key}"] = value
        if not args.progress:
            print(f"measured step {when[len(state['measurements']) - 1]} ({len(state['measurements'])}/{len(when)}, "
                  f"{method}, P={size:,}) in {time.perf_counter() - tic:.1f} s", flush=True)
        return quality

    bar = tqdm(total=len(when), desc="measurements", disable=not args.progress, position=1, dynamic_ncols=True)
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
    files = ["quality.nc"]
    curvature = write_curvature(out, last, attrs, when[-1], args)
    files += [curvature] if curvature else []
    figures = write_figures(out, tracker.dataset, state["measurements"], when, args, labels)
    write_summary(out, tracker.dataset, files[1:] + figures, time.perf_counter() - start, args, size)
    print(f"wrote {out}/: {', '.join(files)}, summary.md and {len(figures)} figures "
          f"({method} metrics, P={size:,}) in {time.perf_counter() - start:.0f} s")
    return 0
