"""Second-order optimisers built on curvlab's curvature statistics.

Pure maths pieces (no state; conjugate gradient is :mod:`curvlab.operators.cg`, shared with the operators):

* :mod:`~curvlab.optim.gauss_newton` – the Gauss–Newton quadratic model (GGN-vector products);
* :mod:`~curvlab.optim.damping` – damping schedules and the trust-region ratio rule;
* :mod:`~curvlab.optim.line_search` – backtracking Armijo line search;
* :mod:`~curvlab.optim.step_scaling` – quadratic-model step rescaling and KL clipping;
* :mod:`~curvlab.optim.hyperparameters` – validation (:class:`HyperparameterError` names the culprit);
* :mod:`~curvlab.optim.linear_layers` – a hook context manager recording the input rows and output gradients of
  linear and convolutional layers;
* :mod:`~curvlab.optim.kronecker_solve` – float64 damped Kronecker solves (π on the input factor);
* :mod:`~curvlab.optim.distributed` – rank-averaging for identical data-parallel steps;
* :mod:`~curvlab.optim.tuning` – biased random search for hyperparameters (George);
* :mod:`~curvlab.optim.tangents` – J v through a cached Sequential chain (the GGN products' fast path);
* :mod:`~curvlab.optim.registry` – every optimiser by name at its defaults (:data:`DEFAULTS`);

and thin :class:`torch.optim.Optimizer` wrappers, one per file, all built as ``(model, loss_fn,
**hyperparameters)`` and stepped with ``step(inputs, targets) -> loss`` (the loss before the update).
Each has one parameter group (so schedulers work), ``statistics()`` for tracking along a ``step``
dimension, ``state_dict``/``load_state_dict`` that resume identically, and rejects a non-finite loss,
gradient or step with the parameters untouched (raising its damping, or raising
:class:`~curvlab.errors.NonFiniteError` if it has none):

* :class:`SGN` – stochastic Gauss–Newton with CG (Gargiani et al. 2020);
* :class:`NewtonSummary` – per-group learning rates from a GroupedNewton summary (Wolinski);
* :class:`ACP`, :class:`CenteredSGD` – amortised centred covariance preconditioner (George);
* :class:`SecondOrderAdaptive` – McAllester's speculative second-order Adam (experimental);
* :class:`KFAC` – Kronecker-factored curvature (Martens & Grosse 2015; Botev et al. 2017);
* :class:`PRONG` – natural neural networks, projected natural gradient on whitened inputs (Desjardins et al. 2015).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "HyperparameterError": "curvlab.optim.hyperparameters",
    "CurvatureOptimizer": "curvlab.optim.base",
    "GaussNewtonQuadratic": "curvlab.optim.gauss_newton",
    "DampingSchedule": "curvlab.optim.damping",
    "scheduled_damping": "curvlab.optim.damping",
    "trust_region_damping": "curvlab.optim.damping",
    "reduction_ratio": "curvlab.optim.damping",
    "ReduceOnPlateau": "curvlab.optim.damping",
    "LineSearchResult": "curvlab.optim.line_search",
    "backtracking_armijo": "curvlab.optim.line_search",
    "SGN": "curvlab.optim.sgn",
    "CGPreconditioner": "curvlab.optim.sgn",
    "NewtonSummary": "curvlab.optim.newton_summary",
    "ACP": "curvlab.optim.acp",
    "CenteredSGD": "curvlab.optim.centered_sgd",
    "SecondOrderAdaptive": "curvlab.optim.second_order_adaptive",
    "KFAC": "curvlab.optim.kfac",
    "PRONG": "curvlab.optim.prong",
    "DEFAULTS": "curvlab.optim.registry",
    "build_default": "curvlab.optim.registry",
    "KroneckerCurvatureKind": "curvlab.optim.kfac",
    "KroneckerDamping": "curvlab.optim.kfac",
    "StepRescaling": "curvlab.optim.kfac",
    "DirectionUpdater": "curvlab.optim.newton_summary",
    "quadratic_step_scale": "curvlab.optim.step_scaling",
    "kl_clip_scale": "curvlab.optim.step_scaling",
    "biased_random_search": "curvlab.optim.tuning",
    "TuningResult": "curvlab.optim.tuning",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'curvlab.optim' has no attribute {name!r}")


def __dir__():
    return __all__
