"""Loss adapters: per-sample output Hessians, their square roots and predictive sampling.

For a loss ``loss_fn`` with reduction ``r`` on model outputs f ∈ R^{N×C} (C = all non-batch entries,
flattened), every supported loss is

    L = (1/Z) Σ_n ℓ(f_n, y_n),      Z = N (CE mean), N·C (MSE/BCE mean), 1 (sum),

where ℓ sums over the sample's output entries. An adapter gives, per sample and *unscaled by 1/Z*:

* ``output_hessian``   H_n = ∂²ℓ/∂f_n²                                        [N, C, C]
* ``sqrt_hessian``     S_n with S_n S_nᵀ = H_n                                 [N, C, C]
* ``sample_targets``   ŷ ~ p(y | f_n), so that E[∇ℓ(f, ŷ) ∇ℓ(f, ŷ)ᵀ] = H_n      [M, N, ...]
* ``sqrt_hessian_mc``  columns ∇_f ℓ(f_n, ŷ_m)/√M, an unbiased MC square root   [N, C, M]

and ``normalizer(outputs) = Z``. Curvature matrices over several batches are combined as
Σ_b Z_b M_b / Σ_b Z_b (mean) or Σ_b M_b (sum), which is exact: the batches behave as one.

========================  =======================  =====================  ===========================
loss                      H_n                       S_n                    predictive distribution
========================  =======================  =====================  ===========================
``MSELoss``               2 I                       √2 I                   N(f_n, ½ I)
``CrossEntropyLoss``      diag(p) − p pᵀ            diag(√p) − p √pᵀ       Categorical(softmax f_n)
``BCEWithLogitsLoss``     diag(σ(1−σ))              diag(√(σ(1−σ)))        Bernoulli(σ(f_n))
========================  =======================  =====================  ===========================

Because all three are canonical-link (exponential-family) losses, the Fisher equals the GGN.

Example:
    >>> import torch
    >>> adapter = loss_adapter(torch.nn.CrossEntropyLoss())
    >>> f = torch.randn(4, 3, dtype=torch.float64)
    >>> s = adapter.sqrt_hessian(f)
    >>> torch.allclose(s @ s.transpose(1, 2), adapter.output_hessian(f))
    True
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.nn import functional as F

from curvlab.errors import UnsupportedLossError

__all__ = [
    "AutodiffAdapter",
    "BCEWithLogitsAdapter",
    "CrossEntropyAdapter",
    "LossAdapter",
    "MSEAdapter",
    "NLLAdapter",
    "PerSampleLoss",
    "combine_weight",
    "loss_adapter",
    "register_loss",
]


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


class MSEAdapter(LossAdapter):
    """``nn.MSELoss``: ℓ_n = ‖f_n − y_n‖², H_n = 2I."""

    def check(self, outputs, targets):
        super().check(outputs, targets)
        if targets.shape != outputs.shape:
            raise UnsupportedLossError(
                f"{self.name}: targets {tuple(targets.shape)} must match outputs {tuple(outputs.shape)} "
                "(no broadcasting)"
            )

    def _per_sample_loss(self, outputs, targets):
        return (outputs - targets).pow(2).sum(1)

    def _output_gradient(self, outputs, targets):
        return 2 * (outputs - targets)

    def output_hessian(self, outputs):
        n, c = outputs.shape[0], self.num_outputs(outputs)
        eye = torch.eye(c, dtype=outputs.dtype, device=outputs.device)
        return (2 * eye).expand(n, c, c).clone()

    def output_hessian_product(self, outputs, u):
        return 2 * u

    def sqrt_hessian(self, outputs):
        return self.output_hessian(outputs) / 2**0.5

    symmetric_sqrt_hessian = sqrt_hessian

    def sample_targets(self, outputs, mc_samples=1, generator=None):
        noise = torch.randn(
            (mc_samples, *outputs.shape), dtype=outputs.dtype, device=outputs.device, generator=generator
        )
        return outputs.detach() + noise * 0.5**0.5


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


class BCEWithLogitsAdapter(LossAdapter):
    """``nn.BCEWithLogitsLoss``: ℓ_n = Σ_d softplus(f_nd) − y_nd f_nd, H_n = diag(σ(1−σ))."""

    def __init__(self, loss_fn: nn.BCEWithLogitsLoss):
        super().__init__(loss_fn)
        if loss_fn.weight is not None:
            raise UnsupportedLossError(f"{self.name}: weight=... is not supported")
        if loss_fn.pos_weight is not None:
            raise UnsupportedLossError(f"{self.name}: pos_weight=... is not supported")

    def check(self, outputs, targets):
        super().check(outputs, targets)
        if targets.shape != outputs.shape:
            raise UnsupportedLossError(
                f"{self.name}: targets {tuple(targets.shape)} must match outputs {tuple(outputs.shape)}"
            )
        if targets.numel() and not bool(((targets >= 0) & (targets <= 1)).all()):
            raise UnsupportedLossError(
                f"{self.name}: targets must be probabilities in [0, 1], got values from "
                f"{float(targets.min()):g} to {float(targets.max()):g}" + (" and NaN" if bool(targets.isnan().any()) else "")
            )

    def _per_sample_loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype), reduction="none").sum(1)

    def _output_gradient(self, outputs, targets):
        return outputs.sigmoid() - targets.to(outputs.dtype)

    def output_hessian(self, outputs):
        s = outputs.flatten(1).sigmoid()
        return torch.diag_embed(s * (1 - s))

    def output_hessian_product(self, outputs, u):
        s = outputs.flatten(1).sigmoid()
        return s * (1 - s) * u

    def sqrt_hessian(self, outputs):
        s = outputs.flatten(1).sigmoid()
        return torch.diag_embed((s * (1 - s)).sqrt())

    symmetric_sqrt_hessian = sqrt_hessian

    def sample_targets(self, outputs, mc_samples=1, generator=None):
        p = outputs.detach().sigmoid().expand(mc_samples, *outputs.shape)
        return torch.bernoulli(p, generator=generator)


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


_ADAPTERS: dict[type, type[LossAdapter]] = {
    nn.MSELoss: MSEAdapter,
    nn.CrossEntropyLoss: CrossEntropyAdapter,
    nn.NLLLoss: NLLAdapter,
    nn.BCEWithLogitsLoss: BCEWithLogitsAdapter,
}


def register_loss(loss_type: type, adapter: type[LossAdapter]) -> None:
    """Make :func:`loss_adapter` (and so every curvlab computation) use ``adapter`` for ``loss_type``.

    Example:
        >>> class Twice(MSEAdapter):
        ...     pass
        >>> register_loss(nn.MSELoss, Twice); type(loss_adapter(nn.MSELoss())).__name__
        'Twice'
        >>> register_loss(nn.MSELoss, MSEAdapter)
    """
    if not (isinstance(adapter, type) and issubclass(adapter, LossAdapter)):
        raise TypeError(f"adapter must be a LossAdapter subclass, got {adapter!r}")
    _ADAPTERS[loss_type] = adapter


def loss_adapter(loss_fn: nn.Module | LossAdapter) -> LossAdapter:
    """The adapter for ``loss_fn``; raises :class:`UnsupportedLossError` naming anything unsupported.

    Example:
        >>> loss_adapter(torch.nn.MSELoss(reduction="sum")).normalizer(torch.zeros(5, 2))
        1
        >>> loss_adapter(torch.nn.L1Loss())
        Traceback (most recent call last):
        ...
        curvlab.errors.UnsupportedLossError: torch.nn.modules.loss.L1Loss is not supported: use MSELoss, CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss or curvlab.losses.PerSampleLoss(fn) (any per-sample loss, by autodiff)
    """
    if isinstance(loss_fn, LossAdapter):
        return loss_fn
    adapter = _ADAPTERS.get(type(loss_fn))
    if adapter is None:
        qualname = f"{type(loss_fn).__module__}.{type(loss_fn).__qualname__}"
        raise UnsupportedLossError(
            f"{qualname} is not supported: use MSELoss, CrossEntropyLoss, NLLLoss, BCEWithLogitsLoss or "
            "curvlab.losses.PerSampleLoss(fn) (any per-sample loss, by autodiff)"
        )
    return adapter(loss_fn)


def combine_weight(normalizers: list[int] | tuple[int, ...], reduction: str) -> list[float]:
    """Weights w_b so that Σ_b w_b M_b equals the matrix of all batches as one (see module docstring).

    Example:
        >>> combine_weight([32, 32], "mean"), combine_weight([32, 32], "sum")
        ([0.5, 0.5], [1.0, 1.0])
    """
    if reduction == "sum":
        return [1.0] * len(normalizers)
    total = sum(normalizers)
    return [z / total for z in normalizers]


from curvlab.losses.autodiff import AutodiffAdapter, PerSampleLoss  # noqa: E402  (it subclasses LossAdapter)

_ADAPTERS[PerSampleLoss] = AutodiffAdapter
