"""Per-stage rules of the layered route: affine layers, elementwise activations, and a generic fallback.

Tangents ("jets") are a list of K = 1 (first derivatives) or K = 3 (derivatives x⁽¹⁾, x⁽²⁾, x⁽³⁾
along t ↦ θ + t u^{(s)}) tensors [A, *x.shape], A the active groups; ``None`` marks an order that is
zero for every active group (e.g. x⁽²⁾ right after the first affine layer), so no work is spent on it.

* affine layer z = A(x, W) + b: tangents map through the linear part A(·, W);
* elementwise activation y = σ(x) with known derivatives σ', σ'', σ''' (tanh, sigmoid, ReLU): the
  chain rule and Faà di Bruno's formula, y⁽¹⁾ = σ'x⁽¹⁾, y⁽²⁾ = σ'x⁽²⁾ + σ''(x⁽¹⁾)²,
  y⁽³⁾ = σ'x⁽³⁾ + 3σ''x⁽¹⁾x⁽²⁾ + σ'''(x⁽¹⁾)³;
* any other parameter-free stage: ``torch.func.jvp`` (K = 1) or three nested ``jvp`` on the Taylor
  polynomial (K = 3), vmapped over the groups, and ``vjp``/forward-over-``vjp`` in the adjoint pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vjp, vmap

__all__ = [
    "AFFINE_LAYERS",
    "ELEMENTWISE_RULES",
    "Elementwise",
    "affine_forward",
    "affine_linear_part",
    "affine_pullback",
    "bias_term",
    "elementwise_push",
    "generic_pullback",
    "generic_push",
    "loss_third_order",
    "taylor3",
]

#: Module types treated as affine stages z = A(x, W) + b (A bilinear in x and W).
AFFINE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Jets: the first K = 1 or 3 derivatives along the groups' paths, each [A, *x.shape] or None (zero).
Jets = list[torch.Tensor | None]


# ------------------------------------------------------------------------------------- affine layers
def affine_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """A(x, W) + b in one call (the bias fused into the product), [N, out...].

    Example:
        >>> layer, x = nn.Linear(3, 2), torch.randn(4, 3)
        >>> torch.allclose(affine_forward(layer, x, layer.weight, layer.bias), layer(x))
        True
    """
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    return module._conv_forward(x, weight, bias)


def affine_linear_part(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A(x, W), the layer without bias; x [..., N, in...] may carry extra leading dimensions.

    Example:
        >>> conv, x = nn.Conv1d(2, 3, 3), torch.randn(5, 4, 2, 7)      # 5 tangents of a batch of 4
        >>> affine_linear_part(conv, x, conv.weight).shape
        torch.Size([5, 4, 3, 5])
    """
    if isinstance(module, nn.Linear):
        return F.linear(x, weight)
    lead = x.shape[: x.ndim - module.weight.ndim + 1]  # conv input is [N, C, *spatial]
    y = module._conv_forward(x.reshape(-1, *x.shape[len(lead):]), weight, None)
    return y.reshape(*lead, *y.shape[1:])


