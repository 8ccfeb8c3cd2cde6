"""Time each exact reference of :mod:`curvlab.reference` on a ~10k-parameter MLP and print a table.

Default problem: MLP 40-128-40-10 (tanh, 10,818 parameters), CrossEntropyLoss(mean), 256 samples,
float64, one thread. After a warm-up of every reference on a tiny model, each is run ``--warmup`` times
untimed and ``--repeats`` times timed (default: once; the heavy ones take tens of seconds); the
table gives the median wall time and, for scale, its ratio to one mini-batch gradient. The Hessian is
also timed at several ``chunk_size`` values (columns per vmapped batch of Hessian-vector products).

    python benchmarks/references.py [--repeats 1] [--samples 256] [--hidden 128 40] [--threads 1]

Timings are wall-clock and depend on the machine's load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import curvlab.reference as ref
from curvlab.models import mlp


def median_time(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--inputs", type=int, default=40)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 40])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[8, 128, 512])
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = mlp(args.inputs, args.hidden, args.classes, "tanh").double()
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(args.samples, args.inputs, dtype=torch.float64)
    y = torch.randint(0, args.classes, (args.samples,))
    num_params = sum(p.numel() for p in model.parameters())

    runs: list[tuple[str, Callable[[], object]]] = [
        ("gradient", lambda: ref.gradient(model, loss_fn, x, y)),
        ("jacobian [N, C, P]", lambda: ref.jacobian(model, x)),
        ("per_sample_gradients [N, P]", lambda: ref.per_sample_gradients(model, loss_fn, x, y)),
        ("hessian", lambda: ref.hessian(model, loss_fn, x, y)),
        *[
            (
                f"hessian (chunk_size={c})",
                lambda c=c: ref.hessian(model, loss_fn, x, y, chunk_size=c),
            )
            for c in args.chunk_sizes
        ],
        ("ggn", lambda: ref.ggn(model, loss_fn, x, y)),
        ("fisher", lambda: ref.fisher(model, loss_fn, x, y)),
        ("fisher_mc (mc_samples=1)", lambda: ref.fisher_mc(model, loss_fn, x, y, mc_samples=1)),
        ("empirical_fisher", lambda: ref.empirical_fisher(model, loss_fn, x, y)),
    ]
    # First calls of torch.func transforms pay one-off set-up costs: pay them on a tiny problem.
    tiny = mlp(3, [4], 2, "tanh").double()
    tiny_x, tiny_y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
    for fn in (ref.hessian, ref.ggn, ref.fisher, ref.fisher_mc, ref.empirical_fisher, ref.gradient):
        fn(tiny, loss_fn, tiny_x, tiny_y)
    ref.jacobian(tiny, tiny_x)

    sizes = "-".join(str(s) for s in (args.inputs, *args.hidden, args.classes))
    print(
        f"MLP {sizes} tanh, P = {num_params}, N = {args.samples}, CrossEntropyLoss(mean), float64, "
        f"{args.threads} thread(s), median of {args.repeats} after {args.warmup} warm-up"
    )
    print(f"{'reference':<30} {'seconds':>10} {'x gradient':>11}")
    baseline = None
    for name, fn in runs:
        seconds = median_time(fn, args.repeats, args.warmup)
        baseline = baseline or seconds
        print(f"{name:<30} {seconds:>10.4f} {seconds / baseline:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
