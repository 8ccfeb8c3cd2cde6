"""Jacobian–vector products J v through a Sequential chain whose forward pass is cached.

Forward-mode AD through the whole model (dual tensors) recomputes the primal forward pass in every
product. For a chain f = f_K ∘ … ∘ f_1 (an ``nn.Sequential``, nested ones flattened) the forward
pass of the batch is run once, unit by unit, keeping each unit's input x_k and output y_k; a product
is then the tangent recursion

    t_0 = 0,    t_k = ∂f_k/∂x (x_k) t_{k−1} + ∂f_k/∂θ_k (x_k) v_k,    J v = t_K,

with closed-form rules for the common units (no primal recomputation):

* ``nn.Linear``: t_k = t_{k−1} Wᵀ + x_k V_Wᵀ + V_b;
* ``nn.Conv1d/2d/3d`` (zero padding): t_k = conv(t_{k−1}; W) + conv(x_k; V_W) + V_b;
* elementwise activations, from the cached values: tanh 1 − y², sigmoid y(1 − y), ReLU 1[y > 0],
  LeakyReLU, ELU, SiLU, GELU (exact);
* linear units without parameters (``Flatten``, ``Unflatten``, ``Identity``, average pooling,
  ``Dropout`` in eval mode): t_k = f_k(t_{k−1}).

Every other unit (BatchNorm, LayerNorm, max pooling, a residual block, …) gets forward-mode AD on that
unit alone, from its cached input. A unit acting in place gets a copy of its input, so the cache
stays valid. Rules are registered with :func:`register_tangent_rule` (one function per module type).

Example:
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> chain = CachedChain(net, {n: p.detach() for n, p in net.named_parameters()}, x)
    >>> v = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    >>> _, reference = torch.func.jvp(lambda ps: torch.func.functional_call(net, ps, (x,)),
    ...                               ({n: p.detach() for n, p in net.named_parameters()},), (v,))
    >>> torch.allclose(chain.jvp(v), reference)
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["CachedChain", "chain_units", "register_tangent_rule"]

#: (module, input x, output y, input tangent t or None, parameter tangents by local name) -> output tangent,
#: None for a zero tangent, or NotImplemented for forward-mode AD on the unit
TangentRule = Callable[[nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None", dict], "torch.Tensor | None"]
_RULES: dict[type, TangentRule] = {}


def register_tangent_rule(*types: type) -> Callable[[TangentRule], TangentRule]:
    """Register a closed-form tangent rule for the module ``types`` (exact types, not subclasses)."""

    def decorate(rule: TangentRule) -> TangentRule:
        for kind in types:
            _RULES[kind] = rule
        return rule

    return decorate


def _add(*terms):
    total = None
    for term in terms:
        if term is not None:
            total = term if total is None else total + term
    return total


@register_tangent_rule(nn.Linear)
def _linear(module, x, y, t, v):
    return _add(None if t is None else F.linear(t, module.weight),
                F.linear(x, v["weight"]) if "weight" in v else None, v.get("bias"))


@register_tangent_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(module, x, y, t, v):
    if module.padding_mode != "zeros":
        return NotImplemented  # forward-mode AD on the unit
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[module.weight.ndim - 2]
    options = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups)
    bias = v.get("bias")
    return _add(None if t is None else conv(t, module.weight, **options),
                conv(x, v["weight"], **options) if "weight" in v else None,
                None if bias is None else bias.reshape((1, -1) + (1,) * (y.ndim - 2)))


def _elementwise(derivative):
    def rule(module, x, y, t, v):
        return None if t is None else t * derivative(module, x, y)
    return rule


register_tangent_rule(nn.Tanh)(_elementwise(lambda m, x, y: 1 - y * y))
register_tangent_rule(nn.Sigmoid)(_elementwise(lambda m, x, y: y * (1 - y)))
register_tangent_rule(nn.ReLU)(_elementwise(lambda m, x, y: (y > 0).to(y.dtype)))
register_tangent_rule(nn.LeakyReLU)(_elementwise(lambda m, x, y: torch.where(y > 0, 1.0, m.negative_slope).to(y.dtype)))
register_tangent_rule(nn.ELU)(_elementwise(lambda m, x, y: torch.where(y > 0, 1.0, y + m.alpha).to(y.dtype)))
register_tangent_rule(nn.SiLU)(_elementwise(lambda m, x, y: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x)))))


@register_tangent_rule(nn.GELU)
def _gelu(module, x, y, t, v):
    if t is None:
        return None
    if module.approximate != "none":
        return NotImplemented
    pdf = torch.exp(-0.5 * x * x) * (2 * torch.pi) ** -0.5
    cdf = 0.5 * (1 + torch.erf(x * 2**-0.5))
    return t * (cdf + x * pdf)


@register_tangent_rule(nn.Flatten, nn.Unflatten, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                       nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
def _linear_map(module, x, y, t, v):
    return None if t is None else module(t)


@register_tangent_rule(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
def _dropout(module, x, y, t, v):
    return NotImplemented if module.training and module.p > 0 else t


def _unit_jvp(module: nn.Module, x: torch.Tensor, t, v: dict) -> torch.Tensor | None:
    """Forward-mode AD through one unit from its cached input (the unit's primal is recomputed)."""
    with forward_ad.dual_level():
        x_in = x if t is None else forward_ad.make_dual(x, t)
        state = {name: forward_ad.make_dual(p, v[name]) for name, p in _trainable(module).items() if name in v}
        out = functional_call(module, state, (x_in,)) if state else module(x_in)
        return forward_ad.unpack_dual(out).tangent


def _trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def chain_units(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """The units of ``model`` as a flat chain ``[(qualified name, module)]``, or None if it is not a chain.

    An ``nn.Sequential`` (whose ``forward`` is ``nn.Sequential.forward``) is flattened recursively; any
    other module is one unit. A model that is not an ``nn.Sequential`` is not a chain. :class:`CachedChain`
    also refuses a chain whose units share a trainable parameter.

    Example:
        >>> [n for n, _ in chain_units(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 1))))]
        ['0', '1.0', '1.1']
    """
    if type(model).forward is not nn.Sequential.forward:
        return None if not prefix else [(prefix.rstrip("."), model)]
    units = []
    for name, child in model._modules.items():  # a module used twice is two units
        if child is None:
            continue
        nested = chain_units(child, f"{prefix}{name}.")
        units.extend(nested if nested is not None else [(f"{prefix}{name}", child)])
    return units


class CachedChain:
    """The forward pass of a chain on one batch, cached unit by unit, with J v by the tangent recursion.

    Args:
        model: an ``nn.Sequential`` (see :func:`chain_units`); buffers and frozen parameters as they are.
        params: {qualified name: tensor} the trainable parameters to evaluate at, or None for the units'
            own parameters (the cached forward builds the autograd graph of the outputs when they require
            gradients; tangent rules use the units' own parameters, which must hold the same values).
        inputs: the batch.

    Attributes:
        outputs: the model's outputs f(x; θ) (with the autograd graph if ``params`` require gradients).
    """

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor] | None, inputs: torch.Tensor):
        units = chain_units(model)
        if units is None:
            raise TypeError(f"{type(model).__qualname__} is not an nn.Sequential chain")
        owned = [[(n, p) for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad]
                 for _, module in units]
        flat = [(f"{name}.{n}", p) for (name, _), mine in zip(units, owned, strict=True) for n, p in mine]
        shared = len({id(p) for _, p in flat}) != len(flat)
        if shared or (params is not None and sorted(n for n, _ in flat) != sorted(params)):
            raise TypeError(f"{type(model).__qualname__}: its units do not use each trainable parameter once")
        self._units = []
        x = inputs
        for (name, module), mine in zip(units, owned, strict=True):
            local = {n: params[f"{name}.{n}"] for n, _ in mine} if params is not None else {}
            fed = x.clone() if getattr(module, "inplace", False) else x  # the cached input stays intact
            y = functional_call(module, local, (fed,)) if local else module(fed)
            self._units.append((name, module, x.detach(), y, tuple(n for n, _ in mine)))
            x = y
        self.outputs = x
        self._units = [(n, m, xi, y.detach(), local) for n, m, xi, y, local in self._units]

    @torch.no_grad()  # forward-mode AD works under no_grad; no graph is built for the products
    def jvp(self, tangents: dict[str, torch.Tensor]) -> torch.Tensor:
        """J v for parameter tangents {qualified name: tensor} (missing names: zero); the outputs' shape."""
        t = None
        for name, module, x, y, local in self._units:
            v = {n: tangents[f"{name}.{n}"] for n in local if f"{name}.{n}" in tangents}
            if t is None and not v:
                continue  # a zero tangent stays zero
            rule = _RULES.get(type(module))
            out = NotImplemented if rule is None else rule(module, x, y, t, v)
            t = _unit_jvp(module, x, t, v) if out is NotImplemented else out
        return torch.zeros_like(self.outputs) if t is None else t
