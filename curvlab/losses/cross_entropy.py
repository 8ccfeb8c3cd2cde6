"""``nn.CrossEntropyLoss`` on [N, C, d…] logits and ``nn.NLLLoss`` after ``log_softmax``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.errors import UnsupportedLossError
from curvlab.losses.base import LossAdapter


class CrossEntropyAdapter(LossAdapter):
    """``nn.CrossEntropyLoss`` with class-index targets, on [N, C] or [N, C, d₁, …] logits.

    With T = d₁⋯d_k positions (1 for [N, C]) and p_{·t} = softmax over the C classes at position t,
    ℓ_n = −Σ_t log p_{y_nt, t}; Z = N·T for reduction 'mean'. A sample's flattened output has C·T
    entries in the layout of ``outputs[n].flatten()`` (index c·T + t), and its Hessian is block
    diagonal over positions: H_n[(c,t),(c',t')] = δ_{tt'} (δ_{cc'} p_{ct} − p_{ct} p_{c't}).
    """

    def __init__(self, loss_fn: nn.CrossEntropyLoss):
        super().__init__(loss_fn)
        if loss_fn.weight is not None:
            raise UnsupportedLossError(f"{self.name}: class weights (weight=...) are not supported")
        #: ε of label smoothing: ℓ = −Σ_t Σ_c q_ct log p_ct, q = (1 − ε) onehot + ε/C. H_n does not
        #: depend on q (Σ_c q_c = 1), so GGN-type quantities are those of plain cross-entropy; the
        #: gradient (empirical Fisher) is p − q; MC samples use the likelihood's score p − onehot(ŷ).
        self.smoothing = float(getattr(loss_fn, "label_smoothing", 0.0))

    def check(self, outputs, targets):
        super().check(outputs, targets)
        if targets.is_floating_point():
            raise UnsupportedLossError(
                f"{self.name}: soft (class-probability) targets {tuple(targets.shape)} {targets.dtype} are "
                "not supported: use class indices"
            )
        if targets.dtype != torch.int64:  # int32/bool/uint8 fail raw in some paths (cross_entropy, one_hot)
            raise UnsupportedLossError(
                f"{self.name}: class-index targets must be int64 (torch.long), got {targets.dtype}: pass targets.long()"
            )
        expected = (outputs.shape[0], *outputs.shape[2:])
        if tuple(targets.shape) != expected:
            raise UnsupportedLossError(
                f"{self.name}: logits {tuple(outputs.shape)} need class-index targets of shape "
                f"{expected}, got {tuple(targets.shape)} {targets.dtype}"
            )
        ignored = targets == self.loss_fn.ignore_index
        if bool(ignored.any()):
            if not self.allow_ignore_index:
                raise UnsupportedLossError(
                    f"{self.name}: targets use ignore_index={self.loss_fn.ignore_index}, which only curvlab.compute's "
                    "collector route supports (route='collector'); references and operators do not"
                )
            if bool(ignored.all()) and self.reduction == "mean":
                raise UnsupportedLossError(f"{self.name}: every target is ignore_index: the mean loss is undefined")
            targets = targets[~ignored]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= outputs.shape[1]):
            raise UnsupportedLossError(
                f"{self.name}: class indices must lie in [0, {outputs.shape[1]}), got "
                f"{int(targets.min())}..{int(targets.max())}"
            )

    def normalizer(self, outputs: torch.Tensor) -> int:
        if self.reduction == "sum":
            return 1
        return outputs.shape[0] * (outputs[0].numel() // outputs.shape[1])

    def _kept(self, targets: torch.Tensor) -> torch.Tensor | None:
        ignored = targets == self.loss_fn.ignore_index
        return ~ignored if bool(ignored.any()) else None

    def entry_mask(self, outputs, targets):
        kept = self._kept(targets)
        return None if kept is None else kept.unsqueeze(1).expand(outputs.shape).to(outputs.dtype)

    def normalizer_for(self, outputs, targets):
        kept = self._kept(targets)
        if kept is None or self.reduction == "sum":
            return self.normalizer(outputs)
        return int(kept.sum())

    @staticmethod
    def _positions(outputs: torch.Tensor) -> torch.Tensor:
        """[N, C, T] view of [N, C, d₁, …] logits."""
        return outputs.reshape(outputs.shape[0], outputs.shape[1], -1)

    def _flat_targets(self, targets, outputs):
        return targets.reshape(targets.shape[0], -1)  # [N, T]

    @staticmethod
    def _unflat(outputs, targets):
        """Flattened [N, C·T] outputs and [N, T] targets as [N, C, T] logits."""
        return outputs.reshape(outputs.shape[0], -1, targets.shape[1])

    def _split(self, targets):
        """Targets with ignored entries replaced by class 0, and the [N, T] weights of kept entries."""
        kept = self._kept(targets)
        if kept is None:
            return targets, None
        return targets.masked_fill(~kept, 0), kept

    def _per_sample_loss(self, outputs, targets):
        targets, kept = self._split(targets)
        logp = self._unflat(outputs, targets).log_softmax(1)
        nll = -logp.gather(1, targets[:, None, :]).squeeze(1)  # [N, T]
        if self.smoothing:
            nll = (1 - self.smoothing) * nll - self.smoothing * logp.mean(1)
        if kept is not None:
            nll = nll * kept
        return nll.sum(1)

    def _output_gradient(self, outputs, targets):
        targets, kept = self._split(targets)
        logits = self._unflat(outputs, targets)
        q = F.one_hot(targets, logits.shape[1]).to(outputs.dtype).transpose(1, 2)
        if self.smoothing:
            q = (1 - self.smoothing) * q + self.smoothing / logits.shape[1]
        grad = logits.softmax(1) - q
        if kept is not None:
            grad = grad * kept[:, None, :]
        return grad.flatten(1)

    def _score(self, outputs, targets):
        logits = self._unflat(outputs, targets)
        onehot = F.one_hot(targets, logits.shape[1]).to(outputs.dtype).transpose(1, 2)
        return (logits.softmax(1) - onehot).flatten(1)

    def output_hessian(self, outputs):
        p = self._positions(outputs).softmax(1)  # [N, C, T]
        n, c, t = p.shape
        eye_t = torch.eye(t, dtype=p.dtype, device=p.device)
        outer = torch.einsum("nat,nbt,tu->natbu", p, p, eye_t).reshape(n, c * t, c * t)
        return torch.diag_embed(p.flatten(1)) - outer

    def output_hessian_sum(self, outputs):
        p = self._positions(outputs).softmax(1)  # [N, C, T]
        c, t = p.shape[1:]
        outer = torch.einsum("nat,nbt->atb", p, p)  # Σ_n p pᵀ per position, block-diagonal over positions
        full = torch.diag_embed(outer.permute(0, 2, 1)).permute(0, 2, 1, 3)  # [C, T, C, T], zero across positions
        return torch.diag(p.sum(0).flatten()) - full.reshape(c * t, c * t)

    def output_hessian_product(self, outputs, u):
        p = self._positions(outputs).softmax(1)  # [N, C, T]
        pu = p * u.reshape(p.shape)
        return (pu - p * pu.sum(1, keepdim=True)).flatten(1)

    def sqrt_hessian(self, outputs):
        p = self._positions(outputs).softmax(1)
        n, c, t = p.shape
        sqrt_p = p.sqrt()
        eye_t = torch.eye(t, dtype=p.dtype, device=p.device)
        outer = torch.einsum("nat,nbt,tu->natbu", p, sqrt_p, eye_t).reshape(n, c * t, c * t)
        return torch.diag_embed(sqrt_p.flatten(1)) - outer

    def sample_targets(self, outputs, mc_samples=1, generator=None):
        p = self._positions(outputs.detach()).softmax(1)  # [N, C, T]
        n, c, t = p.shape
        draws = torch.multinomial(
            p.transpose(1, 2).reshape(n * t, c), mc_samples, replacement=True, generator=generator
        )  # [N·T, M]
        return draws.T.reshape(mc_samples, n, *outputs.shape[2:]).contiguous()


class NLLAdapter(CrossEntropyAdapter):
    """``nn.NLLLoss`` on log-probabilities (``log_softmax`` outputs), [N, C] or [N, C, d₁, …].

    NLLLoss is linear in its input, so the GGN *with respect to the log-probabilities* is zero; the
    useful GGN folds ``log_softmax`` into the loss. Because log_softmax(log p) = log p, NLLLoss on
    log-probabilities equals cross-entropy on them, whose GGN equals that of cross-entropy on the logits
    ((I − p 1ᵀ)(diag p − p pᵀ)(I − 1 pᵀ) = diag p − p pᵀ). This adapter is that cross-entropy; it checks
    that the outputs are log-probabilities (logsumexp over classes = 0).
    """

    def check(self, outputs, targets):
        super().check(outputs, targets)
        tol = 1e-4 if outputs.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-8
        err = float(outputs.detach().logsumexp(1).abs().max()) if outputs.numel() else 0.0
        if err > tol:
            raise UnsupportedLossError(
                f"{self.name}: NLLLoss needs log-probabilities (e.g. F.log_softmax(logits, 1)); the outputs' "
                f"logsumexp over classes is off 0 by {err:.2e}"
            )
