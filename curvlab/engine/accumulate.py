"""Combining per-batch statistics, across batches and across processes, as if all data were one batch.

With reduction 'mean' the loss over all batches is L = (1/Σ_b Z_b) Σ_b Σ_n ℓ_n, so an additive
statistic (block, diagonal, full square root, G factor, EKFAC scaling) is

    M = (Σ_b U_b) / W,   U_b the unscaled batch statistic,  W = Σ_b Z_b  (reduction 'sum': W = 1),

the same as Σ_b Z_b M_b / Σ_b Z_b with M_b = U_b / Z_b (:func:`curvlab.losses.combine_weight`); rows of
square-root factors are stacked and divided by √W (the layer inputs of outer-product factors are
stacked alike, unscaled). Kronecker input factors are averaged over samples,
A = Σ_b Σ_n x̃ x̃ᵀ / Σ_b N_b, and G factors follow the additive rule: this is how KFAC implementations
average factors over batches, and it equals the factors of the union batch (it is *not* the Kronecker
product of summed blocks, Σ_b A_b ⊗ G_b). KFRA's G is a nonlinear function of each batch (it averages
over the batch at every layer), so its combination is the batch-weighted mean of per-batch factors.

Distributed: when ``torch.distributed`` is initialised, :meth:`Accumulator.all_reduce` sums U, W
and sample counts over ranks and gathers factor rows (rank order), so every rank holds the union result,
after the ranks agreed on what they reduce (:mod:`curvlab.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist

from curvlab.distributed import agree, checksum, is_distributed, tensor_spec
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
        self.stacked: dict = {}
        self.input_rows: dict[str, int] = {}
        self._result: BatchStatistics | None = None
        # result() scales the running sums in place (they can be large); adding more data undoes it
        self._scaled: tuple[float, float, float] | None = None
        self._reduced = False  # all_reduce() ran: the sums are global

    def add(self, stats: BatchStatistics) -> None:
        """Add one batch."""
        if self._reduced:
            raise RuntimeError(
                "the statistics were already all-reduced across processes; add every batch before asking "
                "for the result"
            )
        self._unscale()
        self.batches += 1
        self.normalizer += stats.normalizer
        self.count += stats.count
        for key, rows in stats.input_rows.items():
            self.input_rows[key] = self.input_rows.get(key, 0) + rows
        for store, new in ((self.sums, stats.sums), (self.inputs, stats.inputs)):
            for key, value in new.items():
                store[key] = value if key not in store else store[key] + value
        for store, new in ((self.rows, stats.rows), (self.stacked, stats.stacked)):
            for key, value in new.items():
                store.setdefault(key, []).append(value)

    @property
    def weight(self) -> float:
        """W: Σ_b Z_b for reduction 'mean', 1 for 'sum'."""
        return float(self.normalizer) if self.reduction == "mean" else 1.0

    def all_reduce(self, parameters: Iterable[torch.Tensor] = ()) -> None:
        """Sum over the ranks of an initialised process group (no-op otherwise, and when done already).

        First every rank agrees (:func:`curvlab.distributed.agree`) on the keys, shapes and dtypes it
        reduces, the reduction, and a checksum of ``parameters`` (the model's parameters and buffers),
        and learns whether any rank failed: on any difference every rank raises the same
        :class:`~curvlab.errors.DistributedError` instead of blocking or aborting in the backend.
        """
        if self._reduced or not is_distributed():
            return
        self._unscale()
        spec = {"reduction": self.reduction, **tensor_spec(self.sums), **tensor_spec(self.inputs)}
        for store in (self.rows, self.stacked):
            spec.update(tensor_spec({k: v[0] for k, v in store.items() if v}, leading=False))
        agree(spec, parameters=checksum(parameters), what="curvlab.compute")
        self._reduced = True
        counts = torch.tensor([self.batches, self.normalizer, self.count], dtype=torch.float64)
        dist.all_reduce(counts)
        self.batches, self.normalizer, self.count = (int(v) for v in counts.tolist())
        if self.input_rows:
            keys = sorted(self.input_rows)
            rows = torch.tensor([self.input_rows[k] for k in keys], dtype=torch.float64)
            dist.all_reduce(rows)
            self.input_rows = {k: int(v) for k, v in zip(keys, rows.tolist(), strict=True)}
        for store in (self.sums, self.inputs):
            for key in sorted(store):
                tensor = store[key].contiguous()
                dist.all_reduce(tensor)
                store[key] = tensor
        for store in (self.rows, self.stacked):
            for key in sorted(store):
                local = torch.cat(store[key])
                sizes = [None] * dist.get_world_size()
                dist.all_gather_object(sizes, local.shape[0])
                padded = local.new_zeros(max(sizes), *local.shape[1:])
                padded[: local.shape[0]] = local
                gathered = [torch.empty_like(padded) for _ in sizes]
                dist.all_gather(gathered, padded)
                store[key] = [g[:s] for g, s in zip(gathered, sizes, strict=True)]

    def result(self) -> BatchStatistics:
        """The combined, scaled statistics (A divided by N, the rest by W, rows by √W)."""
        if self.batches == 0:
            raise ValueError("no batch was recorded: run a forward and backward pass inside the hooks")
        if self._result is not None:
            return self._result
        weight, scale = self.weight, 1 / math.sqrt(self.weight)
        for value in self.sums.values():
            value.div_(weight)
        for value in self.inputs.values():
            value.div_(self.count)
        for key, value in self.rows.items():
            self.rows[key] = [torch.cat(value) if len(value) > 1 else value[0]]
            self.rows[key][0].mul_(scale)
        for key, value in self.stacked.items():
            self.stacked[key] = [torch.cat(value) if len(value) > 1 else value[0]]
        self._scaled = (weight, float(self.count), scale)
        out = BatchStatistics(self.normalizer, self.count)
        out.sums, out.inputs = dict(self.sums), dict(self.inputs)
        out.rows = {k: v[0] for k, v in self.rows.items()}
        out.stacked = {k: v[0] for k, v in self.stacked.items()}
        out.input_rows = dict(self.input_rows)
        self._result = out
        return out

    def _unscale(self) -> None:
        """Undo the scaling of :meth:`result` (into new tensors: the returned result keeps its own)."""
        self._result = None
        if self._scaled is not None:
            weight, count, scale = self._scaled
            self.sums = {k: v * weight for k, v in self.sums.items()}
            self.inputs = {k: v * count for k, v in self.inputs.items()}
            self.rows = {k: [v[0] / scale] for k, v in self.rows.items()}
            self._scaled = None
