"""Float64 cross-check: do curvlab and the peers compute the same matrices on small problems?

Every available implementation (:mod:`_peers`) is turned into one comparable form and compared with a
reference by the relative Frobenius error ‖M − M_ref‖ / ‖M_ref‖:

* ``autograd`` references, brute force with ``torch.func`` on the flat parameter vector θ ∈ R^P:
  H = ∇²_θ L, G = Jᵀ (∂²L/∂f²) J with J = ∂f/∂θ ∈ R^{NC×P}. They check ``diag_ggn``, ``diag_hessian``,
  ``ggn`` (dense G), ``ggn_matvec`` (G v) and ``hessian_matvec`` (H v) on the smoke-size batch.
* On a single datum (N = 1) KFLR, KFRA and EKFAC (type-2) are exact for a fully-connected layer:
  G_W = (Jᵀ H J) ⊗ a aᵀ has one term. Their per-parameter diagonal blocks are checked against the blocks
  of the autograd G for every ``Linear`` parameter (weight sharing makes the convolutions inexact).
* On the batch, Kronecker quantities have no brute-force truth: the libraries are compared with each other
  (``kflr`` with BackPACK and curvlinops, ``kfra`` with BackPACK, ``ekfac`` with nngeometry and curvlinops),
  strictly on ``Linear`` blocks; convolution blocks are reported for information with their norm ratios,
  since the libraries scale KFAC for weight sharing differently (e.g. by the number of output positions).

MC quantities (``kfac``, ``diag_ggn_mc``) are random and not compared.

Example:
    >>> from _problems import build_problem
    >>> rows = cross_check(build_problem("a", quick=True, dtype=torch.float64), [Library.BACKPACK])
    >>> all(r.ok for r in rows), sorted({r.quantity for r in rows})[:3]
    (True, ['diag_ggn', 'diag_hessian', 'ggn'])
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from _peers import Library, NotOffered, nngeometry_scale, prepare
from _problems import Problem
from torch import nn
from torch.func import functional_call, hessian, jacrev

__all__ = ["CheckRow", "autograd_references", "cross_check"]

TOLERANCE = 1e-6
_AUTOGRAD_BATCH = ("diag_ggn", "diag_hessian", "ggn", "ggn_matvec", "hessian_matvec")
_EXACT_ON_ONE = ("kflr", "kfra", "ekfac")
#: Kronecker quantities on the batch: compared with these libraries (no brute-force truth exists)
_PEER_REFERENCES = {
    "kflr": (Library.BACKPACK, Library.CURVLINOPS),
    "kfra": (Library.BACKPACK,),
    "ekfac": (Library.NNGEOMETRY, Library.CURVLINOPS),
}
#: EKFAC's eigenbasis differs when weight and bias share one Kronecker factor ("augmented" [W b]) or not
_JOINT_WEIGHT_BIAS = {Library.CURVLAB, Library.CURVLAB_COLLECTOR, Library.NNGEOMETRY}


@dataclass(frozen=True)
class CheckRow:
    """One comparison: ``library``'s ``quantity`` against ``reference`` on ``regime`` (``batch`` or ``N=1``)."""

    model: str
    regime: str
    quantity: str
    library: str
    reference: str
    rel_err: float | None
    ok: bool
    note: str = ""
    informational: bool = False  #: a known convention difference may explain a mismatch: not a failure


