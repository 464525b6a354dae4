"""Reverse-mode differentiation as a graph transformation: ``grad`` builds the
backward graph in the same IR, so it can be inspected, optimized and differentiated again."""
from __future__ import annotations

from collections.abc import Sequence

from .errors import DTypeError, GraphcError, ShapeError
from .graph import toposort
from .ir import Node, as_node, constant, origin_of
from .ops.elementwise import cast
from .ops.shape import broadcast_to, sum_to
from .shapes import fmt_shape


def _differentiable(n: Node) -> bool:
    return n.dtype.kind == "f" or bool(n.op.extra.get("multi"))


def grad(loss: Node, wrt: Node | Sequence[Node]) -> Node | list[Node]:
    """Symbolic gradients of the scalar ``loss`` with respect to ``wrt``.

    >>> gW, gb = gc.grad(loss, [W, b])
    """
    single = isinstance(wrt, Node)
    targets = [wrt] if single else list(wrt)
    if not isinstance(loss, Node):
        raise GraphcError(f"grad: loss must be a graph node, got {type(loss).__name__}")
    if loss.shape != ():
        raise ShapeError(f"grad of a non-scalar: {loss.label()} has shape {fmt_shape(loss.shape)}; reduce it first, e.g. gc.sum")
    if loss.dtype.kind != "f":
        raise DTypeError(f"grad of {loss.label()}: dtype {loss.dtype} is not float")
    for w in targets:
        if not isinstance(w, Node):
            raise GraphcError(f"grad: wrt must be graph nodes, got {type(w).__name__}")
        if w.dtype.kind != "f":
            raise DTypeError(f"grad with respect to {w.label()}: dtype {w.dtype} is not float")

    order = toposort([loss])
    # Only nodes on a path from some target to the loss need adjoints.
    live = {w.id for w in targets}
    for n in order:
        if any(i.id in live for i in n.inputs):
            live.add(n.id)

    pending: dict[int, list] = {loss.id: [constant(1.0, loss.dtype)]}
    total: dict[int, Node] = {}
    for n in reversed(order):
        parts = pending.pop(n.id, None)
        if not parts:
            continue
        with origin_of(n):
            if n.op.extra.get("multi"):  # a node with several results (scan): one adjoint per result
                g = {}
                for p in parts:
                    g[p.index] = g[p.index] + p.value if p.index in g else p.value
            else:
                g = parts[0]
                for p in parts[1:]:  # a node used several times sums its adjoints
                    g = g + p
        if isinstance(g, Node):
            if g.adjoint_of is None and g.origin is not None:
                g.adjoint_of = n
            total[n.id] = g
        if n.op.grad is None or not any(i.id in live and _differentiable(i) for i in n.inputs):
            continue
        with origin_of(n):
            contribs = n.op.grad(g, n)
            for inp, c in zip(n.inputs, contribs):
                if c is None or inp.id not in live or not _differentiable(inp):
                    continue
                if inp.op.extra.get("multi"):  # the adjoint of one of its results
                    pending.setdefault(inp.id, []).append(c)
                    continue
                c = as_node(c, inp)
                if c.shape != inp.shape:  # broadcast operands sum their adjoints back
                    c = sum_to(c, inp.shape) if c.ndim >= inp.ndim else broadcast_to(c, inp.shape)
                pending.setdefault(inp.id, []).append(cast(c, inp.dtype))
    out = [total[w.id] if w.id in total else broadcast_to(constant(0.0, w.dtype), w.shape) for w in targets]
    return out[0] if single else out
