"""KFAC: Kronecker-factored natural-gradient / Gauss–Newton steps (Martens & Grosse 2015; Botev et al. 2017).

Per layer l the curvature block is approximated by G_l ⊗ A_l (:class:`curvlab.repr.KroneckerFactors`,
augmented-bias convention), estimated by the statistics engine (:func:`curvlab.compute`) as one of

* ``"kfac"`` – Fisher with sampled targets (Martens & Grosse), ``"kflr"`` – exact GGN factor
  backpropagation, ``"kfra"`` – recursive approximation (Botev et al.), ``"ekfac"`` – eigenvalue-corrected
  KFLR (George et al. 2018).

Every ``stats_period`` steps the factors of the current batch are blended into an exponential moving
average, F ← ε F + (1 − ε) F_batch (ε = ``ema_decay``, 0.95; EKFAC uses the latest fit, since its
eigenvalues belong to a basis). The averages are kept in float64 whatever the model's dtype, and every
``inverse_period`` steps (20) their eigendecompositions are refreshed in float64 with eigenvalues
clamped at 0 (:mod:`curvlab.optim.kronecker_solve`; a failed decomposition is a rejected step). The
direction is

    d_l = ((A_l + π_l √γ I) ⊗ (G_l + √γ/π_l I))⁻¹ g_l,     π_l = sqrt((tr A_l / dim A_l) / (tr G_l / dim G_l))

(factored Tikhonov damping γ, Martens & Grosse §6.3: the factor with the larger mean eigenvalue gets the
larger share; ``damping_mode="exact"``: (G_l ⊗ A_l + γI)⁻¹ g_l through the factors' eigendecompositions;
EKFAC always uses the exact (S + γ)⁻¹ in its eigenbasis). The step θ ← θ + v, v ← μ v − η α d
(momentum μ), with α from ``step_rescaling``:

* ``"quadratic"`` (default; Botev): α = min(1, gᵀd / (dᵀGd + γ‖d‖²)) with G the exact GGN of the batch
  (one JVP, :meth:`~curvlab.optim.gauss_newton.GaussNewtonQuadratic.curvature_along`);
* ``"quadratic-momentum"`` (Martens & Grosse 2015, §7): the step α(−d) + μ δ_prev with α and the momentum μ
  minimising the same damped model jointly (:func:`~curvlab.optim.step_scaling.quadratic_momentum_step`;
  two J v per step; η scales α; the ``momentum`` hyperparameter is not used). On the MNIST MLP of the
  optimiser benchmark it is the setting ahead of tuned Adam at every checkpoint;
* ``"kl-clip"`` (Martens & Grosse implementations): α = min(1, sqrt(κ / (η² gᵀd))), κ = ``kl_clip`` (1e-3).
  Not the default: on full-batch regressions it caps the step far below the quadratic model's optimum
  (tiny problems of ``tests/optim``: 0.68 of the initial loss after 8 steps, against 1e-12 with
  ``"quadratic"``);
* ``"none"``: α = 1.

With ``adaptive_damping`` (default) γ follows the Levenberg–Marquardt rule on the reduction ratio
r = (L(θ + v) − L(θ)) / (gᵀv + ½ vᵀGv) every ``damping_period`` (5) steps: r < ¼ → γ ← 1.5γ,
r > ¾ → γ ← ⅔γ, within [``damping_min``, ``damping_max``] (one JVP and one extra forward pass then).
With factored damping the damped factor inverses are formed explicitly at each inverse update (float64
Cholesky, :class:`~curvlab.optim.kronecker_solve.FactoredInverse`), so an adapted γ reaches the
preconditioner at the next inverse update; the step rescaling uses the current γ at once.

Under ``torch.distributed`` (the model may be wrapped in ``DistributedDataParallel``) the loss, the
gradient and the quadratic-model terms are averaged over the ranks (weighted by their loss normalisers)
and the engine sums the factors, so every rank takes the identical step.

The model must be an ``nn.Sequential`` the engine supports. A layer without a Kronecker rule gets its
dense block, solved with damping γ. Cost per statistics update: one engine pass (≈ 1–2 backward passes;
``ekfac`` two passes, on a float64 copy of a float32 model); per inverse update: eigendecompositions of
every A_l, G_l; per step: one forward/backward and O(O²I + OI²) per layer, plus one JVP for the
quadratic rescaling.

References:
    J. Martens, R. Grosse. Optimizing neural networks with Kronecker-factored approximate curvature. ICML 2015.
    A. Botev, H. Ritter, D. Barber. Practical Gauss-Newton optimisation for deep learning. ICML 2017.
"""

