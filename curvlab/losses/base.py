"""The loss-adapter interface: what every estimator needs from a loss (see :mod:`curvlab.losses`)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from curvlab.errors import UnsupportedLossError


class LossAdapter(ABC):
    """Curvature-relevant facts about one supported loss module (see the module docstring)."""

    def __init__(self, loss_fn: nn.Module):
        self.loss_fn = loss_fn
        self.reduction = getattr(loss_fn, "reduction", None)
        if self.reduction not in ("mean", "sum"):
            raise UnsupportedLossError(
                f"{type(loss_fn).__qualname__}(reduction={self.reduction!r}) is not supported: "
                "use reduction 'mean' or 'sum'"
            )

    @property
    def name(self) -> str:
        return f"{type(self.loss_fn).__qualname__}(reduction={self.reduction!r})"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The scalar loss, exactly ``loss_fn(outputs, targets)``."""
        self.check(outputs, targets)
        return self.loss_fn(outputs, targets)

    def check(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Raise if ``outputs``/``targets`` have shapes or values this adapter cannot handle."""
        if outputs.ndim < 2:
            raise UnsupportedLossError(
                f"{self.name}: model outputs must be [N, ...] with a batch dimension, got {tuple(outputs.shape)}"
            )
        if outputs.shape[0] == 0:
            raise UnsupportedLossError(f"{self.name}: the batch is empty (outputs {tuple(outputs.shape)})")

    #: whether targets may use the loss's ``ignore_index`` (only where the caller honours
    #: :meth:`entry_mask` and :meth:`normalizer_for`: the collector route of ``curvlab.compute``)
    allow_ignore_index = False

    def entry_mask(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """[N, *outputs.shape[1:]] 0/1 weights of the output entries that enter the loss (``None``: all)."""
        return None

    def normalizer_for(self, outputs: torch.Tensor, targets: torch.Tensor) -> int:
        """Z given the targets (differs from :meth:`normalizer` only when targets are ignored)."""
        return self.normalizer(outputs)

    def normalizer(self, outputs: torch.Tensor) -> int:
        """Z, the denominator of the reduction: L = (1/Z) Σ_n ℓ_n."""
        if self.reduction == "sum":
            return 1
        return outputs.shape[0] if self.per_sample_mean_only else outputs[0].numel() * outputs.shape[0]

    #: ``True`` if reduction 'mean' divides by N only (CrossEntropy), ``False`` if by all entries.
    per_sample_mean_only = False

    def scale(self, outputs: torch.Tensor) -> float:
        """1/Z."""
        return 1.0 / self.normalizer(outputs)

    def num_outputs(self, outputs: torch.Tensor) -> int:
        """C, the number of output entries per sample."""
        return outputs[0].numel()

    def per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """ℓ_n, [N], unscaled: the loss equals ``per_sample_loss(...).sum() / normalizer(outputs)``."""
        self.check(outputs, targets)
        return self._per_sample_loss(outputs.flatten(1), self._flat_targets(targets, outputs))

    def output_gradient(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """∂ℓ_n/∂f_n, [N, C], unscaled."""
        self.check(outputs, targets)
        return self._output_gradient(outputs.flatten(1), self._flat_targets(targets, outputs))

    @abstractmethod
    def output_hessian(self, outputs: torch.Tensor) -> torch.Tensor:
        """H_n = ∂²ℓ_n/∂f_n², [N, C, C], unscaled."""

    def shared_sqrt_hessian(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """S [C, K] when every sample has the same square root S_n = S (``None`` otherwise): the
        engine then propagates its columns once for the whole batch as far as the model allows."""
        return None

    def output_hessian_sum(self, outputs: torch.Tensor) -> torch.Tensor:
        """Σ_n H_n, [C, C], unscaled (KFRA's start). The closed forms never build [N, C, C]; this default does."""
        return self.output_hessian(outputs).sum(0)

    def output_hessian_product(self, outputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """H_n u_n per sample, [N, C], unscaled, for ``u`` [N, C] (C = flattened output size).

        The closed forms below never build [N, C, C]; this default does (``output_hessian @ u``).
        """
        return torch.einsum("nij,nj->ni", self.output_hessian(outputs), u)

    @abstractmethod
    def sqrt_hessian(self, outputs: torch.Tensor) -> torch.Tensor:
        """S_n, [N, C, C], with S_n S_nᵀ = H_n, unscaled (the cheapest closed form; not always symmetric)."""

    def symmetric_sqrt_hessian(self, outputs: torch.Tensor) -> torch.Tensor:
        """The symmetric square root H_n^{1/2}, [N, C, C]: S_n = S_nᵀ and S_n S_n = H_n.

        Closed form where ``sqrt_hessian`` is already symmetric (MSE, BCE); otherwise from a batched
        eigendecomposition H_n = Q Λ Qᵀ, S_n = Q Λ^{1/2} Qᵀ (O(N C³)).
        """
        evals, evecs = torch.linalg.eigh(self.output_hessian(outputs))
        return (evecs * evals.clamp_min(0).sqrt()[:, None, :]) @ evecs.transpose(1, 2)

    @abstractmethod
    def sample_targets(
        self, outputs: torch.Tensor, mc_samples: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``mc_samples`` draws from the model's predictive distribution, [M, *targets.shape]."""

    def sqrt_hessian_mc(
        self, outputs: torch.Tensor, mc_samples: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """[N, C, M]: columns ∇_f ℓ(f_n, ŷ_m)/√M with ŷ_m sampled, so E[S Sᵀ] = H_n."""
        if mc_samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
        if outputs.ndim < 2:
            raise UnsupportedLossError(
                f"{self.name}: model outputs must be [N, ...] with a batch dimension, got {tuple(outputs.shape)}"
            )
        outputs = outputs.detach()
        samples = self.sample_targets(outputs, mc_samples, generator)  # [M, N, ...]
        # Sampled targets come from the model, not the user: no target checks (a CrossEntropyLoss
        # ignore_index that is a valid class may be drawn, and must count like any other class).
        flat = outputs.flatten(1)
        num, classes = flat.shape
        tiled = flat.expand(mc_samples, num, classes).reshape(mc_samples * num, classes)
        flat_samples = self._flat_targets(samples.reshape(mc_samples * num, *samples.shape[2:]), tiled)
        grads = self._score(tiled, flat_samples).reshape(mc_samples, num, classes)
        return grads.permute(1, 2, 0) / mc_samples**0.5

    def _score(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """∇_f −log p(ŷ | f) at sampled targets (the likelihood's score; the loss gradient by default)."""
        return self._output_gradient(outputs, targets)

    # ---------------------------------------------------------------- subclass hooks
    def _flat_targets(self, targets: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        return targets.reshape(outputs.shape[0], -1)

    @abstractmethod
    def _per_sample_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _output_gradient(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"
