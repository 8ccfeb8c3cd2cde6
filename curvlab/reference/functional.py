"""The model as a function of its flat trainable parameters, and the batch bookkeeping of the references.

A model f(x; θ) is evaluated at a flat parameter vector θ ∈ R^P in the reference ordering (the
concatenation of ``p.flatten()`` over ``model.parameters()`` with ``requires_grad``) through
:func:`torch.func.functional_call`. Frozen parameters and buffers are taken from the model as constants.
The model itself is never modified: not its parameters, not its buffers, not its train/eval mode.

Batches combine exactly (see :mod:`curvlab.losses`): with L_b = (1/Z_b) Σ_{n∈b} ℓ_n and M_b a matrix
scaled like L_b,

    M = Σ_b Z_b M_b / Σ_b Z_b   (reduction 'mean'),      M = Σ_b M_b   (reduction 'sum'),

which :class:`BatchSum` accumulates in one pass from the *unscaled* sums Z_b M_b.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from curvlab.autodiff import exact_kernels, random_modules, stateless_copy
from curvlab.data import iter_batches
from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_finite
from curvlab.losses import LossAdapter, loss_adapter
from curvlab.partition import trainable_parameters

__all__ = [
    "BatchSum",
    "FlatModel",
    "checked_outputs",
    "flat_parameters",
    "reference_batches",
    "symmetric_product",
    "symmetrize_",
]


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """θ, a detached copy of the trainable parameters as one [P] vector in the reference ordering.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> theta = flat_parameters(model)
        >>> theta.shape, torch.equal(theta, torch.cat([model.weight.flatten(), model.bias]))
        (torch.Size([3]), True)
    """
    return FlatModel(model).theta


@dataclass(frozen=True)
class FlatModel:
    """``model`` as the function (θ [P], inputs [N, ...]) ↦ outputs [N, ...].

    The model is evaluated as a function of the whole batch (:func:`curvlab.autodiff.stateless_copy`:
    train-mode BatchNorm normalises with the batch statistics and updates no running statistics) under
    :func:`curvlab.autodiff.exact_kernels` (no fused MHA fast path, math SDPA), so that every
    derivative torch offers is available and exact. Raises :class:`UnsupportedModuleError` if the
    model has no trainable parameters or mixes dtypes or devices among them.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> fm = FlatModel(model)
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(fm(fm.theta, x), model(x))
        True
    """

    model: nn.Module
    function: nn.Module = field(init=False, repr=False)
    names: tuple[str, ...] = field(init=False)
    shapes: tuple[torch.Size, ...] = field(init=False)
    theta: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(self.model).__qualname__}")
        named = trainable_parameters(self.model)
        if not named:
            raise UnsupportedModuleError(
                f"{type(self.model).__qualname__} has no trainable parameters (requires_grad=True)"
            )
        kinds = {(p.dtype, p.device) for _, p in named}
        if len(kinds) > 1:
            found = ", ".join(f"{n}: {p.dtype} on {p.device}" for n, p in named)
            raise UnsupportedModuleError(
                f"{type(self.model).__qualname__}: trainable parameters must share one dtype and device "
                f"({found})"
            )
        random = random_modules(self.model)
        if random:
            raise UnsupportedModuleError(
                f"{', '.join(random)} in training mode: the model is a random function (a new dropout "
                "mask on every call), which has no curvature. Call model.eval(), or set p=0."
            )
        object.__setattr__(self, "function", stateless_copy(self.model))
        object.__setattr__(self, "names", tuple(n for n, _ in named))
        object.__setattr__(self, "shapes", tuple(p.shape for _, p in named))
        theta = torch.cat([p.detach().reshape(-1) for _, p in named])
        object.__setattr__(self, "theta", theta)

    @property
    def num_params(self) -> int:
        """P."""
        return self.theta.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` views of a flat [P] vector, shaped like the trainable parameters."""
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = shape.numel()
            out[name] = theta[offset : offset + size].view(shape)
            offset += size
        return out

    def __call__(self, theta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with exact_kernels():
            return functional_call(self.function, self.unflatten(theta), (inputs,))


@dataclass
class BatchSum:
    """One-pass accumulator of Σ_b Z_b M_b and Σ_b Z_b; :meth:`result` is the combined matrix.

    Example:
        >>> acc = BatchSum("mean")
        >>> acc.add(torch.tensor(6.0), 3); acc.add(torch.tensor(2.0), 1)  # batch means 2 and 2
        >>> acc.result("loss")
        tensor(2.)
    """

    reduction: str
    total: Any = None
    normalizer: int = 0

    def add(self, unscaled: torch.Tensor, normalizer: int) -> None:
        """Add one batch's unscaled sum Z_b M_b (= Σ_{n∈b} of per-sample terms) and its Z_b."""
        self.total = unscaled if self.total is None else self.total.add_(unscaled)
        self.normalizer += normalizer

    def result(self, what: str, symmetrize: bool = False) -> torch.Tensor:
        """The combined matrix, checked for NaN/inf under the name ``what``; in place, no copy.

        With ``symmetrize``, the [P, P] result is replaced by (M + Mᵀ)/2 (see :func:`symmetrize_`).
        """
        if self.total is None:
            raise ValueError("data holds no batches")
        scale = self.normalizer if self.reduction == "mean" else 1
        result = check_finite(self.total.div_(scale), what)
        return symmetrize_(result) if symmetrize else result


def symmetric_product(left: torch.Tensor, right: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """leftᵀ right, [P, P], for a product known to be symmetric (right = A left with A symmetric).

    Only the blocks on and above the diagonal are multiplied and the rest mirrored: half the flops of
    a full product, and an exactly symmetric result.

    Args:
        left, right: [K, P] matrices (e.g. K = N·C Jacobian rows and the same rows weighted by A).

    Example:
        >>> g = torch.randn(5, 3)
        >>> torch.allclose(symmetric_product(g, g, block=2), g.T @ g)
        True
    """
    size = left.shape[1]
    out = torch.empty(size, size, dtype=left.dtype, device=left.device)
    for start in range(0, size, block):
        stop = min(start + block, size)
        rows = left[:, start:stop].T @ right[:, start:]
        diagonal = rows[:, : stop - start]
        diagonal.copy_((diagonal + diagonal.T) / 2)
        out[start:stop, start:] = rows
        out[start:, start:stop] = rows.T
    return out


def symmetrize_(matrix: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Overwrite a square ``matrix`` with (M + Mᵀ)/2, a block of rows at a time (no [P, P] temporary).

    Example:
        >>> symmetrize_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        tensor([[1., 1.],
                [1., 1.]])
    """
    size = matrix.shape[0]
    for start in range(0, size, block):
        stop = min(start + block, size)
        mean = (matrix[start:stop, start:] + matrix[start:, start:stop].T) / 2
        matrix[start:stop, start:] = mean
        matrix[start:, start:stop] = mean.T
    return matrix


def reference_batches(
    model: nn.Module, loss_fn: nn.Module, data_or_inputs: Any, targets: torch.Tensor | None
) -> tuple[FlatModel, LossAdapter, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """Validate the common arguments ``(model, loss_fn, inputs, targets)`` or ``(model, loss_fn, data)``.

    Returns the flat model, the loss adapter and a lazy iterator of ``(inputs, targets)`` batches (for
    ``data``: a batch pair or an iterable of them, see :func:`curvlab.data.iter_batches`).
    """
    flat = FlatModel(model)
    adapter = loss_adapter(loss_fn)
    if targets is not None:
        if not isinstance(data_or_inputs, torch.Tensor):
            raise TypeError(
                "with targets given, the third argument must be the inputs tensor, got "
                f"{type(data_or_inputs).__qualname__}"
            )
        return flat, adapter, iter_batches((data_or_inputs, targets))
    if isinstance(data_or_inputs, torch.Tensor):
        raise TypeError(
            "targets are missing: call with (model, loss_fn, inputs, targets) or "
            "(model, loss_fn, data) where data is an (inputs, targets) pair or an iterable of pairs"
        )
    return flat, adapter, iter_batches(data_or_inputs)


def checked_outputs(
    flat: FlatModel, adapter: LossAdapter, inputs: torch.Tensor, targets: torch.Tensor, what: str
) -> torch.Tensor:
    """Model outputs at θ (no graph), checked to be finite and supported by the adapter with ``targets``."""
    with torch.no_grad():
        outputs = flat(flat.theta, inputs)
    adapter.check(outputs, targets)
    return check_finite(outputs, f"{what}: model outputs")
