"""curvlab: curvature analysis for PyTorch.

Layers (imports go one way, downwards):

1. ``curvlab.repr`` (representations), ``partition``, ``guards``, ``errors``, ``data``, ``provenance``,
   ``io``, ``datasets``, ``models``;
2. ``curvlab.losses``, ``curvlab.reference``, ``curvlab.engine``, ``curvlab.summary``, ``curvlab.operators``;
3. ``curvlab.spectra``, ``curvlab.analysis``, ``curvlab.optim`` (analysis and optim never import each other);
4. ``curvlab.cli``.

The public names below are imported lazily, so ``import curvlab`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    # errors and guards
    "CurvlabError": "curvlab.errors",
    "CurvlabWarning": "curvlab.errors",
    "MemoryBudgetError": "curvlab.errors",
    "NonFiniteError": "curvlab.errors",
    "PartitionError": "curvlab.errors",
    "UnsupportedLossError": "curvlab.errors",
    "UnsupportedModuleError": "curvlab.errors",
    "get_memory_budget": "curvlab.guards",
    "memory_budget": "curvlab.guards",
    "set_memory_budget": "curvlab.guards",
    # partitions, losses, data
    "ParameterGroup": "curvlab.partition",
    "ParameterInfo": "curvlab.partition",
    "Partition": "curvlab.partition",
    "loss_adapter": "curvlab.losses",
    "load_dataset": "curvlab.datasets",
    # representations and export
    "CurvatureRepresentation": "curvlab.repr",
    "DenseCurvature": "curvlab.repr",
    "BlockDiagonalCurvature": "curvlab.repr",
    "DiagonalCurvature": "curvlab.repr",
    "KroneckerFactors": "curvlab.repr",
    "KroneckerCurvature": "curvlab.repr",
    "SummaryMatrix": "curvlab.repr",
    "SquareRootCurvature": "curvlab.repr",
    "LayeredSquareRootCurvature": "curvlab.repr",
    "BiasConvention": "curvlab.repr",
    "KroneckerLayout": "curvlab.repr",
    "save": "curvlab.io",
    "load": "curvlab.io",
    # statistics engine
    "compute": "curvlab.engine",
    "Curvature": "curvlab.engine",
    "CurvatureHooks": "curvlab.engine",
    "Quantity": "curvlab.engine",
    # GroupedNewton summaries
    "grouped_newton_summary": "curvlab.summary",
    "GroupedNewtonSummary": "curvlab.summary",
    "newton_summary_step": "curvlab.summary",
    "NewtonSummaryStep": "curvlab.summary",
    "SingularSummaryError": "curvlab.summary",
    # matrix-free operators
    "HessianOperator": "curvlab.operators",
    "GGNOperator": "curvlab.operators",
    "FisherMCOperator": "curvlab.operators",
    "EmpiricalFisherOperator": "curvlab.operators",
    "ComplexStepHessianOperator": "curvlab.operators",
    "CurvatureOperator": "curvlab.operators",
    "HVPMethod": "curvlab.operators",
    "EmpiricalFisherStrategy": "curvlab.operators",
    "CGSettings": "curvlab.operators",
    "SummaryCurvature": "curvlab.summary",
    "SummaryMethod": "curvlab.summary",
}
_SUBMODULES = (
    "reference", "spectra", "analysis", "optim", "repr", "engine", "operators", "summary",
    "datasets", "models", "provenance", "losses", "partition", "data", "io", "guards", "errors",
)

__all__ = sorted([*_PUBLIC, *_SUBMODULES, "__version__"])


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"curvlab.{name}")
    else:
        raise AttributeError(f"module 'curvlab' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
