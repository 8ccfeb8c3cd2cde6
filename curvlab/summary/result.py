"""The result of :func:`curvlab.grouped_newton_summary`: ḡ, H̄, D³ over the groups, and its export.

Export schema (``to_xarray``): an ``xarray.Dataset`` with

* ``gbar(group)``: ḡ_s = Σ_{p∈s} g_p u_p;
* ``hbar(group_i, group_j)``: H̄_ij = u_iᵀ H_ij u_j (H the Hessian or the GGN, attribute ``curvature``);
* ``d3(group)`` (order 3 only): D³_s = Σ_{a,b,c∈s} ∂³L u_a u_b u_c;

coordinates ``group``/``group_i``/``group_j`` (group names) and ``*_size`` (parameters per group);
attributes ``curvlab_kind = "grouped_newton_summary"`` (what :func:`curvlab.load` dispatches on),
``curvature``, ``partition`` (JSON) and the provenance attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr

from curvlab.partition import Partition
from curvlab.summary.cubic import NewtonSummaryStep, newton_summary_step
from curvlab.summary.problem import SummaryCurvature

__all__ = ["GroupedNewtonSummary"]

KIND = "grouped_newton_summary"
_RESERVED = ("curvlab_kind", "curvature", "partition")


@dataclass(frozen=True)
class GroupedNewtonSummary:
    """ḡ [S], H̄ [S, S] and optionally D³ [S] of φ(η) = L(θ + Uη) at η = 0, over the S groups of ``partition``.

    Attributes:
        gbar: ḡ = ∇φ(0) = Uᵀg, [S].
        hbar: H̄ = ∇²φ(0) = UᵀHU (or UᵀGU for the GGN), [S, S], symmetric.
        d3: the diagonal of ∇³φ(0), [S], or ``None`` (order 2).
        partition: the groups (row/column order of everything above).
        curvature: :class:`SummaryCurvature` used for H̄.
        attrs: provenance attributes (netCDF-safe).

    Example:
        >>> import torch.nn as nn
        >>> part = Partition.from_model(nn.Linear(1, 1), "canonical")
        >>> s = GroupedNewtonSummary(torch.tensor([1.0, 2.0]), torch.tensor([[2.0, 0.0], [0.0, 4.0]]),
        ...                          None, part, SummaryCurvature.HESSIAN)
        >>> s.group_names, s.step().eta.tolist()
        (('weight', 'bias'), [0.5, 0.5])
        >>> GroupedNewtonSummary.from_xarray(s.to_xarray()).hbar.tolist()
        [[2.0, 0.0], [0.0, 4.0]]
    """

    gbar: torch.Tensor
    hbar: torch.Tensor
    d3: torch.Tensor | None
    partition: Partition
    curvature: SummaryCurvature
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.partition.num_groups
        if self.gbar.shape != (s,) or self.hbar.shape != (s, s):
            raise ValueError(
                f"gbar must be [S] and hbar [S, S] with S = {s} groups, got {tuple(self.gbar.shape)} "
                f"and {tuple(self.hbar.shape)}"
            )
        if self.d3 is not None and self.d3.shape != (s,):
            raise ValueError(f"d3 must be [S] = [{s}], got {tuple(self.d3.shape)}")
        object.__setattr__(self, "curvature", SummaryCurvature(self.curvature))
        object.__setattr__(self, "attrs", dict(self.attrs))

    @property
    def group_names(self) -> tuple[str, ...]:
        return self.partition.group_names

    @property
    def num_groups(self) -> int:
        """S."""
        return self.partition.num_groups

    @property
    def order(self) -> int:
        """3 if D³ is present, else 2."""
        return 2 if self.d3 is None else 3

    def hbar_matrix(self):
        """H̄ as a :class:`curvlab.repr.SummaryMatrix` (quantity ``"newton_summary"``)."""
        from curvlab.repr import SummaryMatrix

        attrs = {k: v for k, v in self.attrs.items() if k not in _RESERVED}
        attrs["curvature"] = self.curvature.value
        return SummaryMatrix(self.hbar, self.partition, quantity="newton_summary", attrs=attrs)

    def step(self, lambda_int: float = 0.0, **options: Any) -> NewtonSummaryStep:
        """The NewtonSummary step η = (H̄ + ½λ_int‖Dη‖D²)⁻¹ḡ (see :func:`newton_summary_step`).

        The update is θ_s ← θ_s − λ η_s u_s.
        """
        return newton_summary_step(self.gbar, self.hbar, self.d3, lambda_int=lambda_int, **options)

    # ------------------------------------------------------------------ export
    def to_xarray(self) -> xr.Dataset:
        """An ``xarray.Dataset`` (schema in the module docstring); :meth:`from_xarray` inverts it."""
        names = np.asarray(self.group_names, dtype=str)
        sizes = np.asarray([g.size for g in self.partition.groups], dtype=np.int64)
        coords = {}
        for d in ("group", "group_i", "group_j"):
            coords[d] = (d, names, {"long_name": "parameter group"})
            coords[f"{d}_size"] = (d, sizes, {"long_name": "number of parameters in the group", "units": "1"})
        matrix = "generalised Gauss-Newton" if self.curvature is SummaryCurvature.GGN else "Hessian"
        data = {
            "gbar": ("group", _numpy(self.gbar), {"long_name": "gradient summary u_s^T g_s"}),
            "hbar": (
                ("group_i", "group_j"),
                _numpy(self.hbar),
                {"long_name": f"{matrix} summary u_i^T H_ij u_j"},
            ),
        }
        if self.d3 is not None:
            data["d3"] = ("group", _numpy(self.d3), {"long_name": "order-3 diagonal summary D3_s"})
        attrs = {k: v for k, v in self.attrs.items() if k not in _RESERVED and v is not None}
        attrs.update(curvlab_kind=KIND, curvature=self.curvature.value, partition=self.partition.to_json())
        return xr.Dataset(data, coords=coords, attrs=attrs)

    @classmethod
    def from_xarray(cls, ds: xr.Dataset) -> GroupedNewtonSummary:
        """Rebuild the summary written by :meth:`to_xarray`."""
        kind = ds.attrs.get("curvlab_kind")
        if kind != KIND:
            raise ValueError(f"expected a dataset with curvlab_kind={KIND!r}, got {kind!r}")
        missing = [v for v in ("gbar", "hbar") if v not in ds]
        if missing:
            raise ValueError(f"{KIND} dataset lacks the variables {', '.join(missing)}")
        partition = Partition.from_json(ds.attrs["partition"])
        d3 = _tensor(ds["d3"].values) if "d3" in ds else None
        attrs = {k: v for k, v in ds.attrs.items() if k not in _RESERVED}
        return cls(
            _tensor(ds["gbar"].values),
            _tensor(ds["hbar"].transpose("group_i", "group_j").values),
            d3,
            partition,
            SummaryCurvature(ds.attrs["curvature"]),
            attrs,
        )

    def __repr__(self) -> str:
        return (
            f"GroupedNewtonSummary(S={self.num_groups}, curvature={self.curvature.value!r}, "
            f"order={self.order}, dtype={self.hbar.dtype})"
        )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(values, copy=True))
