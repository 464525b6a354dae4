"""Loops in the graph: ``scan``, with ``jax.lax.scan``'s semantics.

``scan(body, init, xs)`` traces ``body(carry, x) -> (carry, y)`` once into a *body*: a graph over
placeholders (``arg`` nodes) for the carry, the per-step slice of ``xs`` and the values it closes
over. Whatever in the body does not vary per step (a param, ``W.T``, a constant table) is computed
outside and passed in as a closure value, so loop-invariant work is hoisted by construction.

One ``scan`` node holds the loop; ``scan_get`` nodes read its results: the final carries, then
the per-step outputs stacked along a new leading axis. The gradient of a scan is a scan: the body's
own vector-Jacobian product, run the other way over the per-step values it needs (residuals),
which the forward scan stacks as extra outputs. A pass merges that augmented scan with the
original (``passes/scans.py``), so the forward runs once.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import DTypeError, GraphcError, ShapeError, fmt_site, user_site
from ..ir import OPS, Node, as_node, clone, defop, make
from ..shapes import check_dim, fmt_shape


# --- placeholders and bodies ---------------------------------------------------------------------
def _no_infer(*a, **k):  # built directly, never through make()
    raise AssertionError


defop("arg", "source", _no_infer, None)
ROLES = ("carry", "x", "closure")


def arg(role: str, k: int, shape: tuple, dtype) -> Node:
    """A body placeholder: the carry, the step's slice of xs, or a value the body closes over."""
    return Node(OPS["arg"], (), {"role": role}, tuple(shape), np.dtype(dtype), name=f"{role}{k}")


@dataclass(frozen=True, eq=False)
class Body:
    """A loop body: placeholders in, values out. ``family`` is shared by the bodies that differ
    only by extra outputs (the residuals a gradient stacks), so a pass can merge their scans."""
    carry: tuple          # placeholders, one per carry leaf
    xs: tuple             # placeholders: the per-step slices of xs
    closure: tuple        # placeholders: loop-invariant values computed outside
    carry_out: tuple      # the next carry, one per carry leaf
    ys: tuple             # per-step outputs
    family: object = field(default_factory=object)

    @property
    def args(self) -> tuple:
        return self.carry + self.xs + self.closure

    @property
    def outputs(self) -> tuple:
        return self.carry_out + self.ys

    def key(self) -> str:
        """A structural hash, the same in every process (for the disk cache's graph key)."""
        if not hasattr(self, "_key"):
            from ..graph import structure_key
            object.__setattr__(self, "_key", structure_key(list(self.outputs), list(self.args), []))
        return self._key

    def __repr__(self) -> str:
        return f"Body({self.key()}: {len(self.carry)} carries, {len(self.xs)} xs, {len(self.closure)} closed over, " \
               f"{len(self.ys)} ys)"


def varying(roots, placeholders) -> set[int]:
    """Ids of the nodes reachable from ``roots`` that depend on some of ``placeholders``."""
    from ..graph import toposort
    out = {p.id for p in placeholders}
    for n in toposort(list(roots)):
        if n.id not in out and any(i.id in out for i in n.inputs):
            out.add(n.id)
    return out


SCALAR_VIEWS = ("reshape", "broadcast_to")
VIEW_OPS = ("reshape", "broadcast_to", "transpose", "slice", "stop_gradient")


def _inline(n: Node) -> bool:
    """Values a body keeps as its own nodes rather than closing over: a single constant, and
    broadcasts of one (so the body's passes still see that ``g * ones`` is ``g``)."""
    while n.op.name in SCALAR_VIEWS:
        n = n.inputs[0]
    return n.op.name == "constant" and n.attrs["value"].size == 1


def substitute(roots: list[Node], subst: dict[int, Node]) -> list[Node]:
    """``roots`` with the nodes in ``subst`` (by id) replaced; only what the roots need through
    unreplaced nodes is rebuilt."""
    from ..graph import toposort
    need, stack = set(), list(roots)
    while stack:
        n = stack.pop()
        if n.id in need:
            continue
        need.add(n.id)
        if n.id not in subst:
            stack.extend(n.inputs)
    memo: dict[int, Node] = {}
    for n in toposort(list(roots)):
        if n.id not in need:
            continue
        if n.id in subst:
            memo[n.id] = subst[n.id]
            continue
        ins = tuple(memo[i.id] for i in n.inputs)
        memo[n.id] = clone(n, ins) if any(a is not b for a, b in zip(ins, n.inputs)) else n
    return [memo[r.id] for r in roots]


