"""The route for models that are not plain ``nn.Sequential``: their ``torch.fx`` graph of modules.

:func:`model_graph` traces a model symbolically (``torch.fx.symbolic_trace``, which inlines custom
containers and keeps ``torch.nn`` modules as leaves) and accepts exactly these nodes: the input,
calls of leaf modules on one node, additions of two nodes (``x + f(x)``: residual connections,
``operator.add``/``torch.add``), and the output. Any other node — a functional call (``torch.relu``,
``x.view``), an in-place operation, a constant — raises :class:`~curvlab.errors.UnsupportedModuleError`
naming the node, before any forward pass.

On a *chain* (every module applied to the previous node, no additions) every quantity is available.
On a graph with branches, square-root factors are propagated backwards through the graph, summed
where a node feeds several consumers (the Jacobian of a sum is the sum of the Jacobians), so every
GGN, MC-Fisher and empirical-Fisher quantity (blocks, diagonals, full, Kronecker, EKFAC) is exact; the
per-sample Hessian recursion and KFRA are defined for chains only (a branch adds cross terms between
paths) and raise — use ``hessian`` (full, through ``torch.func``) on such models.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from curvlab.errors import UnsupportedModuleError

__all__ = ["GraphNode", "ModelGraph", "model_graph"]

_ADD = (operator.add, torch.add)


@dataclass(frozen=True)
class GraphNode:
    """One node: ``kind`` "input", "module" (``target`` = qualified name) or "add"; ``inputs`` are
    positions of earlier nodes."""

    name: str
    kind: str
    target: str
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class ModelGraph:
    """The traced graph of a model: nodes in execution order, and the position of the output node."""

    model_name: str
    nodes: tuple[GraphNode, ...]
    output: int

    @property
    def modules(self) -> list[str]:
        """Qualified names of the called modules, in execution order."""
        return [n.target for n in self.nodes if n.kind == "module"]

    @property
    def is_chain(self) -> bool:
        """True if every node consumes the node before it (a sequence of modules)."""
        return all(n.inputs == (i - 1,) for i, n in enumerate(self.nodes) if i) and self.output == len(self.nodes) - 1

    def first_branch(self) -> str:
        """The name of the first node that makes the graph not a chain."""
        for i, n in enumerate(self.nodes):
            if i and n.inputs != (i - 1,):
                return n.name
        return self.nodes[-1].name


def model_graph(model: nn.Module) -> ModelGraph:
    """The module graph of ``model`` (see the module docstring).

    Example:
        >>> class Skip(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc, self.act, self.out = nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1)
        ...     def forward(self, x):
        ...         h = self.fc(x)
        ...         return self.out(h + self.act(h))
        >>> graph = model_graph(Skip())
        >>> graph.modules, graph.is_chain, graph.first_branch()
        (['fc', 'act', 'out'], False, 'add')
        >>> class Scaled(Skip):
        ...     def forward(self, x):
        ...         return self.out(2 * self.fc(x))
        >>> model_graph(Scaled())
        Traceback (most recent call last):
        ...
        curvlab.errors.UnsupportedModuleError: Scaled: node 'mul' (call_function mul) is not supported; ...
    """
    name = type(model).__qualname__
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as error:  # noqa: BLE001  (any tracing failure means: not verifiable)
        raise UnsupportedModuleError(
            f"{name} is not an nn.Sequential and torch.fx cannot trace it ({type(error).__name__}: {error}); "
            "the hook engine needs a graph of supported modules"
        ) from None
    position: dict[fx.Node, int] = {}
    nodes: list[GraphNode] = []
    output = -1

    def inputs_of(node: fx.Node, count: int) -> tuple[int, ...] | None:
        args = node.args
        if node.kwargs or len(args) != count or not all(isinstance(a, fx.Node) and a in position for a in args):
            return None
        return tuple(position[a] for a in args)

    for node in graph.nodes:
        if node.op == "placeholder":
            if nodes:
                raise UnsupportedModuleError(f"{name}.forward takes more than one input (node {node.name!r})")
            position[node] = 0
            nodes.append(GraphNode(node.name, "input", "", ()))
            continue
        if node.op == "output":
            arg = node.args[0]
            if not isinstance(arg, fx.Node) or arg not in position:
                raise UnsupportedModuleError(f"{name} must return a single tensor computed by its modules")
            output = position[arg]
            continue
        target = getattr(node.target, "__name__", str(node.target))
        inputs = None
        if node.op == "call_module":
            inputs, kind = inputs_of(node, 1), "module"
        elif node.op == "call_function" and node.target in _ADD:
            inputs, kind = inputs_of(node, 2), "add"
        if inputs is None:
            raise UnsupportedModuleError(
                f"{name}: node {node.name!r} ({node.op} {target}) is not supported; the hook engine accepts "
                "module calls on one tensor and additions of two (use curvlab.reference for other models)"
            )
        position[node] = len(nodes)
        nodes.append(GraphNode(node.name, kind, str(node.target) if kind == "module" else "", inputs))
    return ModelGraph(name, tuple(nodes), output)
