"""KFAC: Kronecker-factored natural-gradient / Gauss–Newton steps (Martens & Grosse 2015; Botev et al. 2017).

Per layer l the curvature block is approximated by G_l ⊗ A_l (:class:`curvlab.repr.KroneckerFactors`,
augmented-bias convention), estimated by the statistics engine (:func:`curvlab.compute`) as one of

* ``"kfac"`` – Fisher with sampled targets (Martens & Grosse), ``"kflr"`` – exact GGN factor
  backpropagation, ``"kfra"`` – recursive approximation (Botev et al.), ``"ekfac"`` – eigenvalue-corrected
  KFLR (George et al. 2018).

Every ``stats_period`` steps the factors of the current batch are blended into an exponential moving
average, F ← ε F + (1 − ε) F_batch (ε = ``ema_decay``; EKFAC uses the latest fit, since its eigenvalues
belong to a basis). Every ``inverse_period`` steps the eigendecompositions are refreshed. The direction is

    d_l = ((G_l + π_l √γ I) ⊗ (A_l + √γ/π_l I))⁻¹ g_l,     π_l = sqrt((tr A_l / dim A_l) / (tr G_l / dim G_l))

(factored Tikhonov damping γ with the π correction; ``damping_mode="exact"``: (G_l ⊗ A_l + γI)⁻¹ g_l through the
factors' eigendecompositions; EKFAC always uses the exact (S + γ)⁻¹ in its eigenbasis). The
step θ ← θ + v, v ← μ v − η α d (momentum μ), with α from ``step_rescaling``:

* ``"quadratic"`` (Botev): α = min(1, gᵀd / (dᵀGd + γ‖d‖²)) with G the exact GGN of the batch
  (one GGN-vector product, :class:`~curvlab.optim.gauss_newton.GaussNewtonQuadratic`);
* ``"kl-clip"`` (Martens & Grosse): α = min(1, sqrt(κ / (η² gᵀd))), κ = ``kl_clip``;
* ``"none"``: α = 1.

The model must be an ``nn.Sequential`` the engine supports. A layer without a Kronecker rule gets its
dense block, solved with damping γ. Cost per statistics update: one engine pass (≈ 1–2 backward passes;
``ekfac`` two passes); per inverse update: eigendecompositions of every A_l, G_l; per step: O(O²I + OI²)
per layer, plus one GGN-vector product for the quadratic rescaling.

References:
    J. Martens, R. Grosse. Optimizing neural networks with Kronecker-factored approximate curvature. ICML 2015.
    A. Botev, H. Ritter, D. Barber. Practical Gauss-Newton optimisation for deep learning. ICML 2017.
"""

from __future__ import annotations

import enum
import math

import torch
from torch import nn

from curvlab.optim.base import CurvatureOptimizer, all_finite
from curvlab.optim.gauss_newton import GaussNewtonQuadratic
from curvlab.optim.hyperparameters import check_choice, check_int, check_range
from curvlab.optim.step_scaling import kl_clip_scale, quadratic_step_scale

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
    KL_CLIP = "kl-clip"
    NONE = "none"


