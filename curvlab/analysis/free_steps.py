r"""Step quality from products only: exact damped Newton steps by CG (MINRES when indefinite), with error bounds.

On a diagonal block E = R C Rᵀ of the exact matrix (or the whole of it) with gradient g = R∇L, the
exact damped step d* = −(E + λI)⁻¹ g is solved iteratively:

* by conjugate gradient when C is positive semi-definite (GGN, Fisher, empirical Fisher), on the whole
  matrix preconditioned by an approximation's own solve (A + λI)⁻¹ when one is given (a Kronecker
  approximation cuts the iterations many-fold); with residual r = −g − (E + λI)d, the error δ = d − d* satisfies
  ‖δ‖ ≤ ‖r‖/λ and m_λ(d) − m_λ(d*) = ½ rᵀ(E + λI)⁻¹r ≤ ½‖r‖²/λ;
* by MINRES (``scipy.sparse.linalg.minres``) for a Hessian (E + λI may be indefinite); no bound is
  available without λ_min, so the error bars are NaN.

The approximate step d̃ comes from the approximation's own ``solve`` (exact for Kronecker, diagonal and
block representations) and its model decrease costs one product d̃ᵀEd̃. The metrics are those of
:mod:`curvlab.analysis.steps`; their error bars are |Δcos| ≤ 2‖δ‖/‖d*‖ and
|Δratio| ≤ ratio·(½‖r‖²/λ) / (m_λ(0) − m_λ(d*)).

Example:
    >>> import torch
    >>> c, g = torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)), torch.tensor([1.0, 1.0])
    >>> exact = ExactSteps(c, g, torch.arange(2), 2, [0.5])
    >>> values, errors = exact.quality(exact.steps)
    >>> values.round(10).tolist()
    [[1.0], [1.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, minres

from curvlab.analysis.lanczos import restricted_operator
from curvlab.errors import CurvlabError
from curvlab.operators.cg import CGSettings, conjugate_gradient

__all__ = ["ExactSteps", "approximate_steps"]

#: Relative residual tolerance of the exact step solves.
RTOL = 1e-6
#: At most this many iterations per exact solve.
MAXITER = 300


class ExactSteps:
    """Exact damped Newton steps on one block, one per damping, and the quality of candidate steps.

    Args:
        exact: the exact matrix (tensor, representation or operator) [P, P].
        gradient: [P] (the full gradient; it is restricted to ``rows``).
        rows: indices of the block; size: P.
        dampings: λ values (> 0 for error bounds).
        indefinite: use MINRES (Hessians) instead of CG.
    """

    def __init__(self, exact, gradient: torch.Tensor, rows: torch.Tensor, size: int, dampings: Sequence[float], *,
                 indefinite: bool = False, preconditioner=None):
        self.exact, self.rows, self.size = exact, rows, size
        # an approximation A with a cheap solve: (A + λI)⁻¹ preconditions the solves of the whole matrix
        self.preconditioner = preconditioner if rows.numel() == size else None
        self.iterations: list[int] = []
        self.lambdas = [float(d) for d in dampings]
        self.g = gradient.detach().to(torch.float64).cpu()[rows]
        self.indefinite = indefinite
        self.operator = restricted_operator(exact, rows, size)
        n = rows.numel()
        steps, residuals = [None] * len(self.lambdas), [float("nan")] * len(self.lambdas)
        previous = None
        # largest damping first: each solution warm-starts the next, smaller damping
        for i in sorted(range(len(self.lambdas)), key=lambda j: -self.lambdas[j]):
            steps[i], residuals[i] = self._solve(self.lambdas[i], n, previous)
            previous = steps[i] if bool(torch.isfinite(steps[i]).all()) else None
        self.steps = torch.stack(steps)                       # [D, n]
        self.residual_norms = np.array(residuals)            # ‖(E + λI)d + g‖
        self.best = self.decrease(self.steps)                 # m(0) − m(d*)

    def _precondition(self, lam: float):
        if self.preconditioner is None:
            return None
        rep = self.preconditioner

        def apply(r: torch.Tensor) -> torch.Tensor:
            return rep.solve(r.to(device=rep.device, dtype=rep.dtype), lam).detach().to(torch.float64).cpu()

        try:
            probe = apply(torch.ones(self.size, dtype=torch.float64))
        except Exception:  # noqa: BLE001 (no usable preconditioner: plain CG)
            return None
        return apply if bool(torch.isfinite(probe).all()) else None

    def _solve(self, lam: float, n: int, x0: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        b = -self.g
        maxiter = min(10 * n, MAXITER)
        precondition = None if self.indefinite else self._precondition(lam)
        if self.indefinite:
            shifted = LinearOperator((n, n), matvec=lambda v: self.operator.matvec(v) + lam * v, dtype=np.float64)
            count = [0]  # no preconditioner: MINRES needs an SPD one, and an approximation of a Hessian may not be
            x, _ = minres(shifted, b.numpy(), x0=None if x0 is None else x0.numpy(), rtol=RTOL, maxiter=maxiter,
                          callback=lambda _x: count.__setitem__(0, count[0] + 1))
            self.iterations.append(count[0])
            d = torch.from_numpy(np.asarray(x, dtype=np.float64))
        else:
            try:
                d = self._pcg(b, lam, maxiter, precondition, x0)
            except torch.linalg.LinAlgError:
                return torch.full_like(b, float("nan")), float("nan")
        residual = torch.from_numpy(self.operator.matvec(d.numpy())) + lam * d - b
        return d, float(residual.norm())

    def _pcg(self, b: torch.Tensor, lam: float, maxiter: int, precondition, x0=None) -> torch.Tensor:
        """Conjugate gradient on (E + λI)x = b from ``x0``, preconditioned by ``precondition`` ≈ (E + λI)⁻¹ (SPD)."""
        def product(v):
            return torch.from_numpy(self.operator.matvec(v.numpy())) + lam * v

        if precondition is None:
            result = conjugate_gradient(lambda v: torch.from_numpy(self.operator.matvec(v.numpy())), b, lam,
                                        CGSettings(rtol=RTOL, maxiter=maxiter, warn=False), x0=x0)
            self.iterations.append(result.iterations)
            return result.solution
        x = torch.zeros_like(b) if x0 is None else x0.clone()
        r = b.clone() if x0 is None else b - product(x)
        z = precondition(r)
        p = z.clone()
        rz = float(r @ z)
        target = RTOL * float(b.norm())
        iteration = 0
        while iteration < maxiter:
            iteration += 1
            ap = product(p)
            curvature = float(p @ ap)
            if curvature <= 0:
                raise torch.linalg.LinAlgError("the damped matrix is not positive definite")
            alpha = rz / curvature
            x += alpha * p
            r -= alpha * ap
            if float(r.norm()) <= target:
                break
            z = precondition(r)
            rz, previous = float(r @ z), rz
            p = z + (rz / previous) * p
        self.iterations.append(iteration)
        return x

    def decrease(self, steps: torch.Tensor) -> np.ndarray:
        """m_λ(0) − m_λ(d) = −(gᵀd + ½dᵀ(E + λI)d) for each row d of ``steps`` [D, n] (one product per row)."""
        steps = steps.to(torch.float64)
        finite = torch.isfinite(steps).all(1)
        out = np.full(len(self.lambdas), np.nan)
        if bool(finite.any()):
            products = torch.from_numpy(self.operator.matmat(steps[finite].T.numpy())).T
            lam = torch.tensor(self.lambdas, dtype=torch.float64)[finite]
            curv = (products * steps[finite]).sum(1) + lam * steps[finite].pow(2).sum(1)
            out[finite.numpy()] = (-(steps[finite] @ self.g + 0.5 * curv)).numpy()
        return out

    def quality(self, steps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Cosine to d* and decrease ratio of ``steps`` [D, n]: values [2, D] and error bounds [2, D]."""
        steps = steps.detach().to(torch.float64).cpu()
        dot = (steps * self.steps).sum(1)
        norms = steps.norm(dim=1) * self.steps.norm(dim=1)
        cosine = torch.where(norms > 0, dot / norms, torch.full_like(dot, float("nan"))).numpy()
        achieved = self.decrease(steps)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(np.abs(self.best) > 0, achieved / self.best, np.nan)
            lam = np.array(self.lambdas)
            if self.indefinite:
                errors = np.full((2, len(lam)), np.nan)
            else:
                delta = self.residual_norms / lam
                cos_err = 2 * delta / self.steps.norm(dim=1).numpy()
                ratio_err = np.abs(ratio) * (0.5 * self.residual_norms ** 2 / lam) / np.abs(self.best)
                errors = np.stack([cos_err, ratio_err])
        return np.stack([cosine, ratio]), errors


