"""The Monte-Carlo Fisher as a matrix-free operator, F̂ v = Σ_b w_b Jᵦᵀ S_b S_bᵀ Jᵦ v / Z_b.

S_b holds, per sample n, M columns ∇_f ℓ(f_n, ŷ_m)/√M with ŷ_m drawn from the model's predictive
distribution (``LossAdapter.sqrt_hessian_mc``), so E[S_n S_nᵀ] = H_n and E[F̂] = G. The targets are drawn
ONCE, at construction, from ``generator``: the operator is a fixed symmetric PSD matrix of rank ≤ N·M.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.data import Data
from curvlab.losses import LossAdapter
from curvlab.operators.cg import DEFAULT_CG, CGSettings
from curvlab.operators.sandwich import OutputSandwichOperator
from curvlab.partition import Partition, PartitionSpec

__all__ = ["FisherMCOperator"]


class FisherMCOperator(OutputSandwichOperator):
    """F̂ = Σ_b w_b Jᵦᵀ S_b S_bᵀ Jᵦ / Z_b with MC square roots S_b [N, C, M] sampled once.

    Args:
        model, loss_fn, data, partition, cg, cache: as for :class:`~curvlab.operators.GGNOperator`.
        mc_samples: M, sampled targets per datum.
        generator: ``torch.Generator`` for the draws (None: the global RNG).

    Attributes:
        sqrt_factors: list over batches of S_b, [N, C, M] (unscaled).

    Example:
        >>> import torch.nn as nn
        >>> from curvlab.operators import GGNOperator
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()
        >>> data = (torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,)))
        >>> gen = torch.Generator().manual_seed(0)
        >>> fisher = FisherMCOperator(model, nn.CrossEntropyLoss(), data, mc_samples=20000, generator=gen)
        >>> ggn = GGNOperator(model, nn.CrossEntropyLoss(), data)
        >>> bool((fisher.dense() - ggn.dense()).abs().max() < 0.01)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | LossAdapter,
        data: Data,
        *,
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
        cache: bool = True,
        partition: PartitionSpec | Partition = "canonical",
        cg: CGSettings = DEFAULT_CG,
    ):
        if int(mc_samples) < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        self.cache = cache
        self.mc_samples = int(mc_samples)
        super().__init__(
            model,
            loss_fn,
            data,
            quantity="fisher_mc",
            partition=partition,
            cg=cg,
            mc_samples=self.mc_samples,
            cache=cache,
        )
        self.sqrt_factors = [
            self.loss.sqrt_hessian_mc(out, self.mc_samples, generator) for out in self.outputs
        ]

    def _output_product(self, b: int, u: torch.Tensor) -> torch.Tensor:
        s = self.sqrt_factors[b]  # [N, C, M]
        scale = self.weights[b] / self.normalizers[b]
        return scale * torch.einsum("ncm,nm->nc", s, torch.einsum("ncm,nc->nm", s, u))
