"""Gram matrices XᵀX computed on their upper block triangle (torch has no BLAS ``syrk``).

XᵀX is symmetric, so of a b×b grid of column blocks only the b(b+1)/2 blocks on and above the
diagonal need a product; the rest are copies. With blocks of ~128 columns this saves a quarter to
a third of the flops of one [I, N]·[N, I] product for I ≥ 256 (KFAC's input factor of a 784-wide
layer, KFLR's output factors). Blocks below the diagonal are exact mirrors; diagonal blocks are
symmetric to rounding, as a plain product.
"""

from __future__ import annotations

import torch

__all__ = ["gram", "homogeneous_gram"]

#: columns per block: products of [128, N]·[N, ≥128] keep the BLAS kernels efficient.
BLOCK = 128


def gram(x: torch.Tensor, homogeneous: bool = False) -> torch.Tensor:
    """XᵀX for X [N, I], or X̃ᵀX̃ with X̃ = [X, 1] (``homogeneous``) without forming X̃: [I(+1), I(+1)].

    The homogeneous row and column are Σ_n x_n and the corner is N.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> gram(x).tolist()
        [[10.0, 14.0], [14.0, 20.0]]
        >>> gram(x, homogeneous=True).tolist()
        [[10.0, 14.0, 4.0], [14.0, 20.0, 6.0], [4.0, 6.0, 2.0]]
    """
    num, width = x.shape
    blocks = max(1, -(-width // BLOCK))
    # the triangle pays where its products stay efficient: many rows, or wide matrices of ≥ BLOCK rows
    # (measured, 1 thread: [128, 256] and [64, 2048] are faster as one product, [128, 784] and [1280, 256] in blocks)
    if blocks == 1 or not (num >= 4 * BLOCK or (width >= 4 * BLOCK and num >= BLOCK)):
        if homogeneous:
            x = torch.cat([x, x.new_ones(num, 1)], 1)
        return x.T @ x
    out = x.new_empty(width + int(homogeneous), width + int(homogeneous))
    edges = [round(width * j / blocks) for j in range(blocks + 1)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        out[lo:hi, lo:width] = x[:, lo:hi].T @ x[:, lo:]
        out[hi:width, lo:hi] = out[lo:hi, hi:width].T
    if homogeneous:
        _fill_homogeneous(out, x.sum(0), num)
    return out


def homogeneous_gram(A: torch.Tensor, total: torch.Tensor, count: int) -> torch.Tensor:
    """X̃ᵀX̃ [I+1, I+1] from XᵀX = ``A``, Σ_n x_n = ``total`` and N = ``count``.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> homogeneous_gram(x.T @ x, x.sum(0), 2).tolist()
        [[10.0, 14.0, 4.0], [14.0, 20.0, 6.0], [4.0, 6.0, 2.0]]
    """
    width = A.shape[0]
    out = A.new_empty(width + 1, width + 1)
    out[:width, :width] = A
    return _fill_homogeneous(out, total, count)


def _fill_homogeneous(out: torch.Tensor, total: torch.Tensor, count: int) -> torch.Tensor:
    """The last row and column of X̃ᵀX̃: Σ_n x_n, and N in the corner."""
    width = out.shape[0] - 1
    out[width, :width] = total
    out[:width, width] = total
    out[width, width] = count
    return out
