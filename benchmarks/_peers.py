"""Adapters that compute one curvature quantity with one library, ready to be timed.

:func:`prepare` does the untimed set-up (deep copy of the model, ``backpack.extend``, building a
matrix-free operator, a random vector) and returns a zero-argument callable that performs the whole
computation the user would run, forward pass included, and returns the library's raw result.

================  ==========================  ==================================  ==========================
quantity          BackPACK                    curvlinops                          nngeometry (``FIM``)
================  ==========================  ==================================  ==========================
``kfac``          ``KFAC(mc_samples=1)``      ``KFACLinearOperator`` (MC, 1)      –
``kflr``          ``KFLR``                    ``KFACLinearOperator`` (type-2)     ``PMatKFAC`` (exact E_y)
``kfra``          ``KFRA``                    –                                   –
``ekfac``         –                           ``EKFACLinearOperator`` (type-2)    ``PMatEKFAC`` + ``update_diag``
``diag_ggn``      ``DiagGGNExact``            –                                   ``PMatDiag``
``diag_ggn_mc``   ``DiagGGNMC(mc_samples=1)`` –                                   –
``diag_hessian``  ``DiagHessian``             –                                   –
``ggn``           ``SqrtGGNExact`` (factor V  –                                   ``PMatLowRank`` (factor,
                  of G = VVᵀ, before VᵀV)                                         before forming G)
``ggn_matvec``    –                           ``GGNLinearOperator @ v``           ``PMatImplicit.mv``
``hessian_matvec``  –                         ``HessianLinearOperator @ v``       –
================  ==========================  ==================================  ==========================

curvlab is called only through its public API: ``curvlab.compute(model, loss_fn, (x, y),
quantities=[q], mc_samples=1, progress=False)[q]``, and ``curvlab.GGNOperator`` /
``curvlab.HessianOperator`` for the matrix-vector rows.

nngeometry's ``FIM`` divides by N and, for ``variant="regression"``, uses a unit output Hessian: for
``MSELoss(reduction="mean")`` with C outputs its matrices are ``C/2`` times the GGN of the loss
(:func:`nngeometry_scale`). Timings are unaffected; the cross-check rescales.
"""

from __future__ import annotations

import copy
import enum
import math
from collections.abc import Callable

import torch
from _problems import Problem
from torch import nn

__all__ = ["QUANTITIES", "Library", "NotOffered", "TooLarge", "estimate_bytes", "nngeometry_scale", "prepare"]

QUANTITIES = ("kfac", "kflr", "kfra", "ekfac", "diag_ggn", "diag_ggn_mc", "diag_hessian", "ggn",
              "ggn_matvec", "hessian_matvec")


class Library(enum.Enum):
    CURVLAB = "curvlab"
    CURVLAB_COLLECTOR = "curvlab-collector"
    BACKPACK = "BackPACK"
    CURVLINOPS = "curvlinops"
    NNGEOMETRY = "nngeometry"


class NotOffered(Exception):
    """The library has no comparable quantity (shown as ``—``)."""


class TooLarge(Exception):
    """The computation would need more memory than the benchmark allows (shown as ``skip``)."""


_BACKPACK_FIELDS = {
    "kfac": "kfac", "kflr": "kflr", "kfra": "kfra", "diag_ggn": "diag_ggn_exact",
    "diag_ggn_mc": "diag_ggn_mc", "diag_hessian": "diag_h", "ggn": "sqrt_ggn_exact",
}


def _backpack_extension(quantity: str):
    from backpack import extensions as ext

    factories = {
        "kfac": lambda: ext.KFAC(mc_samples=1), "kflr": ext.KFLR, "kfra": ext.KFRA,
        "diag_ggn": ext.DiagGGNExact, "diag_ggn_mc": lambda: ext.DiagGGNMC(mc_samples=1),
        "diag_hessian": ext.DiagHessian, "ggn": ext.SqrtGGNExact,
    }
    return factories[quantity]()


