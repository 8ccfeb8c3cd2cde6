"""Any per-sample loss for the GGN-type quantities: its output Hessian by automatic differentiation.

``PerSampleLoss(fn)`` wraps a function ℓ(f_n, y_n) of one sample's output and target (a scalar) as a
loss module, L = (1/Z) Σ_n ℓ(f_n, y_n) with Z = N ('mean') or 1 ('sum'). Its adapter gives

* H_n = ∂²ℓ/∂f_n² by ``torch.func.hessian`` (vmapped over samples; double reverse mode, exact);
* S_n = Q_n Λ_n^{1/2} from the eigendecomposition H_n = Q Λ Qᵀ, which needs H_n ⪰ 0 (a loss convex in
  the outputs); a clearly negative eigenvalue is an error, since the GGN is then indefinite and has no
  square root;
* the observed gradient ∇_f ℓ (empirical Fisher) by ``torch.func.grad``.

It has no sampling distribution: the MC quantities (``kfac``, ``fisher_mc``, ``*_mc``) raise.

Example:
    >>> import torch
    >>> huber = PerSampleLoss(lambda f, y: torch.nn.functional.huber_loss(f, y, reduction="sum", delta=2.0))
    >>> f, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    >>> adapter = AutodiffAdapter(huber)
    >>> adapter.check(f, y)                 # H_n depends on the targets: taken at the checked ones
    >>> s = adapter.sqrt_hessian(f)
    >>> torch.allclose(s @ s.mT, adapter.output_hessian(f)), float(huber(f, y)) == float(adapter.per_sample_loss(f, y).mean())
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from curvlab.errors import UnsupportedLossError
from curvlab.losses.base import LossAdapter

__all__ = ["AutodiffAdapter", "PerSampleLoss"]


class PerSampleLoss(nn.Module):
    """A loss module from a per-sample function ``fn(output_n, target_n) -> scalar`` (see the module docstring).

    ``targets`` may be ``None``-free tensors of any shape with a leading batch dimension.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], reduction: str = "mean"):
        super().__init__()
        self.fn = fn
        self.reduction = reduction

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(self.fn)(outputs, targets)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.per_sample(outputs, targets)
        return losses.mean() if self.reduction == "mean" else losses.sum()


class AutodiffAdapter(LossAdapter):
    """The adapter of :class:`PerSampleLoss` (see the module docstring). Needs the targets for H_n
    only through ``fn``: the Hessian is taken at the targets of the last :meth:`check`."""

    per_sample_mean_only = True

    def __init__(self, loss_fn: PerSampleLoss):
        super().__init__(loss_fn)
        self._targets: torch.Tensor | None = None

    def check(self, outputs, targets):
        super().check(outputs, targets)
        if targets.shape[:1] != outputs.shape[:1]:
            raise UnsupportedLossError(
                f"{self.name}: targets {tuple(targets.shape)} need the batch dimension of outputs {tuple(outputs.shape)}"
            )
        self._targets = targets

    def _flat_fn(self, shape):
        fn = self.loss_fn.fn
        return lambda flat, target: fn(flat.reshape(shape), target)

    def _require_targets(self, outputs):
        if self._targets is None or self._targets.shape[0] != outputs.shape[0]:
            raise UnsupportedLossError(
                f"{self.name}: the output Hessian of a per-sample loss depends on the targets; call check(outputs, "
                "targets) first (curvlab.compute does)"
            )
        return self._targets

    def per_sample_loss(self, outputs, targets):
        self.check(outputs, targets)
        return torch.func.vmap(self.loss_fn.fn)(outputs, targets)

    def output_gradient(self, outputs, targets):
        self.check(outputs, targets)
        fn = self._flat_fn(outputs.shape[1:])
        return torch.func.vmap(torch.func.grad(fn))(outputs.flatten(1), targets)

    def _per_sample_loss(self, outputs, targets):  # pragma: no cover - per_sample_loss is overridden
        raise NotImplementedError

    def _output_gradient(self, outputs, targets):  # pragma: no cover - output_gradient is overridden
        raise NotImplementedError

    def output_hessian(self, outputs):
        targets = self._require_targets(outputs)
        fn = self._flat_fn(outputs.shape[1:])
        flat = outputs.detach().flatten(1)
        return torch.func.vmap(torch.func.hessian(fn))(flat, targets)

    def sqrt_hessian(self, outputs):
        hessian = self.output_hessian(outputs)
        evals, evecs = torch.linalg.eigh((hessian + hessian.mT) / 2)
        scale = evals.abs().amax(1, keepdim=True).clamp_min(torch.finfo(evals.dtype).tiny)
        worst = (evals / scale).amin()
        if float(worst) < -1e3 * torch.finfo(evals.dtype).eps:
            n = int((evals / scale).amin(1).argmin())
            raise UnsupportedLossError(
                f"{self.name}: the output Hessian of sample {n} has a negative eigenvalue ({float(evals[n].min()):.3g}): "
                "the loss is not convex in the outputs, so the GGN is indefinite and has no square root"
            )
        return evecs * evals.clamp_min(0).sqrt()[:, None, :]

    symmetric_sqrt_hessian = LossAdapter.symmetric_sqrt_hessian

    def sample_targets(self, outputs, mc_samples=1, generator=None):
        raise UnsupportedLossError(
            f"{self.name}: a per-sample loss has no sampling distribution, so MC quantities (kfac, fisher_mc, "
            "*_mc) are undefined; use kflr, ggn, diag_ggn or the empirical Fisher"
        )