def autograd_references(problem: Problem) -> dict[str, torch.Tensor]:
    """Dense ``hessian`` and ``ggn`` [P, P] of the mean loss on the batch, by ``torch.func``."""
    model = copy.deepcopy(problem.model)
    named = [(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for _, p in named]
    theta = torch.cat([p.flatten() for _, p in named])
    x, y = problem.inputs, problem.targets

    def outputs(flat):
        chunks = flat.split([s.numel() for s in shapes])
        params = {n: c.view(s) for (n, _), c, s in zip(named, chunks, shapes, strict=True)}
        return functional_call(model, params, (x,))

    def loss(flat):
        return problem.loss_fn(outputs(flat), y)

    f = outputs(theta).detach()
    jac = jacrev(outputs)(theta).reshape(f.numel(), -1)                       # [N·C, P]
    out_hessian = hessian(lambda g: problem.loss_fn(g, y))(f).reshape(f.numel(), f.numel())
    return {"hessian": hessian(loss)(theta), "ggn": jac.T @ out_hessian @ jac}


def _slices(problem: Problem) -> list[tuple[str, slice, nn.Module]]:
    """``(name, slice in θ, owning module)`` per trainable parameter, in the reference ordering."""
    owners = {id(p): m for m in problem.model.modules() for p in m.parameters(recurse=False)}
    out, offset = [], 0
    for name, p in problem.model.named_parameters():
        if p.requires_grad:
            out.append((name, slice(offset, offset + p.numel()), owners[id(p)]))
            offset += p.numel()
    return out


def _kron_blocks(factors_per_param: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """BackPACK's ``[G, A]`` (weights, W flattened row-major) or ``[G]`` (biases) → G ⊗ A or G."""
    return [torch.kron(f[0].contiguous(), f[1].contiguous()) if len(f) == 2 else f[0] for f in factors_per_param]


def canonical(library: Library, quantity: str, result, problem: Problem) -> torch.Tensor | list[torch.Tensor]:
    """``result`` as a [P] vector (diagonals, matvecs), a [P, P] matrix (``ggn``, ``hessian``) or a list of
    per-parameter diagonal blocks (Kronecker quantities)."""
    slices = [s for _, s, _ in _slices(problem)]
    kron = quantity in ("kfac", "kflr", "kfra", "ekfac")
    if library in (Library.CURVLAB, Library.CURVLAB_COLLECTOR):
        if quantity.endswith("matvec"):
            return result
        if kron:
            dense = result.dense()
            return [dense[s, s] for s in slices]
        return result.diagonal() if quantity.startswith("diag") else result.dense()
    if library is Library.BACKPACK:
        if kron:
            return _kron_blocks(result)
        if quantity == "ggn":  # factors [C, N, *shape] → V [C·N, P], G = VᵀV
            v = torch.cat([r.reshape(r.shape[0] * r.shape[1], -1) for r in result], dim=1)
            return v.T @ v
        return torch.cat([r.flatten() for r in result])
    if library is Library.CURVLINOPS:
        if quantity.endswith("matvec"):
            return result
        dense = result @ torch.eye(problem.num_params, dtype=problem.inputs.dtype)
        return [dense[s, s] for s in slices]
    scale = nngeometry_scale(problem)
    if quantity == "ggn_matvec":
        return result.to_torch() * scale
    if quantity == "diag_ggn":
        return result.get_diag() * scale
    dense = result.to_torch() * scale
    return dense if quantity == "ggn" else [dense[s, s] for s in slices]


def _rel_err(value, ref) -> float:
    if isinstance(ref, list):
        value, ref = torch.cat([v.flatten() for v in value]), torch.cat([r.flatten() for r in ref])
    return float((value - ref).norm() / ref.norm().clamp_min(torch.finfo(ref.dtype).tiny))


def _autograd_truth(quantity: str, problem: Problem, refs: dict[str, torch.Tensor], vector: torch.Tensor):
    if quantity == "diag_ggn":
        return refs["ggn"].diagonal()
    if quantity == "diag_hessian":
        return refs["hessian"].diagonal()
    if quantity == "ggn_matvec":
        return refs["ggn"] @ vector
    if quantity == "hessian_matvec":
        return refs["hessian"] @ vector
    if quantity == "ggn":
        return refs["ggn"]
    return [refs["ggn"][s, s] for _, s, m in _slices(problem) if isinstance(m, nn.Linear)]


def _linear_blocks(blocks: list[torch.Tensor], problem: Problem) -> list[torch.Tensor]:
    return [b for b, (_, _, m) in zip(blocks, _slices(problem), strict=True) if isinstance(m, nn.Linear)]


def _run(library: Library, quantity: str, problem: Problem):
    return canonical(library, quantity, prepare(library, quantity, problem)(), problem)


def cross_check(problem: Problem, libraries: Sequence[Library] = tuple(Library)) -> list[CheckRow]:
    """Compare every available implementation in ``libraries`` (see the module docstring); float64 advised.

    The default dtype is set to the problem's while the libraries run: nngeometry (``FIM`` for
    classification) and BackPACK (``KFRA``) create helper tensors in the default dtype.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(problem.inputs.dtype)
    try:
        return _cross_check(problem, libraries)
    finally:
        torch.set_default_dtype(previous)


def _cross_check(problem: Problem, libraries: Sequence[Library]) -> list[CheckRow]:
    from _peers import _random_vector

    rows: list[CheckRow] = []
    vector = _random_vector(problem)

    def record(regime, quantity, library, reference, compute_value, ref_value, note="", informational=False):
        try:
            value = compute_value()
        except NotOffered:
            return
        except Exception as err:  # a failing library is a finding, not a crash of the check
            rows.append(CheckRow(problem.key, regime, quantity, library.value, reference, None, False,
                                 f"{type(err).__name__}: {err}"[:300], informational))
            return
        err = _rel_err(value, ref_value)
        rows.append(CheckRow(problem.key, regime, quantity, library.value, reference, err, err <= TOLERANCE, note,
                             informational))

    refs = autograd_references(problem)
    for quantity in _AUTOGRAD_BATCH:
        truth = _autograd_truth(quantity, problem, refs, vector)
        for lib in libraries:
            record("batch", quantity, lib, "autograd", lambda lib=lib, q=quantity: _run(lib, q, problem), truth)

    single = dataclasses.replace(problem, inputs=problem.inputs[:1], targets=problem.targets[:1])
    single_refs = autograd_references(single)
    for quantity in _EXACT_ON_ONE:
        truth = _autograd_truth(quantity, single, single_refs, vector)
        for lib in libraries:
            record("N=1", quantity, lib, "autograd",
                   lambda lib=lib, q=quantity: _linear_blocks(_run(lib, q, single), single), truth)

    results: dict[tuple[str, Library], list[torch.Tensor] | Exception] = {}

    def blocks(lib: Library, quantity: str):
        if (quantity, lib) not in results:
            try:
                results[quantity, lib] = _run(lib, quantity, problem)
            except Exception as err:  # noqa: BLE001 - NotOffered included: checked below
                results[quantity, lib] = err
        value = results[quantity, lib]
        if isinstance(value, Exception):
            raise value
        return value

    done: set[frozenset] = set()
    for quantity, ref_libs in _PEER_REFERENCES.items():
        for ref_lib in (r for r in ref_libs if r in libraries):
            try:
                linear, conv = _split_blocks(blocks(ref_lib, quantity), problem)
            except Exception:  # noqa: BLE001 - the reference's own failure shows in the N=1 rows
                continue
            for lib in libraries:
                pair = frozenset((lib, ref_lib, quantity))
                if lib is ref_lib or pair in done:
                    continue
                done.add(pair)
                differ = quantity == "ekfac" and ((lib in _JOINT_WEIGHT_BIAS) != (ref_lib in _JOINT_WEIGHT_BIAS))
                record("batch", quantity, lib, ref_lib.value,
                       lambda lib=lib, q=quantity: _split_blocks(blocks(lib, q), problem)[0], linear,
                       "Linear-layer blocks" + ("; bias conventions differ (joint vs separate eigenbasis)"
                                                if differ else ""), informational=differ)
                if conv:
                    record("batch-conv", quantity, lib, ref_lib.value,
                           lambda lib=lib, q=quantity: _split_blocks(blocks(lib, q), problem)[1], conv,
                           "conv blocks (conventions for weight sharing differ); norm ratio per parameter "
                           + _norm_ratios(lambda lib=lib, q=quantity: _split_blocks(blocks(lib, q), problem)[1], conv),
                           informational=True)
    return rows


def _norm_ratios(compute_value, ref: list[torch.Tensor]) -> str:
    try:
        value = compute_value()
    except Exception:  # noqa: BLE001 - the comparison row reports the error
        return "n/a"
    return ", ".join(f"x{float(v.norm() / r.norm()):.3g}" for v, r in zip(value, ref, strict=True))


def _split_blocks(blocks: list[torch.Tensor], problem: Problem) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-parameter blocks of ``Linear`` layers and of all other (convolution) layers."""
    kinds = [isinstance(m, nn.Linear) for _, _, m in _slices(problem)]
    return [b for b, k in zip(blocks, kinds, strict=True) if k], [b for b, k in zip(blocks, kinds, strict=True) if not k]
