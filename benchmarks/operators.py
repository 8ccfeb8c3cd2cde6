"""Cost of matrix-free curvature products, as a ratio to one gradient (forward + backward).

Setting (issue 4): MLP 784-256-256-10 with sigmoid activations, cross-entropy, batch 128, float32, CPU.
Each row is the median over ``--repeats`` rounds of t(product) / t(gradient), the gradient (one forward +
backward pass, ``torch.autograd.grad`` of the loss) being timed right before each product; rounds cycle
through all rows (after two warm-up calls each), so load changes on a shared machine hit all rows alike.
Rows: curvlab's GGN (cached / uncached), Hessian (double backward cached / uncached, forward-over-reverse),
the first product including construction (curvlab and curvlinops: what a user needing a handful of
products pays; the steady-state rows reuse one operator),
MC Fisher, empirical Fisher (both strategies), complex step (complex64: for timing only), and the peers
BackPACK (``backpack.hessianfree``: ggn_vector_product, hessian_vector_product), curvlinops
(``GGNLinearOperator``, ``HessianLinearOperator``) and nngeometry (``FIM`` with ``PMatImplicit``).

Usage: ``python benchmarks/operators.py [--quick] [--repeats R] [--batch-size N] [--threads T] [--clock C]``.
``--clock cpu --threads 1`` times the process's CPU time, which a loaded machine disturbs much less.
``--quick`` (smoke test) uses a small model and few repeats. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from curvlab.models import mlp
from curvlab.operators import (
    ComplexStepHessianOperator,
    EmpiricalFisherOperator,
    FisherMCOperator,
    GGNOperator,
    HessianOperator,
)

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def timed(fn: Callable[[], object]) -> float:
    start = _clock()
    fn()
    return _clock() - start


def paired_ratios(
    rows: dict[str, Callable[[], object]], gradient: Callable[[], object], repeats: int
):
    """Median over rounds of t(row) / t(gradient), each row timed right after a gradient.

    Rounds go over all rows in turn, so a change of machine load hits every row alike; pairing each
    product with a gradient timed just before it cancels most of the remaining drift.
    """
    for fn in (gradient, *rows.values()):  # warm-up: caches, linearisation, allocator
        fn()
        fn()
    ratios: dict[str, list[float]] = {label: [] for label in rows}
    base: list[float] = []
    for _ in range(repeats):
        for label, fn in rows.items():
            t_grad = timed(gradient)
            base.append(t_grad)
            ratios[label].append(timed(fn) / t_grad)
    return statistics.median(base), {label: statistics.median(r) for label, r in ratios.items()}


def peer_rows(model, loss_fn, x, y, v_list, v_flat) -> dict[str, Callable[[], object]]:
    """Products of the peer libraries, each recomputing its forward pass as its API requires."""
    rows: dict[str, Callable[[], object]] = {}
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        from backpack.hessianfree.ggnvp import ggn_vector_product
        from backpack.hessianfree.hvp import hessian_vector_product

        def backpack_ggn():
            out = model(x)
            return ggn_vector_product(loss_fn(out, y), out, model, v_list)

        def backpack_hvp():
            return hessian_vector_product(loss_fn(model(x), y), params, v_list)

        rows["backpack GGN-vp (hessianfree)"] = backpack_ggn
        rows["backpack HVP (hessianfree)"] = backpack_hvp
    except ImportError:
        pass
    try:
        from curvlinops import GGNLinearOperator, HessianLinearOperator

        ggn = GGNLinearOperator(model, loss_fn, params, [(x, y)], check_deterministic=False)
        hess = HessianLinearOperator(model, loss_fn, params, [(x, y)], check_deterministic=False)
        rows["curvlinops GGNLinearOperator @"] = lambda: ggn @ v_flat
        rows["curvlinops HessianLinearOperator @"] = lambda: hess @ v_flat
    except ImportError:
        pass
    try:
        from nngeometry.metrics import FIM
        from nngeometry.object import PMatImplicit
        from nngeometry.object.vector import PVector

        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=x.shape[0]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fim = FIM(model, loader, PMatImplicit, variant="classif_logits", device="cpu")
        pv = PVector.from_model(model).__class__(fim.generator.layer_collection, vector_repr=v_flat)
        rows["nngeometry FIM PMatImplicit.mv"] = lambda: fim.mv(pv)
    except Exception as err:  # noqa: BLE001 - optional peer, API differs between versions
        rows[f"nngeometry (unavailable: {type(err).__name__})"] = None
    return rows


def first_products(model, loss_fn, data, v_flat) -> dict[str, Callable[[], object]]:
    """Building an operator and taking its first product: what a user needing a few products pays."""
    rows = {
        "first product: curvlab GGNOperator (build + 1 product)": lambda: GGNOperator(
            model, loss_fn, data
        ) @ v_flat,
        "first product: curvlab HessianOperator (build + 1 product)": lambda: HessianOperator(
            model, loss_fn, data
        ) @ v_flat,
    }
    try:
        from curvlinops import GGNLinearOperator, HessianLinearOperator

        params = [p for p in model.parameters() if p.requires_grad]
        for name, cls in (("GGN", GGNLinearOperator), ("Hessian", HessianLinearOperator)):
            rows[f"first product: curvlinops {name}LinearOperator (build + 1 product)"] = (
                lambda cls=cls: cls(model, loss_fn, params, [data], check_deterministic=False)
                @ v_flat
            )
    except ImportError:
        pass
    return rows


def main(argv=None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small model, few repeats (smoke test)"
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or the process's CPU time (robust on a loaded machine; use with --threads 1)",
    )
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 30)
    torch.manual_seed(0)
    sizes = (64, (32, 32), 10) if args.quick else (784, (256, 256), 10)
    batch = 16 if args.quick else args.batch_size
    model = mlp(sizes[0], sizes[1], sizes[2], activation="sigmoid")
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.randn(batch, sizes[0]), torch.randint(0, sizes[2], (batch,))
    params = [p for p in model.parameters()]
    num_params = sum(p.numel() for p in params)
    v_flat = torch.randn(num_params)
    v_list = [
        t.reshape(p.shape)
        for t, p in zip(v_flat.split([p.numel() for p in params]), params, strict=False)
    ]

    def gradient():
        return torch.autograd.grad(loss_fn(model(x), y), params)

    data = (x, y)
    ours: dict[str, Callable[[], object]] = {}
    for label, op in [
        ("curvlab GGN-vp (cached)", GGNOperator(model, loss_fn, data)),
        ("curvlab GGN-vp (uncached)", GGNOperator(model, loss_fn, data, cache=False)),
        ("curvlab HVP double backward (cached)", HessianOperator(model, loss_fn, data)),
        (
            "curvlab HVP double backward (uncached)",
            HessianOperator(model, loss_fn, data, cache=False),
        ),
        (
            "curvlab HVP forward-over-reverse",
            HessianOperator(model, loss_fn, data, method="forward_over_reverse"),
        ),
        (
            "curvlab MC Fisher-vp (M=1, cached)",
            FisherMCOperator(model, loss_fn, data, generator=torch.Generator().manual_seed(0)),
        ),
        (
            "curvlab empirical Fisher-vp (per-sample gradients)",
            EmpiricalFisherOperator(model, loss_fn, data, strategy="per_sample_gradients"),
        ),
        (
            "curvlab empirical Fisher-vp (Jacobian products)",
            EmpiricalFisherOperator(model, loss_fn, data, strategy="jacobian_products"),
        ),
        ("curvlab complex-step HVP (complex64)", ComplexStepHessianOperator(model, loss_fn, data)),
    ]:
        ours[label] = lambda op=op: op @ v_flat
    rows = {**ours, **peer_rows(model, loss_fn, x, y, v_list, v_flat), **first_products(
        model, loss_fn, data, v_flat
    )}
    unavailable = [label for label, fn in rows.items() if fn is None]
    base, ratios = paired_ratios(
        {k: f for k, f in rows.items() if f is not None}, gradient, repeats
    )
    print(
        f"MLP {sizes[0]}-{'-'.join(map(str, sizes[1]))}-{sizes[2]} sigmoid, CE, batch {batch}, float32, "
        f"P={num_params}, torch {torch.__version__}, threads={torch.get_num_threads()}, repeats={repeats}, "
        f"clock={args.clock}"
    )
    print(f"{'product':<55} {'ratio':>7}")
    print(f"{'one gradient (forward + backward)':<55} {1.0:>7.2f}   (median {base * 1e3:.2f} ms)")
    results = [("one gradient (forward + backward)", 1.0)]
    for label, ratio in ratios.items():
        results.append((label, ratio))
        print(f"{label:<55} {ratio:>7.2f}")
    for label in unavailable:
        print(f"{label:<55} {'-':>7}")
    print(
        "targets: GGN-vp <= 1.5, HVP <= 1.6 gradients (issue 9: no slower than before); "
        "timings on a shared machine are noisy"
    )
    return results


if __name__ == "__main__":
    main()
