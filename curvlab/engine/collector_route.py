"""``curvlab.compute`` on the collector (:mod:`curvlab.collector`, :mod:`curvlab.estimators`): any model.

Same result types and scaling as the rule engine; the provenance gains ``route = "collector"`` and
``structure`` (JSON: the weight-sharing convention, the layers whose Kronecker quantity holds an exact
block or diagonal instead and why, layers on the exact per-parameter route, and whether the samples
are coupled, with the convention then used).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from curvlab.data import Data
from curvlab.engine.compute import run_attrs
from curvlab.engine.quantities import Quantity
from curvlab.engine.result import Curvature
from curvlab.estimators import EstimatorConfig
from curvlab.estimators.assemble import assemble_collected, structure_note
from curvlab.estimators.run import collect
from curvlab.losses import LossAdapter

__all__ = ["compute_collected"]


def compute_collected(model: nn.Module, adapter: LossAdapter, loss_fn: nn.Module, data: Data,
                      quantities: Sequence[Quantity], *, partition="layer", mc_samples: int = 1,
                      generator: torch.Generator | None = None, progress: bool = True,
                      approximations: Mapping[str, str] | None = None, weight_sharing: str = "expand") -> Curvature:
    """:func:`curvlab.compute` through the collector (arguments as there).

    Example:
        >>> net = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 2)).double()
        >>> x, y = torch.randint(0, 5, (4, 2)), torch.randint(0, 2, (4,))
        >>> from curvlab.losses import loss_adapter
        >>> loss = nn.CrossEntropyLoss()
        >>> c = compute_collected(net, loss_adapter(loss), loss, (x, y), [Quantity.GGN_BLOCK], progress=False)
        >>> from curvlab.reference import ggn
        >>> torch.allclose(c["ggn_block"].block("2", "2"), ggn(net, loss, x, y)[15:, 15:])
        True
    """
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive int, got {mc_samples!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__qualname__}")
    if Quantity.EKFAC in quantities:
        from curvlab.data import is_single_batch  # noqa: PLC0415

        if not is_single_batch(data) and iter(data) is data:
            raise ValueError("ekfac makes two passes over the data: pass a re-iterable (list, DataLoader), not an iterator")
    adapter = copy.copy(adapter)
    adapter.allow_ignore_index = True  # the collector honours entry_mask / normalizer_for
    config = EstimatorConfig(dict(approximations or {}), weight_sharing, mc_samples, generator)
    stats, info = collect(model, adapter, data, quantities, config, progress)
    state, plan = info["state"], info["plan"]
    params = info["layers"].params
    attrs = run_attrs(
        model, loss_fn, adapter, quantities, stats, info, params, mc_samples, partition, route="collector",
        structure=structure_note(plan.fallbacks if plan else {}, state.demoted,
                                 state.coupled_by if state.coupled else "", weight_sharing, state.probed),
    )
    return assemble_collected(model, quantities, stats, partition, attrs, info["layers"])
