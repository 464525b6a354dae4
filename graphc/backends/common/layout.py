"""Where every value of a step lives: flat buffers, element offsets and strides. Both step
writers render this layout: the CPU's spec (cpu/step.py) and the CUDA module (cuda/step.py),
which binds each param and workspace buffer as a slice of one device array per dtype.

A step's memory is a few *bases*: one param arena per dtype, one workspace per dtype (the
memory plan's slots, then per-call scratch), array constants, and per call the input and output
arrays. Every value a kernel reads is a ``View`` of one base: an element offset and a stride
per axis, as linear forms in the symbolic dims, so one layout serves every batch size. Views
(reshape, transpose, broadcast, slice) are stride arithmetic; a reshape that strides cannot
express (merging axes a transpose separated) is copied into scratch first.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from math import prod

import numpy as np

from ...ir import Node
from ...passes.fusion import base_of
from ...program import Program
from ...shapes import Form, form, form_mul, linear_form, size


def freeze(f: Form | int | str) -> tuple:
    return tuple(sorted(form(f).items()))


ZERO, ONE = freeze(0), freeze(1)


@dataclass(frozen=True)
class View:
    base: tuple       # ("arena"|"ws", dtype) or ("const"|"in"|"out", index)
    offset: tuple     # frozen form, in elements
    strides: tuple    # frozen form per axis (ZERO on broadcast and unit axes)
    shape: tuple
    dtype: str

    def contiguous(self) -> bool:
        return self.strides == c_strides(self.shape)


def c_strides(shape: tuple) -> tuple:
    """Row-major strides (unit axes get ZERO: their only index is 0)."""
    return tuple(ZERO if d == 1 else freeze(size(shape[a + 1:])) for a, d in enumerate(shape))


@dataclass
class Scratch:
    """Buffers one call needs only while it runs: views copied contiguous, accumulator rows."""
    items: list = field(default_factory=list)        # (dtype name, size)
    copies: list = field(default_factory=list)       # (source View, scratch View): copy before the call

    def take(self, dtype: str, shape: tuple, ws_end: dict) -> View:
        off = form(ws_end.get(dtype, 0))
        for dt, n in self.items:
            if dt == dtype:
                off += linear_form(n)
        self.items.append((dtype, size(shape)))
        return View(("ws", dtype), freeze(off), c_strides(shape), tuple(shape), dtype)


def fadd(a, b, scale: int = 1) -> Form:
    """``a + scale * b`` for forms (Counter's own + drops negative terms)."""
    out = dict(form(dict(a)))
    for k, c in form(dict(b)).items():
        out[k] = out.get(k, 0) + scale * c
    return form(out)


def fmul(a, b) -> Form:
    """The product of two forms."""
    out: dict = {}
    for ka, ca in form(dict(a)).items():
        for kb, cb in form(dict(b)).items():
            k = tuple(sorted(ka + kb))
            out[k] = out.get(k, 0) + ca * cb
    return form(out)


def step_view(v: View, index: Form) -> View:
    """Entry ``index`` (a form, e.g. in a loop's counter) along the leading axis of ``v``."""
    return View(v.base, freeze(fadd(v.offset, fmul(index, v.strides[0]))), v.strides[1:], v.shape[1:], v.dtype)


class Layout:
    """Bases and views of one program. ``params`` fixes the arena order (every param the
    function touches, in a stable order), so a cached layout binds to a new process's params.

    A loop body's program gets a layout of its own (``parent``): its placeholders are ``bindings``
    (views of the carry buffers, of the step's slice of xs, of closure values), its constants join
    the root's, and its workspace slots start at ``origin``, past everything live around the loop."""

    def __init__(self, prog: Program, inputs: list[Node], params: list[Node], parent: Layout | None = None,
                 origin: dict | None = None, bindings: dict | None = None):
        self.prog, self.inputs, self.params = prog, inputs, params
        self.root = parent.root if parent is not None else self
        self.bindings = bindings or {}
        self.input_index = {x.id: j for j, x in enumerate(inputs)}
        if parent is not None:
            self.param_dtypes, self.param_at, self.consts = parent.param_dtypes, parent.param_at, parent.consts
            self.arena_size = parent.arena_size
        else:
            self.param_dtypes = sorted({p.dtype.name for p in params})
            self.param_at: dict[int, tuple[str, int]] = {}
            fill: dict[str, int] = {}
            for p in params:
                self.param_at[p.id] = (p.dtype.name, fill.get(p.dtype.name, 0))
                fill[p.dtype.name] = fill.get(p.dtype.name, 0) + prod(p.shape)
            self.arena_size: dict[str, int] = fill  # elements of each dtype's arena
            self.consts: list[Node] = []
        self.ws_dtypes = sorted({dt.name for _, dt in prog.memory.slots})
        self.slot_at: list[Form] = []
        cursor: dict[str, Form] = {dt: form(dict(f)) for dt, f in (origin or {}).items()}
        for sz, dt in prog.memory.slots:
            start = cursor.get(dt.name, Counter())
            self.slot_at.append(start)
            cursor[dt.name] = fadd(start, linear_form(sz))
        self.ws_end = cursor        # where each dtype's scratch starts
        for dt in self.ws_dtypes:
            self.root.need_ws(dt)
        self._views: dict[int, View | None] = {}

    def extra_slot(self, sz, dtype: str) -> Form:
        """The offset of a workspace slot of its own past the plan's (the CUDA step's loop carries,
        contiguous copies, loop bodies' slots, staged updates); ``ws_end`` moves past it."""
        start = form(dict(self.ws_end.get(dtype, {})))
        self.ws_end[dtype] = fadd(start, linear_form(sz))
        self.need_ws(dtype)
        return start

    def need_ws(self, dtype: str) -> None:
        """A workspace of ``dtype`` exists (scratch may be the only thing in it)."""
        if self.root is not self:
            self.root.need_ws(dtype)
        elif dtype not in self.ws_dtypes:
            self.ws_dtypes = sorted(self.ws_dtypes + [dtype])

    def buffer(self, b: Node) -> View:
        """The view of a base value: a param, input, array constant, kernel output, or a loop
        body's placeholder."""
        if b.id in self.bindings:
            return self.bindings[b.id]
        op = b.op.name
        if op == "param":
            dt, off = self.param_at[b.id]
            return View(("arena", dt), freeze(off), c_strides(b.shape), b.shape, dt)
        if op == "input":
            return View(("in", self.input_index[b.id]), ZERO, c_strides(b.shape), b.shape, b.dtype.name)
        if op == "constant":
            j = next((j for j, c in enumerate(self.consts) if c is b), None)
            if j is None:
                j = len(self.consts)
                self.consts.append(b)
            return View(("const", j), ZERO, c_strides(b.shape), b.shape, b.dtype.name)
        mem = self.prog.memory
        p = mem.inplace.get(b.id)
        if p is not None:
            return self.buffer(p)
        slot = mem.buffers[b.id].slot
        return View(("ws", b.dtype.name), freeze(self.slot_at[slot]), c_strides(b.shape), b.shape, b.dtype.name)

    def view(self, v: Node, scratch: Scratch | None = None) -> View:
        """``v`` as strides over a base. A reshape that strides cannot express copies its input
        into ``scratch`` first (the copy is listed in ``scratch.copies``)."""
        return self._view(v, scratch)[0]

    def _view(self, v: Node, scratch: Scratch | None) -> tuple[View, bool]:
        got = self._views.get(v.id)
        if got is not None:
            return got, False
        if not v.op.view:
            res, copied = self.buffer(v), False
        else:
            x, copied = self._view(v.inputs[0], scratch)
            res = _apply(v, x)
            if res is None:  # reshape of a strided view: copy it contiguous first
                if scratch is None:
                    raise AssertionError(f"{v!r} needs a copy but no scratch was given")
                tmp = scratch.take(x.dtype, x.shape, self.ws_end)
                scratch.copies.append((x, tmp))
                res, copied = _apply(v, tmp), True
        if not copied:  # a view through this call's scratch is this call's own
            self._views[v.id] = res
        return res, copied


def local_view(v: Node) -> tuple[View, Node | None]:
    """``v`` as strides over the flat buffer of the value under its views, offset from that
    buffer's start (``layout.view(v)`` less the buffer's own offset: the CUDA kernels take each
    buffer as a slice). Past a reshape that strides cannot express, the view is over that
    reshape's input in row-major order, returned as well (``x``: the caller unflattens its index
    into ``x`` and goes on from there); else ``x`` is None."""
    if not v.op.view:
        return View(("node", v.id), ZERO, c_strides(v.shape), tuple(v.shape), v.dtype.name), None
    x, under = local_view(v.inputs[0])
    res = _apply(v, x)
    if res is None:
        flat = View(("node", v.inputs[0].id), ZERO, c_strides(x.shape), x.shape, x.dtype)
        return _apply(v, flat), v.inputs[0]
    return res, under


def _apply(v: Node, x: View) -> View | None:
    """The view ``v`` (one view op) of ``x``; None if strides cannot express it."""
    op, shape, dt = v.op.name, tuple(v.shape), x.dtype
    if op == "stop_gradient":
        return x
    if op == "broadcast_to":
        lead = len(shape) - len(x.shape)
        st = [ZERO] * lead + [ZERO if xd == 1 else s for xd, s in zip(x.shape, x.strides)]
        return View(x.base, x.offset, tuple(ZERO if d == 1 else s for d, s in zip(shape, st)), shape, dt)
    if op == "transpose":
        return View(x.base, x.offset, tuple(x.strides[a] for a in v.attrs["axes"]), shape, dt)
    if op == "slice":
        off, st = form(dict(x.offset)), []
        for s, t, d in zip(x.strides, v.attrs["index"], shape):
            s = form(dict(s))
            if t is not None:
                off = fadd(off, s, t[0])  # (Counter's += would drop negative terms: a reversed loop's)
                s = form({k: c * t[2] for k, c in s.items()})
            st.append(ZERO if d == 1 else freeze(s))
        return View(x.base, freeze(off), tuple(st), shape, dt)
    if op == "reshape":
        st = _reshape_strides(x, shape)
        return None if st is None else View(x.base, x.offset, st, shape, dt)
    raise AssertionError(f"{op} is not a view")


def _reshape_strides(x: View, shape: tuple) -> tuple | None:
    """NumPy's no-copy reshape with symbolic dims: axes group where the running sizes of the
    old and new shapes agree; each group must be contiguous in the old view."""
    if x.contiguous():
        return c_strides(shape)
    old = [(d, form(dict(s))) for d, s in zip(x.shape, x.strides) if d != 1]
    new = [j for j, d in enumerate(shape) if d != 1]
    o_pre = [size(tuple(d for d, _ in old[:k])) for k in range(len(old) + 1)]
    n_pre = [size(tuple(shape[j] for j in new[:k])) for k in range(len(new) + 1)]
    out = [ZERO] * len(shape)
    i = j = 0
    while i < len(old):
        nxt = next(((a, b) for a in range(i + 1, len(old) + 1) for b in range(j + 1, len(new) + 1)
                    if o_pre[a] == n_pre[b]), None)
        if nxt is None:
            return None
        a, b = nxt
        for t in range(i, a - 1):  # the old axes of a group must be contiguous among themselves
            if old[t][1] != form_mul(old[t + 1][1], old[t + 1][0]):
                return None
        stride = old[a - 1][1]
        for t in reversed(range(j, b)):
            out[new[t]] = freeze(stride)
            stride = form_mul(stride, shape[new[t]])
        i, j = a, b
    return tuple(out)


def commit_plan(prog: Program) -> list[tuple[Node, Node, bool]]:
    """The updates not written in place, copied into their params at the end of the step, as
    (param, value, staged): a value that reads a param another of these copies overwrites is
    staged first, so swaps work. (A param updated in place is read by no commit: the memory plan
    writes an update in place only when nothing reads its param after it.)"""
    copies = [(p, e) for p, e in prog.updates if e.id not in prog.memory.inplace]
    targets = {p.id for p, _ in copies}
    return [(p, e, base_of(e)[0].id in targets) for p, e in copies]


def scalar_constant(v: Node):
    """The value of ``v`` if every view of it is one constant value (a literal), else None."""
    b = base_of(v)[0]
    if b.op.name == "constant" and b.attrs["value"].size == 1:
        return np.asarray(b.attrs["value"]).reshape(()).item(), b.dtype
    return None
