"""The generalised Gauss-Newton matrix as a matrix-free operator, G v = Σ_b w_b Jᵦᵀ (H_b / Z_b) Jᵦ v.

H_b is block diagonal over samples with blocks H_n = ∂²ℓ_n/∂f_n² (the loss Hessian w.r.t. the outputs, see
:mod:`curvlab.losses`), applied in closed form (:func:`~curvlab.operators.sandwich.output_hessian_product`).
For the supported (canonical-link) losses G equals the Fisher information.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.data import Data
from curvlab.losses import LossAdapter
from curvlab.operators.cg import DEFAULT_CG, CGSettings
from curvlab.operators.sandwich import OutputSandwichOperator, output_hessian_product
from curvlab.partition import Partition, PartitionSpec

__all__ = ["GGNOperator"]


class GGNOperator(OutputSandwichOperator):
    """G = Σ_b w_b Jᵦᵀ H_b Jᵦ / Z_b, [P, P], through products: a jvp, the output Hessian, a vjp.

    Args:
        model, loss_fn, data, partition, cg: as for :class:`~curvlab.operators.HessianOperator`.
        cache: linearise the jvp and keep the vjp graph per batch (about 1.2 gradients per product on an
            MLP instead of 2.5; memory of one training step per batch).

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Linear(3, 2).double()  # linear model + MSE: the GGN equals the Hessian
        >>> data = (torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64))
        >>> from curvlab.operators import HessianOperator
        >>> torch.allclose(GGNOperator(model, nn.MSELoss(), data).dense(),
        ...                HessianOperator(model, nn.MSELoss(), data).dense())
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | LossAdapter,
        data: Data,
        *,
        cache: bool = True,
        partition: PartitionSpec | Partition = "canonical",
        cg: CGSettings = DEFAULT_CG,
    ):
        self.cache = cache
        super().__init__(
            model, loss_fn, data, quantity="ggn", partition=partition, cg=cg, cache=cache
        )

    def _output_product(self, b: int, u: torch.Tensor) -> torch.Tensor:
        scale = self.weights[b] / self.normalizers[b]
        return scale * output_hessian_product(self.loss, self.outputs[b], u)