def close_over(carry: tuple, xs: tuple, carry_out: list, ys: list, family=None) -> tuple[Body, list[Node]]:
    """A body from a traced graph: every value that does not vary per step (whatever does not depend
    on ``carry`` or ``xs``) becomes a closure placeholder, and the outer value behind it is returned
    (computed outside the loop: loop-invariant code is hoisted)."""
    roots = list(carry_out) + list(ys)
    per_step = varying(roots, carry + xs)
    captured: dict[int, Node] = {}
    from ..graph import toposort
    for n in toposort(roots):
        if n.id in per_step:
            for i in n.inputs:
                if i.id not in per_step and not _inline(i):
                    captured.setdefault(i.id, i)
    for r in roots:
        if r.id not in per_step and not _inline(r) and r.op.name != "arg":
            captured.setdefault(r.id, r)
    outer = list(captured.values())
    closure = tuple(arg("closure", k, v.shape, v.dtype) for k, v in enumerate(outer))
    new = substitute(roots, {v.id: p for v, p in zip(outer, closure)})
    nc = len(carry_out)
    body = Body(tuple(carry), tuple(xs), closure, tuple(new[:nc]), tuple(new[nc:]),
                family if family is not None else object())
    return body, outer


# --- the ops -------------------------------------------------------------------------------------
def _infer_scan(*inputs, body: Body, length, reverse: bool):
    if len(inputs) != len(body.args):
        raise GraphcError(f"scan: {len(inputs)} inputs for a body of {len(body.args)} arguments")
    for v, p in zip(inputs, body.args):
        role = p.attrs["role"]
        want = ((length,) + p.shape) if role == "x" else p.shape
        if tuple(v.shape) != tuple(want) or v.dtype != p.dtype:
            raise ShapeError(f"scan: {role} {v.label()} is {v.dtype}{fmt_shape(v.shape)}, the body expects "
                             f"{p.dtype}{fmt_shape(want)}")
    return (), np.dtype(bool)  # no value of its own: scan_get reads its results


def output_type(body: Body, length, k: int) -> tuple[tuple, np.dtype]:
    """Shape and dtype of a scan's result ``k``: a final carry, or a stacked per-step output."""
    if k < len(body.carry_out):
        v = body.carry_out[k]
        return v.shape, v.dtype
    v = body.ys[k - len(body.carry_out)]
    return (length,) + tuple(v.shape), v.dtype


def _infer_get(s, index: int):
    return output_type(s.attrs["body"], s.attrs["length"], index)


class Part:
    """The adjoint of one result of a node with several (a scan): autodiff sums these per index."""

    __slots__ = ("index", "value")

    def __init__(self, index: int, value: Node):
        self.index, self.value = index, value


defop("scan", "scan", _infer_scan, None, lambda g, n: scan_grad(g, n), multi=True)
defop("scan_get", "scan_get", _infer_get, lambda results, index: results[index],
      lambda g, n: [Part(n.attrs["index"], g)])


def results(s: Node) -> list[Node]:
    """Every result of scan node ``s``, in order."""
    return [make("scan_get", (s,), index=k) for k in range(len(s.attrs["body"].outputs))]


# --- pytrees -------------------------------------------------------------------------------------
def flatten(tree) -> tuple[list, object]:
    """Leaves of nested tuples, lists and dicts (None is an empty subtree), and the structure."""
    if tree is None:
        return [], None
    if isinstance(tree, (tuple, list)):
        leaves, defs = [], []
        for t in tree:
            lv, d = flatten(t)
            leaves += lv
            defs.append((len(lv), d))
        return leaves, (type(tree), tuple(defs))
    if isinstance(tree, dict):
        keys = sorted(tree)
        leaves, d = flatten([tree[k] for k in keys])
        return leaves, (dict, tuple(keys), d)
    return [tree], "leaf"


def unflatten(tdef, leaves: list):
    if tdef is None:
        return None
    if tdef == "leaf":
        return leaves[0]
    if tdef[0] is dict:
        return dict(zip(tdef[1], unflatten(tdef[2], leaves)))
    out, at = [], 0
    for n, d in tdef[1]:
        out.append(unflatten(d, leaves[at:at + n]))
        at += n
    return tdef[0](out)


def _describe(tdef) -> str:
    if tdef is None:
        return "None"
    if tdef == "leaf":
        return "*"
    if tdef[0] is dict:
        return "{" + ", ".join(f"{k!r}: ..." for k in tdef[1]) + "}"
    inner = ", ".join(_describe(d) for _, d in tdef[1])
    return f"({inner}{',' if len(tdef[1]) == 1 else ''})" if tdef[0] is tuple else f"[{inner}]"


