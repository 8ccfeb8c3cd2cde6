r"""Interaction strength between parameter groups, as in GroupedNewton's Figure 1.

For a symmetric matrix M [P, P] cut into blocks M_ij by a partition with S groups,

    block norm     N_ij = ‖M_ij‖_F,
    interaction    I_ij = ‖M_ij‖_F / √(‖M_ii‖_F ‖M_jj‖_F)   (I_ii = 1; NaN when a diagonal block is 0).

For the GroupedNewton summary H̄ [S, S], H̄_ij = u_iᵀ H_ij u_j (u_i the direction restricted to group i),
each block is a scalar and the interaction reduces to |H̄_ij| / √(|H̄_ii| |H̄_jj|);
:func:`normalized_summary` keeps the sign, H̄_ij / √(|H̄_ii| |H̄_jj|), which the heatmaps show.
The same applies to H̄⁻¹ (``inverse=True``).

Results are ``xarray.DataArray`` [S, S] with dims ``group_i``/``group_j`` labelled by group name.

Example:
    >>> import torch
    >>> m = torch.tensor([[4.0, 1.0], [1.0, 1.0]])
    >>> interaction_strength(m).values.round(3).tolist()
    [[1.0, 0.5], [0.5, 1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr

from curvlab.analysis.matrices import as_dense, as_vector, block_indices, group_labels, sub_block
from curvlab.errors import CurvlabWarning

__all__ = [
    "block_norms",
    "interaction_strength",
    "normalized_summary",
    "summary_matrix",
]

ROW, COL = "group_i", "group_j"


def _labelled(values: torch.Tensor | np.ndarray, names: Sequence[str], long_name: str) -> xr.DataArray:
    values = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return xr.DataArray(values, dims=(ROW, COL), coords={ROW: list(names), COL: list(names)},
                        attrs={"long_name": long_name, "units": "1"})


def _entries_or_blocks(matrix, partition):
    m = as_dense(matrix, "matrix")
    if partition is None:
        blocks = [torch.tensor([i]) for i in range(m.shape[0])]
        names = [str(i) for i in range(m.shape[0])]
    else:
        blocks, names = block_indices(partition, m.shape[0]), group_labels(partition)
    return m, blocks, names


def block_norms(matrix, partition=None) -> xr.DataArray:
    """N_ij = ‖M_ij‖_F for every pair of groups, [S, S] (each entry its own group if ``partition`` is None).

    Example:
        >>> block_norms(torch.eye(3), [torch.tensor([0, 1]), torch.tensor([2])]).values.round(4).tolist()
        [[1.4142, 0.0], [0.0, 1.0]]
    """
    m, blocks, names = _entries_or_blocks(matrix, partition)
    norms = torch.zeros(len(blocks), len(blocks), dtype=torch.float64)
    for i, rows in enumerate(blocks):
        for j, cols in enumerate(blocks[i:], start=i):
            norms[i, j] = norms[j, i] = torch.linalg.matrix_norm(sub_block(m, rows, cols))
    return _labelled(norms, names, "Frobenius norm of block")


def interaction_strength(matrix, partition=None) -> xr.DataArray:
    """I_ij = ‖M_ij‖_F / √(‖M_ii‖_F ‖M_jj‖_F), [S, S] (see the module docstring).

    Example:
        >>> m = torch.zeros(3, 3); m[:2, :2] = torch.eye(2); m[2, 2] = 2.0; m[0, 2] = m[2, 0] = 1.0
        >>> interaction_strength(m, [torch.tensor([0, 1]), torch.tensor([2])]).values.round(4).tolist()
        [[1.0, 0.5946], [0.5946, 1.0]]
    """
    norms = block_norms(matrix, partition)
    diag = np.diag(norms.values)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sqrt(np.outer(diag, diag))
        values = np.where(scale > 0, norms.values / np.where(scale > 0, scale, 1.0), np.nan)
    out = norms.copy(data=values)
    out.attrs = {"long_name": "interaction strength ‖M_ij‖/√(‖M_ii‖‖M_jj‖)", "units": "1"}
    return out


def summary_matrix(matrix, direction, partition) -> torch.Tensor:
    """The exact summary H̄_ij = u_iᵀ M_ij u_j [S, S] of a dense matrix along ``direction`` [P].

    This is what :func:`curvlab.grouped_newton_summary` computes without forming M.

    Example:
        >>> summary_matrix(torch.eye(3), torch.ones(3), [torch.tensor([0, 1]), torch.tensor([2])])
        tensor([[2., 0.],
                [0., 1.]], dtype=torch.float64)
    """
    m = as_dense(matrix, "matrix")
    u = as_vector(direction, m.shape[0], "direction")
    blocks = block_indices(partition, m.shape[0])
    basis = torch.zeros(m.shape[0], len(blocks), dtype=torch.float64)
    for j, idx in enumerate(blocks):
        basis[idx, j] = u[idx]
    return basis.T @ m @ basis


def normalized_summary(hbar, names: Sequence[str] | None = None, *, inverse: bool = False) -> xr.DataArray:
    """H̄_ij / √(|H̄_ii| |H̄_jj|) (signed), or the same for H̄⁻¹ with ``inverse=True``: [S, S].

    A singular H̄ is pseudo-inverted with a :class:`~curvlab.errors.CurvlabWarning`.
    The absolute value is the interaction strength of the summary.

    Example:
        >>> h = torch.tensor([[4.0, -2.0], [-2.0, 9.0]])
        >>> normalized_summary(h, ["a", "b"]).values.round(4).tolist()
        [[1.0, -0.3333], [-0.3333, 1.0]]
        >>> normalized_summary(h, ["a", "b"], inverse=True).values.round(4).tolist()
        [[1.0, 0.3333], [0.3333, 1.0]]
    """
    h = as_dense(hbar, "hbar")
    names = [str(i) for i in range(h.shape[0])] if names is None else list(names)
    if len(names) != h.shape[0]:
        raise ValueError(f"hbar is [{h.shape[0]}, {h.shape[0]}] but {len(names)} group names were given")
    if inverse:
        try:
            h = torch.linalg.inv(h)
        except torch.linalg.LinAlgError:
            import warnings

            warnings.warn("hbar is singular; showing its pseudo-inverse", CurvlabWarning, stacklevel=2)
            h = torch.linalg.pinv(h, hermitian=True)
    diag = h.diagonal().abs()
    scale = torch.sqrt(diag[:, None] * diag[None, :])
    values = torch.where(scale > 0, h / torch.where(scale > 0, scale, torch.ones_like(scale)),
                         torch.full_like(h, float("nan")))
    what = "H̄⁻¹" if inverse else "H̄"
    return _labelled(values, names, f"normalised {what}_ij/√(|{what}_ii||{what}_jj|)")
