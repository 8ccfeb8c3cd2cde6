"""What each requested quantity needs at each layer: a list of :class:`Task` (data, built once per call).

===========================  ==============================================================
quantity form                task at an adapted layer (generic layers: the exact route)
===========================  ==============================================================
``*_block``                  ``block``: Σ_r γ_r γ_rᵀ
``diag_*``                   ``diag``:  Σ_r γ_r²
``ggn``/``fisher_mc``/…      ``rows``:  the columns of the full square-root factor
``kfac``/``kflr``            ``kron``:  A and G (MC or GGN G), or the layer's approximation from
                             :class:`~curvlab.estimators.config.EstimatorConfig`
``ekfac``                    ``kron`` (GGN) in the first pass, ``ekfac`` (the refitted scaling) in the second
===========================  ==============================================================

Layers without Kronecker structure (no adapter, elementwise affine parameters, a frozen weight) get the exact ``block`` of the quantity's source instead of ``kron``/``ekfac``; the
result records it (:attr:`Plan.fallbacks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from curvlab.collector.layers import LayerPlan, ModelLayers
from curvlab.engine.quantities import Form, Quantity, Source
from curvlab.estimators.config import EstimatorConfig

__all__ = ["Plan", "Task", "kronecker_reason", "plan_tasks"]


@dataclass(frozen=True)
class Task:
    quantity: str
    layer: str
    kind: str  # block | diag | diagblock | rows | kron | ekfac
    source: Source


@dataclass
class Plan:
    tasks: list[Task]
    fallbacks: dict[str, str] = field(default_factory=dict)  # "quantity/layer" -> what it holds instead


def kronecker_reason(plan: LayerPlan) -> str | None:
    """Why a layer has no Kronecker factors (``None``: it has them)."""
    if plan.adapter is None:
        return f"exact block ({plan.reason})"
    if plan.adapter.kind != "dense":
        return "exact block (elementwise affine parameters have no Kronecker structure)"
    if not plan.has_weight:
        return "exact block (only the bias is trainable)"
    return None


def _source(q: Quantity, approx: str) -> Source:
    if approx == "kfac":
        return Source.MC
    if approx in ("kflr", "ekfac"):
        return Source.GGN
    return Source.MC if q is Quantity.KFAC else Source.GGN


def plan_tasks(quantities: Sequence[Quantity], layers: ModelLayers, config: EstimatorConfig,
               second_pass: bool = False) -> Plan:
    """The tasks of ``quantities`` (those the collector handles) at every layer."""
    plan = Plan([])
    for q in quantities:
        for lp in layers.layers:
            if q.form is Form.BLOCK:
                plan.tasks.append(Task(q.value, lp.name, "block", q.source))
            elif q.form is Form.DIAG:
                plan.tasks.append(Task(q.value, lp.name, "diag", q.source))
            elif q.form is Form.FULL:
                plan.tasks.append(Task(q.value, lp.name, "rows", q.source))
            else:
                approx = config.approximation(lp.name, q.value)
                source = _source(q, approx)
                if approx in ("block", "diag"):
                    if not second_pass:
                        kind = "block" if approx == "block" else "diagblock"
                        plan.tasks.append(Task(q.value, lp.name, kind, source))
                    continue
                reason = kronecker_reason(lp)
                if reason is not None:
                    plan.fallbacks[f"{q.value}/{lp.name}"] = reason
                    if not second_pass:
                        plan.tasks.append(Task(q.value, lp.name, "block", source))
                    continue
                if approx == "ekfac" and second_pass:
                    plan.tasks.append(Task(q.value, lp.name, "ekfac", source))
                elif not second_pass:
                    plan.tasks.append(Task(q.value, lp.name, "kron", source))
    return plan