# --- the user's function -------------------------------------------------------------------------
def scan(body: Callable, init, xs=None, length=None, reverse: bool = False):
    """Run ``body(carry, x) -> (carry, y)`` over the leading axis of ``xs`` (``jax.lax.scan``):
    returns the final carry and the ys stacked along a new leading axis. ``carry``, ``x`` and ``y``
    may be nested tuples, lists or dicts of nodes; ``xs=None`` runs ``length`` steps with ``x=None``;
    ``length`` may be a symbolic dim. The body is traced once and compiled once, whatever the
    number of steps; params and other values it uses are closed over.

    >>> def step(h, x):
    ...     h = gc.tanh(x @ Wx + h @ Wh)
    ...     return h, h
    >>> h_last, hs = gc.scan(step, h0, xs)     # xs: (T, batch, features), hs: (T, batch, hidden)
    """
    site = user_site()

    def fail(kind, msg):
        return kind(f"scan: {msg} ({fmt_site(site)})")

    init_leaves, init_def = flatten(init)
    init_leaves = [as_node(v) for v in init_leaves]
    xs_leaves, xs_def = flatten(xs)
    xs_leaves = [as_node(v) for v in xs_leaves]
    for v in xs_leaves:
        if v.ndim == 0:
            raise fail(ShapeError, f"xs {v.label()} is a scalar: xs need a leading axis to scan over")
    lengths = {v.shape[0] for v in xs_leaves}
    if length is not None:
        try:
            length = check_dim(length)
        except GraphcError as e:
            raise fail(ShapeError, f"length: {e}") from None
        lengths.add(length)
    if len(lengths) != 1:
        if not lengths:
            raise fail(GraphcError, "give xs or length: the number of steps is unknown")
        detail = ", ".join(f"{v.label()} has {v.shape[0]}" for v in xs_leaves)
        raise fail(ShapeError, f"xs disagree on the number of steps ({detail}"
                   + (f"; length={length}" if length is not None else "") + ")")
    T = lengths.pop()
    carry = tuple(arg("carry", k, v.shape, v.dtype) for k, v in enumerate(init_leaves))
    xph = tuple(arg("x", k, v.shape[1:], v.dtype) for k, v in enumerate(xs_leaves))
    out = body(unflatten(init_def, list(carry)), unflatten(xs_def, list(xph)))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise fail(GraphcError, f"body must return (carry, y), got {type(out).__name__}")
    new_leaves, new_def = flatten(out[0])
    if new_def != init_def:
        raise fail(ShapeError, f"body returned a carry of structure {_describe(new_def)}, but init has "
                   f"{_describe(init_def)}")
    new_leaves = [as_node(v, p) for v, p in zip(new_leaves, carry)]
    for k, (v, p) in enumerate(zip(new_leaves, carry)):
        if v.shape != p.shape:
            raise fail(ShapeError, f"carry {k}: body returned {fmt_shape(v.shape)} ({fmt_site(v.site)}), but the "
                       f"carry is {fmt_shape(p.shape)}; a carry keeps its shape from step to step")
        if v.dtype != p.dtype:
            raise fail(DTypeError, f"carry {k}: body returned {v.dtype} ({fmt_site(v.site)}), but the carry is "
                       f"{p.dtype}; cast it with .astype('{p.dtype}')")
    y_leaves, y_def = flatten(out[1])
    y_leaves = [as_node(v) for v in y_leaves]
    b, outer = close_over(carry, xph, new_leaves, y_leaves)
    s = Node(OPS["scan"], tuple(init_leaves + xs_leaves + outer), {"body": b, "length": T, "reverse": bool(reverse)},
             (), np.dtype(bool), site=site)
    got = results(s)
    nc = len(carry)
    return unflatten(init_def, got[:nc]), unflatten(y_def, got[nc:])


# --- the gradient ----------------------------------------------------------------------------------
def _zeros(shape, dtype) -> Node:
    from ..ir import constant
    from .shape import broadcast_to
    return broadcast_to(constant(0.0, dtype), shape)


CHEAP = {"add", "sub", "mul", "neg", "where", "cast", "maximum", "minimum", "abs", "sign", "square", "lt", "le", "gt",
         "ge", "eq", "ne", "logical_and", "logical_or", "logical_not"}


