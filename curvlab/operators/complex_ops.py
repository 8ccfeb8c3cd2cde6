"""Exact complex arithmetic for the complex step: convolutions and average pooling split into real parts.

Complex-step differentiation needs every operation to carry the tiny imaginary part ε·(...) with full
relative precision. PyTorch's complex convolution multiplies with the three-multiplication (Gauss) trick,
Im = (a + b)(c + d) − ac − bd, whose cancellation destroys an imaginary part of size 2⁻⁵⁰, and it has no
complex kernel for average pooling. Inside :func:`exact_complex_ops`, these functions are computed from
real calls instead (a ``TorchFunctionMode``, active only for the ``with`` block):

* convolutions (bilinear): (x_r + i x_i) ⋆ (w_r + i w_i) = (x_r⋆w_r − x_i⋆w_i) + i (x_r⋆w_i + x_i⋆w_r), + bias;
* average pooling (linear): pool(x_r + i x_i) = pool(x_r) + i pool(x_i);
* batch norm with running statistics (affine): written out as (x − μ)/√(σ² + eps)·w + b.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["exact_complex_ops"]

_BILINEAR = {
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
}
_LINEAR = {
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
}  # fmt: skip


def _parts(t):
    if isinstance(t, torch.Tensor) and t.is_complex():
        return t.real, t.imag
    return t, None


class exact_complex_ops(TorchFunctionMode):  # noqa: N801 - used as a context manager, like a function
    """Context manager: convolutions, average pooling and eval-mode batch norm exact on complex tensors.

    Example:
        >>> w = torch.randn(2, 1, 3, dtype=torch.float64) + 1j * 2.0**-50 * torch.ones(2, 1, 3, dtype=torch.float64)
        >>> x = torch.randn(1, 1, 5, dtype=torch.float64).to(torch.complex128)
        >>> with exact_complex_ops():
        ...     out = torch.nn.functional.conv1d(x, w)
        >>> exact = torch.nn.functional.conv1d(x.real, torch.ones(2, 1, 3, dtype=torch.float64))
        >>> torch.allclose(out.imag / 2.0**-50, exact, rtol=1e-12, atol=0)
        True
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if (
            name in _BILINEAR
            and len(args) >= 2
            and any(_is_complex(a) for a in (*args[:3], kwargs.get("bias")))
        ):
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.pop("bias", None)
            rest = args[3:]
            (xr, xi), (wr, wi) = _parts(x), _parts(w)
            real = func(xr, wr, None, *rest, **kwargs)
            imag = torch.zeros_like(real)
            if xi is not None:
                real = real - func(xi, wi, None, *rest, **kwargs) if wi is not None else real
                imag = imag + func(xi, wr, None, *rest, **kwargs)
            if wi is not None:
                imag = imag + func(xr, wi, None, *rest, **kwargs)
            if bias is not None:
                br, bi = _parts(bias)
                shape = (1, -1) + (1,) * (real.ndim - 2)
                real = real + br.reshape(shape)
                imag = imag + bi.reshape(shape) if bi is not None else imag
            return torch.complex(real, imag)
        if name == "batch_norm" and not _training(args, kwargs):
            return _affine_batch_norm(*args, **kwargs)
        if name in _LINEAR and args and _is_complex(args[0]):
            x, rest = args[0], args[1:]
            return torch.complex(func(x.real, *rest, **kwargs), func(x.imag, *rest, **kwargs))
        return func(*args, **kwargs)


def _training(args, kwargs) -> bool:
    return bool(args[5] if len(args) > 5 else kwargs.get("training", False))


def _affine_batch_norm(
    x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
):
    """Eval-mode batch norm, (x − μ) / √(σ² + eps) · w + b over channel dim 1: affine, hence analytic."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = (x - running_mean.reshape(shape)) / (running_var.reshape(shape) + eps).sqrt()
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _is_complex(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_complex()