def nngeometry_scale(problem: Problem) -> float:
    """Factor turning nngeometry's ``FIM`` into the GGN of ``problem.loss_fn`` (1 for CE, 2/C for MSE mean)."""
    if problem.is_classification:
        return 1.0
    return 2.0 / problem.num_outputs


def _activation_widths(problem: Problem) -> list[int]:
    """Per-sample output sizes of the elementwise nonlinearities (their residuals drive DiagHessian's cost)."""
    widths: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: widths.append(o[0].numel()))
             for m in problem.model.modules() if isinstance(m, (nn.Sigmoid, nn.Tanh))]
    try:
        with torch.no_grad():
            problem.model(problem.inputs[:1])
    finally:
        for h in hooks:
            h.remove()
    return widths


def estimate_bytes(library: Library, quantity: str, problem: Problem) -> int:
    """Lower bound on the largest intermediate of the cases known to be memory-bound (0 if not estimated).

    * square-root GGN factor V ∈ R^{C·N×P} (BackPACK ``SqrtGGNExact``, nngeometry ``PMatLowRank``);
    * BackPACK ``DiagHessian``: the ± square roots of every nonlinearity's residual, [w_l, N, w_l'] per layer,
      are all backpropagated together to the first layer: ≈ 2 Σ_l w_l · N · w_max entries.
    """
    itemsize = problem.inputs.element_size()
    n, c, p = problem.batch_size, problem.num_outputs, problem.num_params
    if quantity == "ggn" and library in (Library.BACKPACK, Library.NNGEOMETRY):
        return c * n * p * itemsize
    if quantity == "diag_hessian" and library is Library.BACKPACK:
        widths = _activation_widths(problem)
        return (2 * sum(widths) + c) * n * max(widths + [c]) * itemsize
    return 0


