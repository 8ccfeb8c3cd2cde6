"""Output-side seeds of the factor sources: the columns pushed back through the model.

For a batch with outputs f [N, *out] (C entries per sample) a source gives seeds V [N, K, *out]:

* GGN:        the K = C columns of S_n, S_n S_nᵀ = H_n (K = C − 1 for softmax cross-entropy on
  [N, C] logits, whose Hessian has rank C − 1: only where the statistics are sums Σ_k v vᵀ);
* MC:         K = M columns ∇_f ℓ(f_n, ŷ_nm)/√M with ŷ sampled from the model's predictive distribution;
* EMPIRICAL:  K = 1, the observed gradient ∇_f ℓ(f_n, y_n).

Row seeds [N·K, N, *out] hold one sample's column each (zero elsewhere), ordered (n, k) as the
columns: they give per-sample gradients of a batch function (coupled samples) and of parameters
without an adapter.
"""

from __future__ import annotations

import torch

from curvlab.engine.quantities import Source
from curvlab.engine.statistics import EngineConfig, _output_factor
from curvlab.losses import LossAdapter

__all__ = ["column_seeds", "row_seeds"]


def column_seeds(source: Source, loss: LossAdapter, outputs: torch.Tensor, targets: torch.Tensor,
                 mc_samples: int, generator, reduce_rank: bool) -> torch.Tensor:
    """V [N, K, *out] of ``source`` (unscaled)."""
    detached = outputs.detach()
    if source is Source.EMPIRICAL:
        grad = loss.output_gradient(detached, targets)  # [N, C]
        return grad.reshape(detached.shape).unsqueeze(1)
    config = EngineConfig(mc_samples, generator)
    return _output_factor(source, loss, detached, config, reduce_rank)


def row_seeds(columns: torch.Tensor) -> torch.Tensor:
    """[N·K, N, *out]: row (n, k) is column k of sample n, zero at every other sample.

    Example:
        >>> rows = row_seeds(torch.arange(6.).reshape(2, 3, 1))   # N = 2, K = 3
        >>> rows.shape, rows[4, :, 0].tolist()                    # row (n=1, k=1)
        (torch.Size([6, 2, 1]), [0.0, 4.0])
    """
    num, cols = columns.shape[:2]
    eye = torch.eye(num, dtype=columns.dtype, device=columns.device)
    flat = columns.reshape(num, cols, -1)
    rows = eye[:, None, :, None] * flat.transpose(0, 1)[None]  # [n, k, m, c] = δ_nm V[m, k, c]
    return rows.reshape(num * cols, num, *columns.shape[2:])
