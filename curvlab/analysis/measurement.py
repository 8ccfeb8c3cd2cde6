"""Measure a model: an exact reference, its approximations and their quality, in one call.

:func:`measure` computes the exact reference matrix (``curvlab.reference``), the gradient, each requested
approximation (through ``curvlab.compute`` when the engine provides it; diagonals and block-diagonals can
also be cut from the dense references) and the GroupedNewton summary along the gradient, then compares
them with :func:`~curvlab.analysis.compare`. An approximation that cannot be computed is skipped with a
:class:`~curvlab.errors.CurvlabWarning`; the reason is kept in the dataset's ``skipped`` attribute.

Example:
    >>> import torch, warnings
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    >>> data = (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))
    >>> m = measure(model, nn.CrossEntropyLoss(), data, approximations=["ggn_block", "summary"], dampings=[0.1], k=2)
    >>> round(m.quality.matrix_quality.sel(approximation="ggn_block", block="0", metric="rel_frobenius_error").item(), 12)
    0.0
    >>> sorted(m.curvature)
    ['ggn', 'ggn_block']
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from curvlab import reference as _reference
from curvlab.analysis.comparison import (
    DEFAULT_DAMPINGS,
    DENSE_LIMIT,
    SummaryInput,
    choose_method,
    compare,
)
from curvlab.analysis.interactions import summary_matrix
from curvlab.analysis.matrices import block_indices
from curvlab.data import iter_batches
from curvlab.errors import CurvlabError, CurvlabWarning
from curvlab.partition import Partition

__all__ = ["APPROXIMATIONS", "REFERENCES", "Measurement", "exact_operator", "measure"]

REFERENCES = ("hessian", "ggn", "fisher", "empirical_fisher")
#: Names understood by :func:`measure`: the engine's quantities plus ``"summary"`` (GroupedNewton).
APPROXIMATIONS = (
    "kfac", "kflr", "kfra", "ekfac", "diag_ggn", "diag_ggn_mc", "diag_hessian", "diag_empirical_fisher",
    "ggn_block", "hessian_block", "fisher_mc_block", "empirical_fisher_block", "summary",
)
#: Approximations that can be cut from a dense reference when the engine cannot provide them.
_FROM_REFERENCE = {
    "diag_ggn": ("ggn", "diagonal"), "diag_hessian": ("hessian", "diagonal"),
    "diag_empirical_fisher": ("empirical_fisher", "diagonal"),
    "ggn_block": ("ggn", "block"), "hessian_block": ("hessian", "block"),
}


@dataclass
class Measurement:
    """What :func:`measure` returns.

    Attributes:
        quality: the comparison dataset (see :mod:`curvlab.analysis.comparison`).
        curvature: name -> representation: the reference under its quantity name, then the approximations.
        gradient: [P] gradient the steps and the summary used.
        skipped: approximation -> reason it was left out.
        exact: the reference as a representation: dense, or the matrix-free operator (``block()`` of it costs
            one product per column), whichever the comparison used.
    """

    quality: xr.Dataset
    curvature: dict[str, Any]
    gradient: torch.Tensor
    skipped: dict[str, str] = field(default_factory=dict)
    exact: Any = None

    def curvature_tree(self) -> xr.DataTree:
        """Every representation's ``to_xarray()`` as a child of one ``DataTree`` (for one netCDF file)."""
        nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs={"contents": ",".join(self.curvature)})}
        for name, rep in self.curvature.items():
            obj = rep.to_xarray()
            if isinstance(obj, xr.DataTree):
                for node in obj.subtree:
                    path = f"/{name}" + ("" if node.path == "/" else node.path)
                    nodes[path] = node.to_dataset(inherit=False)
            else:
                nodes[f"/{name}"] = obj
        return xr.DataTree.from_dict(nodes)


def _representations():
    from curvlab import repr as representations

    return representations


