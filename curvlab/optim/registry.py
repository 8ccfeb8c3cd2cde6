"""Every curvlab optimiser by name, built at its defaults: ``DEFAULTS[name](model, loss_fn)``.

The registry is what "works at its defaults" means in the tests (tests/optim/test_defaults.py,
test_zoo_defaults.py) and what the optimiser benchmark runs (analyses/optimizer_benchmark); the KFAC
family appears once per curvature kind.

Example:
    >>> from torch import nn
    >>> opt = build_default("prong", nn.Sequential(nn.Linear(3, 1)), nn.MSELoss())
    >>> type(opt).__name__, sorted(DEFAULTS)[:3]
    ('PRONG', ['acp', 'centered-sgd', 'ekfac'])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

__all__ = ["DEFAULTS", "build_default"]

#: name -> (class name in curvlab.optim, keyword arguments that select the variant, not tune it)
_ENTRIES: dict[str, tuple[str, dict]] = {
    "sgn": ("SGN", {}),
    "kfac": ("KFAC", {}),
    "kflr": ("KFAC", {"curvature": "kflr"}),
    "kfra": ("KFAC", {"curvature": "kfra"}),
    "ekfac": ("KFAC", {"curvature": "ekfac"}),
    "newton-summary": ("NewtonSummary", {}),
    "acp": ("ACP", {}),
    "prong": ("PRONG", {}),
    "centered-sgd": ("CenteredSGD", {}),
    "second-order-adaptive": ("SecondOrderAdaptive", {}),
}


def _factory(cls_name: str, variant: dict) -> Callable:
    def build(model: nn.Module, loss_fn: nn.Module):
        cls = getattr(importlib.import_module("curvlab.optim"), cls_name)
        return cls(model, loss_fn, **variant)

    build.__name__ = build.__qualname__ = f"default_{cls_name}"
    return build


#: name -> ``factory(model, loss_fn)`` building that optimiser at its defaults
DEFAULTS: dict[str, Callable] = {name: _factory(cls, kw) for name, (cls, kw) in _ENTRIES.items()}


def build_default(name: str, model: nn.Module, loss_fn: nn.Module):
    """The optimiser ``name`` (a key of :data:`DEFAULTS`) for ``model`` and ``loss_fn``, at its defaults."""
    if name not in DEFAULTS:
        raise KeyError(f"no curvlab optimiser called {name!r}; choose one of {sorted(DEFAULTS)}")
    return DEFAULTS[name](model, loss_fn)
