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
* **third derivatives of normalisation layers.** The native ``layer_norm`` and ``batch_norm`` kernels
  have correct first and second derivatives but wrong third ones, in reverse and in forward mode alike
  (on a tanh∘LayerNorm test function: 1.04 by triple backward, 1.90 by nested ``jvp``, 3.10 by finite
  differences and by the same function written with elementary ops). :func:`elementary_norms` swaps
  ``F.layer_norm``, ``F.batch_norm`` and ``F.group_norm`` for elementary-op versions (same values,
  same running-statistics updates); :func:`exact_kernels` applies it when ``third_order=True``.
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
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

__all__ = [
    "batch_coupled_modules",
    "elementary_norms",
    "exact_kernels",
    "forward_ad_kernels",
    "quiet_forward_ad",
    "random_modules",
    "reverse_jacobian",
    "stateless_copy",
]


@contextlib.contextmanager
def exact_kernels(third_order: bool = False) -> Iterator[None]:
    """Run the block with differentiable reference kernels: no MHA fast path, math SDPA, and with
    ``third_order`` elementary normalisation layers (:func:`elementary_norms`).

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
        with sdpa_kernel(SDPBackend.MATH), (elementary_norms() if third_order else contextlib.nullcontext()):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


@contextlib.contextmanager
def forward_ad_kernels(model: nn.Module) -> Iterator[None]:
    """Forward-mode AD through ``model``: on CPU, float32 ``nn.LSTM``/``nn.GRU`` run a oneDNN kernel
    (``mkldnn_rnn_layer``) that has no forward derivative, so oneDNN is switched off in the block when
    the model holds a recurrent layer (other models keep it: their convolutions are faster with it).

    Example:
        >>> lstm = nn.LSTM(3, 4, batch_first=True)
        >>> with forward_ad_kernels(lstm):
        ...     torch.backends.mkldnn.enabled
        False
    """
    if not any(isinstance(m, nn.RNNBase) for m in model.modules()):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a notice about TF32 on Intel GPUs
        with torch.backends.mkldnn.flags(enabled=False):
            yield


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    out = centred / (centred.square().mean(dims, keepdim=True) + eps).sqrt()
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def _channel_affine(out, weight, bias):
    shape = (1, -1) + (1,) * (out.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out if bias is None else out + bias.reshape(shape)


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
                momentum=0.1, eps=1e-5):  # fmt: skip
    dims = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)
        if running_mean is not None:  # the kernel's update: unbiased variance, in place, no graph
            count = x.numel() // x.shape[1]
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.reshape(-1))
                running_var.mul_(1 - momentum).add_(momentum * var.reshape(-1) * count / max(count - 1, 1))
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    return _channel_affine((x - mean) / (var + eps).sqrt(), weight, bias)


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    grouped = x.reshape(x.shape[0], num_groups, -1)
    centred = grouped - grouped.mean(-1, keepdim=True)
    out = (centred / (centred.square().mean(-1, keepdim=True) + eps).sqrt()).reshape(x.shape)
    return _channel_affine(out, weight, bias)


_ELEMENTARY = {
    F.layer_norm: _layer_norm,
    F.batch_norm: _batch_norm,
    F.group_norm: _group_norm,
}


class _ElementaryNorms(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        replacement = _ELEMENTARY.get(func)
        if replacement is not None:
            return replacement(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def elementary_norms() -> Iterator[None]:
    """Inside the block, ``F.layer_norm``, ``F.batch_norm`` and ``F.group_norm`` (and the modules that
    call them) are computed from elementary ops, whose derivatives of every order are exact.

    Example:
        >>> ln = nn.LayerNorm(4).double()
        >>> x = torch.randn(3, 4, dtype=torch.float64)
        >>> with elementary_norms():
        ...     out = ln(x)
        >>> torch.allclose(out, ln(x))
        True
    """
    with _ElementaryNorms():
        yield


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


#: Elements of one chunk of batched vector–Jacobian products (rows × P), about 128 MB in float64.
_CHUNK_ELEMENTS = 2**24


def reverse_jacobian(function, *inputs: torch.Tensor) -> torch.Tensor:
    """[K, P]: the Jacobian of ``function`` (tensors ↦ any tensor with K entries) by reverse mode.

    P is the total size of ``inputs``; columns follow their flattened concatenation. One forward
    pass; the K vector–Jacobian products with unit cotangents are taken in chunks as batched backward
    passes (``is_grads_batched``), or one by one where an op has no batching rule. Plain autograd is
    exact for every op, in-place ones included.

    Example:
        >>> f = lambda t: torch.stack([t[0] * t[1], t[1] ** 2])
        >>> reverse_jacobian(f, torch.tensor([2.0, 3.0]))
        tensor([[3., 2.],
                [0., 6.]])
    """
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    with torch.enable_grad():
        values = function(*leaves).reshape(-1)
    size, width = values.numel(), sum(t.numel() for t in leaves)
    out = torch.zeros(size, width, dtype=values.dtype, device=values.device)
    if not values.requires_grad:
        return out

    def vjp(seeds, batched):
        grads = torch.autograd.grad(
            values, leaves, seeds, retain_graph=True, is_grads_batched=batched,
            allow_unused=True, materialize_grads=True,
        )  # fmt: skip
        return torch.cat([g.reshape(seeds.shape[0] if batched else 1, -1) for g in grads], 1)

    chunk = max(1, min(size, _CHUNK_ELEMENTS // max(width, size)))
    batched = True
    for start in range(0, size, chunk):
        stop = min(start + chunk, size)
        seeds = torch.zeros(stop - start, size, dtype=values.dtype, device=values.device)
        seeds[torch.arange(stop - start), torch.arange(start, stop)] = 1
        if batched:
            try:
                out[start:stop] = vjp(seeds, True)
                continue
            except (RuntimeError, NotImplementedError):
                batched = False  # an op without a batching rule for its backward: loop instead
        for k in range(stop - start):
            out[start + k] = vjp(seeds[k], False)[0]
    return out
