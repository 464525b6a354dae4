"""Writing one CUDA kernel: its arguments, views as index arithmetic, and node values.

Every array a kernel touches is a flat, contiguous buffer (a slice of the workspace, a param's
device copy, an input, a constant). Views (reshape, transpose, broadcast, slice) are the shared
layout's strides (common/layout.py), so no view is ever materialized: ``offset`` turns an index
into a view into ``offset + sum(index * stride)`` in its buffer (forms in the ``d_<name>`` dims).

Generated identifiers come from positions only: a kernel's values, accumulators and temporaries
are numbered by a ``Namer`` as they are emitted, buffers by their place in the schedule
(cuda/step.py). Node ids depend on what the process built before, and the disk cache is keyed by
the source: an id in a name would make the same model miss the cache in the next process."""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import numpy as np

from ...ir import Node
from ...passes.fusion import Kernel, base_of
from ..common.layout import ONE, ZERO, local_view
from ..common.lowering import ScalarLowering, describe, literal, peel
from ..common.source import Source, comment
from .mathfns import device_name


def dim(d) -> str:
    """A dim as an expression: symbolic names are the kernel's ``d_<name>`` arguments."""
    if isinstance(d, int):
        return str(d)
    return " * ".join(f if f.isdigit() else f"d_{f}" for f in d.split("*"))


def symbols(shapes) -> set[str]:
    return {f"d_{f}" for s in shapes for d in s if isinstance(d, str) for f in d.split("*") if not f.isdigit()}


def numel(shape) -> str:
    ints = prod(d for d in shape if isinstance(d, int))
    syms = [dim(d) for d in shape if not isinstance(d, int)]
    return " * ".join(([str(ints)] if ints != 1 or not syms else []) + syms)


def _paren(e: str) -> str:
    return e if e.replace("_", "").isalnum() else f"({e})"


class Namer:
    """Names in order of first request: ``name("v", n.id)`` is ``v0`` for the first value asked for,
    ``v1`` for the next, and the same name again for the same key; ``fresh("q")`` is always new."""

    def __init__(self) -> None:
        self.names: dict = {}
        self.counts: dict[str, int] = {}

    def fresh(self, prefix: str) -> str:
        j = self.counts.get(prefix, 0)
        self.counts[prefix] = j + 1
        return f"{prefix}{j}"

    def name(self, prefix: str, key) -> str:
        if (prefix, key) not in self.names:
            self.names[(prefix, key)] = self.fresh(prefix)
        return self.names[(prefix, key)]


@dataclass(eq=False)  # compared by identity: fields hold nodes, whose == builds graph ops
class KernelCode:
    name: str
    source: str
    launch: str                                         # step expression: (blocks, threads)
    syms: list[str] = field(default_factory=list)       # d_<dim> arguments
    reads: list[Node] = field(default_factory=list)     # buffers read (base nodes), in argument order
    scalars: list[Node] = field(default_factory=list)   # count nodes
    writes: list[Node] = field(default_factory=list)    # buffers written
    zero_first: list[Node] = field(default_factory=list)  # written by atomic adds: zero them first
    scratch: list[tuple] = field(default_factory=list)    # (dtype, size) of zeroed device arrays it keeps
    checks: bool = False                                  # range-checks computed indices (takes E)


