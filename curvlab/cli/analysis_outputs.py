"""What ``curvlab analyze`` writes after training: figures, ``curvature.nc`` and ``summary.md``.

Every figure uses the conventions of :mod:`curvlab.analysis.plots.style` (one colour per method, signed maps
centred at 0 with robust symmetric limits, layers labelled by name, type and shape).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import curvlab

__all__ = ["METRIC_DEFINITIONS", "write_curvature", "write_figures", "write_summary"]

METRIC_DEFINITIONS = """\
## Metric definitions

C is the exact reference, A an approximation, both [P, P]; blocks are the partition's diagonal blocks.

| metric | definition | perfect | range |
|---|---|---|---|
| `rel_frobenius_error` | ‖A − C‖_F / ‖C‖_F | 0 | [0, ∞) |
| `rel_spectral_error` | ‖A − C‖₂ / ‖C‖₂ (largest \\|eigenvalue\\|) | 0 | [0, ∞) |
| `cosine_similarity` | ⟨A, C⟩_F / (‖A‖_F ‖C‖_F) | 1 | [−1, 1] |
| `eigenspace_overlap` | ‖V_kᵀW_k‖_F² / k, V_k, W_k the top-k eigenvectors of C and A | 1 | [0, 1] |
| `step_cosine` | cos∠(d̃, d*), d̃ = −(A + λI)⁻¹g, d* = −(C + λI)⁻¹g | 1 | [−1, 1] |
| `decrease_ratio` | [m(0) − m(d̃)] / [m(0) − m(d*)], m(d) = gᵀd + ½dᵀ(C + λI)d | 1 | (−∞, 1] if C + λI ≻ 0 |
| interaction strength | ‖C_ij‖_F / √(‖C_ii‖_F ‖C_jj‖_F) | — | [0, ∞) |
| normalised H̄ | H̄_ij / √(\\|H̄_ii\\| \\|H̄_jj\\|), H̄_ij = u_iᵀC_ij u_j along the gradient u | — | (−∞, ∞) |

