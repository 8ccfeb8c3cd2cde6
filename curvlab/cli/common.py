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
DEVICES = ("cpu", "cuda")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows every option's default (flags are off by default)."""

    def _get_help_string(self, action):
        if action.nargs == 0:  # a flag: its default is "not given"
            return action.help
        return super()._get_help_string(action)


def plain(doc: str | None) -> str:
    """A docstring as plain text for ``--help`` (no RST markup such as double backquotes or ``:func:``)."""
    import re

    text = re.sub(r":(?:func|mod|class|meth|data|attr):`~?([^`]+)`", r"\1", doc or "")
    return text.replace("``", "")


def import_factory(spec: str, option: str):
    """The callable named by ``package.module:factory``; a ValueError naming ``option`` if it cannot be found."""
    import importlib

    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{option} {spec!r}: expected package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{option} {spec!r}: cannot import {module_name!r} ({err}); is it on PYTHONPATH?") from None
    factory = module
    for part in name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"{option} {spec!r}: module {module_name!r} has no attribute {name!r}")
    if not callable(factory):
        raise ValueError(f"{option} {spec!r}: {name!r} is a {type(factory).__qualname__}, not a callable")
    return factory


def model_choice(text: str) -> str:
    """argparse type of ``--model``: a preset name or ``package.module:factory``."""
    if text in curvlab.models.MODELS or ":" in text:
        return text
    raise argparse.ArgumentTypeError(
        f"unknown model {text!r}: choose from {', '.join(curvlab.models.MODELS)} or give package.module:factory")


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
    group.add_argument("--dataset", choices=("auto", *curvlab.datasets.DATASETS), default="auto",
                       help="digits and diabetes ship with scikit-learn; sine is generated; text is Python's "
                            "argparse source (next-character prediction); mnist needs --data-path; auto: text "
                            "for the transformer, digits otherwise")
    group.add_argument("--data-path", type=Path, default=None, help="MNIST .npz or IDX file")
    group.add_argument("--data", default=None, metavar="MODULE:FACTORY",
                       help="your own data instead of --dataset: package.module:factory returning "
                            "(train_inputs, train_targets, test_inputs, test_targets) tensors or a "
                            "curvlab.datasets.SplitDataset; integer targets mean classification")
    group.add_argument("--model", type=model_choice, default="mlp", metavar="MODEL",
                       help=f"{', '.join(curvlab.models.MODELS)}, or your own as package.module:factory, called "
                            "as factory(sample_shape, num_outputs) (or factory() if it takes no arguments); "
                            "it receives unflattened inputs")
    group.add_argument("--hidden", type=int_list, default=hidden, help="hidden widths of mlp/autoencoder, e.g. 32,32")
    group.add_argument("--activation", choices=sorted(curvlab.models.ACTIVATIONS), default="tanh")
    group.add_argument("--batch-size", type=positive_int, default=128, help="training mini-batch size")
    group.add_argument("--seed", type=int, default=0, help="seeds data split, initialisation and sampling")
    group.add_argument("--dtype", choices=sorted(DTYPES), default="float64", help="of the model and the data")
    group.add_argument("--device", choices=DEVICES, default="cpu", help="where the model, data and products live")
    group.add_argument("--limit", type=positive_int, default=None, help="use only this many samples")


def default_dataset(model: str) -> str:
    """The data set ``--dataset auto`` picks for ``--model``: ``text`` for the transformer, ``digits`` otherwise."""
    return "text" if model == "transformer" else "digits"


def add_output_options(parser: argparse.ArgumentParser, default: str) -> None:
    """Add ``--out``, ``--overwrite`` and ``--no-progress``."""
    parser.add_argument("--out", type=Path, default=Path(default), help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace files in an existing output directory")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars (they are shown only when stderr is a terminal)")


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
    device = torch.device(getattr(args, "device", "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if args.dataset == "auto":  # resolved here, so that the run's records name the data set used
        args.dataset = default_dataset(args.model)
    if getattr(args, "data", None):
        data = _user_data(args.data, dtype, args.limit)
    else:
        data = curvlab.load_dataset(args.dataset, args.data_path, seed=args.seed, dtype=dtype, limit=args.limit)
    torch.manual_seed(args.seed)
    if ":" in args.model:
        model = _user_model(args.model, data)
    else:
        takes = curvlab.models.INPUTS[args.model]
        tokens = not data.train[0].is_floating_point()
        if tokens != (takes == "tokens"):
            fix = ("--model transformer" if tokens else "--dataset text (or --data returning integer token ids)")
            raise ValueError(f"--model {args.model} takes {takes} inputs, but {data.name} holds "
                             f"{'token ids' if tokens else 'real-valued inputs'}; use {fix}")
        if args.model == "autoencoder":
            data = data.as_reconstruction()
        if takes == "flat":
            data = data.flat()
        model = curvlab.models.build_model(args.model, data.sample_shape, data.num_outputs,
                                           hidden=args.hidden, activation=args.activation)
    model = model.to(device=device, dtype=dtype)
    if device.type != "cpu":
        def move(pair):
            return tuple(t.to(device) for t in pair)

        data = curvlab.datasets.SplitDataset(data.name, move(data.train), move(data.test), data.task,
                                             data.sample_shape, data.num_outputs)
    return data, model, loss_for(data.task)


def _user_data(spec: str, dtype: torch.dtype, limit: int | None):
    """``--data package.module:factory`` as a SplitDataset (see the option's help)."""
    result = import_factory(spec, "--data")()
    if isinstance(result, curvlab.datasets.SplitDataset):
        return result
    if not (isinstance(result, (tuple, list)) and len(result) == 4
            and all(isinstance(t, torch.Tensor) for t in result)):
        raise ValueError(f"--data {spec!r} must return (train_inputs, train_targets, test_inputs, test_targets) "
                         "tensors or a curvlab.datasets.SplitDataset")
    x, y, xt, yt = result
    if x.shape[1:] != xt.shape[1:] or len(x) != len(y) or len(xt) != len(yt) or len(x) == 0:
        raise ValueError(f"--data {spec!r}: inputs and targets disagree in shape or length "
                         f"({tuple(x.shape)}, {tuple(y.shape)}, {tuple(xt.shape)}, {tuple(yt.shape)})")
    classification = not y.is_floating_point()
    x, xt = (t.to(dtype) if t.is_floating_point() else t for t in (x, xt))
    y, yt = (t.long() if classification else t.to(dtype) for t in (y, yt))
    if limit is not None:
        x, y = x[:limit], y[:limit]
    outputs = int(max(int(y.max()), int(yt.max())) + 1) if classification else int(y[0].numel())
    return curvlab.datasets.SplitDataset(spec, (x, y), (xt, yt), "classification" if classification else "regression",
                                         tuple(x.shape[1:]), outputs)


def _user_model(spec: str, data) -> nn.Module:
    """``--model package.module:factory`` built for the data (see the option's help)."""
    import inspect

    factory = import_factory(spec, "--model")
    try:
        takes_args = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes_args = True
    model = factory(tuple(data.sample_shape), data.num_outputs) if takes_args else factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r} returned a {type(model).__qualname__}, not a torch.nn.Module")
    return model


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
    bar = tqdm(range(steps), desc="training", disable=not progress, dynamic_ncols=True)
    for step in bar:
        if callback is not None:
            callback(step, model)
            bar.unpause()  # the time spent measuring is not training time
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
