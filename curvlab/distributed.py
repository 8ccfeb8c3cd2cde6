"""Agreement between the ranks of a ``torch.distributed`` process group before they reduce.

A collective that one rank never reaches blocks the others until the process-group timeout, and
tensors of different shapes abort a rank inside the backend. So before reducing, every rank
contributes one record to a single ``all_gather_object``:

* ``failure``: ``None``, or ``"ExcType: message"`` if this rank raised before it could reduce;
* ``spec``: the name, shape and dtype of every tensor it is about to reduce (plus settings such as the
  loss reduction);
* ``checksum``: a hash of the model's parameters and buffers (ranks must evaluate the same model).

Every rank then checks the same gathered records in the same order, so every rank raises the same
:class:`~curvlab.errors.DistributedError` (naming the rank and the culprit), or none does. The
failing rank joins through :func:`shared_failure`: code that owes an agreement runs inside it, and
an exception raised before the agreement took place is reported to the other ranks instead of
leaving them blocked.

Example (without a process group every call is a no-op):
    >>> with shared_failure("demo"):
    ...     agree({"ggn": ((3, 3), "float64")}, what="demo")
    >>> is_distributed()
    False
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist

from curvlab.errors import DistributedError

__all__ = ["agree", "checksum", "is_distributed", "shared_failure", "tensor_spec"]

#: True while code inside :func:`shared_failure` still owes the other ranks its agreement.
_owed: contextvars.ContextVar[bool] = contextvars.ContextVar("curvlab_agreement_owed", default=False)

_SHOWN = 4  # differences listed in a message


def is_distributed() -> bool:
    """True if a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def checksum(tensors: Iterable[torch.Tensor]) -> str:
    """A hash of the exact values, shapes and dtypes of ``tensors`` (e.g. parameters and buffers).

    Example:
        >>> a = checksum([torch.ones(2)]); a == checksum([torch.ones(2)]), a == checksum([torch.ones(3)])
        (True, False)
    """
    digest = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach()
        digest.update(f"{tuple(t.shape)}{t.dtype};".encode())
        digest.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def tensor_spec(tensors: Mapping[Any, torch.Tensor], *, leading: bool = True) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype)}`` (tuple keys joined by "/"); ``leading=False`` drops the first dimension (rows gathered per rank).

    Example:
        >>> tensor_spec({("ggn", "0"): torch.zeros(2, 3)}, leading=False)
        {'ggn/0': ((3,), 'torch.float32')}
    """
    return {"/".join(map(str, k)) if isinstance(k, tuple) else str(k): (tuple(v.shape[0 if leading else 1:]), str(v.dtype))
            for k, v in tensors.items()}


def agree(spec: Mapping[str, Any], *, parameters: str | None = None, what: str = "curvlab") -> None:
    """Agree with every other rank on ``spec`` and the ``parameters`` checksum, or raise on every rank.

    Call it on every rank right before the collectives that reduce the tensors ``spec`` describes. A
    no-op without a process group.

    Raises:
        DistributedError: a rank failed (inside :func:`shared_failure`), or the ranks' specs or
            checksums differ. Every rank raises the same message.
    """
    _gather_and_check({"failure": None, "spec": dict(spec), "checksum": parameters}, what)


@contextlib.contextmanager
def shared_failure(what: str = "curvlab") -> Iterator[None]:
    """Run code that ends in an :func:`agree`; if it raises before agreeing, tell the other ranks.

    The failing rank takes part in the agreement the others are waiting in, with its error, so every
    rank raises :class:`~curvlab.errors.DistributedError` naming it (the failing rank chains its
    original exception). Without a process group it only runs the code. Also usable as a decorator.
    """
    if not is_distributed():
        yield
        return
    token = _owed.set(True)
    try:
        yield
    except BaseException as err:
        if not _owed.get():  # the agreement already took place: the others are not waiting for us
            raise
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        message = f"{type(err).__name__}: {text}".rstrip(": ")
        records = _gather({"failure": message, "spec": {}, "checksum": None})
        if all(r["failure"] == message for r in records):
            raise  # every rank failed alike: each raises its own error (a caller may fall back, all together)
        try:
            _check(records, what)
        except DistributedError as shared:
            raise shared from err
        raise  # unreachable: a record with a failure always raises
    finally:
        _owed.reset(token)


def _gather(record: dict[str, Any]) -> list[dict[str, Any]]:
    _owed.set(False)
    records: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(records, record)
    return records


def _gather_and_check(record: dict[str, Any], what: str) -> None:
    if is_distributed():
        _check(_gather(record), what)


def _check(records: list[dict[str, Any]], what: str) -> None:
    failed = [(rank, r["failure"]) for rank, r in enumerate(records) if r["failure"] is not None]
    if failed:
        listed = "; ".join(f"rank {rank} raised {message}" for rank, message in failed[:_SHOWN])
        raise DistributedError(f"{what}: {listed}. Every rank stops here; nothing was reduced.")
    first = records[0]
    for rank, other in enumerate(records[1:], start=1):
        if other["spec"] != first["spec"]:
            raise DistributedError(f"{what}: rank {rank} would reduce other tensors than rank 0 ("
                                   f"{_difference(first['spec'], other['spec'], rank)}); nothing was reduced. "
                                   "Every rank must request the same quantities of the same model and loss.")
    sums = [r["checksum"] for r in records]
    if len(set(sums)) > 1:
        groups: dict[str, list[int]] = {}
        for rank, value in enumerate(sums):
            groups.setdefault(str(value), []).append(rank)
        listed = " vs ".join("ranks " + ",".join(map(str, ranks)) for ranks in groups.values())
        raise DistributedError(
            f"{what}: the ranks hold different model parameters or buffers ({listed}); nothing was reduced. "
            "Every rank must evaluate the same model: load the same weights, or broadcast them from rank 0 "
            "(e.g. wrap the model in DistributedDataParallel)."
        )


def _difference(ours: Mapping[str, Any], theirs: Mapping[str, Any], rank: int) -> str:
    only_ours = sorted(set(ours) - set(theirs))
    only_theirs = sorted(set(theirs) - set(ours))
    changed = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    parts = []
    if only_ours:
        parts.append(f"missing on rank {rank}: {', '.join(only_ours[:_SHOWN])}")
    if only_theirs:
        parts.append(f"only on rank {rank}: {', '.join(only_theirs[:_SHOWN])}")
    parts += [f"{k}: {_show(ours[k])} on rank 0, {_show(theirs[k])} on rank {rank}" for k in changed[:_SHOWN]]
    return "; ".join(parts)


def _show(entry: Any) -> str:
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], tuple):
        return f"{list(entry[0])} {str(entry[1]).removeprefix('torch.')}"
    return repr(entry)
