r"""Frobenius norms, inner products and interactions of curvature blocks from products only, with standard errors.

For a symmetric M [P, P] cut into blocks M_cb by a partition, and Rademacher probes z ∈ {±1}^{n_b}
supported on block b (zero elsewhere), E‖(M z)_c‖² = ‖M_cb‖_F² (Hutchinson 1989 applied to M_cbᵀM_cb).
So m probes per block, i.e. m·S products in all, estimate every block's Frobenius norm at once:

    ‖M_cb‖_F² ≈ (1/m) Σ_i ‖(M z_i^{(b)})_c‖²,      ⟨M_bb, A_bb⟩_F ≈ (1/m) Σ_i (M z_i^{(b)})_bᵀ (A z_i^{(b)})_b,

and the whole matrix by summing the block columns (independent probes, so their variances add).
Ratios of such means (relative errors, cosines, interaction strengths) get standard errors by the delta
method from the per-probe samples: for f(μ̂) with μ̂ the vector of sample means and Σ̂ the covariance of
those means, SE ≈ √(∇fᵀ Σ̂ ∇f). The same probes serve the exact matrix and every approximation
(paired samples), which cancels most of the noise of the ratios.

Example:
    >>> import torch
    >>> from curvlab.partition import Partition
    >>> m = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> sketch = BlockSketch.draw(m, [torch.tensor([0, 1]), torch.tensor([2])], num_probes=4,
    ...                           generator=torch.Generator().manual_seed(0))
    >>> stats = sketch.statistics(m)   # compare the matrix with itself
    >>> [round(float(v), 12) for v in stats.rel_frobenius_error()[0]]   # per block, then whole
    [0.0, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BlockSketch", "ProbeStatistics", "apply", "delta_method"]


def apply(matrix, v: torch.Tensor) -> torch.Tensor:
    """M v in float64 on the CPU, for a tensor, a representation or an operator (anything with ``@``).

    ``v`` is [P] or [P, K]; it is moved to the matrix's dtype and device first.

    Example:
        >>> apply(torch.eye(2), torch.ones(2)).tolist()
        [1.0, 1.0]
    """
    if isinstance(matrix, torch.Tensor):
        return (matrix.detach().to(torch.float64) @ v.to(device=matrix.device, dtype=torch.float64)).cpu()
    dtype = getattr(matrix, "dtype", torch.float64)
    device = getattr(matrix, "device", torch.device("cpu"))
    out = matrix @ v.to(dtype=dtype, device=device)
    return out.detach().to(torch.float64).cpu()


def delta_method(mean: np.ndarray, cov: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor]
                 ) -> tuple[float, float]:
    """f(μ̂) and its delta-method standard error √(∇fᵀ Σ̂ ∇f) (gradient by autograd, float64).

    Args:
        mean: [q] sample means μ̂; cov: [q, q] covariance of those means (sample covariance / m).
        fn: maps a [q] tensor to a 0-d tensor.

    Example:
        >>> value, se = delta_method(np.array([4.0]), np.array([[0.04]]), torch.sqrt)  # √x at x=4, SE(x)=0.2
        >>> round(value, 6), round(se, 6)
        (2.0, 0.05)
    """
    x = torch.tensor(np.asarray(mean, dtype=np.float64), requires_grad=True)
    value = fn(x)
    if not bool(torch.isfinite(value.detach())):
        return float("nan"), float("nan")
    (grad,) = torch.autograd.grad(value, x)
    value = value.detach()
    g, cov = grad.numpy().copy(), np.asarray(cov, dtype=np.float64)
    exact_part = np.diag(cov) == 0  # a mean known without noise contributes nothing, even where ∂f is infinite
    g[exact_part & ~np.isfinite(g)] = 0.0
    with np.errstate(invalid="ignore"):
        variance = float(g @ np.where(np.isfinite(cov), cov, 0.0) @ g)
    return float(value), float(np.sqrt(max(variance, 0.0)))


@dataclass
class _Moments:
    """Sample means [q] and the covariance of the means [q, q] of per-probe samples; sums add."""

    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def of(cls, samples: np.ndarray) -> _Moments:
        samples = np.asarray(samples, dtype=np.float64)  # [m, q]
        m = samples.shape[0]
        cov = np.cov(samples, rowvar=False, ddof=1).reshape(samples.shape[1], -1) / m if m > 1 else \
            np.full((samples.shape[1], samples.shape[1]), np.nan)
        return cls(samples.mean(0), cov)

    def __add__(self, other: _Moments) -> _Moments:
        return _Moments(self.mean + other.mean, self.cov + other.cov)


# sample columns of one block and one approximation: ‖(C−A)z‖², ‖Cz‖², ‖Az‖², (Cz)ᵀ(Az)
_DIFF, _EXACT, _APPROX, _CROSS = range(4)


def _rel_frobenius(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x[_DIFF].clamp_min(0) / x[_EXACT])


def _cosine(x: torch.Tensor) -> torch.Tensor:
    return x[_CROSS] / torch.sqrt(x[_EXACT] * x[_APPROX])


@dataclass
class ProbeStatistics:
    """Moments of one approximation against the exact matrix: per diagonal block and per block column."""

    block: list[_Moments]   # samples restricted to the rows of the probed block: diagonal blocks
    column: list[_Moments]  # whole columns: summed over b, the whole matrix

    def _metric(self, fn) -> tuple[np.ndarray, np.ndarray]:
        parts = [*self.block, sum(self.column[1:], self.column[0])]
        values = np.array([delta_method(p.mean, p.cov, fn) for p in parts])
        return values[:, 0], values[:, 1]

    def rel_frobenius_error(self) -> tuple[np.ndarray, np.ndarray]:
        """‖C − A‖_F / ‖C‖_F per diagonal block, then of the whole matrix; values [S+1] and standard errors [S+1]."""
        return self._metric(_rel_frobenius)

    def cosine_similarity(self) -> tuple[np.ndarray, np.ndarray]:
        """⟨C, A⟩_F / (‖C‖_F ‖A‖_F) per diagonal block, then of the whole matrix, with standard errors."""
        return self._metric(_cosine)


class BlockSketch:
    """Rademacher probes supported on each block, and the exact matrix's products with them (computed once).

    Args:
        exact: the exact matrix (tensor, representation or matrix-free operator).
        blocks: index tensors of the S blocks (together they must cover every row once).
        probes: [S] list of [n_b, m] probe matrices.
    """

    def __init__(self, exact, blocks: Sequence[torch.Tensor], probes: Sequence[torch.Tensor], progress=None):
        self.blocks = [torch.as_tensor(b, dtype=torch.long) for b in blocks]
        self.size = int(sum(b.numel() for b in self.blocks))
        self.probes = list(probes)
        self.vectors = [self._embed(b, z) for b, z in zip(self.blocks, self.probes, strict=True)]
        self.exact_products = []
        for v in self.vectors:
            self.exact_products.append(apply(exact, v))
            if progress is not None:
                progress.update(v.shape[1])

    @classmethod
    def draw(cls, exact, blocks: Sequence[torch.Tensor], num_probes: int, *,
             generator: torch.Generator | None = None, progress=None) -> BlockSketch:
        """Draw ``num_probes`` Rademacher probes per block and multiply the exact matrix by them."""
        if num_probes < 2:
            raise ValueError(f"num_probes must be >= 2 (standard errors need two samples), got {num_probes}")
        probes = [torch.randint(0, 2, (b.numel(), num_probes), generator=generator).to(torch.float64) * 2 - 1
                  for b in blocks]
        return cls(exact, blocks, probes, progress)

    def _embed(self, rows: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        v = torch.zeros(self.size, z.shape[1], dtype=torch.float64)
        v[rows] = z
        return v

    @property
    def num_products(self) -> int:
        """Products with the exact matrix spent on the sketch (m per block)."""
        return sum(v.shape[1] for v in self.vectors)

    def statistics(self, approx) -> ProbeStatistics:
        """Paired moments of ``approx`` against the exact matrix on the same probes."""
        block, column = [], []
        for rows, v, exact_y in zip(self.blocks, self.vectors, self.exact_products, strict=True):
            approx_y = apply(approx, v)
            block.append(_Moments.of(_samples(exact_y[rows], approx_y[rows])))
            column.append(_Moments.of(_samples(exact_y, approx_y)))
        return ProbeStatistics(block, column)

    def block_norms(self) -> tuple[np.ndarray, np.ndarray]:
        """Estimated ‖C_ij‖_F² [S, S] (symmetrised: both probe sets of i and j) and its standard errors."""
        s = len(self.blocks)
        mean, var = np.zeros((s, s)), np.zeros((s, s))
        for b, y in enumerate(self.exact_products):
            for c, rows in enumerate(self.blocks):
                samples = y[rows].pow(2).sum(0).numpy()
                mean[c, b] = samples.mean()
                var[c, b] = samples.var(ddof=1) / len(samples)
        return (mean + mean.T) / 2, (var + var.T) / 4

    def interaction_strength(self) -> tuple[np.ndarray, np.ndarray]:
        """I_ij = ‖C_ij‖_F / √(‖C_ii‖_F ‖C_jj‖_F) [S, S] and delta-method standard errors (0 on the diagonal)."""
        mean, var = self.block_norms()
        s = len(self.blocks)
        values, errors = np.ones((s, s)), np.zeros((s, s))
        for i in range(s):
            for j in range(s):
                if i == j:
                    continue
                # independent estimates of ‖C_ij‖², ‖C_ii‖², ‖C_jj‖²

                def fn(x):
                    return (x[0] / torch.sqrt(x[1] * x[2])).clamp_min(0).sqrt()

                values[i, j], errors[i, j] = delta_method(
                    np.array([mean[i, j], mean[i, i], mean[j, j]]), np.diag([var[i, j], var[i, i], var[j, j]]), fn)
        return values, errors


def _samples(exact_y: torch.Tensor, approx_y: torch.Tensor) -> np.ndarray:
    """Per-probe samples [m, 4]: ‖(C−A)z‖², ‖Cz‖², ‖Az‖², (Cz)ᵀ(Az)."""
    return torch.stack([(exact_y - approx_y).pow(2).sum(0), exact_y.pow(2).sum(0), approx_y.pow(2).sum(0),
                        (exact_y * approx_y).sum(0)], dim=1).numpy()