def prepare(library: Library, quantity: str, problem: Problem, max_bytes: float = math.inf) -> Callable[[], object]:
    """The timed callable computing ``quantity`` with ``library`` on ``problem``.

    Raises:
        NotOffered: the library has no such quantity.
        TooLarge: :func:`estimate_bytes` exceeds ``max_bytes``.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; choose from {', '.join(QUANTITIES)}")
    needed = estimate_bytes(library, quantity, problem)
    if needed > max_bytes:
        raise TooLarge(f"needs >= {needed / 2**30:.1f} GiB for one intermediate (limit {max_bytes / 2**30:.1f} GiB)")
    builder = {Library.CURVLAB: _curvlab, Library.CURVLAB_COLLECTOR: _curvlab_collector, Library.BACKPACK: _backpack,
               Library.CURVLINOPS: _curvlinops, Library.NNGEOMETRY: _nngeometry}[library]
    return builder(quantity, problem)


def _random_vector(problem: Problem) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(problem.num_params, generator=gen, dtype=problem.inputs.dtype)


# ---------------------------------------------------------------------------------------------- curvlab
def _curvlab(quantity: str, problem: Problem) -> Callable[[], object]:
    import curvlab

    model, loss_fn = copy.deepcopy(problem.model), copy.deepcopy(problem.loss_fn)
    x, y = problem.inputs, problem.targets
    if quantity in ("ggn_matvec", "hessian_matvec"):
        cls = curvlab.GGNOperator if quantity == "ggn_matvec" else curvlab.HessianOperator
        op, v = cls(model, loss_fn, (x, y)), _random_vector(problem)
        return lambda: op @ v

    def run():
        return curvlab.compute(model, loss_fn, (x, y), quantities=[quantity], mc_samples=1, progress=False)[quantity]

    return run


def _curvlab_collector(quantity: str, problem: Problem) -> Callable[[], object]:
    """``curvlab.compute(..., route="collector")``: the autograd collector even where the rule engine applies."""
    import curvlab

    if quantity in ("ggn_matvec", "hessian_matvec", "kfra"):
        raise NotOffered(quantity)
    model, loss_fn = copy.deepcopy(problem.model), copy.deepcopy(problem.loss_fn)
    x, y = problem.inputs, problem.targets

    def run():
        return curvlab.compute(model, loss_fn, (x, y), quantities=[quantity], mc_samples=1, progress=False,
                               route="collector")[quantity]

    return run


# ---------------------------------------------------------------------------------------------- BackPACK
def _backpack(quantity: str, problem: Problem) -> Callable[[], object]:
    if quantity not in _BACKPACK_FIELDS:
        raise NotOffered(quantity)
    from backpack import backpack, extend

    model = extend(copy.deepcopy(problem.model))  # extend() leaves hooks behind: never on the user's model
    loss_fn = extend(copy.deepcopy(problem.loss_fn))
    params, field = [p for p in model.parameters() if p.requires_grad], _BACKPACK_FIELDS[quantity]
    extension = _backpack_extension(quantity)
    x, y = problem.inputs, problem.targets

    def run():
        for p in params:  # drop the previous run's results so they do not count towards this run's memory
            p.grad = None
            if hasattr(p, field):
                delattr(p, field)
        with backpack(extension):
            loss_fn(model(x), y).backward()
        return [getattr(p, field) for p in params]

    return run


# ---------------------------------------------------------------------------------------------- curvlinops
def _curvlinops(quantity: str, problem: Problem) -> Callable[[], object]:
    from curvlinops import (
        EKFACLinearOperator,
        FisherType,
        GGNLinearOperator,
        HessianLinearOperator,
        KFACLinearOperator,
    )

    model, loss_fn = copy.deepcopy(problem.model), copy.deepcopy(problem.loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    data = [(problem.inputs, problem.targets)]
    common = dict(check_deterministic=False, num_data=problem.batch_size)
    if quantity in ("ggn_matvec", "hessian_matvec"):
        cls = GGNLinearOperator if quantity == "ggn_matvec" else HessianLinearOperator
        op, v = cls(model, loss_fn, params, data, **common), _random_vector(problem)
        return lambda: op @ v
    if quantity not in ("kfac", "kflr", "ekfac"):
        raise NotOffered(quantity)
    fisher = FisherType.MC if quantity == "kfac" else FisherType.TYPE2
    cls = EKFACLinearOperator if quantity == "ekfac" else KFACLinearOperator

    def run():
        op = cls(model, loss_fn, params, data, fisher_type=fisher, mc_samples=1, num_per_example_loss_terms=1,
                 **common)
        op.compute_kronecker_factors()
        if quantity == "ekfac":
            op.compute_eigenvalue_correction()
        return op

    return run


# ---------------------------------------------------------------------------------------------- nngeometry
def _nngeometry(quantity: str, problem: Problem) -> Callable[[], object]:
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM
    from nngeometry.object import pspace
    from nngeometry.object.vector import PVector
    from torch.utils.data import DataLoader, TensorDataset

    reps = {"kflr": pspace.PMatKFAC, "ekfac": pspace.PMatEKFAC, "diag_ggn": pspace.PMatDiag,
            "ggn": pspace.PMatLowRank, "ggn_matvec": pspace.PMatImplicit}
    if quantity not in reps:
        raise NotOffered(quantity)
    model = copy.deepcopy(problem.model)
    loader = DataLoader(TensorDataset(problem.inputs, problem.targets), batch_size=problem.batch_size)
    variant = "classif_logits" if problem.is_classification else "regression"

    def fim():
        return FIM(model, loader, reps[quantity], variant=variant)

    if quantity == "ggn_matvec":
        op = fim()
        v = PVector(LayerCollection.from_model(model), vector_repr=_random_vector(problem))
        return lambda: op.mv(v)
    if quantity == "ekfac":
        def run():
            mat = fim()
            mat.update_diag(loader)
            return mat

        return run
    return fim
