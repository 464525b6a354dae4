"""Simplification rules: constant folding, algebraic identities and numerical stability.

Each rule looks at one node (whose inputs are already simplified) and returns a
replacement of the same shape and dtype, or None."""
from __future__ import annotations

from math import prod

import numpy as np

from .. import ops
from ..ir import Node, constant, make
from ..ops.elementwise import stable_log
from ..shapes import is_concrete

FOLD_LIMIT = 1 << 16  # larger constants stay computed, not stored in the program


def _const(n: Node, value=None) -> bool:
    if n.op.name != "constant":
        return False
    return value is None or bool(np.all(n.attrs["value"] == value))


def _fit(x: Node, like: Node) -> Node:
    """``x`` broadcast (and cast) to the shape and dtype of ``like``."""
    x = ops.cast(x, like.dtype)
    return ops.broadcast_to(x, like.shape) if x.shape != like.shape else x


def fold_constants(n: Node) -> Node | None:
    """Evaluate ops whose inputs are all constants."""
    if n.op.name == "count" and is_concrete(n.attrs["dims"]):
        return constant(prod(n.attrs["dims"]), n.dtype)
    if n.op.kind in ("source", "collective") or not n.inputs or n.op.ref is None:  # (a collective talks to other ranks)
        return None
    if not all(_const(i) for i in n.inputs) or not is_concrete(n.shape) or prod(n.shape) > FOLD_LIMIT:
        return None
    with np.errstate(all="ignore"):
        return constant(np.asarray(n.op.ref(*(i.attrs["value"] for i in n.inputs), **n.attrs)), n.dtype)


def algebraic(n: Node) -> Node | None:
    """x*1, x+0, --x, x**2, transposes and reshapes of themselves, identity casts, ..."""
    name, ins = n.op.name, n.inputs
    a = ins[0] if ins else None
    b = ins[1] if len(ins) > 1 else None
    if name == "add":
        if _const(b, 0):
            return _fit(a, n)
        if _const(a, 0):
            return _fit(b, n)
        return _sum_of_unslices(n)
    elif name == "sub":
        if _const(b, 0):
            return _fit(a, n)
        if _const(a, 0):
            return _fit(-b, n)
    elif name == "mul":
        if _const(b, 1):
            return _fit(a, n)
        if _const(a, 1):
            return _fit(b, n)
        if _const(b, -1):
            return _fit(-a, n)
        if _const(a, -1):
            return _fit(-b, n)
    elif name == "div" and _const(b, 1):
        return _fit(a, n)
    elif name == "neg" and a.op.name == "neg":
        return a.inputs[0]
    elif name == "pow" and _const(b) and b.attrs["value"].size == 1:
        e = float(b.attrs["value"])
        if e == 1:
            return _fit(a, n)
        if e == 2:
            return _fit(a * a, n)
        if e == 0.5:
            return _fit(ops.sqrt(a), n)
    elif name in ("stop_gradient",):
        return a  # gradients are already taken when a program is compiled
    elif name == "where" and b is ins[2]:
        return _fit(b, n)
    elif name == "transpose" and a.op.name == "transpose":
        inner, outer = a.attrs["axes"], n.attrs["axes"]
        return ops.transpose(a.inputs[0], tuple(inner[k] for k in outer))
    elif name in ("reshape", "broadcast_to") and a.op.name == name:
        return make(name, (a.inputs[0],), shape=n.shape) if name == "reshape" else ops.broadcast_to(a.inputs[0], n.shape)
    elif name == "reshape" and a.shape == n.shape:
        return a
    elif name == "reshape" and a.op.name == "broadcast_to" and all(d == 1 for d in a.inputs[0].shape):
        # one value broadcast and reshaped: broadcast it straight to the final shape
        return ops.broadcast_to(ops.reshape(a.inputs[0], (1,) * n.ndim), n.shape)
    elif name == "sum":
        r = _sum_of_broadcast(n)
        return r if r is not None else _sum_of_one_hot(n)
    elif name == "pick":
        return _pick_through(n)
    return None