from __future__ import annotations

import copy
import enum
import math

import torch
from torch import nn

from curvlab.errors import NonFiniteError
from curvlab.optim.base import CurvatureOptimizer, all_finite
from curvlab.optim.damping import reduction_ratio, trust_region_damping
from curvlab.optim.distributed import is_distributed, unwrap_data_parallel, weighted_mean
from curvlab.optim.gauss_newton import GaussNewtonQuadratic
from curvlab.optim.hyperparameters import check_bool, check_choice, check_int, check_range
from curvlab.optim.kronecker_solve import FactoredInverse, KroneckerSolveError, LayerSolver
from curvlab.optim.step_scaling import kl_clip_scale, quadratic_momentum_step, quadratic_step_scale
from curvlab.repr import KroneckerFactors

__all__ = ["KFAC", "KroneckerCurvatureKind", "KroneckerDamping", "StepRescaling"]


class KroneckerCurvatureKind(enum.Enum):
    """Which Kronecker-factored curvature the engine estimates."""

    KFAC = "kfac"
    KFLR = "kflr"
    KFRA = "kfra"
    EKFAC = "ekfac"


class KroneckerDamping(enum.Enum):
    """How γ enters the Kronecker-factored solve."""

    FACTORED = "factored"  # (G + π√γ I) ⊗ (A + √γ/π I), Martens & Grosse §6.3
    EXACT = "exact"  # G ⊗ A + γI, through the factors' eigendecompositions


class StepRescaling(enum.Enum):
    """How the preconditioned direction is rescaled."""

    QUADRATIC = "quadratic"
    QUADRATIC_MOMENTUM = "quadratic-momentum"
    KL_CLIP = "kl-clip"
    NONE = "none"


