"""Per-module-type rules: the configuration mapping each supported module type to its rule object.

:data:`RULES` is looked up by exact type (subclasses of supported modules may override ``forward``, so
they are not matched). Pass your own mapping to :class:`curvlab.engine.CurvatureHooks` (``rules=``) to
extend or replace entries; the default table is never mutated.

Example:
    >>> from torch import nn
    >>> type(rule_for(nn.Tanh(), "1")).__name__
    'ElementwiseRule'
    >>> rule_for(nn.LSTM(2, 2), "rnn")
    Traceback (most recent call last):
    ...
    curvlab.errors.UnsupportedModuleError: module 'rnn' (LSTM) is not supported; supported leaf modules: ...
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from curvlab.engine.rules.base import ModuleRule, ParameterRule, Record
from curvlab.engine.rules.batchnorm import BatchNormRule
from curvlab.engine.rules.conv import ConvRule
from curvlab.engine.rules.elementwise import ELEMENTWISE_RULES, ElementwiseRule
from curvlab.engine.rules.linear import LinearRule
from curvlab.engine.rules.structural import FlattenRule, IdentityRule, PoolingRule
from curvlab.errors import UnsupportedModuleError

__all__ = ["RULES", "ElementwiseRule", "ModuleRule", "ParameterRule", "Record", "rule_for"]

_identity = IdentityRule()
_conv = ConvRule()
_batchnorm = BatchNormRule()

#: module type -> rule (read-only).
RULES: Mapping[type[nn.Module], ModuleRule] = MappingProxyType(
    {
        nn.Linear: LinearRule(),
        nn.Conv1d: _conv,
        nn.Conv2d: _conv,
        **ELEMENTWISE_RULES,
        nn.Flatten: FlattenRule(),
        nn.Identity: _identity,
        nn.Dropout: _identity,
        nn.MaxPool2d: PoolingRule(linear=False),
        nn.AvgPool2d: PoolingRule(linear=True),
        nn.AdaptiveAvgPool2d: PoolingRule(linear=True),
        nn.BatchNorm1d: _batchnorm,
        nn.BatchNorm2d: _batchnorm,
    }
)


def rule_for(module: nn.Module, name: str, rules: Mapping[type, ModuleRule] = RULES) -> ModuleRule:
    """The rule for ``module`` (qualified name ``name``), checked; raises :class:`UnsupportedModuleError`."""
    rule = rules.get(type(module))
    if rule is None:
        supported = ", ".join(sorted(t.__name__ for t in rules))
        raise UnsupportedModuleError(
            f"module {name!r} ({type(module).__qualname__}) is not supported; supported leaf modules: "
            f"{supported}"
        )
    rule.check(name, module)
    return rule
