"""The generated CUDA module: one ``numba.cuda`` kernel per kernel of the program, plus
``buffers`` (slices the workspace once per set of dims) and ``step`` (launches the kernels
in order). ``step`` is plain Python: a kernel launch is a Python call either way, and a
plain function keeps the module readable and the launches easy to time one by one."""
from __future__ import annotations

from collections import Counter

from .. import __version__
from ..graph import toposort
from ..ir import Node
from ..passes.fusion import Kernel, base_of
from ..program import Program
from ..shapes import linear_form, size
from . import cuda_math
from .cuda_codegen import TPB, copy_code, kernel_code
from .cuda_writer import KernelCode, numel
from .source import Source, comment

HEADER = '''\
# graphc {version}: one training step for NVIDIA GPUs, compiled with numba.cuda.
# Every array is a flat device buffer; views are index arithmetic inside the kernels.
# `buffers` slices the workspace once per set of dims; `step` launches the kernels in order.
import numpy as np
from numba import cuda

from graphc.backends.cuda_math import {math}  # noqa: F401

CACHE = {cache}  # numba-cuda keeps compiled kernels on disk next to this file
TPB = {tpb}


def launch(n):
    """(blocks, threads) of a grid-stride loop over n elements; tiny n, few threads."""
    threads = min(TPB, max(32, (n + 31) // 32 * 32))
    return max(1, min((n + threads - 1) // threads, 8192)), threads


def rows(nk, nr, width):
    """One block per kept index (blocks stride past 65535); threads: a power of two."""
    threads = 32
    while threads < min(nr, width):
        threads *= 2
    return max(1, min(nk, 65535)), threads


def grid(nr, width, most):
    """Blocks of a full reduction: enough for every thread to have a few elements."""
    threads = 32
    while threads < min(nr, width):
        threads *= 2
    return max(1, min((nr + threads - 1) // threads, most)), threads


def tiles(nb, m, n, t):
    """A t x t block per output tile; batches stride over grid z."""
    return ((n + t - 1) // t, max(1, (m + t - 1) // t), max(1, min(nb, 65535))), (t, t)


class IndexOutOfRange(Exception):
    """A kernel's range check failed: E holds (the check's number, the index)."""


@cuda.jit(cache=CACHE)
def fill0(n, o):
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        o[t] = 0


@cuda.jit(cache=CACHE)
def copy(n, src, dst):
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        dst[t] = src[t]
'''


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _linear(form: Counter) -> str:
    terms = [numel(tuple(names) + ((c,) if c != 1 or not names else ())) for names, c in sorted(form.items()) if c]
    return " + ".join(terms) or "0"


def _contiguous(v: Node) -> bool:
    """A view that is its buffer, reshaped: the flat buffer already holds it in order."""
    while v.op.name in ("reshape", "stop_gradient"):
        v = v.inputs[0]
    return v is base_of(v)[0]


def _owned(e: Node, k: Kernel) -> bool:
    """Is each element of ``e`` computed by one thread only? Loops and matmuls give each thread
    one element of the domain; the epilogue of a reduction, one kept index."""
    after = k.kind == "reduce" and e.id in k.after_reduce()
    axes = [a for a in range(len(k.domain)) if not (after and a in k.raxes)]
    lead = len(k.domain) - e.ndim
    return all(k.domain[a] == 1 or (a >= lead and e.shape[a - lead] == k.domain[a]) for a in axes)


def sources(prog: Program, kind: str) -> list[Node]:
    found = {n.id: n for n in toposort(prog.roots) if n.op.name == kind}
    if kind == "param":
        found.update({p.id: p for p, _ in prog.updates})
    return sorted(found.values(), key=lambda n: n.id)


