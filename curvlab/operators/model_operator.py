"""Shared set-up of the operators built from ``(model, loss_fn, data)``.

The operator is evaluated at a *snapshot* of the trainable parameters taken at construction (a copy;
later changes to the model do not reach it, and the model itself is never modified: the model runs
through ``torch.func.functional_call`` on the snapshot and on copies of its buffers).

The data are materialised once (a list of ``(inputs, targets)`` batches). With the loss
L = (1/Z) Σ_n ℓ_n of :mod:`curvlab.losses`, each batch b contributes its own curvature M_b (that of its
batch loss L_b = (1/Z_b) Σ_{n∈b} ℓ_n) with weight w_b = Z_b / Σ Z (reduction ``"mean"``) or 1 (``"sum"``),
so that Σ_b w_b M_b is the matrix of all batches as one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call

from curvlab.autodiff import exact_kernels, random_modules, stateless_copy
from curvlab.data import Data, iter_batches
from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_finite
from curvlab.losses import LossAdapter, combine_weight, loss_adapter
from curvlab.operators.base import CurvatureOperator
from curvlab.operators.cg import DEFAULT_CG, CGSettings
from curvlab.partition import Partition, PartitionSpec, trainable_parameters
from curvlab.provenance import provenance

__all__ = ["ModelCurvatureOperator"]


class ModelCurvatureOperator(CurvatureOperator):
    """Base of the operators of a model, a loss and data (see the module docstring).

    Attributes:
        model: the user's model (never modified).
        loss: the :class:`~curvlab.losses.LossAdapter`.
        batches: list of ``(inputs, targets)``.
        normalizers: Z_b per batch; ``weights``: w_b per batch.
        params: tuple of the snapshot parameter tensors (reference ordering).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | LossAdapter,
        data: Data,
        *,
        quantity: str,
        partition: PartitionSpec | Partition = "canonical",
        cg: CGSettings = DEFAULT_CG,
        **config,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__qualname__}")
        named = trainable_parameters(model)
        part = Partition.from_model(model, partition)
        dtypes = {p.dtype for _, p in named}
        if len(dtypes) != 1:
            raise TypeError(
                f"{type(model).__qualname__}: trainable parameters mix dtypes {sorted(map(str, dtypes))}"
            )
        dtype, device = named[0][1].dtype, named[0][1].device
        self.model = model
        self.loss = loss_adapter(loss_fn)
        self.batches = list(iter_batches(data))
        for i, (x, _) in enumerate(self.batches):
            if x.is_floating_point() and x.dtype != dtype:
                raise TypeError(
                    f"batch {i}: inputs are {x.dtype} but {type(model).__qualname__}'s parameters are {dtype}; "
                    "convert one of them (e.g. model.double() and inputs.double())"
                )
        self.param_names = tuple(n for n, _ in named)
        self.params = tuple(p.detach().clone() for _, p in named)
        for name, p in zip(self.param_names, self.params, strict=True):
            check_finite(p, f"{type(self).__name__}: parameter {name}")
        random = random_modules(model)
        if random:
            raise UnsupportedModuleError(
                f"{', '.join(random)} in training mode: every product would draw a new dropout mask, "
                "so the operator is no fixed matrix. Call model.eval(), or set p=0."
            )
        self._function = stateless_copy(model)
        self._buffers = {n: b.detach().clone() for n, b in self._function.named_buffers()}
        with torch.no_grad():
            outputs = [self.forward(self.params, x) for x, _ in self.batches]
        for b, (out, (_, y)) in enumerate(zip(outputs, self.batches, strict=False)):
            self.loss.check(out, y)
            check_finite(out, f"{type(self).__name__}: model outputs of batch {b}")
            check_finite(self.loss.loss_fn(out, y), f"{type(self).__name__}: loss of batch {b}")
        self.outputs = outputs
        self.normalizers = [self.loss.normalizer(out) for out in outputs]
        self.weights = combine_weight(self.normalizers, self.loss.reduction)
        attrs = provenance(
            model=model,
            loss_fn=self.loss.loss_fn,
            batch_size=sum(int(x.shape[0]) for x, _ in self.batches),
            dtype=dtype,
            config={"operator": type(self).__name__, **config},
        )
        super().__init__(part, quantity=quantity, dtype=dtype, device=device, cg=cg, attrs=attrs)

    # ------------------------------------------------------------------ functional model
    def forward(self, params: Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs at ``params`` (tensors shaped like the trainable parameters)."""
        state = {**self._buffers, **dict(zip(self.param_names, params, strict=False))}
        with exact_kernels():
            return functional_call(self._function, state, (inputs,))

    def batch_loss(self, params: Sequence[torch.Tensor], b: int) -> torch.Tensor:
        """w_b L_b(params): batch b's loss, weighted so that the sum over batches is the total loss."""
        x, y = self.batches[b]
        return self.weights[b] * self.loss.loss_fn(self.forward(params, x), y)

    def unflatten(self, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A flat [P] vector as tensors shaped like the parameters."""
        return tuple(self.partition.unflatten(v))

    @staticmethod
    def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self.shape[0]}, batches={len(self.batches)}, loss={self.loss.name}, "
            f"dtype={self.dtype})"
        )