def _from_reference(name: str, matrices: Mapping[str, torch.Tensor], partition: Partition, attrs) -> Any:
    source, shape = _FROM_REFERENCE[name]
    matrix = matrices[source]
    reps = _representations()
    if shape == "diagonal":
        return reps.DiagonalCurvature(matrix.diagonal().clone(), partition, quantity=name, attrs=attrs)
    blocks = {g.name: matrix[g.indices][:, g.indices].clone() for g in partition.groups}
    return reps.BlockDiagonalCurvature(blocks, partition, quantity=name, attrs=attrs)


def _from_engine(model, loss_fn, data, names: Sequence[str], partition: Partition, mc_samples: int,
                 seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """Representations the engine computes (all names in one pass; one by one if that fails), and failures."""
    import curvlab

    if not names:
        return {}, {}
    try:
        compute = curvlab.compute
    except (ImportError, AttributeError) as err:
        reason = f"the curvature engine (curvlab.compute) is not available: {err}"
        return {}, {name: reason for name in names}

    def run(which):
        generator = torch.Generator().manual_seed(seed)
        result = compute(model, loss_fn, data, list(which), partition=partition, mc_samples=mc_samples,
                         generator=generator, progress=False)
        return {name: result[name] for name in which}

    errors = (CurvlabError, ValueError, KeyError, NotImplementedError, TypeError)
    try:
        return run(names), {}
    except errors:
        pass
    found, failed = {}, {}
    for name in names:
        try:
            found.update(run([name]))
        except errors as err:
            failed[name] = f"curvlab.compute cannot compute {name!r}: {err}"
    return found, failed


def exact_operator(model: nn.Module, loss_fn: nn.Module, batches, reference: str, partition: Partition):
    """The matrix-free operator of ``reference`` (:mod:`curvlab.operators`); the Fisher is the GGN there.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(2, 2).double()
        >>> data = [(torch.randn(4, 2, dtype=torch.float64), torch.randint(0, 2, (4,)))]
        >>> op = exact_operator(model, nn.CrossEntropyLoss(), data, "ggn", Partition.from_model(model, "layer"))
        >>> op.shape
        (6, 6)
    """
    from curvlab import operators

    if reference == "hessian":
        return operators.HessianOperator(model, loss_fn, batches, partition=partition)
    if reference == "empirical_fisher":
        return operators.EmpiricalFisherOperator(model, loss_fn, batches, partition=partition)
    # ggn, and the exact Fisher, which equals the GGN for every loss curvlab supports
    return operators.GGNOperator(model, loss_fn, batches, partition=partition)


def _summary(model, loss_fn, data, reference: str, gradient: torch.Tensor, exact,
             partition: Partition) -> tuple[SummaryInput, str]:
    """The GroupedNewton summary along the gradient, from curvlab.summary, else from the dense reference."""
    import curvlab

    curvature = "hessian" if reference == "hessian" else "ggn"
    try:
        result = curvlab.grouped_newton_summary(model, loss_fn, data, direction=partition.unflatten(gradient),
                                                partition=partition, curvature=curvature, order=2)
        hbar = torch.as_tensor(result.hbar, dtype=torch.float64)
        if reference in ("hessian", "ggn", "fisher"):
            return SummaryInput(hbar, result.gbar, gradient, partition), "curvlab.grouped_newton_summary"
    except (ImportError, AttributeError, CurvlabError, ValueError, TypeError, NotImplementedError):
        pass
    basis = torch.zeros(gradient.numel(), partition.num_groups, dtype=torch.float64)
    for j, idx in enumerate(block_indices(partition, gradient.numel())):
        basis[idx, j] = gradient[idx]
    if isinstance(exact, torch.Tensor):
        hbar = summary_matrix(exact, gradient, partition)
        return SummaryInput(hbar, basis.T @ gradient, gradient, partition), f"UᵀMU of the dense {reference}"
    from curvlab.analysis.probes import apply

    hbar = basis.T @ apply(exact, basis)
    return SummaryInput((hbar + hbar.T) / 2, basis.T @ gradient, gradient, partition), \
        f"UᵀMU by products with the {reference}"


def measure(
    model: nn.Module,
    loss_fn: nn.Module,
    data,
    *,
    reference: str = "ggn",
    approximations: Sequence[str] = APPROXIMATIONS,
    partition: str | Partition = "layer",
    summary_partition: str | Partition = "canonical",
    dampings: Sequence[float] = DEFAULT_DAMPINGS,
    k: int = 10,
    mc_samples: int = 1,
    seed: int = 0,
    eigenvalues: bool = True,
    attrs: Mapping[str, Any] | None = None,
    method: str = "auto",
    dense_limit: int = DENSE_LIMIT,
    num_probes: int | None = None,
    progress: bool = False,
    block_steps: bool = False,
    block_spectra: bool = False,
) -> Measurement:
    """Exact ``reference`` vs ``approximations`` of ``model`` on ``data`` (an ``(inputs, targets)`` pair or batches).

    Args:
        reference: ``hessian``, ``ggn``, ``fisher`` or ``empirical_fisher``.
        approximations: names from :data:`APPROXIMATIONS`.
        partition: blocks of the per-block metrics and of block-diagonal approximations.
        summary_partition: groups of the GroupedNewton summary (canonical: one per tensor, as in the paper).
        dampings, k: see :func:`~curvlab.analysis.compare`.
        mc_samples: Monte Carlo samples of ``kfac`` and ``*_mc`` quantities; ``seed`` seeds their sampling.
        eigenvalues: also store the reference's eigenvalues (variable ``eigenvalues``).
        attrs: provenance attributes for the dataset.
        method: ``"dense"`` (the reference as a [P, P] matrix, exact metrics), ``"matrix-free"`` (the reference
            as an operator of :mod:`curvlab.operators`, metrics with error bars) or ``"auto"``: dense up to
            ``dense_limit`` parameters. Matrix-free, the reference is not kept in ``curvature``, ``eigenvalues``
            are its top ``k`` (Lanczos), and approximations the engine cannot compute are skipped.
        num_probes, progress, block_steps, block_spectra: of the matrix-free metrics (:func:`~curvlab.analysis.compare`).

    Raises:
        ValueError: an unknown reference or approximation name.
    """
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; choose from {', '.join(REFERENCES)}")
    unknown = [a for a in approximations if a not in APPROXIMATIONS]
    if unknown:
        raise ValueError(f"unknown approximations {unknown}; choose from {', '.join(APPROXIMATIONS)}")
    part = Partition.from_model(model, partition)
    batches = list(iter_batches(data))
    chosen = choose_method(part.num_params, method, dense_limit)
    base_attrs = {k: v for k, v in dict(attrs or {}).items() if v is not None}
    if "group_labels" not in base_attrs:  # figures name blocks by qualified name, type and shape
        from curvlab.analysis.plots.style import group_labels_of

        base_attrs["group_labels"] = json.dumps(group_labels_of(part, model))
    gradient = _reference.gradient(model, loss_fn, batches).detach().to(torch.float64)
    reps = _representations()
    matrices: dict[str, torch.Tensor] = {}
    curvature: dict[str, Any] = {}
    if chosen == "dense":
        matrices[reference] = getattr(_reference, reference)(model, loss_fn, batches).detach()
        exact = matrices[reference].to(torch.float64)
        curvature[reference] = reps.DenseCurvature(matrices[reference], part, quantity=reference, attrs=base_attrs)
    else:
        exact = exact_operator(model, loss_fn, batches, reference, part)
    approx: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    sources: dict[str, str] = {}
    summary = None
    if "summary" in approximations:
        summary_part = Partition.from_model(model, summary_partition)
        summary, sources["summary"] = _summary(model, loss_fn, batches, reference, gradient, exact, summary_part)
    engine_names = [a for a in approximations if a != "summary"]
    found, failed = _from_engine(model, loss_fn, batches, engine_names, part, mc_samples, seed)
    for name in engine_names:
        if name in found:
            approx[name], sources[name] = found[name], "curvlab.compute"
        elif name in _FROM_REFERENCE and chosen == "dense":
            source = _FROM_REFERENCE[name][0]
            if source not in matrices:
                matrices[source] = getattr(_reference, source)(model, loss_fn, batches).detach()
            approx[name], sources[name] = _from_reference(name, matrices, part, base_attrs), f"dense {source} reference"
        else:
            skipped[name] = failed[name]
            warnings.warn(f"skipping {name}: {failed[name]}", CurvlabWarning, stacklevel=2)
            continue
        curvature[name] = approx[name]
    ds = compare(exact, approx, gradient, partition=part, dampings=dampings, k=k, summary=summary,
                 method=chosen, num_probes=num_probes, seed=seed, progress=progress, block_steps=block_steps,
                 block_spectra=block_spectra,
                 attrs={**base_attrs, "reference": reference, "partition": part.to_json(),
                        "sources": json.dumps(sources), "skipped": json.dumps(skipped)})
    if eigenvalues:
        found = ds.get("eigenvalues")
        ds.update(_spectra(exact, approx, reference, k, seed, known=found))
        if found is not None:  # keep the matrix-free comparison's Lanczos values, named as the reference
            ds["eigenvalues"].attrs["long_name"] = f"eigenvalues of the {reference}"
    ds["gradient_norm"] = xr.DataArray(float(gradient.norm()), attrs={"long_name": "gradient norm", "units": "1"})
    exact_rep = curvature[reference] if chosen == "dense" else exact
    return Measurement(ds, curvature, gradient, skipped, exact_rep)


#: Dense blocks larger than this get their top k eigenvalues by Lanczos instead of a full eigvalsh.
EIGVALSH_BLOCK_LIMIT = 3000


def _dense_blocks_over(rep, limit: int) -> bool:
    """Whether ``rep`` stores a dense block with more than ``limit`` rows (a full eigvalsh would cost its cube)."""
    kind = getattr(rep, "kind", None)
    if kind == "dense":
        return rep.shape[0] > limit
    if kind == "block_diagonal":
        return max(g.size for g in rep.partition.groups) > limit
    return False


def _spectra(exact, approx: Mapping[str, Any], reference: str, k: int, seed: int,
             known: xr.DataArray | None = None) -> dict[str, xr.DataArray]:
    """``eigenvalues`` of the reference (all, ascending; matrix-free: the top k by Lanczos, ascending; taken
    from ``known`` when given) and ``approximation_eigenvalues`` [approximation, approximation_eigenvalue_index]
    (all, ascending)."""
    if known is not None:
        values, method = known.values, known.attrs["method"]
    elif isinstance(exact, torch.Tensor):
        values, method = torch.linalg.eigvalsh(exact).numpy(), "dense eigvalsh"
    else:
        from curvlab import spectra

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CurvlabWarning)
            top = spectra.top_eigenvalues(exact, min(k, exact.shape[0] - 1), tol=1e-8,
                                          generator=torch.Generator().manual_seed(seed))
        values, method = top["eigenvalues"].values[::-1].copy(), f"top {min(k, exact.shape[0] - 1)} by Lanczos"
    out = {"eigenvalues": xr.DataArray(values, dims="eigenvalue_index", attrs={
        "long_name": f"eigenvalues of the {reference}", "units": "1", "method": method})}
    rows, names = [], []
    for name, rep in approx.items():
        try:
            if _dense_blocks_over(rep, EIGVALSH_BLOCK_LIMIT):
                # a dense block of this size would cost n³: the top k by Lanczos, the rest NaN
                from curvlab import spectra

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CurvlabWarning)
                    top = spectra.top_eigenvalues(rep, min(k, rep.shape[0] - 1), tol=1e-8,
                                                  generator=torch.Generator().manual_seed(seed))
                values = np.full(rep.shape[0], np.nan)
                values[-len(top["eigenvalues"]):] = top["eigenvalues"].values[::-1]
                rows.append(values)
            else:
                rows.append(rep.eigvalsh().detach().to(torch.float64).cpu().numpy())
            names.append(name)
        except (CurvlabError, NotImplementedError, RuntimeError, MemoryError):
            continue
    if rows:
        out["approximation_eigenvalues"] = xr.DataArray(
            rows, dims=("approximation", "approximation_eigenvalue_index"), coords={"approximation": names},
            attrs={"long_name": "eigenvalues of the approximation", "units": "1", "order": "ascending"})
    return out
