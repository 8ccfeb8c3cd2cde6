"""Per-batch summary terms and their exact combination over batches.

Each route returns, for one batch with loss L_b = (1/Z_b) Σ_{n∈b} ℓ_n, the derivatives of
φ_b(η) = L_b(θ + Uη) at η = 0: ḡ_b = ∇φ_b [S], H̄_b = ∇²φ_b [S, S] and, for order 3, the diagonal
D³_b [S] of ∇³φ_b. All three are linear in the per-sample losses, so the batches combine exactly as
Σ_b Z_b X_b / Σ_b Z_b (reduction 'mean') or Σ_b X_b ('sum'), see :mod:`curvlab.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["BatchTerms", "TermsSum"]


@dataclass(frozen=True)
class BatchTerms:
    """ḡ_b [S], H̄_b [S, S], D³_b [S] or ``None``, and the batch's normaliser Z_b."""

    gbar: torch.Tensor
    hbar: torch.Tensor
    d3: torch.Tensor | None
    normalizer: int


@dataclass
class TermsSum:
    """Accumulates :class:`BatchTerms` and returns the combined ``(gbar, hbar, d3)``.

    Example:
        >>> acc = TermsSum("mean")
        >>> acc.add(BatchTerms(torch.ones(1), torch.ones(1, 1), None, 3))
        >>> acc.add(BatchTerms(3 * torch.ones(1), torch.ones(1, 1), None, 1))
        >>> acc.result()[0]                                 # (3·1 + 1·3) / 4
        tensor([1.5000])
    """

    reduction: str
    gbar: torch.Tensor | None = None
    hbar: torch.Tensor | None = None
    d3: torch.Tensor | None = None
    normalizer: int = 0
    batches: int = 0

    def add(self, terms: BatchTerms) -> None:
        w = float(terms.normalizer) if self.reduction == "mean" else 1.0
        if self.gbar is None:
            self.gbar, self.hbar = w * terms.gbar, w * terms.hbar
            self.d3 = None if terms.d3 is None else w * terms.d3
        else:
            self.gbar = self.gbar + w * terms.gbar
            self.hbar = self.hbar + w * terms.hbar
            if terms.d3 is not None:
                self.d3 = self.d3 + w * terms.d3
        self.normalizer += terms.normalizer
        self.batches += 1

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.gbar is None:
            raise ValueError("data holds no batches")
        scale = 1.0 / self.normalizer if self.reduction == "mean" else 1.0
        hbar = 0.5 * (self.hbar + self.hbar.T) * scale
        d3 = None if self.d3 is None else self.d3 * scale
        return self.gbar * scale, hbar, d3
