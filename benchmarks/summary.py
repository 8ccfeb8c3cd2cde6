"""Cost of the GroupedNewton summary: the fast routes against S double-backward HVPs, in one process.

Problem (Wolinski's MNIST setting): MLP 784-1024-200-100-10 with tanh, cross-entropy, canonical
partition (S = 8 groups), batch 1000, float32, direction = the gradient. Data: random MNIST-shaped
inputs, or the first ``--batch`` images of ``--mnist PATH`` (e.g. ``../shared/data/mnist-5k-labeled.npz``).

``--model cnn`` / ``resnet`` take the engine benchmark's problems d and e instead (their own batch of 64):
on the ResNet, which is not a chain, ``layered`` runs its hook form.

The reference is GroupedNewton's own route (``method="double_backward"``: S double-backward HVPs,
row i differentiated only w.r.t. groups j >= i); ``--full-hvps`` adds the unpruned variant (S HVPs
w.r.t. all parameters) as a second baseline. For each order (2: ḡ, H̄; 3: also D³) every method
computes the summary ``--repeats`` times. The runs
are interleaved (reference, then each method, per repetition), so load changes on a shared machine
hit them alike; the reported ratio is the median over repetitions of time(method) / time(reference).
Both wall time and the process's CPU time are recorded. The script also checks that the methods agree.

Usage:
    python benchmarks/summary.py [--model mlp|cnn|resnet] [--batch 1000] [--repeats 5] [--threads 1] [--orders 2,3]
                                 [--methods layered,functional] [--full-hvps] [--mnist PATH]
                                 [--json OUT] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curvlab.losses import loss_adapter  # noqa: E402
from curvlab.models import mlp  # noqa: E402
from curvlab.partition import Partition  # noqa: E402
from curvlab.summary import gradient_direction, grouped_newton_summary  # noqa: E402

REFERENCE = "double_backward"
METHODS = ("layered", "functional", "double_backward")
FULL_HVPS = "full_hvps"  # order 2 only: S unpruned double-backward HVPs (the literal textbook route)


def full_hvp_summary(model: nn.Module, loss_fn: nn.Module, x, y, direction, partition: Partition):
    """ḡ and H̄ from S Hessian-vector products H u_s, each a double backward w.r.t. *all* parameters
    (unlike GroupedNewton's code, which differentiates ḡ_i only w.r.t. groups j >= i). Whole-tensor
    groups only; used as a second, weaker baseline."""
    params = [p for p in model.parameters() if p.requires_grad]
    index = {name: k for k, name in enumerate(info.name for info in partition.params)}
    members = [[index[info.name] for info in g.params] for g in partition.groups]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)

    def dots(tensors, group):
        return sum((tensors[k] * direction[k]).sum() for k in group)

    gbar = torch.stack([dots(grads, g) for g in members]).detach()
    columns = []
    for g in members:
        hv = torch.autograd.grad(dots(grads, g), params, retain_graph=True)
        columns.append(torch.stack([dots(hv, other) for other in members]))
    return gbar, torch.stack(columns, 1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--orders", default="2,3")
    p.add_argument("--methods", default="layered", help=f"compared with {REFERENCE}: {', '.join(METHODS[:2])}")
    p.add_argument("--mnist", type=Path, default=None, help=".npz with images/labels (else random data)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--full-hvps", action="store_true",
                   help=f"also time S unpruned double-backward HVPs ({FULL_HVPS}, order 2)")
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn", "resnet"),
                   help="mlp: the MNIST MLP below; cnn / resnet: engine problems d / e (CIFAR CNN, CIFAR ResNet)")
    p.add_argument("--quick", action="store_true", help="tiny MLP 64-32-16-10, batch 64, 1 repeat (smoke test)")
    args = p.parse_args(argv)
    args.orders = [int(o) for o in args.orders.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    for m in args.methods:
        if m not in METHODS[:2]:
            p.error(f"unknown method {m!r}; choose from {', '.join(METHODS[:2])}")
    if args.quick:
        args.batch, args.repeats, args.warmup = min(args.batch, 64), 1, 0
    return args


def build(args) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    torch.manual_seed(0)
    if args.model != "mlp":
        from benchmarks._problems import build_problem  # noqa: PLC0415

        problem = build_problem({"cnn": "d", "resnet": "e"}[args.model], quick=args.quick)
        return problem.model, problem.inputs, problem.targets, problem.description
    if args.quick:
        return mlp(64, (32, 16), 10), torch.randn(args.batch, 64), torch.randint(0, 10, (args.batch,)), "random"
    model = mlp(784, (1024, 200, 100), 10, "tanh")
    if args.mnist is not None:
        raw = np.load(args.mnist)
        x = torch.from_numpy(raw["images"][: args.batch].reshape(-1, 784).astype(np.float32))
        x = x / 255.0 if x.max() > 1 else x
        y = torch.from_numpy(raw["labels"][: args.batch].astype(np.int64))
        return model, x, y, str(args.mnist)
    return model, torch.rand(args.batch, 784), torch.randint(0, 10, (args.batch,)), "random"


class _AsSummary:
    def __init__(self, gbar, hbar):
        self.gbar, self.hbar, self.d3 = gbar, hbar, None


def _timed(fn):
    gc.collect()
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - wall, time.process_time() - cpu
    finally:
        gc.enable()


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model, x, y, source = build(args)
    loss_fn = nn.CrossEntropyLoss()
    direction = gradient_direction(model, loss_adapter(loss_fn), [(x, y)])
    partition = Partition.from_model(model, "canonical")  # built once: its cost is not the summary's
    methods = [REFERENCE, *args.methods]
    report = {
        "meta": {
            "model": source if args.model != "mlp" else
            ("MLP 64-32-16-10 tanh" if args.quick else "MLP 784-1024-200-100-10 tanh"),
            "batch": int(x.shape[0]), "data": source, "dtype": "float32", "partition": "canonical",
            "threads": torch.get_num_threads(), "repeats": args.repeats, "torch": torch.__version__,
        },
        "orders": [],
    }

    def plain():
        params = [p for p in model.parameters()]
        return torch.autograd.grad(loss_fn(model(x), y), params)

    for _ in range(args.warmup):
        plain()
    base = statistics.median(_timed(plain)[1] for _ in range(max(args.repeats, 1)))
    report["meta"]["gradient_ms"] = 1e3 * base

    for order in args.orders:
        call = {
            m: (lambda m=m, order=order: grouped_newton_summary(
                model, loss_fn, (x, y), direction=direction, partition=partition, order=order, method=m))
            for m in methods
        }
        if order == 2 and args.full_hvps:
            call[FULL_HVPS] = lambda: _AsSummary(
                *full_hvp_summary(model, loss_fn, x, y, direction, partition))
        names = list(call)
        for _ in range(args.warmup):
            for m in names:
                call[m]()
        wall = {m: [] for m in names}
        cpu = {m: [] for m in names}
        results = {}
        for _ in range(args.repeats):
            for m in names:
                results[m], w, c = _timed(call[m])
                wall[m].append(w)
                cpu[m].append(c)
        ref = results[REFERENCE]
        rows = []
        for m in names:
            res = results[m]
            scale = float(ref.hbar.abs().max())
            rows.append({
                "method": m,
                "wall_ms": 1e3 * statistics.median(wall[m]),
                "cpu_ms": 1e3 * statistics.median(cpu[m]),
                "ratio_wall": statistics.median(a / b for a, b in zip(wall[m], wall[REFERENCE], strict=True)),
                "ratio_cpu": statistics.median(a / b for a, b in zip(cpu[m], cpu[REFERENCE], strict=True)),
                "hbar_rel_diff": float((res.hbar - ref.hbar).abs().max()) / scale,
                "d3_rel_diff": None if ref.d3 is None or res.d3 is None else
                float((res.d3 - ref.d3).abs().max() / ref.d3.abs().max()),
            })
        report["orders"].append({"order": order, "rows": rows})
    return report


def print_report(report: dict) -> None:
    meta = report["meta"]
    print(f"GroupedNewton summary cost: {meta['model']}, batch {meta['batch']} ({meta['data']}), "
          f"{meta['dtype']}, {meta['partition']} partition, torch {meta['torch']}, "
          f"threads={meta['threads']}, repeats={meta['repeats']}")
    print(f"plain forward+backward (gradient): {meta['gradient_ms']:.1f} ms")
    print(f"{'order':>5} {'method':>16} {'wall ms':>9} {'cpu ms':>9} {'ratio wall':>10} {'ratio cpu':>9} "
          f"{'x gradient':>10} {'max rel diff H̄':>15} {'D³':>9}")
    for block in report["orders"]:
        for r in block["rows"]:
            d3 = "" if r["d3_rel_diff"] is None else f"{r['d3_rel_diff']:.1e}"
            print(f"{block['order']:>5} {r['method']:>16} {r['wall_ms']:9.1f} {r['cpu_ms']:9.1f} "
                  f"{r['ratio_wall']:10.2f} {r['ratio_cpu']:9.2f} {r['wall_ms'] / meta['gradient_ms']:10.1f} "
                  f"{r['hbar_rel_diff']:15.1e} {d3:>9}")
    for block in report["orders"]:
        rows = {r["method"]: r for r in block["rows"]}
        if FULL_HVPS in rows:
            for m in (m for m in rows if m not in (REFERENCE, FULL_HVPS)):
                print(f"order {block['order']}: {m} / {FULL_HVPS} = "
                      f"{rows[m]['ratio_wall'] / rows[FULL_HVPS]['ratio_wall']:.2f} (wall), "
                      f"{rows[m]['ratio_cpu'] / rows[FULL_HVPS]['ratio_cpu']:.2f} (cpu)")
    print(f"ratios: median over interleaved repetitions of time(method) / time({REFERENCE}); "
          "target <= 0.5 for order 2. Timings on a shared machine are noisy.")


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