def _sum_of_unslices(n: Node) -> Node | None:
    """A sum of the adjoints of slices that tile one axis (the gates of an LSTM read as
    ``a[:, :H]``, ``a[:, H:2H]``, ...) is their concatenation: one copy, not a zero-filled array
    per slice and the adds."""
    leaves, stack = [], [n]
    while stack:
        m = stack.pop()
        if m.op.name == "add" and m.shape == n.shape and m.dtype == n.dtype:
            stack.extend(m.inputs)
        elif m.op.name == "unslice" and tuple(m.attrs["shape"]) == n.shape:
            leaves.append(m)
        else:
            return None
    axes = {k for m in leaves for k, t in enumerate(m.attrs["index"]) if t is not None}
    if len(leaves) < 2 or len(axes) != 1:
        return None
    k = axes.pop()
    spans = [m.attrs["index"][k] for m in leaves]
    if any(not isinstance(a, int) or not isinstance(b, int) or step != 1 for a, b, step in spans):
        return None
    order = sorted(range(len(leaves)), key=lambda j: spans[j][0])
    at = 0
    for j in order:
        if spans[j][0] != at:
            return None  # a gap or an overlap
        at = spans[j][1]
    if at != n.shape[k]:
        return None
    return ops.concatenate([leaves[j].inputs[0] for j in order], axis=k)


def _pick_through(n: Node) -> Node | None:
    """pick(f(a, b), y) = f(pick(a, y), b[..., 0]) for elementwise f whose operands are
    full rows or constant along the last axis: gather first, compute on one entry per row."""
    z, y = n.inputs
    if z.op.kind != "elementwise" or z.op.name == "cast":
        return None
    parts = []
    for a in z.inputs:
        lifted = (1,) * (z.ndim - a.ndim) + a.shape
        if lifted == z.shape:
            parts.append(ops.pick(ops.reshape(a, z.shape), y))
        elif lifted[-1] == 1:
            parts.append(ops.reshape(a, lifted[:-1]) if a.ndim == z.ndim else ops.reshape(a, a.shape[:-1]) if a.ndim else a)
        else:
            return None
    return make(z.op.name, tuple(parts), **z.attrs)


def _sum_of_broadcast(n: Node) -> Node | None:
    """sum(broadcast_to(x), axes) over broadcast axes only is x times the count."""
    src = n.inputs[0]
    if src.op.name != "broadcast_to":
        return None
    x, axes = src.inputs[0], n.attrs["axes"]
    lifted = (1,) * (src.ndim - x.ndim) + x.shape
    if any(lifted[a] != 1 for a in axes):
        return None
    dims = tuple(src.shape[a] for a in axes)
    count = prod(dims) if is_concrete(dims) else make("count", (), dims=dims, dtype=n.dtype)
    kept = tuple(1 if i in axes else d for i, d in enumerate(lifted))
    return ops.broadcast_to(ops.reshape(ops.reshape(x, kept) * count, kept if n.attrs["keepdims"] else n.shape), n.shape)


def _sum_of_one_hot(n: Node) -> Node | None:
    """sum(one_hot(y) * z, last axis) picks one entry per row: pick(z, y)."""
    src, axes = n.inputs[0], n.attrs["axes"]
    if src.op.name != "mul" or axes != (src.ndim - 1,):
        return None
    for oh, z in (src.inputs, src.inputs[::-1]):
        if oh.op.name == "one_hot" and oh.shape == z.shape == src.shape:
            return ops.reshape(ops.pick(z, oh.inputs[0]), n.shape)
    return None


def stability(n: Node) -> Node | None:
    """Rewrites that keep values finite (log(softmax) -> log_softmax, log(sigmoid) ->
    -softplus(-x), log(1+x) -> log1p(x), log(exp(x)) -> x) where other rewrites made them
    possible; ``gc.log`` applies the same rules as the graph is built."""
    return stable_log(n.inputs[0]) if n.op.name == "log" else None
