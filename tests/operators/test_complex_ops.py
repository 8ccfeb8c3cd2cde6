"""Convolutions and average pooling under exact_complex_ops keep an imaginary part of size 2⁻⁵⁰."""

import pytest
import torch
import torch.nn.functional as F

from curvlab.operators.complex_ops import exact_complex_ops

EPS = 2.0**-50


@pytest.mark.parametrize(
    "conv, x_shape, w_shape",
    [
        (F.conv1d, (2, 2, 7), (3, 2, 3)),
        (F.conv2d, (2, 1, 5, 5), (2, 1, 3, 3)),
        (F.conv_transpose2d, (2, 2, 4, 4), (2, 3, 2, 2)),
    ],
    ids=["conv1d", "conv2d", "conv_transpose2d"],
)
def test_convolution_is_bilinear_without_cancellation(conv, x_shape, w_shape):
    gen = torch.Generator().manual_seed(0)
    x, w, u = (
        torch.randn(s, dtype=torch.float64, generator=gen) for s in (x_shape, w_shape, w_shape)
    )
    channels = w_shape[1] if conv is F.conv_transpose2d else w_shape[0]
    b = torch.randn(channels, dtype=torch.float64, generator=gen)
    with exact_complex_ops():
        out = conv(x.to(torch.complex128), w + 1j * EPS * u, b + 1j * EPS * b, padding=1)
    torch.testing.assert_close(out.real, conv(x, w, b, padding=1), rtol=1e-12, atol=1e-12)
    shape = (1, -1) + (1,) * (out.ndim - 2)
    expected_im = conv(x, u, None, padding=1) + b.reshape(shape)
    torch.testing.assert_close(out.imag / EPS, expected_im, rtol=1e-10, atol=1e-12)


def test_plain_complex_conv_loses_the_step_and_pooling_is_linear():
    gen = torch.Generator().manual_seed(1)
    x, w, u = (
        torch.randn(1, 1, 6, 6, dtype=torch.float64, generator=gen),
        torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=gen),
        torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=gen),
    )
    exact = F.conv2d(x, u)
    plain = F.conv2d(x.to(torch.complex128), w + 1j * EPS * u).imag / EPS  # PyTorch's own kernel
    assert (
        plain - exact
    ).abs().max() > 1e-3 * exact.abs().max()  # the reason exact_complex_ops exists
    z = torch.complex(x, EPS * x)
    with exact_complex_ops():
        pooled = F.avg_pool2d(z, 2), F.adaptive_avg_pool2d(z, 1)
    torch.testing.assert_close(pooled[0].imag / EPS, F.avg_pool2d(x, 2), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        pooled[1].imag / EPS, F.adaptive_avg_pool2d(x, 1), rtol=1e-12, atol=1e-14
    )