class KernelWriter(ScalarLowering):
    """One kernel. ``ax`` names the index variable of each axis of the current domain. The scalar
    code of its nodes (operands, one_hot/pick/iota/random_uniform, templates, a result's own
    index) is lowering.py's, shared with the CPU writer, over the hooks below."""

    def __init__(self, k: Kernel | None, name: str, skip_writes: set[int], sites: list | None = None,
                 checked: set = frozenset()):
        self.k, self.name = k, name
        self.sites, self.checked_ids = sites if sites is not None else [], checked
        self.inside = {n.id for n in k.nodes} if k else set()
        self.out_ids = {o.id for o in k.outputs if o.id not in skip_writes} if k else set()
        self.code = KernelCode(name, "", "")
        self.arg: dict = {}
        self.s = Source()
        self.s.depth = 1
        self.namer = Namer()  # values, accumulators and temporaries, numbered as they are emitted
        self.shapes: list[tuple] = []
        self.ax: list[str] = []
        self.domain: tuple = ()
        self.flat: str | None = None   # a variable equal to the row-major index over the domain

    # -- arguments -----------------------------------------------------------------------
    def array(self, v: Node) -> str:
        if v.id not in self.arg:
            self.arg[v.id] = f"a{len(self.code.reads)}"
            self.code.reads.append(v)
        return self.arg[v.id]

    def out(self, n: Node) -> str:
        if ("o", n.id) not in self.arg:
            self.arg[("o", n.id)] = f"o{len(self.code.writes)}"
            self.code.writes.append(n)
        return self.arg[("o", n.id)]

    def scalar_arg(self, v: Node) -> str:
        if v.id not in self.arg:
            self.arg[v.id] = f"c{len(self.code.scalars)}"
            self.code.scalars.append(v)
        return self.arg[v.id]

    def scratch(self, dtype: np.dtype, size: int) -> str:
        """A zero-initialised device array owned by this kernel (kept across launches)."""
        self.code.scratch.append((dtype, size))
        return f"s{len(self.code.scratch) - 1}"

    def d(self, x) -> str:
        self.shapes.append((x,))
        return dim(x)

    def n(self, shape) -> str:
        self.shapes.append(tuple(shape))
        return numel(shape)

    # -- index arithmetic ----------------------------------------------------------------------
    def linear(self, idx: list[str], shape: tuple) -> str:
        if self.flat and tuple(shape) == tuple(self.domain) and idx == self.index(self.domain):
            return self.flat
        e = "0"
        for i, d in zip(idx, shape):
            if d == 1:  # its only index is 0
                continue
            if e == "0":
                e = i
            else:
                e = f"{_paren(e)} * {self.d(d)}" + (f" + {i}" if i != "0" else "")
        return e

    def unflatten(self, lin: str, shape: tuple) -> list[str]:
        """Index into ``shape`` of a row-major offset (statements: ``%`` and ``//``)."""
        live = [j for j, d in enumerate(shape) if d != 1]
        idx = ["0"] * len(shape)
        if len(live) == 1:
            idx[live[0]] = _paren(lin)
        elif live:
            q = self.namer.fresh("q")
            self.s(f"{q} = {lin}")
            for j in reversed(live[1:]):
                idx[j] = f"{q}_{j}"
                self.s(f"{idx[j]} = {q} % {self.d(shape[j])}")
                self.s(f"{q} = {q} // {self.d(shape[j])}")
            idx[live[0]] = q
        return idx

    def form(self, f: tuple) -> str:
        """A frozen form of the layout (an offset, a stride) as an expression over the ``d_<name>`` arguments."""
        terms = []
        for names, c in f:
            self.shapes.extend((nm,) for nm in names)
            text = " * ".join(([str(abs(c))] if abs(c) != 1 or not names else []) + [f"d_{nm}" for nm in names])
            terms.append(("- " if c < 0 else "+ ") + text)
        return " ".join(terms).removeprefix("+ ") or "0"

    def offset(self, v: Node, idx: list[str]) -> str:
        """Offset into the flat buffer under ``v``'s views of the element at ``idx`` of ``v``: the
        layout's view of ``v`` (common/layout.py), ``offset + sum(idx[k] * stride[k])``. Past a
        reshape that strides cannot express, that offset is a row-major index into the reshape's
        input: unflattened into its index there, and on down."""
        view, under = local_view(v)
        if view.contiguous() and view.offset == ZERO:
            e = self.linear(idx, view.shape)
        else:
            terms = [] if view.offset == ZERO else [self.form(view.offset)]
            for i, d, st in zip(idx, view.shape, view.strides):
                if d != 1 and st != ZERO and i != "0":
                    terms.append(i if st == ONE else f"{_paren(i)} * {_paren(self.form(st))}")
            e = " + ".join(terms).replace("+ -", "- ") or "0"
        return e if under is None else self.offset(under, self.unflatten(e, under.shape))

    def load(self, v: Node, idx: list[str]) -> str:
        b = base_of(v)[0]
        if b.op.name == "constant" and b.attrs["value"].size == 1:  # any view of one value is that value
            return literal(b.attrs["value"], b.dtype)
        return f"{self.array(b)}[{self.offset(v, idx)}]"

    def decompose(self, var: str, axes: list[int], shape: tuple) -> None:
        """Set ``i<a>`` for ``axes`` (row-major, last fastest) from the flat index ``var``."""
        live = [a for a in axes if shape[a] != 1]
        for a in axes:
            if shape[a] == 1:
                self.s(f"i{a} = 0")
        if len(live) == 1:
            self.s(f"i{live[0]} = {var}")
        elif live:
            q = var
            for a in reversed(live[1:]):
                self.s(f"i{a} = {q} % {self.d(shape[a])}")
                self.s(f"q = {q} // {self.d(shape[a])}")
                q = "q"
            self.s(f"i{live[0]} = q")

    # -- the hooks of ScalarLowering -------------------------------------------------------------
    def axis(self, a: int) -> str:
        return self.ax[a]

    def load_operand(self, v: Node, idx: list[str]) -> str:
        return self.load(v, idx)

    def source_value(self, v: Node) -> str | None:
        """A count (known from the dims) is a scalar argument; one-value constants are literals (``load``)."""
        return self.scalar_arg(peel(v)) if peel(v).op.name == "count" else None

    def flat_index(self, n: Node) -> str:
        return self.linear(self.index(n.shape), n.shape)

    def salt(self, n: Node) -> str:
        return str(n.attrs["salt"])

    def math(self, text: str, n: Node) -> str:
        return device_name(text, n.dtype)

    # -- the hooks of ScalarLowering.checked (the step looks at ``E`` before it commits) ----------
    def check_number(self, n: Node) -> str | None:
        if n.id not in self.checked_ids:
            return None
        ids = [m.id for m in self.sites]  # (not `in`: == on nodes builds a graph op)
        if n.id not in ids:
            self.sites.append(n)
            ids.append(n.id)
        return str(ids.index(n.id) + 1)

    def error_word(self) -> str:
        self.code.checks = True
        return "E"

    def dim(self, d) -> str:
        return self.d(d)

    def fresh(self, prefix: str) -> str:
        return self.namer.fresh(prefix)

    def statements(self) -> Source:
        return self.s

    # -- values ------------------------------------------------------------------------------
    def acc(self, n: Node) -> str:
        """The accumulator of reduction ``n``."""
        return self.namer.name("acc", n.id)

    def emit(self, n: Node, val: dict) -> None:
        if n.op.kind == "reduce":
            val[n.id] = self.acc(n)
        else:
            var = self.namer.name("v", n.id)  # the same variable when an epilogue computes it again
            self.s(f"{var} = {self.expr(n, val)}  # {describe(n)}")
            val[n.id] = var
        if n.id in self.out_ids:
            self.s(f"{self.out(n)}[{self.linear(self.own_index(n), n.shape)}] = {val[n.id]}")

    def set_domain(self, shape: tuple, flat: str | None) -> None:
        self.domain, self.flat = tuple(shape), flat
        self.ax = [f"i{a}" for a in range(len(shape))]

    # -- the kernel --------------------------------------------------------------------------
    def finish(self, doc: str) -> KernelCode:
        """The kernel: its signature and one-line doc, then the body; each op is named (with its
        phase and line) in the comment of the line that computes it, not listed again here."""
        syms = sorted(symbols(self.shapes))
        args = syms + [f"a{j}" for j in range(len(self.code.reads))] + \
            [f"c{j}" for j in range(len(self.code.scalars))] + [f"o{j}" for j in range(len(self.code.writes))] + \
            [f"s{j}" for j in range(len(self.code.scratch))] + (["E"] if self.code.checks else [])
        top = Source()
        top("@cuda.jit(cache=CACHE)")
        top(f"def {self.name}({', '.join(args)}):")
        top(f"    {comment(doc)!r}")  # a string literal: user names cannot end it
        self.code.source = top.text() + self.s.text()
        self.code.syms = syms
        return self.code