Matrix-free runs (above `--dense-limit` parameters) estimate the relative Frobenius error, the cosine and the
interaction strengths with Rademacher probes per block (Hutchinson; ± one standard error), the spectral error
and the eigenspace overlap by Lanczos (± the bounds from the residuals), and d* by CG preconditioned with an
approximation (MINRES for a Hessian; ± the bound from the residual). Values are shown as value ± error bar.
"""


def _fmt(args) -> tuple[str, ...]:
    return tuple(args.format) if not isinstance(args.format, str) else (args.format,)


def write_figures(out: Path, ds, measurements, when, args, labels: dict[str, str]) -> list[str]:
    """Make and save every figure of the run; returns the file names."""
    plots = curvlab.analysis.plots
    first, last = measurements[0], measurements[-1]
    exact = last.exact
    part = exact.partition
    figures = {}
    if "interaction" in last.quality:
        errors = last.quality.get("interaction_error")
        figures["interactions"] = plots.plot_block_norms(
            last.quality.interaction, interaction=True, labels=labels, errors=errors,
            title=f"{args.reference}: interaction strength (step {when[-1]})")
    if last.quality.attrs.get("method") == "dense":
        figures["block_norms"] = plots.plot_block_norms(
            exact, part, labels=labels, title=f"{args.reference}: log₁₀ block norms (step {when[-1]})")
    spectra = {f"{args.reference} (exact)": last.quality.eigenvalues}
    if "approximation_eigenvalues" in last.quality:
        for name in last.quality.approximation_eigenvalues.approximation.values:
            spectra[str(name)] = last.quality.approximation_eigenvalues.sel(approximation=name)
    figures["spectra"] = plots.plot_spectrum(
        spectra, title=f"exact {args.reference} and its approximations, step {when[-1]}"
        + ("" if last.quality.attrs.get("method") == "dense" else f"\n(exact: top {args.top_k} by Lanczos)"))
    if len(measurements) > 1 and last.quality.attrs.get("method") == "dense":
        figures["spectrum_training"] = plots.plot_spectrum(
            {f"{args.reference}, step {w}": m.quality.eigenvalues for w, m in zip(when, measurements, strict=True)},
            title=f"exact {args.reference} spectrum across training")
    approx = {n: r for n, r in last.curvature.items() if n != args.reference}
    if approx:
        smallest = min(part.groups, key=lambda g: g.size).name if part.num_groups else None
        group = part.group_names[-1] if part.groups[-1].size <= 400 else smallest
        figures["block_comparison"] = plots.plot_block_comparison(exact, approx, part, group, labels=labels,
                                                                  max_entries=200)
    if "step_quality" in ds:
        figures["damping"] = plots.plot_damping_curves(ds)
    if "summary_hbar" in last.quality:
        for tag, m, w in (("init", first, when[0]), ("final", last, when[-1])):
            figures[f"summary_{tag}"] = plots.plot_summary(
                m.quality.summary_hbar, labels=labels,
                title=f"GroupedNewton summary of the {args.reference}, step {w}")
    if len(when) > 1 and ("step_quality" in ds or approx):
        figures["quality_curves"] = plots.plot_metric_curves(
            ds, ["rel_frobenius_error", "eigenspace_overlap", "step_cosine"])
    if len(when) > 1 and "train_loss" in ds:
        figures["training"] = plots.plot_training(ds, title=f"{args.model} on {ds.attrs.get('dataset', args.dataset)}")
    names = []
    for name, fig in figures.items():
        for suffix in _fmt(args):
            plots.save_figure(fig, out / f"{name}.{suffix}")
            names.append(f"{name}.{suffix}")
    return names


def write_curvature(out: Path, last, attrs, step: int, args) -> str | None:
    """``curvature.nc`` as ``--save-curvature`` and ``--storage`` ask; returns its name (None if not written)."""
    if args.save_curvature == "none":
        return None
    keep = {n: r for n, r in last.curvature.items()
            if args.save_curvature == "all" or n != args.reference}
    if not keep:
        return None
    full = last.curvature
    last.curvature = keep
    try:
        tree = last.curvature_tree()
    finally:
        last.curvature = full
    tree.attrs.update(attrs, step=int(step), storage=args.storage)
    tree = curvlab.analysis.netcdf.compact(tree, float32=args.storage == "float32")
    curvlab.analysis.netcdf.write(tree, out / "curvature.nc")
    return "curvature.nc"


def write_summary(out: Path, ds, files: list[str], seconds: float, args, size: int) -> None:
    """``summary.md``: the setup, the best approximation and interactions, the metric definitions, the files."""
    method = ds.attrs.get("method", "dense")
    errors = ""
    if "matrix_quality_error" in ds:
        worst = float(np.nanmax(ds.matrix_quality_error.sel(metric="rel_frobenius_error").values))
        errors = (f" Matrix-free: {ds.attrs.get('num_probes')} probes per block; the largest standard error of a "
                  f"relative Frobenius error is {worst:.2g}.")
    hidden = f" (hidden {','.join(map(str, args.hidden))}, {args.activation})" if args.model in ("mlp", "autoencoder") \
        else ""
    lines = [
        "# curvlab analyze", "",
        f"{args.model} on {args.data or args.dataset}{hidden}, P = {size:,} parameters, "
        f"{args.steps} SGD steps (lr {args.lr}, momentum {args.momentum}, batch {args.batch_size}), "
        f"measured at steps {', '.join(str(int(s)) for s in ds.step.values)} on {args.samples} training "
        f"samples against the exact {args.reference}; partition {args.partition}; {method} metrics"
        f" (--dense-limit {args.dense_limit}).{errors} {seconds:.0f} s.", "",
        curvlab.analysis.summarize(ds),
        METRIC_DEFINITIONS,
        "## Files", "",
        "- `quality.nc`: metrics along step (`curvlab show quality.nc`)",
        *[f"- `{name}`" for name in files],
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def group_labels(partition, model) -> dict[str, str]:
    """Display labels of the partition's groups (qualified name, module type, shapes)."""
    return curvlab.analysis.plots.style.group_labels_of(partition, model)


def labels_json(labels: dict[str, str]) -> str:
    return json.dumps(labels)