def bias_term(module: nn.Module, bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The bias broadcast to the output shape ``like`` (channel dimension 1 for convolutions).

    Example:
        >>> bias_term(nn.Conv2d(1, 2, 1), torch.tensor([1.0, 2.0]), torch.zeros(1, 2, 1, 1)).flatten().tolist()
        [1.0, 2.0]
    """
    if isinstance(module, nn.Linear):
        return bias.expand_as(like)
    return bias.reshape(-1, *[1] * (module.weight.ndim - 2)).expand_as(like)


def affine_pullback(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, cotangent: torch.Tensor):
    """A(·, W)ᵀλ, the adjoint of the linear part in the input, shaped like x.

    Example:
        >>> layer, lam = nn.Linear(3, 2), torch.randn(4, 2)
        >>> torch.allclose(affine_pullback(layer, torch.zeros(4, 3), layer.weight, lam), lam @ layer.weight)
        True
    """
    if isinstance(module, nn.Linear):
        return cotangent @ weight
    return vjp(lambda xx: affine_linear_part(module, xx, weight), x)[1](cotangent)[0]


# ------------------------------------------------------------------------------ elementwise activations
@dataclass(frozen=True)
class Elementwise:
    """σ', σ'', σ''' of an elementwise stage at its input (``None``: zero or not needed), and
    ``curvature``: σ'' = c·g·σ' with a cheap g; given λ it returns (λ·g, c), so that the adjoint pass
    forms Σ λσ'' ẋ^s ẋ^t = c Σ (λ·g) (σ'ẋ^s) ẋ^t from the tangents already pushed (no σ'' tensor)."""

    d1: torch.Tensor | None
    d2: torch.Tensor | None = None
    d3: torch.Tensor | None = None
    curvature: Callable[[torch.Tensor], tuple[torch.Tensor, float]] | None = None


def _tanh(x: torch.Tensor, need: int) -> tuple[torch.Tensor, Elementwise]:
    y = torch.tanh(x)
    if need == 0:
        return y, Elementwise(None)
    d1 = torch.addcmul(y.new_ones(()), y, y, value=-1)  # 1 − y²
    d2 = -2 * y * d1 if need >= 3 else None
    d3 = -2 * (d1 * d1 + y * d2) if need >= 3 else None
    return y, Elementwise(d1, d2, d3, lambda lam: (lam * y, -2.0))  # σ'' = −2 y σ'


def _sigmoid(x: torch.Tensor, need: int) -> tuple[torch.Tensor, Elementwise]:
    y = torch.sigmoid(x)
    if need == 0:
        return y, Elementwise(None)
    d1 = torch.addcmul(y, y, y, value=-1)  # y − y²
    d2 = d1 * (1 - 2 * y) if need >= 3 else None
    d3 = d2 * (1 - 2 * y) - 2 * d1 * d1 if need >= 3 else None
    # σ'' = (1 − 2y) σ'
    return y, Elementwise(d1, d2, d3, lambda lam: (torch.addcmul(lam, lam, y, value=-2), 1.0))


def _relu(x: torch.Tensor, need: int) -> tuple[torch.Tensor, Elementwise]:
    return torch.relu(x), Elementwise((x > 0).to(x.dtype) if need else None)  # σ' as autograd's


#: Closed-form rules ``(x, need) -> (σ(x), Elementwise)``, ``need`` the highest derivative order
#: wanted (0: none, 1: σ', 2: also the curvature factor, 3: σ'' and σ'''). Exact module types only.
ELEMENTWISE_RULES: dict[type, Callable[[torch.Tensor, int], tuple[torch.Tensor, Elementwise]]] = {
    nn.Tanh: _tanh,
    nn.Sigmoid: _sigmoid,
    nn.ReLU: _relu,
}


def elementwise_push(jets: Jets, d: Elementwise) -> Jets:
    """Jets [A, ...] through y = σ(x) given σ', σ'', σ''' at x (chain rule; Faà di Bruno for 3 orders).

    Example:
        >>> x = torch.zeros(1, 1)
        >>> _, d = ELEMENTWISE_RULES[nn.Tanh](x, 3)     # tanh' = 1, tanh'' = 0, tanh''' = −2 at 0
        >>> [j.item() + 0.0 for j in elementwise_push([torch.ones(1, 1, 1), None, None], d)]
        [1.0, 0.0, -2.0]
    """
    d1, d2, d3 = d.d1, d.d2, d.d3
    j1 = jets[0]
    if len(jets) == 1:
        return [j1 * d1]
    j2, j3 = jets[1], jets[2]
    y2 = None if j2 is None else j2 * d1
    y3 = None if j3 is None else j3 * d1
    if d2 is not None:
        y2 = _plus(y2, d2 * (j1 * j1))
        if j2 is not None:
            y3 = _plus(y3, (3 * d2) * (j1 * j2))
    if d3 is not None:
        y3 = _plus(y3, d3 * (j1 * j1 * j1))
    return [j1 * d1, y2, y3]


def _plus(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else a.add_(b)


# ------------------------------------------------------------------------------- generic fallback
def taylor3(fn, x: torch.Tensor, jets: torch.Tensor) -> torch.Tensor:
    """The first three derivatives of fn(x + t j₁ + t²/2 j₂ + t³/6 j₃) at t = 0, stacked [3, ...].

    Example:
        >>> jets = torch.tensor([[1.0], [0.0], [0.0]])                # the path x + t
        >>> taylor3(torch.exp, torch.zeros(1), jets).flatten().tolist()  # exp' = exp'' = exp''' = 1
        [1.0, 1.0, 1.0]
    """
    t0 = x.new_zeros(())
    one = torch.ones_like(t0)

    def path(t):
        return fn(x + t * jets[0] + (t * t / 2) * jets[1] + (t**3 / 6) * jets[2])

    def first(t):
        return jvp(path, (t,), (one,))[1]

    def second(t):
        return jvp(first, (t,), (one,))

    (y1, y2), (_, y3) = jvp(second, (t0,), (one,))
    return torch.stack([y1, y2, y3])


def generic_push(module: nn.Module, x: torch.Tensor, jets: Jets | None):
    """``(module(x), jets through it)`` by torch.func, for any parameter-free stage.

    Example:
        >>> y, jets = generic_push(nn.Softplus(), torch.zeros(1), [torch.ones(1, 1)])
        >>> jets[0].item()                                    # softplus'(0) = 1/2
        0.5
    """
    if jets is None:
        return module(x), None
    if len(jets) == 1:
        y, t = vmap(lambda v: jvp(module, (x,), (v,)), out_dims=(None, 0))(jets[0])
        return y, [t]
    return module(x), list(vmap(lambda v: taylor3(module, x, v))(_stack(jets)).unbind(1))


def _stack(jets: Jets) -> torch.Tensor:
    """[A, 3, ...] with zero-filled orders."""
    return torch.stack([torch.zeros_like(jets[0]) if j is None else j for j in jets], dim=1)


def generic_pullback(module: nn.Module, x: torch.Tensor, first: torch.Tensor, cotangent: torch.Tensor):
    """``(Dσ(x)ᵀλ, [A, ...] second-order pullbacks d/dε Dσ(x + ε ẋ^s)ᵀλ)`` by forward-over-``vjp``.

    Example:
        >>> lam_x, second = generic_pullback(nn.Softplus(), torch.zeros(1), torch.ones(1, 1), torch.ones(1))
        >>> lam_x.item(), second.item()                       # softplus'(0) = 1/2, softplus''(0) = 1/4
        (0.5, 0.25)
    """

    def pull(xx):
        return vjp(module, xx)[1](cotangent)[0]

    return vmap(lambda v: jvp(pull, (x,), (v,)), out_dims=(None, 0))(first)


# ------------------------------------------------------------------------------------------ losses
def loss_third_order(adapter, outputs: torch.Tensor, targets: torch.Tensor, jets: Jets) -> torch.Tensor:
    """d³/dt³ L(f(t)) at 0 per group, [A], from the output jets f⁽¹⁾, f⁽²⁾, f⁽³⁾ [A, N, ...]:

        (1/Z) Σ_n ℓ'''_n[f⁽¹⁾, f⁽¹⁾, f⁽¹⁾] + 3 f⁽¹⁾ᵀ H_n f⁽²⁾ + λ_nᵀ f⁽³⁾,

    with ℓ''' = 0 (MSE), Σ_c p_c (v_c − v̄)³ (cross-entropy: the third central moment of v under
    p = softmax f) or Σ_d σ(1−σ)(1−2σ) v_d³ (BCE); any other adapter falls back to nested ``jvp``.

    Example:
        >>> from curvlab.losses import loss_adapter
        >>> f, v = torch.zeros(1, 1), torch.ones(1, 1, 1)   # MSE ‖f + t v + t² v/2 − y‖²: 3·2·v·v
        >>> loss_third_order(loss_adapter(nn.MSELoss()), f, torch.zeros(1, 1), [v, v, None]).item()
        6.0
    """
    from curvlab.losses import BCEWithLogitsAdapter, CrossEntropyAdapter, MSEAdapter

    z = adapter.normalizer(outputs)
    closed_form = isinstance(adapter, (MSEAdapter, BCEWithLogitsAdapter)) or (
        isinstance(adapter, CrossEntropyAdapter) and outputs.ndim == 2
    )
    if not closed_form:

        def loss(f):
            return adapter.per_sample_loss(f, targets).sum() / z

        return vmap(lambda v: taylor3(loss, outputs, v)[2])(_stack(jets))
    f1 = jets[0].flatten(2)
    total = f1.new_zeros(f1.shape[0])
    if isinstance(adapter, CrossEntropyAdapter):
        p = outputs.softmax(1)
        centred = f1 - (f1 * p).sum(-1, keepdim=True)
        total = total + (p * centred**3).sum((1, 2))
    elif isinstance(adapter, BCEWithLogitsAdapter):
        s = outputs.flatten(1).sigmoid()
        total = total + (s * (1 - s) * (1 - 2 * s) * f1**3).sum((1, 2))
    if jets[1] is not None:
        h = adapter.output_hessian(outputs)
        total = total + 3 * torch.einsum("anc,ncd,and->a", f1, h, jets[1].flatten(2))
    if jets[2] is not None:
        grad = adapter.output_gradient(outputs, targets)
        total = total + (jets[2].flatten(2) * grad).sum((1, 2))
    return total / z
