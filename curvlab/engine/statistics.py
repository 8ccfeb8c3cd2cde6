"""Per-batch statistics: propagate the requested sources backwards through a recorded chain of modules.

Everything here is *unscaled* (no 1/Z): the loss's normalizer is applied once, after all batches are
combined (:mod:`curvlab.engine.accumulate`). For one batch with records r_1 … r_L (forward order):

* factor sources (GGN, MC, EMPIRICAL): V_L = S [N, K, C] at the output, V_{l-1} = J_lᵀ V_l
  (:meth:`~curvlab.engine.rules.ModuleRule.backprop`); each parameterised layer turns the V at its
  output into its block, diagonal, rows of the full square-root factor, Kronecker G or EKFAC scaling.
  EMPIRICAL needs no propagation: its V at every layer is the recorded loss gradient (K = 1).
* HESSIAN: Botev's exact per-sample recursion H_{l-1} = J_lᵀ H_l J_l + Σ_k g_k ∇²y_k.
* KFRA: Ḡ_L = Σ_n H_n, Ḡ_{l-1} = E_n[J_nᵀ Ḡ_l J_n] (batch-averaged: no per-sample matrices).

Propagation stops at the first layer with parameters: nothing below it is needed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from curvlab.engine.fx_check import ModelGraph
from curvlab.engine.quantities import Form, Quantity, Source
from curvlab.engine.rules import ParameterRule, Record
from curvlab.engine.rules.gram import gram
from curvlab.guards import check_dense_allocation
from curvlab.losses import CrossEntropyAdapter, LossAdapter

__all__ = ["BatchStatistics", "EngineConfig", "batch_statistics", "uses_kronecker"]

Key = tuple[str, str, str]  # (quantity, layer, part)


@dataclass(frozen=True)
class EngineConfig:
    """Settings of the statistics.

    Attributes:
        mc_samples: M, sampled targets per sample for the MC sources (``kfac``, ``fisher_mc``, …).
        generator: random source of the MC sampling (``None``: torch's global generator).
        ekfac_basis: ``{layer: (U_A, U_G)}`` eigenvectors of the KFLR factors A, G; needed for ``ekfac``.
    """

    mc_samples: int = 1
    generator: torch.Generator | None = None
    ekfac_basis: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __post_init__(self):
        if isinstance(self.mc_samples, bool) or not isinstance(self.mc_samples, int) or self.mc_samples < 1:
            raise ValueError(f"mc_samples must be a positive int, got {self.mc_samples!r}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(self.generator).__qualname__}")


@dataclass
class BatchStatistics:
    """Unscaled statistics of one batch.

    Attributes:
        sums: additive statistics (blocks, diagonals, G factors, EKFAC scalings), keyed (quantity, layer, part).
        inputs: Kronecker input factors Σ_n x̃_n x̃_nᵀ per layer (divided by the sample count at the end).
        rows: the full square-root factor of a quantity per layer: key (quantity, layer, "S") the
            layer's output factor S [N·K, O] when its columns are outer products S ⊗ [x; 1]
            (:meth:`~curvlab.engine.rules.ParameterRule.outer_factor`), else (quantity, layer, "F") its
            dense columns [N·K, P_layer]; scaled by 1/√W when combined.
        stacked: per-sample tensors stacked over batches and never scaled: the layer inputs
            X [N, I] of the outer-product factors, key (quantity, layer, "X").
        bases: EKFAC's eigenbasis (U_A, U_G) per layer, the one its scaling was fitted in (set once
            after the refit, never combined).
        input_rows: the rows x̃ behind each input factor (N, or N·S for expanded positions): a bound
            on its rank, summed over batches (:func:`curvlab.engine.eigenbasis.factor_eigenvectors`).
        normalizer: Z of this batch; ``count``: N.
    """

    normalizer: int
    count: int
    sums: dict[Key, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[Key, torch.Tensor] = field(default_factory=dict)
    stacked: dict[Key, torch.Tensor] = field(default_factory=dict)
    input_rows: dict[str, int] = field(default_factory=dict)
    bases: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def has_trainable(record: Record) -> bool:
    """Whether a record is a layer with trainable parameters (frozen layers only pass factors on).

    Cached on the record (one forward call: ``requires_grad`` does not change while it is processed).
    """
    cached = record.cache.get("has_trainable")
    if cached is None:
        cached = record.cache["has_trainable"] = record.rule.has_parameters and bool(record.rule.trainable(record.module))
    return cached


def uses_kronecker(rule: ParameterRule, record: Record) -> bool:
    """Whether a layer gets Kronecker factors (otherwise its exact dense block)."""
    return rule.has_kronecker and rule.kronecker_supported(record.module)


def _propagate(
    records: Sequence[Record],
    start: torch.Tensor,
    step: Callable,
    visit: Callable,
    graph: ModelGraph | None = None,
    step_inplace: Callable | None = None,
) -> None:
    """Run ``visit`` at every trainable record and ``step`` down the chain (or graph) of records.

    ``step_inplace`` (optional) is a ``step`` allowed to overwrite its input; it is used only when no
    one else holds the value (it came from a rule whose ``backprop_allocates`` and no visit saw it).
    """
    if graph is not None:
        _propagate_graph(records, start, step, visit, graph)
        return
    first = next(i for i, r in enumerate(records) if has_trainable(r))
    value, owned = start, False  # owned: no one else holds `value` (a step may overwrite it)
    for i in range(len(records) - 1, first - 1, -1):
        record = records[i]
        if has_trainable(record):
            visit(record, value)
            owned = False  # the visit may have kept a view of it
        if i > first:
            if owned and step_inplace is not None:
                value = step_inplace(record, value)
            else:
                value, owned = step(record, value), record.rule.backprop_allocates


def _propagate_graph(records, start, step: Callable, visit: Callable, graph: ModelGraph) -> None:
    """Reverse topological propagation through a module graph, summing at nodes with several consumers."""
    record_at = dict(zip((i for i, n in enumerate(graph.nodes) if n.kind == "module"), records, strict=True))
    needed = [False] * len(graph.nodes)  # does the node have trainable parameters upstream?
    for i, node in enumerate(graph.nodes):
        own = node.kind == "module" and has_trainable(record_at[i])
        needed[i] = own or any(needed[j] or (graph.nodes[j].kind == "module" and has_trainable(record_at[j]))
                               for j in node.inputs)
    pending = {graph.output: start}
    for i in range(len(graph.nodes) - 1, 0, -1):
        value = pending.pop(i, None)
        node = graph.nodes[i]
        if value is None:
            continue
        if node.kind == "module":
            record = record_at[i]
            if has_trainable(record):
                visit(record, value)
            targets = [(j, None) for j in node.inputs if needed[j] and graph.nodes[j].kind != "input"]
            if targets:
                value = step(record, value)
        else:
            targets = [(j, None) for j in node.inputs if needed[j] and graph.nodes[j].kind != "input"]
        for j, _ in targets:
            pending[j] = value if j not in pending else pending[j] + value


def _drop_null_column(sqrt: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """A square root with one column fewer, [N, C, C-1], of S [N, C, C] with S_n q_n = 0, ‖q_n‖ = 1
    (``sqrt`` unchanged if q is not a null vector of S to rounding).

    With the Householder reflection Q_n = I − 2 u uᵀ/(uᵀu), u = q_n + e_j (j = argmax q_n, so
    uᵀu ≥ 2), Q_n e_j = −q_n: column j of S_n Q_n is 0, and S_n Q_n Q_nᵀ S_nᵀ = S_n S_nᵀ. Dropping it
    leaves every Σ_k v_k v_kᵀ statistic unchanged and saves 1/C of the propagation.

    Example:
        >>> p = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)
        >>> s = torch.diag_embed(p.sqrt()) - p[:, :, None] * p.sqrt()[:, None, :]
        >>> t = _drop_null_column(s, p.sqrt())
        >>> t.shape, torch.allclose(t @ t.mT, s @ s.mT)
        (torch.Size([1, 3, 2]), True)
    """
    num, classes = null.shape
    if float((sqrt @ null.unsqueeze(2)).abs().max()) > 64 * torch.finfo(sqrt.dtype).eps:
        return sqrt  # q is not a null vector of S (another square root): keep every column
    j = null.argmax(1)
    u = null.clone()
    u[torch.arange(num), j] += 1
    su = (sqrt @ u.unsqueeze(2)) * (2 / (u * u).sum(1))[:, None, None]  # [N, C, 1]
    reflected = sqrt - su * u.unsqueeze(1)
    keep = torch.arange(classes - 1).expand(num, -1)
    keep = keep + (keep >= j[:, None]).to(keep.dtype)  # every column but j
    return reflected.gather(2, keep.unsqueeze(1).expand(num, classes, classes - 1))


def _output_factor(source: Source, adapter: LossAdapter, outputs: torch.Tensor, config: EngineConfig,
                   reduce_rank: bool = False):
    if source is Source.GGN:
        sqrt = adapter.sqrt_hessian(outputs)  # [N, C, C]
        if reduce_rank and type(adapter) is CrossEntropyAdapter and outputs.ndim == 2 and outputs.shape[1] > 2:
            # H_n = diag(p) − p pᵀ has rank C − 1 (null vector 1; S_n's null vector is √p)
            sqrt = _drop_null_column(sqrt, outputs.detach().softmax(1).sqrt())
    else:
        sqrt = adapter.sqrt_hessian_mc(outputs, config.mc_samples, config.generator)  # [N, C, M]
    return sqrt.transpose(1, 2).reshape(sqrt.shape[0], sqrt.shape[2], *outputs.shape[1:])


def batch_statistics(
    records: Sequence[Record],
    outputs: torch.Tensor,
    adapter: LossAdapter,
    quantities: Sequence[Quantity],
    config: EngineConfig,
    layout: Mapping[str, slice],
    graph: ModelGraph | None = None,
) -> BatchStatistics:
    """Unscaled statistics of one recorded batch for ``quantities`` (``hessian`` excluded: see
    :mod:`curvlab.engine.hessian`).

    ``layout`` maps each parameterised layer to its slice of the flat parameter vector (kept for
    callers; full square-root factors are stored per layer, see :class:`BatchStatistics`).
    ``graph``: the module graph of a branching model (records in its
    module order); factors are then summed where a node feeds several consumers.
    """
    stats = BatchStatistics(adapter.normalizer(outputs), outputs.shape[0])
    by_source: dict[Source, list[Quantity]] = {}
    for q in quantities:
        if q is not Quantity.HESSIAN:
            by_source.setdefault(q.source, []).append(q)
    if Source.KFRA in by_source:
        _kfra(records, outputs, adapter, stats)
        fallback = [r for r in records if has_trainable(r) and not uses_kronecker(r.rule, r)]
        if fallback:  # layers without Kronecker rule get the exact GGN block
            by_source.setdefault(Source.GGN, [])
    for source, qs in by_source.items():
        if source is Source.HESSIAN:
            _hessian(records, outputs, adapter, qs, stats)
        elif source is Source.EMPIRICAL:
            for record in records:
                if has_trainable(record):
                    _visit_factor(record, record.grad.unsqueeze(1), qs, config, stats)
        elif (source is Source.GGN and graph is None and Source.KFRA not in by_source and qs
              and all(q is Quantity.KFLR for q in qs) and adapter.shared_sqrt_hessian(outputs) is not None):
            _kflr_shared(records, adapter.shared_sqrt_hessian(outputs), outputs, qs, config, stats)
        elif source in (Source.GGN, Source.MC):
            # fewer columns only where the statistics are sums Σ_k v_k v_kᵀ (not the full factor's rows)
            start = _output_factor(source, adapter, outputs, config, all(q.form is not Form.FULL for q in qs))
            extra = [Quantity.KFRA] if source is Source.GGN and Source.KFRA in by_source else []
            visit = functools.partial(_visit_factor, quantities=qs + extra, config=config, stats=stats)
            _propagate(records, start, lambda r, v: r.rule.backprop(r, v), visit, graph,
                       step_inplace=lambda r, v: r.rule.backprop_inplace(r, v))
    if any(q.form in (Form.KRONECKER, Form.EKFAC) for q in quantities):
        # after the propagation: its (large) factors are freed by then, which keeps the peak memory low
        for record in records:
            if has_trainable(record) and uses_kronecker(record.rule, record):
                stats.inputs[record.name] = record.rule.kron_input(record)[0]
    return stats


def _kflr_shared(records, sqrt: torch.Tensor, outputs: torch.Tensor, quantities, config, stats) -> None:
    """KFLR for a loss whose square root S is the same for every sample (MSE: √2 I).

    The factor is kept as V_nk = r_k ⊙ s_n — rows r [K, *features] shared by the batch, times a
    per-sample scale s [N, *features] (``None``: 1) — through modules with input-independent Jacobian
    rows (Linear: r ← r W, once for the batch) and elementwise modules (s ← s ⊙ σ'), and materialised
    [N, K, *features] only where neither applies. The output factor of a layer in this form is
    Σ_nk v vᵀ = (Σ_k r rᵀ) ⊙ (Σ_n s sᵀ): two Gram matrices instead of one of N·K rows. On an
    autoencoder with 784 outputs this skips the propagation through the last layers.
    """
    num = outputs.shape[0]
    rows = sqrt.T.reshape(sqrt.shape[1], *outputs.shape[1:])
    scale, factor = None, None
    first = next(i for i, r in enumerate(records) if has_trainable(r))
    for i in range(len(records) - 1, first - 1, -1):
        record, rule = records[i], records[i].rule
        if has_trainable(record):
            if factor is None and uses_kronecker(rule, record) and record.outputs.dim() == 2:
                kron = gram(rows.flatten(1))
                kron = kron * num if scale is None else kron * gram(scale.flatten(1))
                for q in quantities:
                    stats.sums[(q.value, record.name, "G")] = kron
            else:
                factor = factor if factor is not None else _materialise(record, rows, scale, num)
                _visit_factor(record, factor, quantities, config, stats)
        if i == first:
            break
        if factor is not None:
            factor = rule.backprop(record, factor)
            continue
        shared = rule.shared_jacobian_rows(record) if scale is None else None
        if shared is not None:  # r ← r J for the whole batch
            rows = (rows.flatten(1) @ shared.flatten(1)).reshape(rows.shape[0], *record.in_shape)
            continue
        passed = rule.backprop_scaled_rows(
            record, rows, scale if scale is not None else rows.new_ones(num, *rows.shape[1:]))
        if passed is not None:
            rows, scale = passed
        else:
            factor = rule.backprop(record, _materialise(record, rows, scale, num))


def _materialise(record: Record, rows: torch.Tensor, scale: torch.Tensor | None, num: int) -> torch.Tensor:
    check_dense_allocation((num, *rows.shape), rows.dtype, f"kflr square-root factor at layer {record.name!r}")
    if scale is None:
        return rows.unsqueeze(0).expand(num, *rows.shape).contiguous()
    return rows.unsqueeze(0) * scale.unsqueeze(1)


def _check_block(record: Record, dtype: torch.dtype, quantity: str) -> None:
    size = sum(getattr(record.module, n).numel() for n in record.rule.trainable(record.module))
    check_dense_allocation((size, size), dtype, f"{quantity} block of layer {record.name!r}")


def _full_columns(record: Record, factor: torch.Tensor, quantity: str, stats: BatchStatistics) -> None:
    """The layer's columns of the full square-root factor: S and X when they are outer products."""
    parts = record.rule.outer_factor(record, factor)
    if parts is not None:
        outputs, inputs, _ = parts
        stats.rows[(quantity, record.name, "S")] = outputs
        stats.stacked[(quantity, record.name, "X")] = inputs.clone()  # not a view of the user's data
        return
    num, cols = factor.shape[:2]
    size = sum(getattr(record.module, n).numel() for n in record.rule.trainable(record.module))
    check_dense_allocation((num * cols, size), factor.dtype, f"{quantity} factor of layer {record.name!r}")
    stats.rows[(quantity, record.name, "F")] = record.rule.param_factor(record, factor).reshape(num * cols, size)


def _visit_factor(record: Record, factor, quantities, config: EngineConfig, stats: BatchStatistics) -> None:
    rule, layer = record.rule, record.name
    for q in quantities:
        name = q.value
        if q.form is Form.BLOCK or (q.form is not Form.FULL and not uses_kronecker(rule, record)):
            _check_block(record, factor.dtype, name)
        if q.form is Form.BLOCK:
            stats.sums[(name, layer, "block")] = rule.block(record, factor)
        elif q.form is Form.DIAG:
            stats.sums[(name, layer, "diag")] = rule.diag(record, factor)
        elif q.form is Form.FULL:
            _full_columns(record, factor, name, stats)
        elif not uses_kronecker(rule, record):
            stats.sums[(name, layer, "block")] = rule.block(record, factor)
        elif q.form is Form.KRONECKER and q is not Quantity.KFRA:
            stats.sums[(name, layer, "G")] = rule.kron_output(record, factor)
        elif q.form is Form.EKFAC:
            if config.ekfac_basis is None or layer not in config.ekfac_basis:
                raise ValueError(
                    f"ekfac needs the KFLR factors of layer {layer!r} (CurvatureHooks(..., ekfac_factors=...)); "
                    "curvlab.compute makes two passes over the data to get it"
                )
            basis_in, basis_out = config.ekfac_basis[layer]
            stats.sums[(name, layer, "scaling")] = rule.ekfac_scale(record, factor, basis_in, basis_out)


def _hessian(records, outputs, adapter: LossAdapter, quantities, stats: BatchStatistics) -> None:
    if all(q.form is Form.DIAG for q in quantities):
        _diag_hessian(records, outputs, adapter, stats)
        return

    def visit(record: Record, hessian: torch.Tensor) -> None:
        for q in quantities:
            if q.form is Form.BLOCK:
                _check_block(record, hessian.dtype, q.value)
                stats.sums[(q.value, record.name, "block")] = record.rule.hessian_block(record, hessian)
            else:
                stats.sums[(q.value, record.name, "diag")] = record.rule.diag_hessian(record, hessian)

    start = adapter.output_hessian(outputs)  # [N, C, C], unscaled
    _propagate(records, start, lambda r, h: r.rule.backprop_hessian(r, h), visit)


def _kfra(records, outputs, adapter: LossAdapter, stats: BatchStatistics) -> None:
    def visit(record: Record, gbar: torch.Tensor) -> None:
        if uses_kronecker(record.rule, record):
            stats.sums[("kfra", record.name, "G")] = record.rule.kfra_output(gbar, record)

    start = adapter.output_hessian_sum(outputs)  # Σ_n H_n, unscaled
    _propagate(records, start, lambda r, g: r.rule.kfra_backprop(r, g), visit)


@dataclass
class _Term:
    """A weighted square-root term Σ_k w_nk v_nk v_nkᵀ of per-sample Hessians (:func:`_diag_hessian`).

    Either ``factor`` V [N, K, *features], or V_nk = ``rows``_k ⊙ ``scale``_n with rows [K, *features]
    shared by all samples (a Linear layer's weight rows) and scale [N, *features] (activation
    derivatives): that form never allocates [N, K, *features].
    """

    weights: torch.Tensor | None
    factor: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    scale: torch.Tensor | None = None

    def diag(self, record: Record) -> torch.Tensor:
        if self.factor is not None:
            return record.rule.signed_diag(record, self.factor, self.weights)
        return record.rule.signed_diag_scaled_rows(record, self.rows, self.scale, self.weights)

    def backprop(self, record: Record) -> _Term:
        rule = record.rule
        if self.factor is None:
            passed = rule.backprop_scaled_rows(record, self.rows, self.scale)
            if passed is not None:
                return _Term(self.weights, rows=passed[0], scale=passed[1])
            check_dense_allocation((self.scale.shape[0], *self.rows.shape), self.rows.dtype,
                                   f"diag_hessian square-root factor of layer {record.name!r}")
            self.factor = self.rows.unsqueeze(0) * self.scale.unsqueeze(1)
        return _Term(self.weights, factor=rule.backprop(record, self.factor))


def _diag_hessian(records, outputs, adapter: LossAdapter, stats: BatchStatistics) -> None:
    """The Hessian diagonal without per-sample Hessian matrices.

    Every per-sample Hessian on the way down is kept as H = Σ_t V_t diag(w_t) V_tᵀ + diag(d): weighted
    square-root terms (the GGN's S with unit weights, and residual terms turned into weighted Jacobian
    rows) plus a diagonal d that elementwise, reshaping and BatchNorm modules keep diagonal. A diagonal
    becomes a term only when a module mixes features (Linear, Conv, pooling); after a Linear layer the
    term is W's rows scaled per sample, and stays so through elementwise modules (:class:`_Term`).
    Cost: O(N · C · D) per module for the GGN part; a residual term costs O(N · D_m · D) per module
    only once it has to pass a second feature-mixing module (for an MLP with two hidden layers
    nothing of size [N, D, D] is formed; Botev's recursion costs O(N · D³) per layer).
    """
    first = next(i for i, r in enumerate(records) if has_trainable(r))
    terms = [_Term(None, factor=_output_factor(Source.GGN, adapter, outputs, None))]
    diagonal: torch.Tensor | None = None
    for i in range(len(records) - 1, first - 1, -1):
        record, rule = records[i], records[i].rule
        if has_trainable(record):
            total = sum(term.diag(record) for term in terms)
            if diagonal is not None:
                total = total + rule.diag_from_diagonal(record, diagonal)
            stats.sums[("diag_hessian", record.name, "diag")] = total
        if i == first:
            break
        terms = [term.backprop(record) for term in terms]
        if diagonal is not None:
            passed = rule.backprop_diagonal(record, diagonal)
            if passed is None:
                weights, rows = diagonal.flatten(1), rule.shared_jacobian_rows(record)
                if rows is None:
                    terms.append(_Term(weights, factor=rule.jacobian_rows(record)))
                else:
                    scale = rows.new_ones(diagonal.shape[0], *record.in_shape)
                    terms.append(_Term(weights, rows=rows, scale=scale))
            diagonal = passed
        residual = rule.second_derivative_diagonal(record)
        if residual is not None:
            diagonal = residual if diagonal is None else diagonal + residual
