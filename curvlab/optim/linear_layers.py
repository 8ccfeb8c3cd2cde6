"""Recording the inputs and output gradients of linear maps (``nn.Linear``, convolutions) during one pass.

ACP, PRONG and centred SGD precondition each linear map a = W h + b by statistics of its input rows h.
For ``nn.Linear`` a row is one sample (leading dimensions flattened); for a convolution (``nn.Conv1d``/
``nn.Conv2d``, ``groups=1``, zero padding) a row is one receptive-field patch of one sample at one output
location (``unfold``), and W is the weight as an [out, in·kernel] matrix, as in KFAC for convolutions
(Grosse & Martens 2016). The gradient of W is then Σ_rows g hᵀ over samples *and* locations.

:class:`LinearRecorder` is a context manager owning forward hooks (and, through them, tensor hooks on the
layer outputs); every hook is removed on exit, also after an exception. For each layer it records

* ``inputs[name]``        h, [rows, in]  (rows: samples, or samples × output locations);
* ``output_grads[name]``  ∂L/∂a, [rows, out] (with the loss's 1/Z), after a backward pass.

:func:`linear_layers` lists the layers. The affine parameters of normalisation layers (BatchNorm,
LayerNorm, GroupNorm) are left to the optimisers' plain gradient step; any other module with trainable
parameters is refused, naming it. :func:`input_covariance_inverse` is the damped inverse input
covariance that ACP and PRONG precondition with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_dense_allocation

__all__ = ["LinearRecorder", "centred_update", "input_covariance_inverse", "linear_layers", "weight_matrix"]

#: modules whose (elementwise affine) parameters take the plain gradient step
NORMALISATIONS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _convolution(module: nn.Module) -> bool:
    return (type(module) in (nn.Conv1d, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def linear_layers(model: nn.Module, method: str) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every ``nn.Linear`` or supported convolution with trainable parameters; raise if
    a module other than those and normalisation layers has some.

    Example:
        >>> [n for n, _ in linear_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 1)), "ACP")]
        ['0', '2']
    """
    layers = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own or isinstance(module, NORMALISATIONS):
            continue
        if type(module) is not nn.Linear and not _convolution(module):
            grouped = " (grouped or non-zero-padded convolutions are not)" if isinstance(module, nn.modules.conv._ConvNd) else ""
            raise UnsupportedModuleError(
                f"{method} preconditions nn.Linear and nn.Conv1d/Conv2d layers (groups=1, zero padding) and steps "
                f"normalisation layers plainly{grouped}; module {name!r} is a "
                f"{type(module).__module__}.{type(module).__qualname__}"
            )
        layers.append((name, module))
    return layers


def weight_matrix(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as the [out, in·kernel] matrix of the layer's linear map (a view)."""
    return tensor.reshape(layer.weight.shape[0], -1)


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input rows h of a layer: [samples, in] or, for a convolution, [samples·locations, in·kernel]."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, module.in_features)
    if isinstance(module, nn.Conv1d):  # as a 1 × k two-dimensional convolution
        x = x.unsqueeze(-2)
        kernel, dilation, padding, stride = ((1, module.kernel_size[0]), (1, module.dilation[0]),
                                             (0, module.padding[0]), (1, module.stride[0]))
    else:
        kernel, dilation, padding, stride = module.kernel_size, module.dilation, module.padding, module.stride
    if x.ndim == 3:  # an unbatched input
        x = x.unsqueeze(0)
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, in·k, L]
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _output_rows(module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return grad.reshape(-1, module.out_features)
    batched = grad.ndim == module.weight.ndim  # [N, out, *spatial] (weight: [out, in, *kernel])
    return grad.movedim(1 if batched else 0, -1).reshape(-1, module.out_channels)


class LinearRecorder:
    """Context manager recording input rows and output gradients of the given layers (see the module docstring).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> with LinearRecorder(linear_layers(model, "demo")) as rec:
        ...     model(torch.randn(4, 2)).sum().backward()
        >>> rec.inputs["2"].shape, rec.output_grads["0"].shape, len(model[0]._forward_hooks)
        (torch.Size([4, 3]), torch.Size([4, 3]), 0)
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], record_grads: bool = True) -> None:
        self.layers = layers
        self.record_grads = record_grads
        self.inputs: dict[str, torch.Tensor] = {}
        self.output_grads: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> LinearRecorder:
        for name, layer in self.layers:
            self._handles.append(layer.register_forward_hook(self._forward_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            self.inputs[name] = _rows(module, args[0].detach())
            if self.record_grads and output.requires_grad:
                def store(grad, name=name, module=module):
                    self.output_grads[name] = _output_rows(module, grad.detach())

                output.register_hook(store)

        return hook


def centred_update(layer: nn.Module, grads, updates: list, index: dict, mean: torch.Tensor | None,
                   inverse: torch.Tensor, scale: float) -> None:
    """Write the preconditioned, input-centred step of one layer into ``updates`` (ACP and PRONG):

        ΔW = −s (∇_W − ∇_b μᵀ) C⁻¹,   Δb = −s ∇_b − ΔW μ;   without a bias (``mean`` None): ΔW = −s ∇_W C⁻¹,

    with ∇_W as the [out, in·kernel] matrix; ``grads``/``updates`` are per-parameter lists found by
    ``index`` (id(parameter) → position).

    Example:
        >>> layer = nn.Linear(1, 1); g = [torch.ones(1, 1), torch.ones(1)]; u = [None, None]
        >>> centred_update(layer, g, u, {id(layer.weight): 0, id(layer.bias): 1}, torch.ones(1), torch.eye(1), 1.0)
        >>> u[0].tolist(), u[1].tolist()       # ∇_W − ∇_b μ = 0: only the bias moves
        ([[0.0]], [-1.0])
    """
    gw = weight_matrix(layer, grads[index[id(layer.weight)]])
    if mean is None:
        dw = -scale * gw @ inverse
    else:
        gb = grads[index[id(layer.bias)]]
        dw = -scale * (gw - torch.outer(gb, mean)) @ inverse
        updates[index[id(layer.bias)]] = -scale * gb - dw @ mean
    updates[index[id(layer.weight)]] = dw.reshape(layer.weight.shape)


def input_covariance_inverse(h: torch.Tensor, centred: bool, shift: float, what: str) -> torch.Tensor:
    """(cov(h) + shift·I)⁻¹ (``centred``, batch mean removed) or (E[hhᵀ] + shift·I)⁻¹ of inputs h [N, in].

    The [in, in] allocation is checked against the memory budget first (``what`` names it).

    Example:
        >>> h = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
        >>> input_covariance_inverse(h, True, 1.0, "demo").diagonal().tolist()   # cov = diag(1, 0)
        [0.5, 1.0]
    """
    d = h.shape[1]
    check_dense_allocation((d, d), h.dtype, what)
    z = h - h.mean(0) if centred else h
    cov = z.T @ z / h.shape[0] + shift * torch.eye(d, dtype=h.dtype, device=h.device)
    return torch.linalg.inv(cov)
