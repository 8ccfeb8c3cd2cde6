"""Combining per-batch statistics, across batches and across processes, as if all data were one batch.

With reduction 'mean' the loss over all batches is L = (1/Σ_b Z_b) Σ_b Σ_n ℓ_n, so an additive
statistic (block, diagonal, full square root, G factor, EKFAC scaling) is

    M = (Σ_b U_b) / W,   U_b the unscaled batch statistic,  W = Σ_b Z_b  (reduction 'sum': W = 1),

the same as Σ_b Z_b M_b / Σ_b Z_b with M_b = U_b / Z_b (:func:`curvlab.losses.combine_weight`); rows of
square-root factors are stacked and divided by √W. Kronecker input factors are averaged over samples,
A = Σ_b Σ_n x̃ x̃ᵀ / Σ_b N_b, and G factors follow the additive rule: this is how KFAC implementations
average factors over batches, and it equals the factors of the union batch (it is *not* the Kronecker
product of summed blocks, Σ_b A_b ⊗ G_b). KFRA's G is a nonlinear function of each batch (it averages
over the batch at every layer), so its combination is the batch-weighted mean of per-batch factors.

Distributed: when ``torch.distributed`` is initialised, :meth:`Accumulator.all_reduce` sums U, W
and sample counts over ranks and gathers factor rows (rank order), so every rank holds the union result.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from curvlab.engine.statistics import BatchStatistics

__all__ = ["Accumulator"]


class Accumulator:
    """Running sums of :class:`~curvlab.engine.statistics.BatchStatistics` (see the module docstring).

    Example:
        >>> acc = Accumulator("mean")
        >>> for z in (2, 6):
        ...     s = BatchStatistics(normalizer=z, count=z)
        ...     s.sums[("diag_ggn", "0", "diag")] = torch.tensor([float(z)])
        ...     acc.add(s)
        >>> acc.result().sums[("diag_ggn", "0", "diag")]   # (2 + 6) / (2 + 6)
        tensor([1.])
    """

    def __init__(self, reduction: str):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.batches = 0
        self.normalizer = 0
        self.count = 0
        self.sums: dict = {}
        self.inputs: dict = {}
        self.rows: dict = {}
        self._result: BatchStatistics | None = None
        self._rows_scaled: float = 1.0  # a single batch's factor is scaled in place by result()

    def add(self, stats: BatchStatistics) -> None:
        """Add one batch."""
        self._unscale_rows()
        self.batches += 1
        self.normalizer += stats.normalizer
        self.count += stats.count
        for store, new in ((self.sums, stats.sums), (self.inputs, stats.inputs)):
            for key, value in new.items():
                store[key] = value if key not in store else store[key] + value
        for key, value in stats.rows.items():
            self.rows.setdefault(key, []).append(value)

    @property
    def weight(self) -> float:
        """W: Σ_b Z_b for reduction 'mean', 1 for 'sum'."""
        return float(self.normalizer) if self.reduction == "mean" else 1.0

    def all_reduce(self) -> None:
        """Sum over the ranks of an initialised process group (no-op otherwise)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        self._unscale_rows()
        counts = torch.tensor([self.batches, self.normalizer, self.count], dtype=torch.float64)
        dist.all_reduce(counts)
        self.batches, self.normalizer, self.count = (int(v) for v in counts.tolist())
        for store in (self.sums, self.inputs):
            for key in sorted(store):
                tensor = store[key].contiguous()
                dist.all_reduce(tensor)
                store[key] = tensor
        for key in sorted(self.rows):
            local = torch.cat(self.rows[key])
            sizes = [None] * dist.get_world_size()
            dist.all_gather_object(sizes, local.shape[0])
            padded = local.new_zeros(max(sizes), *local.shape[1:])
            padded[: local.shape[0]] = local
            gathered = [torch.empty_like(padded) for _ in sizes]
            dist.all_gather(gathered, padded)
            self.rows[key] = [g[:s] for g, s in zip(gathered, sizes, strict=True)]

    def result(self) -> BatchStatistics:
        """The combined, scaled statistics (A divided by N, the rest by W, rows by √W)."""
        if self.batches == 0:
            raise ValueError("no batch was recorded: run a forward and backward pass inside the hooks")
        if self._result is not None:
            return self._result
        weight = self.weight
        out = BatchStatistics(self.normalizer, self.count)
        out.sums = {k: v / weight for k, v in self.sums.items()}
        out.inputs = {k: v / self.count for k, v in self.inputs.items()}
        scale = 1 / math.sqrt(weight)
        # one batch: scale its factor in place (it can be gigabytes); the result is cached
        single = all(len(v) == 1 for v in self.rows.values())
        out.rows = {k: (v[0].mul_(scale) if single else torch.cat(v).mul_(scale)) for k, v in self.rows.items()}
        self._rows_scaled = scale if single and self.rows else 1.0
        self._result = out
        return out

    def _unscale_rows(self) -> None:
        self._result = None
        if self._rows_scaled != 1.0:
            for value in self.rows.values():
                value[0].div_(self._rows_scaled)
            self._rows_scaled = 1.0
