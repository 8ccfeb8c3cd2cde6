"""``curvlab.compute``: curvature quantities of a model over a data set, in one call.

It runs :class:`~curvlab.engine.hooks.CurvatureHooks` over every batch (forward, and a backward by
``torch.autograd.grad`` only when a quantity needs the loss gradient, so the parameters' ``.grad`` is
never touched), combines the batches exactly as one (:mod:`curvlab.engine.accumulate`), all-reduces
across processes when ``torch.distributed`` is initialised, and assembles representations
(:mod:`curvlab.engine.result`).

``ekfac`` takes two passes over the data: the first gets the KFLR factors A, G (and every other
requested quantity), the second refits the eigenvalues in their eigenbasis,
s_{ij} = (1/Z) Σ_{n,k} (U_Gᵀ Ŵ_nk U_A)²_{ij} with Ŵ_nk the per-sample, per-column GGN square-root
gradient of the layer (George et al. 2018, refitted to the exact GGN rather than sampled gradients).
``data`` must then be re-iterable (a tuple, list or DataLoader; not a one-shot generator).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from curvlab.data import Data, is_single_batch, iter_batches
from curvlab.distributed import shared_failure
from curvlab.engine.hooks import CurvatureHooks
from curvlab.engine.quantities import Quantity, Source, parse_quantities
from curvlab.engine.result import Curvature, assemble, kronecker_factors
from curvlab.engine.route import prefer_rules
from curvlab.engine.statistics import BatchStatistics
from curvlab.errors import UnsupportedLossError, UnsupportedModuleError
from curvlab.losses import loss_adapter
from curvlab.partition import PartitionSpec, trainable_parameters
from curvlab.provenance import provenance

__all__ = ["compute"]


def compute(
    model: nn.Module,
    loss_fn: nn.Module,
    data: Data,
    quantities: str | Quantity | Iterable[str | Quantity],
    *,
    partition: PartitionSpec = "layer",
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = True,
    approximations: Mapping[str, str] | None = None,
    weight_sharing: str = "expand",
    route: str = "auto",
) -> Curvature:
    """Compute curvature ``quantities`` of ``loss_fn(model(x), y)`` over all of ``data``.

    Scaling follows the loss: with L = (1/Z) Σ_n ℓ_n over all the data, e.g. ``ggn`` is
    (1/Z) Σ_n J_nᵀ H_n J_n. See :mod:`curvlab.engine.quantities` for the quantities and
    :mod:`curvlab.engine.result` for the representation each returns.

    Args:
        model: an ``nn.Sequential`` of supported modules (eval mode for BatchNorm/Dropout); not modified.
        loss_fn: ``MSELoss``, ``CrossEntropyLoss`` or ``BCEWithLogitsLoss`` (reduction 'mean' or 'sum').
        data: an ``(inputs, targets)`` pair or an iterable of pairs (e.g. a DataLoader).
        quantities: names such as ``"kfac"``, ``["ggn_block", "diag_hessian"]``.
        partition: labels of diagonal/full results (see :class:`curvlab.partition.Partition`).
        mc_samples: M, sampled targets per sample for ``kfac``, ``fisher_mc``, ``*_mc*``.
        generator: random source of the MC sampling.
        progress: show a tqdm progress bar over batches.
        approximations: layer-name pattern -> approximation inside Kronecker quantities, e.g.
            ``{"fc": "kflr", "*norm*": "diag"}`` (:class:`curvlab.estimators.EstimatorConfig`).
        weight_sharing: ``"expand"`` or ``"reduce"``: Kronecker factors of layers whose weight is shared
            by S positions (tokens, patches); see :mod:`curvlab.estimators.config` for when each is exact.
        route: ``"auto"`` (the hand-written rule engine where it supports the model and is the faster
            one, :func:`curvlab.engine.route.prefer_rules`; otherwise the collector), ``"collector"`` (any model: :mod:`curvlab.collector`)
            or ``"rules"`` (:class:`~curvlab.engine.hooks.CurvatureHooks`; ``kfra`` needs it).

    Returns:
        :class:`~curvlab.engine.result.Curvature`, mapping quantity name -> representation.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
        >>> result = compute(model, nn.CrossEntropyLoss(), [(x[:4], y[:4]), (x[4:], y[4:])],
        ...                  ["ggn", "kflr"], progress=False)
        >>> from curvlab.reference import ggn
        >>> torch.allclose(result["ggn"].dense(), ggn(model, nn.CrossEntropyLoss(), x, y))
        True
        >>> result["kflr"].dense().shape
        torch.Size([26, 26])
    """
    qs = parse_quantities(quantities)
    adapter = loss_adapter(loss_fn)
    if route not in ("auto", "collector", "rules"):
        raise ValueError(f"route must be 'auto', 'collector' or 'rules', got {route!r}")
    use_rules = route == "rules" or (
        route == "auto" and not approximations and weight_sharing == "expand" and prefer_rules(model, qs)
    )
    if not use_rules:
        from curvlab.engine.collector_route import compute_collected  # noqa: PLC0415  (estimators import the engine)

        return compute_collected(model, adapter, loss_fn, data, qs, partition=partition, mc_samples=mc_samples,
                                 generator=generator, progress=progress, approximations=approximations,
                                 weight_sharing=weight_sharing)
    wants_ekfac = Quantity.EKFAC in qs
    if wants_ekfac and not is_single_batch(data) and iter(data) is data:
        raise ValueError("ekfac makes two passes over the data: pass a re-iterable (list, DataLoader), not an iterator")
    first = tuple(q for q in qs if q is not Quantity.EKFAC)
    if wants_ekfac and Quantity.KFLR not in first:
        first += (Quantity.KFLR,)
    params = trainable_parameters(model)  # once per call (the hooks check the model's layers)
    common = {"mc_samples": mc_samples, "generator": generator}
    try:
        stats, info = _run(model, adapter, data, first, progress, [p for _, p in params], **common)
    except (UnsupportedModuleError, UnsupportedLossError) as error:
        # refused at run time (nn.Linear on [N, T, D], targets using ignore_index): the collector handles it
        lifted = isinstance(error, UnsupportedModuleError) or "ignore_index" in str(error)
        if route == "rules" or not lifted or not (is_single_batch(data) or iter(data) is not data):
            raise
        from curvlab.engine.collector_route import compute_collected  # noqa: PLC0415

        return compute_collected(model, adapter, loss_fn, data, qs, partition=partition, mc_samples=mc_samples,
                                 generator=generator, progress=progress)
    if wants_ekfac:
        layers = {key[1] for key in stats.sums if key[0] == "kflr" and key[2] == "G"}
        factors = {layer: kronecker_factors(stats, "kflr", layer) for layer in layers}
        # a Linear layer's input factor is a Gram matrix of one row per sample: rank ≤ N
        bounds = {layer: stats.count for layer in layers if isinstance(model.get_submodule(layer), nn.Linear)}
        refit, _ = _run(model, adapter, data, (Quantity.EKFAC,), progress, [p for _, p in params],
                        ekfac_factors=factors, ekfac_rank_bounds=bounds, layer_partition=info["layer_partition"],
                        **common)
        stats.sums.update(refit.sums)
        stats.bases = refit.bases
    attrs = run_attrs(model, loss_fn, adapter, qs, stats, info, params, mc_samples, partition)
    return assemble(model, qs, stats, partition, attrs, layer_partition=info["layer_partition"])


def run_attrs(model, loss_fn, adapter, quantities, stats, info, params, mc_samples, partition, **extra) -> dict:
    """The provenance attributes of one ``compute`` run (both routes), ``extra`` added to its config."""
    return provenance(
        model=model,
        loss_fn=loss_fn,
        batch_size=info["batch_size"],
        dtype=params[0][1].dtype,
        config={
            "quantities": [q.value for q in quantities],
            "mc_samples": mc_samples,
            "partition": partition if isinstance(partition, str) else "custom",
            "batches": info["batches"],
            "samples": stats.count,
            "normalizer": stats.normalizer,
            "reduction": adapter.reduction,
            **extra,
        },
    )


@shared_failure("curvlab.compute")  # under torch.distributed: a rank that raises tells the others
def _run(model, adapter, data, quantities, progress, params, **options) -> tuple[BatchStatistics, dict[str, Any]]:
    needs_grad = any(q.source in (Source.EMPIRICAL, Source.HESSIAN) for q in quantities)
    total = 1 if is_single_batch(data) else (len(data) if hasattr(data, "__len__") else None)
    info: dict[str, Any] = {"batches": 0, "batch_size": None}
    with CurvatureHooks(model, adapter, quantities, **options) as hooks:
        batches = iter_batches(data)
        if progress:  # a disabled tqdm still costs its construction on every call
            batches = tqdm(batches, total=total, desc="curvlab", unit="batch")
        for inputs, targets in batches:
            info["batches"] += 1
            info["batch_size"] = info["batch_size"] or int(inputs.shape[0])
            with torch.set_grad_enabled(needs_grad):
                outputs = model(inputs)
                if needs_grad:
                    torch.autograd.grad(adapter(outputs, targets), params)
                else:  # no backward: the loss value is not needed, only the check of outputs and targets
                    adapter.check(outputs, targets)
    info["layer_partition"] = hooks.layer_partition
    return hooks.combined(), info
