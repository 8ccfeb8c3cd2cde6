"""Cost of one optimiser step, amortised, as a ratio to a plain SGD step (issue 13, "Cost").

Problems: the MNIST MLP 784-128-128-10 (tanh, cross-entropy) and the MNIST autoencoder
784-256-64-256-784 (sigmoid, BCE with logits), batch ``--batch`` (250), float32, one thread. Data: the
shared extracts (``--mnist``/``--images``, default ../shared/data), or random inputs of the same shape.

SGN runs exactly 3 CG iterations (``cg_tol=0``). Each method runs ``--steps`` consecutive steps
(default 40, so KFAC refreshes its inverses twice at its default period 20) on a stream of batches
after ``--warmup`` untimed steps; the cost is the mean CPU time (``time.process_time``) and wall time
per step. The reference is ``torch.optim.SGD`` (forward,
backward, update), measured the same way in the same process right after each method in each of
``--repeats`` rounds (paired, so that the machine's drift cancels); the reported ratio is the median of
the paired ratios. Targets (issue 13): KFAC ≤ 3×, SGN with 3 CG iterations ≤ 6×.

Usage:
    python benchmarks/optimizers.py [--problems mlp,autoencoder] [--methods "sgd|kfac (defaults)"]
                                    [--batch 250] [--steps 40] [--repeats 3]
                                    [--json OUT] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curvlab import optim  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def _images(path: Path, n: int) -> torch.Tensor:
    if path.is_file():
        with np.load(path) as data:
            key = "images" if "images" in data.files else "data"
            x = torch.tensor(data[key][:n].reshape(n, -1), dtype=torch.float32) / 255.0
        return x
    return torch.rand(n, 784)


def problems(batch: int, quick: bool):
    n = 5000 // batch * batch  # a stream of batches (the shared extract's 5,000 images), not a memorised few
    width = (32, 32) if quick else (128, 128)
    ae = (32, 8) if quick else (256, 64)
    x = _images(SHARED / "mnist-5k-labeled.npz", n)
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0))
    if (SHARED / "mnist-5k-labeled.npz").is_file():
        with np.load(SHARED / "mnist-5k-labeled.npz") as data:
            labels = torch.tensor(data["labels"][:n], dtype=torch.int64)
    images = _images(SHARED / "mnist-10k-images.npz", n)

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(784, width[0]), nn.Tanh(), nn.Linear(width[0], width[1]), nn.Tanh(),
                             nn.Linear(width[1], 10))

    def autoencoder():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(784, ae[0]), nn.Sigmoid(), nn.Linear(ae[0], ae[1]), nn.Sigmoid(),
                             nn.Linear(ae[1], ae[0]), nn.Sigmoid(), nn.Linear(ae[0], 784))

    return {
        "mlp": (mlp, nn.CrossEntropyLoss(), [(x[i:i + batch], labels[i:i + batch]) for i in range(0, n, batch)]),
        "autoencoder": (autoencoder, nn.BCEWithLogitsLoss(),
                        [(images[i:i + batch], images[i:i + batch]) for i in range(0, n, batch)]),
    }


class TorchStepper:
    """A torch.optim optimiser stepped like a curvlab one: ``step(x, y)``."""

    def __init__(self, model, loss_fn, cls, **kw):
        self.model, self.loss_fn, self.opt = model, loss_fn, cls(model.parameters(), **kw)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.detach()


METHODS = {
    "sgd": lambda m, l: TorchStepper(m, l, torch.optim.SGD, lr=0.1),
    "adam": lambda m, l: TorchStepper(m, l, torch.optim.Adam, lr=1e-3),
    "kfac (defaults)": lambda m, l: optim.KFAC(m, l),
    "kfac (stats every 10)": lambda m, l: optim.KFAC(m, l, stats_period=10),
    "kflr (stats every 10)": lambda m, l: optim.KFAC(m, l, curvature="kflr", stats_period=10),
    "kfac (stats 10, rescale 5)": lambda m, l: optim.KFAC(m, l, stats_period=10, rescale_period=5),
    "kfac (kl-clip, stats 10)": lambda m, l: optim.KFAC(m, l, stats_period=10, step_rescaling="kl-clip"),
    "kfac (kl-clip, stats 10, inverses 100)": lambda m, l: optim.KFAC(m, l, stats_period=10, inverse_period=100,
                                                                     step_rescaling="kl-clip"),
    # the periods and fixed damping of the public reference implementation (alecwangcq/KFAC-Pytorch)
    "kfac (reference: kl-clip, stats 10, inverses 100, fixed damping)": lambda m, l: optim.KFAC(
        m, l, stats_period=10, inverse_period=100, step_rescaling="kl-clip", adaptive_damping=False),
    "sgn (3 CG)": lambda m, l: optim.SGN(m, l, cg_iters=3, cg_tol=0.0),
    "sgn (3 CG; no TR or LS)": lambda m, l: optim.SGN(m, l, cg_iters=3, cg_tol=0.0, trust_region=False, line_search=False),
    "acp": lambda m, l: optim.ACP(m, l),
    "newton-summary": lambda m, l: optim.NewtonSummary(m, l),
}
TARGETS = {"kfac (defaults)": 3.0, "kfac (stats every 10)": 3.0, "kfac (stats 10, rescale 5)": 3.0,
           "kfac (kl-clip, stats 10)": 3.0, "kfac (kl-clip, stats 10, inverses 100)": 3.0,
           "kfac (reference: kl-clip, stats 10, inverses 100, fixed damping)": 3.0, "sgn (3 CG)": 6.0, "sgn (3 CG; no TR or LS)": 6.0}


def run_method(factory, build, loss_fn, batches, steps: int, warmup: int) -> tuple[float, float]:
    model = build()
    stepper = factory(model, loss_fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(warmup):
            stepper.step(*batches[i % len(batches)])
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(steps):
            stepper.step(*batches[(warmup + i) % len(batches)])
        return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="mlp,autoencoder")
    parser.add_argument("--methods", default="|".join(METHODS), help="names separated by |")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny widths, batch 32, 4 steps, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.repeats, args.warmup = 32, 4, 1, 1
    torch.set_num_threads(args.threads)
    names = [m for m in args.methods.split("|") if m]
    if "sgd" not in names:
        names.insert(0, "sgd")
    report = {"meta": {"batch": args.batch, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                       "quick": args.quick, "torch": torch.__version__}, "rows": []}
    for pname in args.problems.split(","):
        build, loss_fn, batches = problems(args.batch, args.quick)[pname]
        rounds = {name: [] for name in names}
        paired = {name: [] for name in names}  # the SGD measurement taken right after each method's
        for _ in range(args.repeats):
            for name in names:
                timing = run_method(METHODS[name], build, loss_fn, batches, args.steps, args.warmup)
                paired[name].append(timing if name == "sgd" else
                                    run_method(METHODS["sgd"], build, loss_fn, batches, args.steps, args.warmup))
                rounds[name].append(timing)
        print(f"\n{pname}: batch {args.batch}, {args.steps} steps, {args.repeats} rounds, threads={args.threads}")
        print(f"{'method':24s} {'ms/step (cpu)':>14s} {'ratio cpu':>10s} {'ratio wall':>11s} {'target':>7s}")
        for name in names:
            cpu = [r[0] for r in rounds[name]]
            wall = [r[1] for r in rounds[name]]
            base_cpu, base_wall = [r[0] for r in paired[name]], [r[1] for r in paired[name]]
            ratio_cpu = statistics.median(c / b for c, b in zip(cpu, base_cpu, strict=True))
            ratio_wall = statistics.median(c / b for c, b in zip(wall, base_wall, strict=True))
            target = TARGETS.get(name)
            row = {"problem": pname, "method": name, "cpu_ms": 1e3 * statistics.median(cpu),
                   "wall_ms": 1e3 * statistics.median(wall), "ratio_cpu": ratio_cpu, "ratio_wall": ratio_wall,
                   "target": target, "meets_target": None if target is None else ratio_cpu <= target}
            report["rows"].append(row)
            print(f"{name:24s} {row['cpu_ms']:14.2f} {ratio_cpu:10.2f} {ratio_wall:11.2f} "
                  f"{'' if target is None else f'≤{target:g}':>7s}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