def _fewer_residuals(residuals: dict[int, Node], per_step: set, x_pos: dict) -> dict[int, Node]:
    """Stack fewer per-step values: a residual computed by cheap elementwise ops (no transcendental
    function) from per-step values of no more bytes is recomputed in the backward body from those
    (``1 - y * y`` from ``y``; the step's x costs nothing, it is stacked already)."""
    from math import prod
    cost = lambda v: 0 if v.id in x_pos else prod(d if isinstance(d, int) else 64 for d in v.shape) * v.dtype.itemsize
    res = dict(residuals)
    changed = True
    while changed:
        changed = False
        for r in list(res.values()):
            if r.op.name not in CHEAP:
                continue
            ins = {}
            for i in r.inputs:
                while i.op.name in VIEW_OPS and i.inputs[0].id in per_step:
                    i = i.inputs[0]
                if i.id in per_step and i.id not in res:
                    ins[i.id] = i
            if sum(cost(i) for i in ins.values()) <= cost(r):
                del res[r.id]
                res.update(ins)
                changed = True
    return res


def _sum_over_steps(term: Node, per: set):
    """How a closure's per-step adjoint ``term`` sums over steps outside the loop, if it can:
    ("matmul", [p, q], p_transposed) for ``p @ q`` of 2-d per-step values (``h.T @ d``: h is
    stacked, not its transpose), ("sum", [v], axes) for a sum of a per-step value."""
    if term.op.name == "matmul" and term.ndim == 2 and all(i.ndim == 2 and i.id in per for i in term.inputs):
        p, q = term.inputs
        if p.op.name == "transpose":
            return "matmul", [p.inputs[0], q], True
        return "matmul", [p, q], False
    if term.op.name == "sum" and not term.attrs["keepdims"] and term.inputs[0].id in per:
        return "sum", [term.inputs[0]], term.attrs["axes"]
    return None


def _total(kind: str, stacked: list[Node], info: list, T) -> Node:
    """The sum over steps of a hoisted closure adjoint, from its stacked per-step operands."""
    from ..shapes import size
    from . import shape as sh
    from .linalg import matmul
    from .reduce import sum as rsum
    if kind == "sum":
        (v,), (axes,) = stacked, info
        return rsum(v, (0,) + tuple(a + 1 for a in axes))
    (p, q), (transposed,) = stacked, info
    # sum_t p_t @ q_t = [p_0 ... p_T] @ [q_0; ...; q_T], contracting over steps and the inner axis
    if transposed:  # p_t = h_t.T with h_t (n, k): the rows of all steps, transposed
        a = sh.transpose(sh.reshape(p, (size((T, p.shape[1])), p.shape[2])), (1, 0))
    else:
        a = sh.reshape(sh.transpose(p, (1, 0, 2)), (p.shape[1], size((T, p.shape[2]))))
    return matmul(a, sh.reshape(q, (size((T, q.shape[1])), q.shape[2])))


