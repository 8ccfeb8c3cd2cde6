"""``nn.Conv1d/2d/3d``: any stride, dilation, groups, padding (integers, ``"same"``, ``"valid"``) and padding mode.

The input is padded explicitly (``F.pad`` with the module's padding mode, zeros for ``"zeros"``) and
unfolded into patches: X [N, S, C_in·∏k] with S output positions, in the layout of ``weight``
[C_out, C_in/g, *k] flattened (channel-major). With g groups, output channel block j uses input
channel block j only (``groups`` = g). Transposed convolutions are not handled here (they fall back
to the exact per-parameter route of the collector).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.collector.adapters.base import LayerAdapter, channels_first

__all__ = ["ConvAdapter", "sample_weight_gradients", "unfold_patches"]


def _padding(module: nn.Module) -> list[int]:
    """F.pad amounts (last dim first) for the module's padding."""
    dims = len(module.kernel_size)
    if module.padding == "valid":
        return [0] * (2 * dims)
    if module.padding == "same":
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return pads
    return [p for p in reversed(module.padding) for _ in range(2)]


def _padded(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The input padded explicitly with the module's padding and padding mode."""
    pads = _padding(module)
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pads, mode=mode)
    return x


def sample_weight_gradients(x: torch.Tensor, seeds: torch.Tensor, module: nn.Module, padding) -> torch.Tensor:
    """Per-sample, per-column weight gradients [N, K, O, C, *k] of an ungrouped convolution: input x
    [N, C, *spatial], output-side seeds [N, K, O, *spatial_out]. One weight gradient of a convolution
    with the samples as groups: the products of Σ_s g_s x_sᵀ on unfolded patches, without the patches.

    Example:
        >>> conv = nn.Conv2d(2, 3, 3, padding=1).double()
        >>> x, g = torch.randn(4, 2, 5, 5, dtype=torch.float64), torch.randn(4, 1, 3, 5, 5, dtype=torch.float64)
        >>> per_sample = sample_weight_gradients(x, g, conv, conv.padding)
        >>> y = conv(x.requires_grad_(False))
        >>> total = torch.autograd.grad(y, conv.weight, g[:, 0])[0]
        >>> torch.allclose(per_sample.sum((0, 1)), total)
        True
    """
    num, cols, out = seeds.shape[:3]
    weight_grad = _WEIGHT_GRAD[len(module.kernel_size)]
    grads = weight_grad(x.reshape(1, -1, *x.shape[2:]), (num * cols * out, x.shape[1], *module.kernel_size),
                        seeds.reshape(1, num * cols * out, *seeds.shape[3:]), stride=module.stride, padding=padding,
                        dilation=module.dilation, groups=num)
    return grads.view(num, cols, out, *grads.shape[1:])


def unfold_patches(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """X [N, S, C·∏k] of a convolution input [N, C, *spatial] (see the module docstring).

    Example:
        >>> conv = nn.Conv2d(2, 3, 3, padding=1, stride=2).double()
        >>> x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
        >>> X = unfold_patches(x, conv)                      # [N, S, C·k·k]
        >>> y = X @ conv.weight.flatten(1).T + conv.bias     # [N, S, O]
        >>> torch.allclose(y.transpose(1, 2).reshape(4, 3, 3, 3), conv(x))
        True
    """
    x = _padded(x, module)
    dims = len(module.kernel_size)
    if dims == 2:
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
        return patches.transpose(1, 2)
    for i, (k, d, s) in enumerate(zip(module.kernel_size, module.dilation, module.stride, strict=True)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
        if d > 1:
            x = x[..., ::d]
    # [N, C, L1..Ld, k1..kd] -> [N, L1..Ld, C, k1..kd]
    order = [0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims)]
    x = x.permute(order)
    num = x.shape[0]
    positions = 1
    for size in x.shape[1 : 1 + dims]:
        positions *= size
    return x.reshape(num, positions, -1)


class ConvAdapter(LayerAdapter):
    """Convolutions as weight-shared linear maps on patches (see the module docstring)."""

    def matches(self, module):
        return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))

    def groups(self, module):
        return module.groups

    def inputs(self, module, args, kwargs, output):
        return unfold_patches(args[0].detach(), module)

    def weight_gradients(self, module, args, kwargs, output, G):
        """Γ_nk [N, K, O, C, *k] as one convolution weight gradient with the samples as groups (no
        unfolded patches: faster and S·∏k times less memory than X). Ungrouped layers only."""
        if module.groups != 1:
            return None
        seeds = G.transpose(2, 3).reshape(*G.shape[:2], G.shape[3], *output.shape[2:])  # [N, K, O, *spatial]
        return sample_weight_gradients(_padded(args[0].detach(), module), seeds, module, 0)

    def parameter_output(self, module, args, kwargs, output, name, value):
        if name == "weight":
            return module._conv_forward(args[0], value, None)
        return super().parameter_output(module, args, kwargs, output, name, value)

    def to_normal(self, module, grad, batch_dims):
        return channels_first(grad, batch_dims)


_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}
