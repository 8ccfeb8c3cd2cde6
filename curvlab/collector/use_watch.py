"""``UseWatch``: which layers' parameters a torch function receives outside the layer's own call.

Forward hooks see a layer's calls, but not a parameter that the model's code uses directly
(``F.linear(x, self.embed.weight)``, a tied weight, ``nn.MultiheadAttention`` reading its
``out_proj.weight`` without calling ``out_proj``). Anything that reads a layer's parameters from its
calls alone (the collector's normal form, the summary's injected directions) would miss those uses;
the watch names them so that their layers take an exact route instead.
"""

from __future__ import annotations

from torch.overrides import TorchFunctionMode

__all__ = ["UseWatch"]


class UseWatch(TorchFunctionMode):
    """A torch function mode that records ``{layer: function}`` for every tensor of ``owners`` (by
    ``id``) passed to a torch function while the innermost running layer (``stack``, pushed and
    popped by the caller's module hooks) is neither its owner nor one of the owner's ``delegates``.

    Example:
        >>> import torch
        >>> from torch.nn import functional as F
        >>> weight = torch.ones(2, 2)
        >>> watch = UseWatch({id(weight): "fc"}, {})
        >>> with watch:
        ...     _ = F.linear(torch.ones(1, 2), weight)       # no layer running: an outside use
        >>> watch.outside
        {'fc': 'linear'}
    """

    def __init__(self, owners: dict[int, str], delegates: dict[str, set[str]]):
        super().__init__()
        self.owners = owners
        self.delegates = delegates  # {layer: layers whose parameters its own forward may use}
        self.stack: list[str] = []
        self.outside: dict[str, str] = {}
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused:
            for arg in (*args, *kwargs.values()):
                for item in arg if isinstance(arg, (list, tuple)) else (arg,):
                    owner = self.owners.get(id(item))
                    if owner is None:
                        continue
                    top = self.stack[-1] if self.stack else None
                    if top != owner and owner not in self.delegates.get(top, ()):
                        self.outside.setdefault(owner, getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)
