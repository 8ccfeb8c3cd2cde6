"""The empirical Fisher as a matrix-free operator, E v = Σ_b (w_b / Z_b) Σ_{n∈b} g_n (g_nᵀ v).

g_n = ∇_θ ℓ(f(x_n), y_n) is the gradient of sample n's (unscaled) loss at the *observed* target, so
E = (1/Z) Σ_n g_n g_nᵀ over all data for reduction ``"mean"`` (Σ_n g_n g_nᵀ for ``"sum"``). Two routes:

* ``EmpiricalFisherStrategy.PER_SAMPLE_GRADIENTS``: the [N, P] matrix of per-sample gradients is computed
  once (reverse-mode rows of the batch function's per-sample losses) and a product is two matrix products, E v = Gᵀ(G v)/Z. Memory N·P.
* ``EmpiricalFisherStrategy.JACOBIAN_PRODUCTS``: g_n = J_nᵀ r_n with r_n = ∂ℓ_n/∂f_n, so E v is the sandwich
  Jᵀ (r rᵀ) J v (a jvp and a vjp, as for the GGN); memory of one training step.
* ``AUTO`` (default): per-sample gradients if the [N, P] matrix is small (N·P ≤ 2²², and within a quarter of
  the memory budget), else Jacobian products. Measured on CPU: on an MLP
  64-32-32-10 with N = 16 (N·P ≈ 55k) the cached per-sample gradients are about 20× faster per product;
  on the MLP 784-256-256-10 with N = 128 (N·P ≈ 34M) the two memory-bound matrix-vector products over the
  [N, P] matrix cost about 3× more than the jvp/vjp route (``benchmarks/operators.py``).
"""

from __future__ import annotations

import enum
import json

import torch
from torch import nn

from curvlab.autodiff import reverse_jacobian
from curvlab.data import Data
from curvlab.guards import check_finite, get_memory_budget
from curvlab.losses import LossAdapter
from curvlab.operators.cg import DEFAULT_CG, CGSettings
from curvlab.operators.sandwich import OutputSandwichOperator
from curvlab.partition import Partition, PartitionSpec

__all__ = ["EmpiricalFisherOperator", "EmpiricalFisherStrategy"]

_PER_SAMPLE_LIMIT = 2**22  # N·P entries up to which AUTO caches per-sample gradients


class EmpiricalFisherStrategy(enum.Enum):
    """How :class:`EmpiricalFisherOperator` forms its products (see the module docstring)."""

    AUTO = "auto"
    PER_SAMPLE_GRADIENTS = "per_sample_gradients"
    JACOBIAN_PRODUCTS = "jacobian_products"


class EmpiricalFisherOperator(OutputSandwichOperator):
    """E = Σ_b (w_b / Z_b) Σ_{n∈b} g_n g_nᵀ, [P, P], with g_n the per-sample loss gradients.

    Args:
        model, loss_fn, data, partition, cg, cache: as for :class:`~curvlab.operators.GGNOperator`.
        strategy: :class:`EmpiricalFisherStrategy` or its value string.

    Attributes:
        strategy: the route taken (``AUTO`` resolved).

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()
        >>> data = (torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))
        >>> a = EmpiricalFisherOperator(model, nn.CrossEntropyLoss(), data, strategy="per_sample_gradients")
        >>> b = EmpiricalFisherOperator(model, nn.CrossEntropyLoss(), data, strategy="jacobian_products")
        >>> torch.allclose(a.dense(), b.dense())
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | LossAdapter,
        data: Data,
        *,
        strategy: EmpiricalFisherStrategy | str = EmpiricalFisherStrategy.AUTO,
        cache: bool = True,
        partition: PartitionSpec | Partition = "canonical",
        cg: CGSettings = DEFAULT_CG,
    ):
        self.cache = cache
        strategy = EmpiricalFisherStrategy(strategy)
        super().__init__(
            model,
            loss_fn,
            data,
            quantity="empirical_fisher",
            partition=partition,
            cg=cg,
            cache=cache,
        )
        self.residuals = [
            self.loss.output_gradient(out, y)
            for out, (_, y) in zip(self.outputs, self.batches, strict=False)
        ]
        self.per_sample_gradients: list[torch.Tensor] | None = None
        if strategy is EmpiricalFisherStrategy.AUTO:
            n = sum(int(x.shape[0]) for x, _ in self.batches)
            entries = n * self.shape[0]
            fits = (
                entries <= _PER_SAMPLE_LIMIT
                and entries * self.params[0].element_size() <= get_memory_budget() // 4
            )
            strategy = EmpiricalFisherStrategy.JACOBIAN_PRODUCTS
            if fits:
                try:
                    self.per_sample_gradients = self._per_sample_gradients()
                    strategy = EmpiricalFisherStrategy.PER_SAMPLE_GRADIENTS
                except (
                    RuntimeError,
                    NotImplementedError,
                    ValueError,
                ):  # the model cannot be differentiated this way
                    pass
        elif strategy is EmpiricalFisherStrategy.PER_SAMPLE_GRADIENTS:
            self.per_sample_gradients = self._per_sample_gradients()
        self.strategy = strategy
        self.attrs["config"] = json.dumps(
            {**json.loads(self.attrs.get("config", "{}")), "strategy": strategy.value}
        )

    def _per_sample_gradients(self) -> list[torch.Tensor]:
        """Per batch, the [N_b, P] matrix of ∇_θ ℓ_n (unscaled, at the observed targets): the rows of
        the Jacobian of the per-sample losses of the batch function, by reverse mode."""
        grads = []
        for x, y in self.batches:

            def sample_losses(*params, x=x, y=y):
                return self.loss.per_sample_loss(self.forward(params, x), y)

            grads.append(
                check_finite(reverse_jacobian(sample_losses, *self.params), "per-sample gradients")
            )
        return grads

    def _output_product(self, b: int, u: torch.Tensor) -> torch.Tensor:
        r = self.residuals[b]  # [N, C]
        return (self.weights[b] / self.normalizers[b]) * r * (r * u).sum(1, keepdim=True)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.per_sample_gradients is None:
            return super()._matvec(v)
        total = torch.zeros_like(v)
        for b, g in enumerate(self.per_sample_gradients):
            total += (self.weights[b] / self.normalizers[b]) * (g.T @ (g @ v))
        return self._checked_once(v, total)

    def _diagonal(self) -> torch.Tensor:
        """Σ_b (w_b/Z_b) Σ_n g_n ⊙ g_n from the cached per-sample gradients (else P products)."""
        if self.per_sample_gradients is None:
            return super()._diagonal()
        return sum(
            (self.weights[b] / self.normalizers[b]) * g.square().sum(0)
            for b, g in enumerate(self.per_sample_gradients)
        )

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        return self._matvec(v) if self.per_sample_gradients is not None else super()._apply(v)
