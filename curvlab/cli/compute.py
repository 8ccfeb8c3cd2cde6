"""``curvlab compute``: train a small model briefly, then write exact dense curvature references as netCDF.

Each reference is a dense [P, P] matrix (P² numbers, O(P²) products to build), so models with more than
``--max-params`` parameters are refused; ``curvlab analyze`` compares approximations with the exact
matrices of larger models matrix-free.

Example:
    curvlab compute --out curvlab-out            # digits MLP 64-16-16-10 (P = 1,482), 20 SGD steps, 256 samples
    curvlab show curvlab-out/ggn.nc
"""

from __future__ import annotations

import argparse
import json

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

REFERENCES = ("hessian", "ggn", "fisher", "empirical_fisher")


def add_parser(sub) -> None:
    """Register ``curvlab compute`` on the sub-parsers ``sub``."""
    parser = sub.add_parser("compute", help="exact dense curvature references of a briefly trained model",
                            description=plain(__doc__), formatter_class=HelpFormatter)
    add_data_options(parser, hidden="16,16")
    add_output_options(parser, "curvlab-out")
    parser.add_argument("--steps", type=non_negative_int, default=20, help="SGD steps before computing")
    parser.add_argument("--samples", type=positive_int, default=256, help="training samples to measure on")
    parser.add_argument("--quantities", default=",".join(REFERENCES),
                        help=f"comma-separated subset of {','.join(REFERENCES)}")
    parser.add_argument("--partition", default="layer",
                        help="groups labelling the matrices: canonical, layer, module-d, trivial, blocks-k or entries")
    parser.add_argument("--max-params", type=positive_int, default=6000,
                        help="refuse models with more parameters (each reference is a dense [P, P] matrix)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Train briefly, compute the references and write one netCDF file per quantity; returns 0."""
    quantities = [q.strip() for q in args.quantities.split(",") if q.strip()]
    unknown = sorted(set(quantities) - set(REFERENCES))
    if unknown or not quantities:
        raise ValueError(f"unknown quantities {unknown}; choose from {', '.join(REFERENCES)}")
    import sys

    args.progress = args.progress and sys.stderr.isatty()  # no escape codes in logs and pipes
    data, model, loss_fn = build_setup(args)
    partition = curvlab.Partition.from_model(model, args.partition)
    size = partition.num_params
    if size > args.max_params:
        gigabytes = size * size * (4 if args.dtype == "float32" else 8) / 1e9
        raise ValueError(
            f"{args.model} on {args.data or args.dataset} has P={size:,} parameters, more than --max-params "
            f"{args.max_params:,}: each reference would be a dense [{size}, {size}] matrix ({gigabytes:.1f} GB). "
            f"Compare approximations with it matrix-free by running `curvlab analyze` with the same model options, "
            f"or raise --max-params to {size}")
    out = prepare_output(args.out, args.overwrite)
    train_sgd(model, loss_fn, data.train, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
              progress=args.progress)
    inputs, targets = data.train[0][: args.samples], data.train[1][: args.samples]
    config = {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list, tuple)) else v)
              for k, v in vars(args).items() if k != "run"}
    attrs = curvlab.provenance.provenance(model=model, loss_fn=loss_fn, batch_size=len(inputs),
                                          dtype=DTYPES[args.dtype], config=config, dataset=args.dataset)
    for name in quantities:
        matrix = getattr(curvlab.reference, name)(model, loss_fn, inputs, targets)
        rep = curvlab.DenseCurvature(matrix, partition, quantity=name, attrs=attrs)
        path = out / f"{name}.nc"
        curvlab.save(rep, path, overwrite=args.overwrite)
        print(f"wrote {path}  [{matrix.shape[0]} x {matrix.shape[1]}, trace {float(matrix.trace()):.4g}]")
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return 0
