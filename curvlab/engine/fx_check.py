"""The route for models that are not plain ``nn.Sequential``: verify with ``torch.fx`` that they are chains.

A custom module whose ``forward`` calls its submodules one after another (``x = self.fc(x)``;
``x = self.act(x)``; …) is supported: :func:`chain_from_fx` traces it symbolically
(``torch.fx.symbolic_trace``, which inlines custom submodules and keeps ``torch.nn`` modules as
leaves) and accepts the graph only if it is input -> leaf module -> leaf module -> … -> output. Any
other node — a functional call (``torch.relu``, ``x.view``), an in-place operation, a branch or a skip
connection (``operator.add``) — raises :class:`~curvlab.errors.UnsupportedModuleError` naming the node,
before any forward pass. Branching models (residual blocks) are not supported by the hook engine:
the propagation of per-sample curvature through a join needs cross terms between branches; use the
dense references (:mod:`curvlab.reference`) or matrix-free operators for them.
"""

from __future__ import annotations

from torch import fx, nn

from curvlab.errors import UnsupportedModuleError

__all__ = ["chain_from_fx"]


def chain_from_fx(model: nn.Module) -> list[str]:
    """Qualified names of the leaf modules ``model.forward`` calls, in order, if it is a chain.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc, self.act, self.out = nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)
        ...     def forward(self, x):
        ...         return self.out(self.act(self.fc(x)))
        >>> chain_from_fx(Net())
        ['fc', 'act', 'out']
        >>> class Skip(Net):
        ...     def forward(self, x):
        ...         h = self.fc(x)
        ...         return self.out(h + self.act(h))
        >>> chain_from_fx(Skip())
        Traceback (most recent call last):
        ...
        curvlab.errors.UnsupportedModuleError: Skip is not a chain of modules: node 'add' (call_function add) ...
    """
    name = type(model).__qualname__
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as error:  # noqa: BLE001  (any tracing failure means: not verifiable)
        raise UnsupportedModuleError(
            f"{name} is not an nn.Sequential and torch.fx cannot trace it ({type(error).__name__}: {error}); "
            "the hook engine needs a chain of supported modules"
        ) from None
    chain: list[str] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise UnsupportedModuleError(f"{name}.forward takes more than one input (node {node.name!r})")
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise UnsupportedModuleError(f"{name} does not return the output of its last module")
            continue
        target = getattr(node.target, "__name__", node.target)
        ok = node.op == "call_module" and len(node.args) == 1 and node.args[0] is previous and not node.kwargs
        if not ok:
            raise UnsupportedModuleError(
                f"{name} is not a chain of modules: node {node.name!r} ({node.op} {target}) is a functional "
                "operation, a second input or a branch/skip connection; the hook engine supports chains of "
                "supported modules only (use curvlab.reference or the operators for branching models)"
            )
        chain.append(str(node.target))
        previous = node
    return chain