class StepWriter:
    """Names every buffer and writes ``buffers`` and ``step``."""

    def __init__(self, prog: Program, inputs: list[Node]):
        self.prog, self.inputs = prog, inputs
        self.params = sources(prog, "param")
        self.consts = [c for c in sources(prog, "constant") if c.attrs["value"].size > 1]
        self.ws_dtypes = sorted({dt.name for _, dt in prog.memory.slots})
        self.dims = sorted({d for x in inputs for d in x.shape if isinstance(d, str)})
        self.names: dict[int, str] = {}
        for j, p in enumerate(self.params):
            self.names[p.id] = f"p{j}"
        for j, c in enumerate(self.consts):
            self.names[c.id] = f"K{j}"
        for j, x in enumerate(inputs):  # identifiers from positions; names only in escaped comments
            self.names[x.id] = f"in{j}"
        # An in-place update races when other threads read the param or write the same element (a
        # step counter read by every thread): the kernel writes it to U<j>, copied at the end of the step.
        self.staged = [(p, prog.memory.buffers[e_id].node) for e_id, p in prog.memory.inplace.items()
                       if not _owned(prog.memory.buffers[e_id].node, prog.kernels[prog.memory.buffers[e_id].first])]
        for j, (_, e) in enumerate(self.staged):
            self.names[e.id] = f"U{j}"
        for b in prog.memory.buffers.values():
            if b.node.id not in self.names:
                self.names[b.node.id] = self.names[prog.memory.inplace[b.node.id].id] if b.slot < 0 else f"b{b.node.id}"
        n_out = prog.n_outputs
        # outputs: "direct" (a workspace buffer, read after the step), "gather" (a copy kernel into X<j>,
        # run before updates overwrite params), or "host" (constants: no kernel at all)
        self.outputs: list[tuple[str, Node]] = []
        for o in prog.roots[:n_out]:
            b = base_of(o)[0]
            if b.op.name in ("constant", "count"):
                self.outputs.append(("host", o))
            elif b.id in prog.memory.buffers and _contiguous(o):
                self.outputs.append(("direct", o))
            else:
                self.outputs.append(("gather", o))

    def write(self) -> str:
        prog = self.prog
        self.checks: list[Node] = []  # index ops whose kernels range-check a computed index, by number
        read_later = {base_of(v)[0].id for k in prog.kernels for v in k.inputs} | {base_of(r)[0].id for r in prog.roots}
        codes: list[tuple[Kernel | None, KernelCode]] = []
        for k in prog.kernels:
            skip = {o.id for o in k.outputs if o.op.kind == "matmul" and o.id not in read_later}
            codes.append((k, kernel_code(k, f"k{k.index}_{k.kind}", skip, self.checks, prog.checked)))
        gathers = [(j, copy_code(o, f"out{j}_copy", f"output {j}"))
                   for j, (how, o) in enumerate(self.outputs) if how == "gather"]
        copies = [(p, e) for p, e in prog.updates if e.id not in prog.memory.inplace] + self.staged
        staged, targets = {e.id for _, e in self.staged}, {p.id for p, _ in copies}
        update_codes = []  # (param, value, copy kernel or None for a flat copy, U<j> it is saved in first)
        for j, (p, e) in enumerate(copies):
            if (base_of(e)[0].id in prog.memory.buffers and _contiguous(e)) or e.id in staged:
                update_codes.append((p, e, None, None))
                continue
            code = copy_code(e, f"update{j}_copy", f"update of {p.name}")
            if base_of(e)[0].id in targets:  # reads a param that another copy overwrites (a swap): save it first
                self.staged.append((p, e))
            update_codes.append((p, e, code, f"U{len(self.staged) - 1}" if base_of(e)[0].id in targets else None))
        self.codes = [c for _, c in codes] + [c for _, c in gathers] + [c for _, _, c, _ in update_codes if c]
        self.scratch = [sc for c in self.codes for sc in c.scratch]  # (dtype, size), named S0, S1, ... in order
        math = ", ".join(n for n in cuda_math.__all__ if n[0] == "g")
        text = [HEADER.format(version=__version__, math=math, cache=not cuda_math.SIMULATOR, tpb=TPB)]
        text += [c.source for c in self.codes]
        text += [self.buffers(), self.step(codes, gathers, update_codes)]
        return "\n\n".join(text)

    def buffers(self) -> str:
        s = Source()
        args = [f"W_{d}" for d in self.ws_dtypes] + [f"d_{_ident(d)}" for d in self.dims]
        with s.block(f"def buffers({', '.join(args)}):"):
            s('"""Workspace slots of the memory plan (buffers of disjoint lifetimes share one)."""')
            slot_off, cursor = {}, {}
            for j, (sz, dt) in enumerate(self.prog.memory.slots):
                start = cursor.get(dt.name, Counter())
                slot_off[j] = start
                cursor[dt.name] = start + linear_form(sz)
            names = []
            for b in sorted(self.prog.memory.buffers.values(), key=lambda b: b.node.id):
                if b.slot < 0:
                    continue
                n, off = b.node, slot_off[b.slot]
                end = off + linear_form(size(n.shape))
                s(f"b{n.id} = W_{n.dtype.name}[{_linear(off)}:{_linear(end)}]  # {n.op.name} {n.shape}")
                names.append(f"b{n.id}")
            s(f"return ({''.join(f'{x}, ' for x in names)})")
        self.buffer_names = names
        return s.text()

    def step(self, codes, gathers, update_codes) -> str:
        prog, s = self.prog, Source()
        args = ["B", "X", "P", "K", "I", "U", "S", "E"] + [f"d_{_ident(d)}" for d in self.dims]
        with s.block(f"def step({', '.join(args)}):"):
            s(f'"""The whole step: {len(prog.kernels)} kernels."""')
            for j, x in enumerate(self.inputs):
                s(f"# in{j}: input {comment(x.name)} {x.dtype.name}{tuple(x.shape)}")
            for tup, names in (("B", self.buffer_names), ("P", [self.names[p.id] for p in self.params]),
                               ("K", [self.names[c.id] for c in self.consts]), ("I", [self.names[x.id] for x in self.inputs]),
                               ("X", [f"X{j}" for j, _ in gathers]), ("U", [f"U{j}" for j in range(len(self.staged))]),
                               ("S", [f"S{j}" for j in range(len(self.scratch))])):
                if names:
                    s(f"{''.join(f'{n}, ' for n in names)}= {tup}")
            for k, code in codes:
                s(f"# kernel {k.index}: {k.kind} over {k.domain}" + (f", reducing axes {k.raxes}" if k.raxes else ""))
                for z in code.zero_first:
                    s(f"fill0[launch({numel(z.shape)})]({numel(z.shape)}, {self.names[z.id]})")
                s(self.call(code, [self.names[w.id] for w in code.writes]))
            if self.checks:
                s("# an index found out of range by a kernel above: stop before any output or update")
                with s.block("if E.copy_to_host()[0]:"):
                    s("raise IndexOutOfRange()")
            if gathers:
                s("# outputs that are views of params, inputs or strided buffers: copied before the updates")
            for j, code in gathers:
                s(self.call(code, [f"X{j}"]))
            for _, _, code, saved in update_codes:
                if saved:
                    s(self.call(code, [saved]) + "  # saved before the copies below overwrite what it reads")
            if update_codes:
                s("# updates that could not be written in place")
            for p, e, code, saved in update_codes:
                if code is None or saved:
                    src = saved or self.names[base_of(e)[0].id]
                    s(f"copy[launch({numel(p.shape)})]({numel(p.shape)}, {src}, {self.names[p.id]})")
                else:
                    s(self.call(code, [self.names[p.id]]))
            outs = []  # a gathered output j was copied into X<j> above (named by its output position)
            for j, (how, o) in enumerate(self.outputs):
                outs.append("None" if how == "host" else f"X{j}" if how == "gather" else self.names[base_of(o)[0].id])
            s(f"return ({''.join(f'{o}, ' for o in outs)})")
        return s.text()

    def call(self, code: KernelCode, writes: list[str]) -> str:
        args = list(code.syms) + [self.names[base_of(v)[0].id] for v in code.reads]
        args += [f"np.{c.dtype.name}({numel(c.attrs['dims'])})" for c in code.scalars] + writes
        first = sum(len(c.scratch) for c in self.codes[:self.codes.index(code)])
        args += [f"S{first + j}" for j in range(len(code.scratch))] + (["E"] if code.checks else [])
        return f"{code.name}[{code.launch}]({', '.join(args)})"


def generate(prog: Program, inputs: list[Node]) -> tuple[str, StepWriter]:
    w = StepWriter(prog, inputs)
    return w.write(), w


__all__ = ["generate", "StepWriter", "sources"]