class KFAC(CurvatureOptimizer):
    """Kronecker-factored optimiser over the statistics engine (see the module docstring).

    Args:
        model, loss_fn: an ``nn.Sequential`` supported by :func:`curvlab.compute` and a supported loss.
        curvature: ``"kfac"``, ``"kflr"``, ``"kfra"`` or ``"ekfac"``.
        lr: η > 0.
        damping: γ > 0 (``param_groups[0]["damping"]``; ×1.5 after a rejected step).
        damping_mode: ``"factored"`` (π-corrected factored Tikhonov) or ``"exact"``.
        ema_decay: ε ∈ [0, 1) for the factors (0: the current batch only).
        stats_period, inverse_period: update periods (steps) of the statistics and of the inverses.
        step_rescaling: ``"quadratic"``, ``"kl-clip"`` or ``"none"``; kl_clip: κ > 0.
        momentum: μ ∈ [0, 1).
        mc_samples: sampled targets per sample for ``"kfac"``; seed: seed of that sampling.

    ``statistics()`` keys: ``loss``, ``damping``, ``step_scale`` (α), ``pi`` [layers] (NaN for EKFAC, exact
    damping and dense blocks), ``stats_updated``, ``inverses_updated``, ``direction_norm``, ``rejected``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> x = torch.randn(64, 2); y = x[:, :1] * x[:, 1:]
        >>> opt = KFAC(model, nn.MSELoss(), curvature="kflr", damping=1e-2, stats_period=1, inverse_period=1)
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
        curvature: KroneckerCurvatureKind | str = KroneckerCurvatureKind.KFLR,
        lr: float = 1.0,
        damping: float = 1e-3,
        damping_mode: KroneckerDamping | str = KroneckerDamping.FACTORED,
        ema_decay: float = 0.95,
        stats_period: int = 1,
        inverse_period: int = 1,
        step_rescaling: StepRescaling | str = StepRescaling.QUADRATIC,
        kl_clip: float = 1e-3,
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
            momentum=check_range("momentum", momentum, low=0.0, high=1.0, high_inclusive=False),
            mc_samples=check_int("mc_samples", mc_samples),
        )
        super().__init__(model, loss_fn, defaults)
        from curvlab.partition import Partition

        self.partition = Partition.from_model(model, "layer")
        self._generator = torch.Generator().manual_seed(check_int("seed", seed, low=0))
        self._solvers: dict | None = None  # layer -> KroneckerFactors or (dense block); rebuilt lazily

    # ------------------------------------------------------------------ state
    def state_dict(self):
        self.global_state["generator"] = self._generator.get_state()
        return super().state_dict()

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        if "generator" in self.global_state:
            self._generator.set_state(self.global_state["generator"])
        self._solvers = None  # rebuilt from the saved factors at the next step

    def _raise_damping(self) -> str:
        group = self._group()
        group["damping"] *= 1.5
        return f"damping raised to {group['damping']:.3g}"

    # ------------------------------------------------------------------ statistics and inverses
    def _batch_factors(self, group, inputs, targets) -> dict[str, dict[str, torch.Tensor]]:
        from curvlab.engine import compute

        name = group["curvature"]
        result = compute(self.model, self.loss_fn, (inputs, targets), [name], partition="layer",
                         mc_samples=group["mc_samples"], generator=self._generator, progress=False)
        factors = {}
        for layer, block in result[name].layers.items():
            if isinstance(block, torch.Tensor):
                factors[layer] = {"block": block.detach()}
            else:
                entry = {"A": block.A.detach(), "G": block.G.detach()}
                if block.scaling is not None:
                    entry["scaling"] = block.scaling.detach()
                entry["bias"] = torch.tensor(block.bias)
                factors[layer] = entry
        return factors

    def _update_statistics(self, group, inputs, targets) -> None:
        new = self._batch_factors(group, inputs, targets)
        old = self.global_state.get("factors")
        decay = 0.0 if group["curvature"] == KroneckerCurvatureKind.EKFAC.value else group["ema_decay"]
        if old is None or decay == 0.0:
            self.global_state["factors"] = new
            return
        self.global_state["factors"] = {
            layer: {k: (v if k == "bias" else decay * old[layer][k] + (1 - decay) * v) for k, v in entry.items()}
            for layer, entry in new.items()
        }

    def _build_solvers(self) -> dict:
        """Solvers from the factors of the last inverse update (``global_state["inverse_factors"]``)."""
        from curvlab.repr import KroneckerFactors

        solvers = {}
        for layer, entry in self.global_state["inverse_factors"].items():
            if "block" in entry:
                solvers[layer] = entry["block"]
            else:
                solvers[layer] = KroneckerFactors(
                    entry["A"], entry["G"], bias=bool(entry["bias"]), bias_convention="augmented",
                    scaling=entry.get("scaling"), quantity=self._group()["curvature"],
                )
        return solvers

    def _precondition(self, grad: torch.Tensor, damping: float, mode: KroneckerDamping) -> tuple[torch.Tensor, list[float]]:
        direction = torch.empty_like(grad)
        pis = []
        for group in self.partition.groups:
            solver = self._solvers[group.name]
            g = grad[group.indices]
            if isinstance(solver, torch.Tensor):
                eye = torch.eye(solver.shape[0], dtype=solver.dtype, device=solver.device)
                d = torch.linalg.solve(solver + damping * eye, g)
                pis.append(math.nan)
            elif solver.scaling is not None or mode is KroneckerDamping.EXACT:
                d = solver.solve(g, damping=damping)
                pis.append(math.nan)
            else:
                pi = solver.default_pi()
                d = solver.solve_factored(g, damping=damping, pi=pi)
                pis.append(pi)
            direction[group.indices] = d.to(grad.dtype)
        return direction, pis

    # ------------------------------------------------------------------ step
    def _step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        group = self._group()
        step = self.global_state["step"] + 1
        quad = GaussNewtonQuadratic(self.model, self.loss_fn, inputs, targets)
        loss, grad = quad.loss, quad.gradient
        if not all_finite(loss):
            return self._reject("loss", loss)
        if not all_finite(grad):
            return self._reject("gradient", loss)
        first = "factors" not in self.global_state
        stats_due = first or (step - 1) % group["stats_period"] == 0
        inverse_due = first or (step - 1) % group["inverse_period"] == 0
        saved = {k: self.global_state.get(k) for k in ("factors", "inverse_factors")}, self._solvers
        if stats_due:
            self._update_statistics(group, inputs, targets)
        if inverse_due:
            self.global_state["inverse_factors"] = self.global_state["factors"]
        if inverse_due or self._solvers is None:
            self._solvers = self._build_solvers()
        damping = group["damping"]
        try:
            direction, pis = self._precondition(grad, damping, KroneckerDamping(group["damping_mode"]))
        except (torch.linalg.LinAlgError, ValueError, FloatingPointError):
            direction, pis = torch.full_like(grad, math.nan), []
        rescaling = StepRescaling(group["step_rescaling"])
        if rescaling is StepRescaling.QUADRATIC:
            scale = quadratic_step_scale(direction, grad, quad.ggn_matvec(direction), damping)
        elif rescaling is StepRescaling.KL_CLIP:
            scale = kl_clip_scale(direction, grad, group["lr"], group["kl_clip"])
        else:
            scale = 1.0
        update = -group["lr"] * scale * direction
        buf = self.global_state.get("momentum_buffer")
        if group["momentum"] > 0 and buf is not None:
            update = group["momentum"] * buf + update
        self._statistics.update(
            damping=damping, step_scale=scale, pi=torch.tensor(pis) if pis else torch.tensor([]),
            stats_updated=float(stats_due), inverses_updated=float(inverse_due),
            direction_norm=float(direction.norm()),
        )
        if not self._apply(self.partition.unflatten(update), loss):
            for key, value in saved[0].items():  # a rejected step leaves the curvature state as it was
                if value is None:
                    self.global_state.pop(key, None)
                else:
                    self.global_state[key] = value
            self._solvers = saved[1]
            return loss
        if group["momentum"] > 0:
            self.global_state["momentum_buffer"] = update
        return loss