def approximate_steps(approx, gradient: torch.Tensor, rows: torch.Tensor | None, size: int,
                      dampings: Sequence[float]) -> torch.Tensor:
    """Steps −(A_bb + λI)⁻¹ g_b [D, n] of an approximation on block ``rows`` (``None``: the whole matrix).

    The approximation's own ``solve`` is used when the block decouples (its solve of the gradient restricted
    to the block stays inside the block, as for block-diagonal approximations); otherwise CG on products with
    the block. A singular or failed solve gives a row of NaN.
    """
    from curvlab.analysis.steps import damped_steps

    g = gradient.detach().to(torch.float64).cpu()
    if rows is None:
        if isinstance(approx, torch.Tensor):
            return damped_steps(approx, g, dampings)
        return _solve_rows(approx, g, dampings)
    masked = torch.zeros_like(g)
    masked[rows] = g[rows]
    if not isinstance(approx, torch.Tensor) and hasattr(approx, "solve"):
        full = _solve_rows(approx, masked, dampings)
        outside = full.clone()
        outside[:, rows] = 0
        if bool(torch.isfinite(full).all()) and float(outside.abs().max()) <= 1e-10 * float(full.abs().max() or 1):
            return full[:, rows]
    operator = restricted_operator(approx, rows, size)
    out = []
    for lam in dampings:
        def matvec(v):
            return torch.from_numpy(operator.matvec(v.numpy()))

        try:
            result = conjugate_gradient(matvec, -g[rows], float(lam),
                                        CGSettings(rtol=RTOL, maxiter=min(10 * rows.numel(), MAXITER), warn=False))
            out.append(result.solution)
        except torch.linalg.LinAlgError:
            out.append(torch.full((rows.numel(),), float("nan"), dtype=torch.float64))
    return torch.stack(out)


def _solve_rows(approx, g: torch.Tensor, dampings: Sequence[float]) -> torch.Tensor:
    rows = []
    for lam in dampings:
        try:
            rows.append(-approx.solve(g.to(device=approx.device, dtype=approx.dtype), float(lam)).detach().to(torch.float64).cpu())
        except (torch.linalg.LinAlgError, FloatingPointError, ArithmeticError, RuntimeError, CurvlabError):
            rows.append(torch.full_like(g, float("nan")))
    return torch.stack(rows)
