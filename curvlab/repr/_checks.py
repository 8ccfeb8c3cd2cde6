"""Validation shared by the representation constructors: every error names the argument at fault."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from curvlab.guards import check_finite

#: Attribute names a representation writes itself on export; user attrs may not use them.
RESERVED_ATTRS = frozenset({"curvlab_kind", "quantity", "partition"})


def check_tensor(
    value: Any, name: str, shape: Sequence[int | None] | None = None, ndim: int | None = None
) -> torch.Tensor:
    """Return ``value`` if it is a finite floating tensor of the expected shape, else raise naming ``name``.

    ``shape`` may hold ``None`` for a free dimension.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__qualname__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {value.dtype}")
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {tuple(value.shape)}")
    if shape is not None:
        for got, want in zip(value.shape, shape, strict=True):
            if want is not None and got != want:
                expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
                raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")
    return check_finite(value.detach(), name)


def check_square(value: Any, name: str, size: int | None = None, *, symmetry: bool = True) -> torch.Tensor:
    """A finite floating square matrix [n, n] (n = ``size`` when given), symmetric to working precision.

    ``symmetry=False`` skips the O(n²) symmetry test (for matrices symmetric by construction, e.g.
    Gram matrices XᵀX the engine computes); type, shape and finiteness are still checked.
    """
    matrix = check_tensor(value, name, (size, size))
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(matrix.shape)}")
    if symmetry:
        check_symmetric(matrix, name)
    return matrix


def check_symmetric(matrix: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``max|M - Mᵀ| <= sqrt(eps) · max|M|`` (eps of the dtype)."""
    if matrix.numel() == 0:
        return
    scale = float(matrix.abs().max())
    asym = float((matrix - matrix.mT).abs().max())
    tol = torch.finfo(matrix.dtype).eps ** 0.5 * scale
    if asym > tol:
        raise ValueError(
            f"{name} is not symmetric: max |M - M^T| = {asym:.3g} exceeds {tol:.3g} "
            f"(sqrt(eps) times max |M| = {scale:.3g})"
        )


def check_same_dtype_device(tensors: Mapping[str, torch.Tensor]) -> None:
    """All tensors share one dtype and device, else ValueError naming the odd one."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(
                f"{name} is {t.dtype} on {t.device} but {first_name} is {first.dtype} on {first.device}; "
                "give all tensors one dtype and device"
            )


def check_attrs(
    attrs: Mapping[str, Any] | None, extra_reserved: Sequence[str] = ()
) -> dict[str, Any]:
    """A copy of the provenance ``attrs`` with string keys, none of them reserved for the export."""
    attrs = dict(attrs or {})
    reserved = RESERVED_ATTRS.union(extra_reserved)
    for key in attrs:
        if not isinstance(key, str):
            raise TypeError(f"attrs keys must be strings, got {key!r}")
        if key in reserved:
            raise ValueError(
                f"attrs may not set {key!r}: curvlab writes it on export (reserved: "
                f"{', '.join(sorted(reserved))})"
            )
    return attrs


def check_nonsingular(denominator: torch.Tensor, scale: float, what: str) -> None:
    """Raise ``torch.linalg.LinAlgError`` if an eigenvalue of a damped matrix is zero to working precision.

    ``scale`` is the largest eigenvalue magnitude; the threshold is ``n · eps · scale``.
    """
    n = max(denominator.numel(), 1)
    tol = n * torch.finfo(denominator.dtype).eps * scale
    if denominator.numel() and bool((denominator.abs() <= tol).any()):
        raise torch.linalg.LinAlgError(
            f"{what}: the damped matrix is singular to working precision (an eigenvalue plus damping "
            f"is below {tol:.3g}); use damping > 0"
        )
