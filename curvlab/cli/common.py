"""Options and steps shared by the sub-commands: data, model, dtype, output directory, short training."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import curvlab

__all__ = [
    "add_data_options",
    "add_output_options",
    "build_setup",
    "prepare_output",
    "train_sgd",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive widths, e.g. ``"32,32"`` -> ``(32, 32)``."""
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return values


def add_data_options(parser: argparse.ArgumentParser, *, hidden: str = "32,32") -> None:
    """Add the data set, model preset, batch size, seed, dtype and limit options."""
    group = parser.add_argument_group("data and model")
    group.add_argument("--dataset", choices=curvlab.datasets.DATASETS, default="digits",
                       help="digits and diabetes ship with scikit-learn; sine is generated; mnist needs --data-path")
    group.add_argument("--data-path", type=Path, default=None, help="MNIST .npz or IDX file")
    group.add_argument("--model", choices=curvlab.models.MODELS, default="mlp")
    group.add_argument("--hidden", type=int_list, default=int_list(hidden), help="hidden widths, e.g. 32,32")
    group.add_argument("--activation", choices=sorted(curvlab.models.ACTIVATIONS), default="tanh")
    group.add_argument("--batch-size", type=positive_int, default=128)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    group.add_argument("--limit", type=positive_int, default=None, help="use only this many samples")


def add_output_options(parser: argparse.ArgumentParser, default: str) -> None:
    """Add ``--out``, ``--overwrite`` and ``--no-progress``."""
    parser.add_argument("--out", type=Path, default=Path(default), help=f"output directory (default {default})")
    parser.add_argument("--overwrite", action="store_true", help="replace files in an existing output directory")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def prepare_output(out: Path, overwrite: bool) -> Path:
    """Create ``out``; refuse an existing non-empty directory unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {out} exists and is not empty; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def loss_for(task: str) -> nn.Module:
    """Cross-entropy for classification, mean squared error otherwise."""
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def build_setup(args: argparse.Namespace):
    """Load the data set and build the model and loss the options describe.

    Returns ``(dataset, model, loss_fn)``; the data set is flattened for MLPs and autoencoders.
    """
    dtype = DTYPES[args.dtype]
    data = curvlab.load_dataset(args.dataset, args.data_path, seed=args.seed, dtype=dtype, limit=args.limit)
    if args.model == "autoencoder":
        data = data.as_reconstruction()
    if args.model != "lenet":
        data = data.flat()
    elif len(data.sample_shape) != 3:
        raise ValueError(f"lenet needs image data; {args.dataset} has samples of shape {data.sample_shape}")
    torch.manual_seed(args.seed)
    model = curvlab.models.build_model(args.model, data.sample_shape, data.num_outputs,
                                       hidden=args.hidden, activation=args.activation).to(dtype)
    return data, model, loss_for(data.task)


def batches(inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Shuffled mini-batches for one epoch."""
    order = torch.randperm(len(inputs), generator=generator)
    for start in range(0, len(inputs), batch_size):
        idx = order[start : start + batch_size]
        yield inputs[idx], targets[idx]


def train_sgd(model, loss_fn, train, *, steps: int, batch_size: int, lr: float = 0.1, momentum: float = 0.9,
              seed: int = 0, progress: bool = True, callback=None) -> list[float]:
    """Plain SGD with momentum for ``steps`` mini-batch steps; returns the training losses.

    ``callback(step, model)`` runs before each step and once after the last (step == steps).
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    stream = iter(())
    for step in tqdm(range(steps), desc="training", disable=not progress):
        if callback is not None:
            callback(step, model)
        batch = next(stream, None)
        if batch is None:
            stream = batches(*train, batch_size, gen)
            batch = next(stream)
        opt.zero_grad()
        loss = loss_fn(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if callback is not None:
        callback(steps, model)
    return losses