def scan_grad(parts: dict[int, Node], n: Node) -> list:
    """Adjoints of a scan's inputs from those of its results (``parts``: result index -> adjoint).

    The body's vector-Jacobian product is built symbolically; the per-step forward values it reads
    (residuals) are stacked by an augmented forward scan, and a scan running the other way carries
    the carry's adjoint and accumulates the closure's."""
    from ..autodiff import grad
    from ..graph import toposort
    from .reduce import sum as rsum
    body: Body = n.attrs["body"]
    T, rev = n.attrs["length"], n.attrs["reverse"]
    C, X = len(body.carry), len(body.xs)
    xs, clo = n.inputs[C:C + X], n.inputs[C + X:]
    fl = lambda v: v.dtype.kind == "f"
    fc = [j for j in range(C) if fl(body.carry[j])]
    fx = [j for j in range(X) if fl(body.xs[j])]
    fk = [j for j in range(len(clo)) if fl(body.closure[j])]
    # the adjoints of the next carry and of this step's ys, as placeholders of the backward body
    dcarry = {j: arg("carry", k, body.carry[j].shape, body.carry[j].dtype) for k, j in enumerate(fc)}
    dy = {j: arg("x", k, body.ys[j].shape, body.ys[j].dtype) for k, j in enumerate(
        j for j in range(len(body.ys)) if C + j in parts and fl(body.ys[j]))}
    terms = [rsum(body.carry_out[j] * dcarry[j]) for j in fc] + [rsum(body.ys[j] * p) for j, p in dy.items()]
    if not terms or not (fc or fx or fk):
        return [None] * len(n.inputs)
    surrogate = terms[0]
    for t in terms[1:]:
        surrogate = surrogate + t
    wrt = [body.carry[j] for j in fc] + [body.xs[j] for j in fx] + [body.closure[j] for j in fk]
    grads = grad(surrogate, wrt)
    # partial evaluation: forward values the adjoint part reads, and which of them vary per step
    cot = varying(grads, list(dcarry.values()) + list(dy.values()))
    per_step = varying(grads, body.carry + body.xs)
    residuals: dict[int, Node] = {}
    for m in toposort(grads):
        if m.id in cot:
            for i in m.inputs:
                while i.op.name in VIEW_OPS and i.inputs[0].id in per_step:
                    i = i.inputs[0]  # stack the value, not a transpose of it: the view is free
                if i.id not in cot and i.id in per_step:
                    residuals.setdefault(i.id, i)
    for g in grads:
        if g.id not in cot and g.id in per_step:
            residuals.setdefault(g.id, g)
    x_pos = {p.id: j for j, p in enumerate(body.xs)}
    residuals = _fewer_residuals(residuals, per_step, x_pos)
    stacked = [r for r in residuals.values() if r.id not in x_pos]
    # the forward scan, stacking the residuals too (merged with the original by a pass)
    aug = Body(body.carry, body.xs, body.closure, body.carry_out, body.ys + tuple(stacked), body.family)
    fwd = Node(OPS["scan"], n.inputs, {"body": aug, "length": T, "reverse": rev}, (), np.dtype(bool))
    R = [make("scan_get", (fwd,), index=len(body.outputs) + i) for i in range(len(stacked))]
    # the backward body: adjoint carries and closure accumulators; xs: dy, residuals, raw xs
    acc = {j: arg("carry", len(fc) + k, body.closure[j].shape, body.closure[j].dtype) for k, j in enumerate(fk)}
    rph = [arg("x", len(dy) + i, r.shape, r.dtype) for i, r in enumerate(stacked)]
    x_res = [r for r in residuals.values() if r.id in x_pos]
    xph = [arg("x", len(dy) + len(stacked) + i, r.shape, r.dtype) for i, r in enumerate(x_res)]
    subst = {r.id: p for r, p in zip(stacked, rph)} | {r.id: p for r, p in zip(x_res, xph)}
    subst |= {body.closure[j].id: clo[j] for j in range(len(clo))}  # the outer values: hoisted again
    g = substitute(grads, subst)
    gc_, gx, gk = g[:len(fc)], g[len(fc):len(fc) + len(fx)], g[len(fc) + len(fx):]
    bxs = tuple(dy.values()) + tuple(rph) + tuple(xph)
    # A closure's adjoint is a sum over steps. Terms linear in per-step values leave the loop: the
    # step's operands are stacked and one matmul (or sum) over all steps forms the total, instead
    # of a small matmul per step accumulated in a carry (dU of a recurrent cell).
    per = varying(g, tuple(dcarry.values()) + bxs)
    hoist, emit = {}, []
    for k, j in enumerate(fk):
        how = _sum_over_steps(gk[k], per)
        if how is not None:
            hoist[j] = (how[0], len(emit), len(how[1]), *how[2:])
            emit += how[1]
    kept = [j for j in fk if j not in hoist]
    carry_out = list(gc_) + [acc[j] + gk[fk.index(j)] for j in kept]
    bcarry = tuple(dcarry[j] for j in fc) + tuple(acc[j] for j in kept)
    bbody, outer = close_over(bcarry, bxs, carry_out, list(gx) + emit)
    b_init = [parts[j] if j in parts else _zeros(body.carry[j].shape, body.carry[j].dtype) for j in fc]
    b_init += [_zeros(clo[j].shape, clo[j].dtype) for j in kept]
    b_xs = [parts[C + j] for j in dy] + R + [xs[x_pos[r.id]] for r in x_res]
    back = Node(OPS["scan"], tuple(b_init + b_xs + outer), {"body": bbody, "length": T, "reverse": not rev}, (),
                np.dtype(bool))
    out: list = [None] * len(n.inputs)
    for k, j in enumerate(fc):
        out[j] = make("scan_get", (back,), index=k)
    for k, j in enumerate(kept):
        out[C + X + j] = make("scan_get", (back,), index=len(fc) + k)
    for k, j in enumerate(fx):
        out[C + j] = make("scan_get", (back,), index=len(bcarry) + k)
    first = len(bcarry) + len(fx)
    for j, (kind, at, count, *info) in hoist.items():
        stacked = [make("scan_get", (back,), index=first + at + i) for i in range(count)]
        out[C + X + j] = _total(kind, stacked, info, T)
    return out


def body_digest(body: Body) -> str:
    return hashlib.sha1(body.key().encode()).hexdigest()[:8]


__all__ = ["scan", "Body", "Part", "arg", "close_over", "substitute", "varying", "results", "flatten", "unflatten",
           "output_type"]