class KFAC(CurvatureOptimizer):
    """Kronecker-factored optimiser over the statistics engine (see the module docstring).

    Args:
        model, loss_fn: an ``nn.Sequential`` supported by :func:`curvlab.compute` (or one wrapped in
            ``DistributedDataParallel``) and a supported loss.
        curvature: ``"kfac"`` (default: one sampled target per sample, Martens & Grosse; cheapest with many
            outputs), ``"kflr"`` (exact factors: C backpropagated columns per sample), ``"kfra"`` or ``"ekfac"``.
        lr: η > 0.
        damping: initial γ > 0 (``param_groups[0]["damping"]``; adapted by the reduction ratio when
            ``adaptive_damping``; ×1.5 after a rejected step).
        damping_mode: ``"factored"`` (π-corrected factored Tikhonov) or ``"exact"``.
        ema_decay: ε ∈ [0, 1) for the factors (0: the current batch only).
        stats_period, inverse_period: update periods (steps) of the statistics and of the inverses.
        step_rescaling: ``"quadratic"``, ``"quadratic-momentum"``, ``"kl-clip"`` or ``"none"``; kl_clip: κ > 0.
        adaptive_damping: Levenberg–Marquardt adaptation of γ every ``damping_period`` steps;
        damping_min, damping_max: its bounds.
        rescale_period: measure the quadratic α every ``rescale_period`` steps and reuse it in between
            (amortises its JVP; 1 = every step).
        momentum: μ ∈ [0, 1).
        mc_samples: sampled targets per sample for ``"kfac"``; seed: seed of that sampling.

    ``statistics()`` keys: ``loss``, ``damping``, ``step_scale`` (α), ``pi`` [layers] (NaN for EKFAC, exact
    damping and dense blocks), ``stats_updated``, ``inverses_updated``, ``direction_norm``,
    ``reduction_ratio`` (NaN when not measured), ``rejected``, ``rolled_back``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> x = torch.randn(64, 2); y = x[:, :1] * x[:, 1:]
        >>> opt = KFAC(model, nn.MSELoss())
        >>> losses = [float(opt.step(x, y)) for _ in range(20)]
        >>> losses[-1] < 0.5 * losses[0]
        True
    """

    has_damping = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        *,
        curvature: KroneckerCurvatureKind | str = KroneckerCurvatureKind.KFAC,
        lr: float = 1.0,
        damping: float = 1e-2,
        damping_mode: KroneckerDamping | str = KroneckerDamping.FACTORED,
        ema_decay: float = 0.95,
        stats_period: int = 1,
        inverse_period: int = 20,
        step_rescaling: StepRescaling | str = StepRescaling.QUADRATIC,
        kl_clip: float = 1e-3,
        adaptive_damping: bool = True,
        damping_period: int = 5,
        damping_min: float = 1e-8,
        damping_max: float = 1e4,
        rescale_period: int = 1,
        momentum: float = 0.0,
        mc_samples: int = 1,
        seed: int = 0,
    ) -> None:
        defaults = dict(
            curvature=check_choice("curvature", curvature, KroneckerCurvatureKind).value,
            lr=check_range("lr", lr, low=0.0, low_inclusive=False),
            damping=check_range("damping", damping, low=0.0, low_inclusive=False),
            damping_mode=check_choice("damping_mode", damping_mode, KroneckerDamping).value,
            ema_decay=check_range("ema_decay", ema_decay, low=0.0, high=1.0, high_inclusive=False),
            stats_period=check_int("stats_period", stats_period),
            inverse_period=check_int("inverse_period", inverse_period),
            step_rescaling=check_choice("step_rescaling", step_rescaling, StepRescaling).value,
            kl_clip=check_range("kl_clip", kl_clip, low=0.0, low_inclusive=False),
            adaptive_damping=check_bool("adaptive_damping", adaptive_damping),
            damping_period=check_int("damping_period", damping_period),
            damping_min=check_range("damping_min", damping_min, low=0.0),
            damping_max=check_range("damping_max", damping_max, low=0.0, low_inclusive=False),
            rescale_period=check_int("rescale_period", rescale_period),
            momentum=check_range("momentum", momentum, low=0.0, high=1.0, high_inclusive=False),
            mc_samples=check_int("mc_samples", mc_samples),
        )
        model = unwrap_data_parallel(model)
        super().__init__(model, loss_fn, defaults)
        from curvlab.partition import Partition

        self.partition = Partition.from_model(model, "layer")
        self._slices = [self._as_slice(g.indices) for g in self.partition.groups]  # contiguous → no gather
        ends = [0] + [w.stop for w in self._slices if isinstance(w, slice)]
        self._tiled = (all(isinstance(w, slice) for w in self._slices) and ends[-1] == sum(p.numel() for p in self.params)
                       and all(w.start == e for w, e in zip(self._slices, ends, strict=False)))
        self._generator = torch.Generator().manual_seed(check_int("seed", seed, low=0))
        self._solvers: dict | None = None  # layer -> LayerSolver; rebuilt lazily from "inverse_factors"

    @staticmethod
    def _as_slice(indices: torch.Tensor):
        start = int(indices[0]) if len(indices) else 0
        if torch.equal(indices, torch.arange(start, start + len(indices), device=indices.device)):
            return slice(start, start + len(indices))
        return indices

    # ------------------------------------------------------------------ state
    def state_dict(self):
        self.global_state["generator"] = self._generator.get_state()
        return super().state_dict()

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        if "generator" in self.global_state:
            self._generator.set_state(self.global_state["generator"])
        self._solvers = None  # rebuilt from the saved factors at the next step

    def _check_loaded_state(self, state: dict) -> None:
        """Every saved factor must fit this model's layers (called by ``load_state_dict``)."""
        expected = {g.name: g for g in self.partition.groups}
        for key in ("factors", "inverse_factors"):
            factors = state.get(key)
            if factors is None:
                continue
            if set(factors) != set(expected):
                raise ValueError(
                    f"KFAC.load_state_dict: the saved {key} are for layers {sorted(factors)}, this model has "
                    f"{sorted(expected)}"
                )
            for layer, entry in factors.items():
                size = len(expected[layer].indices)
                if "block" in entry:
                    got = int(entry["block"].shape[0])
                else:
                    got = int(entry["G"].shape[0]) * int(entry["A"].shape[0])  # augmented: O·I'
                if got != size:
                    raise ValueError(
                        f"KFAC.load_state_dict: the saved {key} of layer {layer!r} cover {got} parameters, this "
                        f"model's layer has {size}"
                    )
        super()._check_loaded_state(state)

    def _after_roll_back(self) -> None:
        self._solvers = None  # rebuilt from the restored inverse factors

    def _raise_damping(self) -> str:
        group = self._group()
        group["damping"] = min(group["damping"] * 1.5, max(group["damping_max"], group["damping"]))
        self.global_state.pop("momentum_buffer", None)
        self.global_state.pop("last_update", None)
        self.global_state.pop("inverse_damping", None)
        self._solvers = None  # the raised damping takes effect at once
        return f"damping raised to {group['damping']:.3g}"

    # ------------------------------------------------------------------ statistics and inverses
    def _batch_factors(self, group, inputs, targets) -> dict[str, dict[str, torch.Tensor]]:
        """This batch's factors, in float64. When the engine fails in float32 (EKFAC's eigendecomposition of
        ill-conditioned factors), the batch is measured again on a float64 copy of the model."""
        from curvlab.engine import compute

        name = group["curvature"]

        def measure(model, inputs, targets):
            return compute(model, self.loss_fn, (inputs, targets), [name], partition="layer",
                           mc_samples=group["mc_samples"], generator=self._generator, progress=False)

        def collect(result) -> dict[str, dict[str, torch.Tensor]]:
            factors = {}
            for layer, block in result[name].layers.items():
                if not isinstance(block, KroneckerFactors):  # a dense block, or per-group factors (as one block)
                    dense = block if isinstance(block, torch.Tensor) else block.dense()
                    factors[layer] = {"block": dense.detach().to(torch.float64)}
                    continue
                entry = {"A": block.A.detach().to(torch.float64), "G": block.G.detach().to(torch.float64)}
                if block.scaling is not None:
                    entry["scaling"] = block.scaling.detach().to(torch.float64)
                    # the basis the scaling lives in, exactly as the engine computed it
                    q_a, q_g = block.eigenbasis or (torch.linalg.eigh(f.detach()).eigenvectors for f in (block.A, block.G))
                    entry["q_a"], entry["q_g"] = q_a.detach().to(torch.float64), q_g.detach().to(torch.float64)
                entry["bias"] = torch.tensor(block.bias)
                if not all_finite(list(entry.values())):
                    raise NonFiniteError(f"{name}: layer {layer!r}: non-finite factors or eigenbasis")
                factors[layer] = entry
            return factors

        try:
            return collect(measure(self.model, inputs, targets))
        except (torch.linalg.LinAlgError, NonFiniteError):
            if not inputs.is_floating_point() or inputs.dtype == torch.float64:
                raise
            targets = targets.double() if targets.is_floating_point() else targets
            return collect(measure(copy.deepcopy(self.model).double(), inputs.double(), targets))

    def _blend(self, group, old, new):
        decay = 0.0 if group["curvature"] == KroneckerCurvatureKind.EKFAC.value else group["ema_decay"]
        if old is None or decay == 0.0:
            return new
        return {
            layer: {k: (v if k == "bias" else decay * old[layer][k] + (1 - decay) * v) for k, v in entry.items()}
            for layer, entry in new.items()
        }

    def _build_solvers(self, inverse_factors, damping: float, dtype: torch.dtype) -> dict:
        """One solver per layer: explicit damped inverses (factored damping, γ of this inverse update) or
        float64 eigendecompositions (exact damping, EKFAC, dense blocks)."""
        factored = self._group()["damping_mode"] == KroneckerDamping.FACTORED.value
        solvers = {}
        for layer, entry in inverse_factors.items():
            if "block" in entry:
                solvers[layer] = LayerSolver.from_block(entry["block"])
                continue
            layout = KroneckerFactors(entry["A"], entry["G"], bias=bool(entry["bias"]), bias_convention="augmented",
                                      quantity=self._group()["curvature"], validate=False)
            if factored and "scaling" not in entry:
                solvers[layer] = FactoredInverse.build(layout, damping, dtype)
                continue
            basis = (entry["q_a"], entry["q_g"]) if "scaling" in entry else None
            solvers[layer] = LayerSolver.from_factors(layout, entry.get("scaling"), basis)
        return solvers

    def _precondition(self, solvers, grad: torch.Tensor, damping: float, mode: str) -> tuple[torch.Tensor, list[float]]:
        parts, pis = [], []
        for group, where in zip(self.partition.groups, self._slices, strict=True):
            solver = solvers[group.name]
            parts.append(solver.solve(grad[where], damping, mode).to(grad.dtype))
            pis.append(math.nan if mode == "exact" else float(solver.pi))
        if self._tiled:  # contiguous groups in order, covering every parameter
            return torch.cat(parts), pis
        direction = torch.empty_like(grad)
        for where, part in zip(self._slices, parts, strict=True):
            direction[where] = part
        return direction, pis

    # ------------------------------------------------------------------ step
    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self._group()
        state = self.global_state
        step = state["step"] + 1
        rescaling = StepRescaling(group["step_rescaling"])
        rescale_due = "step_scale" not in state or (step - 1) % group["rescale_period"] == 0
        measure = group["adaptive_damping"] and (step - 1) % group["damping_period"] == 0
        joint = rescaling is StepRescaling.QUADRATIC_MOMENTUM
        if (rescaling is StepRescaling.QUADRATIC and rescale_due) or joint or measure:  # the quadratic model
            quad = GaussNewtonQuadratic(self.model, self.loss_fn, inputs, targets)
            loss, grad, outputs = quad.loss, quad.gradient, quad.outputs
        else:  # a plain gradient step's forward/backward
            quad = None
            outputs, loss, grads = self._forward_backward(inputs, targets)
            loss, grad = loss.detach(), torch.cat([g.reshape(-1) for g in grads])
        weight = self.adapter.normalizer(outputs)
        if is_distributed():  # the full-batch loss and gradient on every rank: identical steps
            loss, grad = weighted_mean([loss, grad], weight)
        if not all_finite([loss, grad]):
            return self._reject("loss" if not all_finite(loss) else "gradient", loss)
        # Everything below is computed into locals and committed only once the step is accepted:
        # a rejected or interrupted step leaves the curvature state as it was.
        first = "factors" not in state
        stats_due = first or (step - 1) % group["stats_period"] == 0
        inverse_due = first or (step - 1) % group["inverse_period"] == 0
        factors, inverse_factors, solvers = state.get("factors"), state.get("inverse_factors"), self._solvers
        damping, mode = group["damping"], group["damping_mode"]
        try:
            if stats_due:
                factors = self._blend(group, factors, self._batch_factors(group, inputs, targets))
            if inverse_due:
                inverse_factors = factors
            # a rebuild after load_state_dict uses the damping of the last inverse update (identical resumption);
            # after a raised damping (which drops "inverse_damping") it uses the current one
            built_with = damping if inverse_due else state.get("inverse_damping", damping)
            if inverse_due or solvers is None:
                solvers = self._build_solvers(inverse_factors, built_with, grad.dtype)
            direction, pis = self._precondition(solvers, grad, damping, mode)
        except (KroneckerSolveError, NonFiniteError, torch.linalg.LinAlgError, ValueError, FloatingPointError):
            return self._reject("curvature (its factors or their eigendecomposition)", loss)
        curvature = update_curvature = None
        previous = state.get("last_update") if joint else None
        if joint and previous is not None:  # α and μ from the 2-D quadratic model (Martens & Grosse §7)
            vectors = [-direction, previous]
            gram = weighted_mean([quad.curvature_gram(vectors)], weight)[0]
            norms = torch.stack([torch.stack([torch.dot(a, b) for b in vectors]) for a in vectors])
            alpha, mu = quadratic_momentum_step(gram, torch.stack([torch.dot(grad, v) for v in vectors]), damping,
                                                norms)
            if not (math.isfinite(alpha) and math.isfinite(mu)):
                alpha, mu = quadratic_step_scale(direction, grad, gram[0, 0], damping), 0.0
            scale, coefficients = alpha, torch.tensor([group["lr"] * alpha, mu], dtype=gram.dtype)
            update = group["lr"] * alpha * vectors[0] + mu * previous
            update_curvature = coefficients @ gram @ coefficients
        elif rescaling in (StepRescaling.QUADRATIC, StepRescaling.QUADRATIC_MOMENTUM) and (rescale_due or joint):
            curvature = weighted_mean([quad.curvature_along(direction)], weight)[0]
            scale = quadratic_step_scale(direction, grad, curvature, damping)
        elif rescaling is StepRescaling.QUADRATIC:
            scale = float(state["step_scale"])  # amortised: the last measured α
        elif rescaling is StepRescaling.KL_CLIP:
            scale = kl_clip_scale(direction, grad, group["lr"], group["kl_clip"])
        else:
            scale = 1.0
        buf = state.get("momentum_buffer")
        if update_curvature is None:
            update = -group["lr"] * scale * direction
            if group["momentum"] > 0 and buf is not None:
                update = group["momentum"] * buf + update
        predicted = math.nan
        if measure and all_finite(update):
            if update_curvature is not None:
                curv = update_curvature
            elif curvature is not None and (group["momentum"] == 0 or buf is None):  # update = −ηα d
                curv = (group["lr"] * scale) ** 2 * curvature
            else:
                curv = weighted_mean([quad.curvature_along(update)], weight)[0]
            predicted = float(torch.dot(grad, update) + 0.5 * curv)
        self._statistics.update(
            damping=damping, step_scale=scale, pi=torch.tensor(pis),
            stats_updated=float(stats_due), inverses_updated=float(inverse_due),
            direction_norm=float(direction.norm()), reduction_ratio=math.nan,
        )
        if not self._apply(self.partition.unflatten(update), loss):
            return loss
        state["factors"], state["inverse_factors"] = factors, inverse_factors
        state["inverse_damping"] = built_with
        self._solvers = solvers
        if group["momentum"] > 0:
            state["momentum_buffer"] = update
        if joint:
            state["last_update"] = update
        if rescaling is StepRescaling.QUADRATIC and math.isfinite(scale):
            state["step_scale"] = scale
        if measure and math.isfinite(predicted):
            after = self._evaluate(inputs, targets)
            if is_distributed():
                after = weighted_mean([after], weight)[0]
            ratio = reduction_ratio(float(after) - float(loss), predicted) if torch.isfinite(after) else -math.inf
            group["damping"] = min(max(trust_region_damping(damping, ratio, group["damping_min"]),
                                       group["damping_min"]), group["damping_max"])
            self._statistics["reduction_ratio"] = ratio
        return loss
