"""Recording the inputs and output gradients of ``nn.Linear`` layers during one forward/backward pass.

:class:`LinearRecorder` is a context manager owning forward hooks (and, through them, tensor hooks on the
layer outputs); every hook is removed on exit, also after an exception. For layer a = W h + b it records

* ``inputs[name]``        h, [N, in]  (leading dimensions flattened into N);
* ``output_grads[name]``  ∂L/∂a, [N, out] (with the loss's 1/Z), after a backward pass.

:func:`linear_layers` lists the layers and refuses models with trainable parameters outside ``nn.Linear``;
:func:`input_covariance_inverse` is the damped inverse input covariance that ACP and PRONG precondition with.
"""

from __future__ import annotations

import torch
from torch import nn

from curvlab.errors import UnsupportedModuleError
from curvlab.guards import check_dense_allocation

__all__ = ["LinearRecorder", "input_covariance_inverse", "linear_layers"]


def linear_layers(model: nn.Module, method: str) -> list[tuple[str, nn.Linear]]:
    """``(name, layer)`` for every ``nn.Linear`` with trainable parameters; raise if another module has some.

    Example:
        >>> [n for n, _ in linear_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), "ACP")]
        ['0', '2']
    """
    layers = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(module) is not nn.Linear:
            raise UnsupportedModuleError(
                f"{method} supports trainable parameters in torch.nn.Linear layers only; module {name!r} is a "
                f"{type(module).__module__}.{type(module).__qualname__}"
            )
        layers.append((name, module))
    return layers


class LinearRecorder:
    """Context manager recording inputs and output gradients of the given ``nn.Linear`` layers.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> with LinearRecorder(linear_layers(model, "demo")) as rec:
        ...     model(torch.randn(4, 2)).sum().backward()
        >>> rec.inputs["2"].shape, rec.output_grads["0"].shape, len(model[0]._forward_hooks)
        (torch.Size([4, 3]), torch.Size([4, 3]), 0)
    """

    def __init__(self, layers: list[tuple[str, nn.Linear]], record_grads: bool = True) -> None:
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
            self.inputs[name] = args[0].detach().reshape(-1, module.in_features)
            if self.record_grads and output.requires_grad:
                def store(grad, name=name, features=module.out_features):
                    self.output_grads[name] = grad.detach().reshape(-1, features)

                output.register_hook(store)

        return hook




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
