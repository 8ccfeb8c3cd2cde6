"""Differentiating a user's model safely: exact kernels, batch functions, no state updates.

curvlab differentiates models twice (Hessians), in forward mode (Jacobian–vector products) and under
``torch.func`` transforms. Three things in torch 2.13 stand in the way, and this module removes them:

* **fused kernels without the needed derivatives.** ``nn.TransformerEncoderLayer`` and
  ``nn.MultiheadAttention`` take a fused "fast path" (``aten::_transformer_encoder_layer_fwd``) in eval
  mode, which has no forward-mode derivative; ``F.scaled_dot_product_attention`` picks the flash kernel,
  which has no double backward. :func:`exact_kernels` switches both off (the MHA fast path off, SDPA on
  its math backend) for the duration of a curvlab call and restores the previous settings afterwards.
  Results are identical up to rounding; the math kernels are slower on long sequences.
* **running statistics.** BatchNorm in training mode normalises with the batch's statistics *and*
  updates its running statistics in place. The update would modify the user's buffers and is an
  in-place write of a traced tensor that ``torch.func`` refuses. :func:`stateless_copy` gives a copy of
  the model in which train-mode BatchNorm uses batch statistics without tracking running ones: the same
  function of the batch (the quantity curvlab differentiates: samples are coupled through the batch
  statistics), and the user's buffers are never touched.
* **replaying in-place operations.** ``torch.func.linearize`` replays in-place ops (``out += identity``,
  ``nn.ReLU(inplace=True)``) wrongly, and ``jvp(jacrev(f))`` is wrong through LayerNorm. curvlab's
  defaults use reverse-mode autograd (double backward) or ``jvp`` of ``grad``, which are exact; see
  :mod:`curvlab.operators.sandwich` and :mod:`curvlab.reference.hessian`.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "batch_coupled_modules",
    "exact_kernels",
    "quiet_forward_ad",
    "random_modules",
    "stateless_copy",
]


@contextlib.contextmanager
def exact_kernels() -> Iterator[None]:
    """Run the block with differentiable reference kernels: no MHA fast path, math SDPA.

    Example:
        >>> with exact_kernels():
        ...     torch.backends.mha.get_fastpath_enabled()
        False
        >>> torch.backends.mha.get_fastpath_enabled()
        True
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _train_mode_batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


def batch_coupled_modules(model: nn.Module) -> list[str]:
    """Qualified names of the modules that couple the samples of a batch (BatchNorm in train mode).

    Per-sample quantities (per-sample gradients, per-sample Jacobians) are not defined for them: a
    sample's output depends on the whole batch.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> batch_coupled_modules(net), batch_coupled_modules(net.eval())
        (['1'], [])
    """
    return [name for name, _ in _train_mode_batchnorms(model)]


def random_modules(model: nn.Module) -> list[str]:
    """``"name (Type)"`` of every module that makes the model a random function (train-mode dropout).

    Curvature is defined for a deterministic function: callers refuse such models, naming them.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        >>> random_modules(net), random_modules(net.eval())
        (['1 (Dropout)'], [])
    """
    return [
        f"{name or type(model).__name__} ({type(m).__name__})"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]


def stateless_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that computes the same batch function and never updates buffers.

    Train-mode BatchNorm layers of the copy normalise with batch statistics and track no running
    statistics (``track_running_stats=False``); everything else is copied as it is. The user's model is
    not modified. Models without train-mode BatchNorm are returned as they are (no copy).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).double()
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> before = net[1].running_mean.clone()
        >>> twin = stateless_copy(net)
        >>> out = twin(x)
        >>> torch.equal(net[1].running_mean, before), twin[1].running_mean is None
        (True, True)
        >>> torch.allclose(out, net(x))  # the same function of the batch
        True
    """
    if not _train_mode_batchnorms(model):
        return model
    twin = copy.deepcopy(model)
    for _, bn in _train_mode_batchnorms(twin):
        bn.track_running_stats = False
        bn.running_mean = None
        bn.running_var = None
        bn.num_batches_tracked = None
    return twin


@contextlib.contextmanager
def quiet_forward_ad():
    """Hide the DeprecationWarning torch 2.13 emits when forward-mode AD first loads its decompositions
    (``torch.jit.script``) and the tracing notice of ``linearize``; nothing else is filtered."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        yield
