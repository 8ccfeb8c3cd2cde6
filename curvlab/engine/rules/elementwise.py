"""Rules for elementwise activations y = f(x): ReLU, LeakyReLU, Sigmoid, Tanh, ELU, SELU, Softplus, GELU.

With d = f'(x) and d2 = f''(x) (elementwise, [N, *features]) and g = ∂ℓ/∂y:

* factors:   Jᵀ V = d ⊙ V                                      (broadcast over the K columns)
* Hessians:  Jᵀ H J + D = diag(d) H diag(d) + diag(d2 ⊙ g)     (Botev et al. 2017, the residual D)
* KFRA:      E_n[diag(d_n) Ḡ diag(d_n)] = Ḡ ⊙ E_n[d_n d_nᵀ]

ReLU, LeakyReLU, Sigmoid and Tanh use closed forms; the others get f' and f'' from autograd on
``module.forward`` (exact for elementwise functions; the module's hooks are not triggered).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from curvlab.engine.rules.base import ModuleRule, Record
from curvlab.engine.rules.gram import gram
from curvlab.errors import UnsupportedModuleError

__all__ = ["ElementwiseRule", "autograd_derivatives"]

#: (module, x, y) -> (f'(x), f''(x))
Derivatives = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def autograd_derivatives(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """f'(x) and f''(x) of an elementwise module by double differentiation of ``module.forward``.

    Example:
        >>> x = torch.tensor([0.0, 1.0], dtype=torch.float64)
        >>> d1, d2 = autograd_derivatives(nn.Softplus(), x, None)
        >>> torch.allclose(d1, torch.sigmoid(x)), torch.allclose(d2, torch.sigmoid(x) * torch.sigmoid(-x))
        (True, True)
    """
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (first,) = torch.autograd.grad(module.forward(leaf).sum(), leaf, create_graph=True)
        if first.requires_grad:
            (second,) = torch.autograd.grad(first.sum(), leaf)
        else:
            second = torch.zeros_like(leaf)
    return first.detach(), second.detach()


def _relu(module, x, y):
    return (x > 0).to(x.dtype), None


def _leaky_relu(module, x, y):
    return torch.ones_like(x).masked_fill_(x <= 0, module.negative_slope), None


def _sigmoid_first(module, x, y):
    return y * (1 - y)


def _sigmoid_second(module, x, y, d1):
    return d1 * (1 - 2 * y)


def _tanh_first(module, x, y):
    return 1 - y * y


def _tanh_second(module, x, y, d1):
    return -2 * y * d1


def _sigmoid(module, x, y):
    d1 = _sigmoid_first(module, x, y)
    return d1, _sigmoid_second(module, x, y, d1)


def _tanh(module, x, y):
    d1 = _tanh_first(module, x, y)
    return d1, _tanh_second(module, x, y, d1)


class ElementwiseRule(ModuleRule):
    """An elementwise activation, given how to get f' and f'' (``None`` for f'' = 0 a.e.).

    ``first`` ((module, x, y) -> f') and ``second`` ((module, x, y, f') -> f'') split ``derivatives``
    for closed forms, so that quantities needing only f' (GGN, Fisher, KFRA) never compute f''.
    """

    def __init__(self, derivatives: Derivatives = autograd_derivatives, *, first=None, second=None):
        self.derivatives = derivatives
        self.first = first
        self.second = second

    def check(self, name: str, module: nn.Module) -> None:
        if getattr(module, "inplace", False):
            raise UnsupportedModuleError(
                f"module {name!r} ({type(module).__qualname__}) is in-place: it overwrites the input the "
                "curvature rules need; construct it with inplace=False"
            )

    def _derivs(self, record: Record) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "derivatives" not in record.cache:
            if self.first is None:
                record.cache["derivatives"] = self.derivatives(record.module, record.inputs, record.outputs)
            else:
                d1 = self._first(record)
                d2 = None if self.second is None else self.second(record.module, record.inputs, record.outputs, d1)
                record.cache["derivatives"] = d1, d2
        return record.cache["derivatives"]

    def _first(self, record: Record) -> torch.Tensor:
        """f'(x) alone (f'' only when a Hessian quantity asks for it)."""
        if self.first is None:
            return self._derivs(record)[0]
        if "first" not in record.cache:
            record.cache["first"] = self.first(record.module, record.inputs, record.outputs)
        return record.cache["first"]

    backprop_allocates = True

    def backprop(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        return factor * self._first(record).unsqueeze(1)

    def backprop_inplace(self, record: Record, factor: torch.Tensor) -> torch.Tensor:
        return factor.mul_(self._first(record).unsqueeze(1))

    def backprop_hessian(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        d1, d2 = self._derivs(record)
        d1 = d1.flatten(1)
        result = hessian * d1[:, :, None] * d1[:, None, :]
        if d2 is not None:
            if record.grad is None:
                raise RuntimeError(f"no gradient recorded at {record.describe()}: run backward() first")
            result = result + torch.diag_embed(d2.flatten(1) * record.grad.flatten(1))
        return result

    def backprop_diagonal(self, record: Record, diag: torch.Tensor) -> torch.Tensor:
        return diag * self._first(record).pow(2)

    def backprop_scaled_rows(self, record, rows, scale):
        return rows, scale * self._first(record)

    def second_derivative_diagonal(self, record: Record) -> torch.Tensor | None:
        d2 = self._derivs(record)[1]
        if d2 is None:
            return None
        if record.grad is None:
            raise RuntimeError(f"no gradient recorded at {record.describe()}: run backward() first")
        return d2 * record.grad

    def sandwich(self, record: Record, hessian: torch.Tensor) -> torch.Tensor:
        d1 = self._first(record).flatten(1)
        return hessian * d1[:, :, None] * d1[:, None, :]

    def kfra_backprop(self, record: Record, gbar: torch.Tensor) -> torch.Tensor:
        d1 = self._first(record).flatten(1)
        return gbar * gram(d1) / d1.shape[0]


#: The elementwise rules by module type.
ELEMENTWISE_RULES: dict[type[nn.Module], ModuleRule] = {
    nn.ReLU: ElementwiseRule(_relu, first=lambda module, x, y: _relu(module, x, y)[0]),
    nn.LeakyReLU: ElementwiseRule(_leaky_relu, first=lambda module, x, y: _leaky_relu(module, x, y)[0]),
    nn.Sigmoid: ElementwiseRule(_sigmoid, first=_sigmoid_first, second=_sigmoid_second),
    nn.Tanh: ElementwiseRule(_tanh, first=_tanh_first, second=_tanh_second),
    nn.ELU: ElementwiseRule(),
    nn.SELU: ElementwiseRule(),
    nn.Softplus: ElementwiseRule(),
    nn.GELU: ElementwiseRule(),
}
