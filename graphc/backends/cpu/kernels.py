"""Loop-nest code generation for one CPU kernel, over raw pointers and strides.

A kernel is ``def KERNEL(A, B)`` (the C ABI of ``cpu/abi.py``): its prologue reads sizes,
strides, offsets and scalars from the argument block ``A`` and makes typed pointers into the
step's bases ``B``. Nothing in the source depends on sizes, offsets or constants, only on
structure (ops, dtypes, ranks, which strides are 0 or 1, which values are equal), so one
compiled kernel serves every layer, batch size and model with that structure.

Loops run over the domain in row-major order; every value is computed at the shallowest loop
level it varies at (loop-invariant code is hoisted), reductions accumulate in scalars (or in
rows of accumulators in scratch when a kept axis follows a reduced one), and ops that need a
reduction's result run in an epilogue. Matmuls call ``cblas_?gemm`` with layouts read from the
strides, then run their epilogue over the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...ir import Node
from ...ops.cumulative import COMBINE
from ...passes.fusion import Kernel, base_of
from ...shapes import form_mul, size
from ..common.layout import ONE, ZERO, Layout, Scratch, View, freeze, scalar_constant
from ..common.lowering import ScalarLowering, describe, literal, peel
from ..common.source import Source

CHUNK = 4096  # float32 sums add blocks of this many terms: error ~(CHUNK + n/CHUNK) ulp, not n
KERNEL = "KERNEL"  # the function's name in a structural source; the library names it by its hash


def _p(e: str) -> str:
    return e if e.replace("_", "").isalnum() else f"({e})"


@dataclass(eq=False)
class KernelCode:
    source: str                                    # structural: the same for every kernel of its kind
    slots: list = field(default_factory=list)      # what A[j] holds: ("int", form) | ("base", base) |
    #                                                ("bits", dtype, value) | ("count", dtype, dims)
    scratch: Scratch = field(default_factory=Scratch)
    parallel_source: str | None = None             # the same kernel with its outer loop in prange
    doc: str = ""
    checks: list = field(default_factory=list)     # index ops it range-checks: ("check", j) slots


class KernelWriter:
    """Writes one kernel; ``ax[a]`` is the index expression of domain axis ``a``."""

    def __init__(self, layout: Layout, scratch: Scratch | None = None):
        self.layout = layout
        self.scratch = scratch if scratch is not None else Scratch()
        self.slots: list = []
        self.pro = Source()
        self.pro.depth = 1
        self.ints: dict[tuple, str] = {}
        self.ptrs: dict[tuple, str] = {}
        self.values: dict[tuple, str] = {}
        self.src = Source()
        self.src.depth = 1
        self.parallel = False
        self.checks: list[Node] = []
        self.nj = 0

    # -- the argument block ------------------------------------------------------------
    def slot(self, spec) -> str:
        self.slots.append(spec)
        return f"A[{len(self.slots) - 1}]"

    def int(self, f, name: str | None = None) -> str:
        """An integer (size, stride, offset): literal 0 or 1, else a variable read from A."""
        key = freeze(f) if not isinstance(f, tuple) else f
        if key == ZERO:
            return "0"
        if key == ONE:
            return "1"
        if key not in self.ints:
            var = name or f"s{sum(1 for v in self.ints.values() if v[0] == 's')}"
            self.ints[key] = var
            self.pro(f"{var} = {self.slot(('int', key))}")
        return self.ints[key]

    def dim(self, d) -> str:
        return self.int(freeze(d))

    def ptr(self, v: View, role: str = "a") -> str:
        key = (v.base, v.offset)
        if key not in self.ptrs:
            name = f"{role}{sum(1 for p in self.ptrs.values() if p[0] == role)}"
            self.ptrs[key] = name
            dt = "uint8" if v.dtype == "bool" else v.dtype
            self.pro(f"{name} = ptr_{dt}(B[{self.slot(('base', v.base))}], {self.slot(('int', v.offset))})")
        return self.ptrs[key]

    def constant(self, value, dtype: np.dtype) -> str:
        """A scalar constant, passed in A as bits."""
        key = (dtype.str, repr(value))
        if key not in self.values:
            var = f"c{len(self.values)}"
            self.values[key] = var
            a = self.slot(("bits", dtype.name, value))
            self.pro(f"{var} = {self._from_bits(a, dtype)}")
        return self.values[key]

    def count(self, n: Node) -> str:
        key = ("count", n.dtype.str, tuple(n.attrs["dims"]))
        if key not in self.values:
            var = f"c{len(self.values)}"
            self.values[key] = var
            self.pro(f"{var} = {self._from_bits(self.slot(('count', n.dtype.name, tuple(n.attrs['dims']))), n.dtype)}")
        return self.values[key]

    @staticmethod
    def _from_bits(a: str, dtype: np.dtype) -> str:
        if dtype.kind == "f":
            return f"as_{dtype.name}({a})"
        return f"({a} != 0)" if dtype == np.bool_ else f"np.{dtype.name}({a})"

    # -- memory -------------------------------------------------------------------------
    def lin(self, v: View, idx: list[str]) -> str:
        """Element offset of ``v[idx]`` from its pointer."""
        terms = []
        for i, d, s in zip(idx, v.shape, v.strides):
            if d == 1 or s == ZERO or i == "0":
                continue
            st = self.int(s)
            terms.append(i if st == "1" else f"{_p(i)} * {st}")
        return " + ".join(terms) or "0"

    def load(self, v: View, idx: list[str]) -> str:
        e = f"{self.ptr(v)}[{self.lin(v, idx)}]"
        return f"({e} != 0)" if v.dtype == "bool" else e

    def store(self, v: View, idx: list[str], value: str, role: str = "o") -> None:
        value = f"np.uint8({value})" if v.dtype == "bool" else value
        self.src(f"{self.ptr(v, role)}[{self.lin(v, idx)}] = {value}")

    def loop(self, var: str, n: str, parallel: bool = False):
        return self.src.block(f"for {var} in {'prange' if parallel else 'range'}({n}):")

    # -- the hooks of ScalarLowering.checked ---------------------------------------------------
    def check_number(self, n: Node) -> str | None:
        """The number of ``n``'s check across the step (an ``A`` slot), if its index is computed in the graph."""
        if self.layout is None or n.id not in self.layout.prog.checked:
            return None
        ids = [m.id for m in self.checks]  # (not `in`: == on nodes builds a graph op)
        if n.id not in ids:
            self.checks.append(n)
            ids.append(n.id)
        return self.slot(("check", ids.index(n.id)))

    def error_word(self) -> str:
        return self.ptr(View(("err", 0), ZERO, (), (), "int64"), "e")

    def fresh(self, prefix: str) -> str:
        self.nj += 1
        return f"{prefix}{self.nj - 1}"

    def statements(self) -> Source:
        return self.src

    def finish(self, doc: str) -> KernelCode:
        s = Source()
        with s.block(f"def {KERNEL}(A, B):"):
            s(f'"""{doc}"""')
        text = s.text() + self.pro.text() + self.src.text()
        return KernelCode(text, self.slots, self.scratch, doc=doc, checks=self.checks)


class LoopWriter(ScalarLowering, KernelWriter):
    """A loop, reduce or matmul kernel of the program."""

    def __init__(self, k: Kernel, layout: Layout, parallel: bool, inplace: dict, shared: set):
        super().__init__(layout)
        self.k = k
        self.parallel = parallel
        self.inplace, self.shared = inplace, shared
        self.inside = {n.id for n in k.nodes}
        self.out_ids = {o.id for o in k.outputs}
        self.r = len(k.domain) if k.kind in ("loop", "reduce", "matmul") else 0
        self.n = [self.int(freeze(d), f"n{a}") if d != 1 else "1" for a, d in enumerate(k.domain)] \
            if self.r else []
        self.ax = [f"i{a}" for a in range(self.r)]
        self.domain = tuple(k.domain) if self.r else ()
        self.acc_views: dict[int, View] = {}
        self.nv = 0  # values are v0, v1, ... in the order they are computed

    def view(self, v: Node) -> View:
        return self.layout.view(v, self.scratch)

    def out_view(self, n: Node) -> View:
        """Where ``n`` is written: its buffer, or the param it overwrites in place (through the
        same pointer the kernel reads the param with, so LLVM sees one pointer and vectorizes)."""
        return self.layout.buffer(n)

    def accname(self, n: Node, kind: str = "acc") -> str:
        """Accumulators are numbered by their reduction's place in the kernel (names stay structural)."""
        return f"{kind}{[m.id for m in self.k.nodes if m.op.kind == 'reduce'].index(n.id)}"

    # -- the hooks of ScalarLowering ----------------------------------------------------
    def axis(self, a: int) -> str:
        """The index along domain axis ``a``: its loop variable, or 0 where the axis has one entry
        (no loop is opened over it)."""
        return "0" if self.k.domain[a] == 1 else self.ax[a]

    def source_value(self, v: Node) -> str | None:
        """A scalar constant or count, passed in the argument block (not read from memory)."""
        c = scalar_constant(v)
        if c is not None:
            return self.constant(*c)
        b = base_of(v)[0]
        return self.count(b) if b.op.name == "count" else None

    def load_operand(self, v: Node, idx: list[str]) -> str:
        view = self.view(v)
        if all(d == 1 or s == ZERO for d, s in zip(view.shape, view.strides)):  # one value: read it once
            key = ("one", view.base, view.offset, view.dtype)
            if key not in self.values:
                var = f"c{len(self.values)}"
                self.values[key] = var
                self.pro(f"{var} = {self.load(view, ['0'] * len(view.shape))}")
            return self.values[key]
        return self.load(view, idx)

    def flat_index(self, n: Node) -> str:
        flat = "0"
        for j, d in enumerate(n.shape):
            if d != 1:
                a = j + self.r - n.ndim
                flat = self.ax[a] if flat == "0" else f"({flat}) * {self.n[a]} + {self.ax[a]}"
        return flat

    def salt(self, n: Node) -> str:
        return self.constant(n.attrs["salt"], np.dtype(np.int64))

    def depth(self, n: Node) -> int:
        axes = [j + self.r - n.ndim for j, d in enumerate(n.shape) if d != 1]
        return max(axes) + 1 if axes else 0

    # -- statements ----------------------------------------------------------------------
    def emit_node(self, n: Node, val: dict, acc_index: list[str] | None = None) -> None:
        name = f"v{self.nv}"
        self.nv += 1
        if n.op.kind == "reduce":
            acc = self.acc_views.get(n.id)
            val[n.id] = self.load(acc, acc_index) if acc is not None else self.accname(n)
            if acc is not None:
                self.src(f"{name} = {val[n.id]}  # {n.op.name}")
                val[n.id] = name
        elif n.op.kind == "matmul":
            self.src(f"{name} = {self.load(self.out_view(n), self.index(n.shape))}  # matmul")
            val[n.id] = name
        else:
            self.src(f"{name} = {self.expr(n, val)}  # {n.op.name}")
            val[n.id] = name
        if n.id in self.out_ids and n.op.kind != "matmul":
            self.store(self.out_view(n), self.own_index(n), val[n.id])

    def generate(self) -> KernelCode:
        k = self.k
        if k.kind in ("loop", "reduce", "matmul"):
            self.loops()
        else:
            OtherWriter.write(self, k.nodes[0])
        ops = ", ".join(sorted({n.op.name for n in k.nodes}))
        return self.finish(f"{k.kind} over {self.r} axes: {ops}" if self.r else f"{k.kind}: {ops}")

    def loops(self) -> None:
        k, s, r = self.k, self.src, self.r
        raxes = k.raxes
        after = k.after_reduce()
        main = [n for n in k.nodes if n.id not in after]
        epi = [n for n in k.nodes if n.id in after]
        val: dict = {}
        for n in k.nodes:
            if n.op.kind == "matmul" and self.matmul_call(n):
                return
        f = min(raxes) if raxes else r
        kept_after = [a for a in range(f, r) if a not in raxes]
        scalar_acc = not kept_after
        last = k.domain[-1] if k.domain else 1
        fsum = any(n.op.name == "sum" and n.dtype.kind == "f" for n in k.nodes)
        # float32 sums: a flat 1-d reduction adds blocks of CHUNK terms (each block a vectorized
        # loop); a deeper one adds each innermost row first. Error ~(block + n/block) ulp.
        chunk = r == 1 and bool(raxes) and fsum and not (isinstance(last, int) and last <= CHUNK)
        rowpart = r >= 2 and scalar_acc and f < r - 1 and r - 1 in raxes and fsum
        by_depth: dict[int, list[Node]] = {}
        for n in main:
            if n.op.kind != "reduce":
                by_depth.setdefault(self.depth(n), []).append(n)
        reds = [n for n in k.nodes if n.op.kind == "reduce"]
        sums = [n for n in reds if n.op.name == "sum"]
        top = r if reds else max(by_depth, default=0)  # loops no value varies in are not opened
        opened = []
        for a in range(top):
            if a == f and raxes:
                self.init_accumulators(reds, kept_after, scalar_acc)
            for n in by_depth.get(a, []):
                self.emit_node(n, val)
            par = self.parallel and a == 0 and (not raxes or f >= 1)
            if chunk:
                opened.append(self.loop("q", f"({self.n[0]} + {CHUNK - 1}) // {CHUNK}", self.parallel))
                opened[-1].__enter__()
                s(f"lo = q * {CHUNK}")
                for n in sums:
                    s(f"{self.accname(n, 'part')} = {literal(0, n.dtype)}")
                opened.append(s.block(f"for i0 in range(lo, gmin({self.n[0]}, lo + {CHUNK})):"))
            else:
                if rowpart and a == r - 1:
                    for n in sums:
                        s(f"{self.accname(n, 'part')} = {literal(0, n.dtype)}")
                opened.append(self.loop(self.ax[a], self.n[a], par))
            opened[-1].__enter__()
        for n in by_depth.get(top, []):
            self.emit_node(n, val)
        acc_idx = [self.ax[a] for a in kept_after]
        for n in reds:
            v = self.read(n, 0, val)
            if (chunk or rowpart) and n.op.name == "sum":
                s(f"{self.accname(n, 'part')} += {v}  # sum")
            elif n.id in self.acc_views:
                acc = self.acc_views[n.id]
                self.store(acc, acc_idx, n.op.extra["combine"].format(self.load(acc, acc_idx), v), role="t")
            elif n.op.name == "sum":
                s(f"{self.accname(n)} += {v}  # sum")
            else:
                s(f"{self.accname(n)} = {n.op.extra['combine'].format(self.accname(n), v)}  # {n.op.name}")
        # close loops down to depth f, adding partial sums on the way
        for a in reversed(range(min(f, top), top)):
            opened.pop().__exit__(None, None, None)
            if (chunk and a == 0) or (rowpart and a == r - 1):
                for n in sums:
                    s(f"{self.accname(n)} += {self.accname(n, 'part')}")
            if chunk and a == 0:
                opened.pop().__exit__(None, None, None)
        if epi or reds:
            self.epilogue(epi, val, kept_after)
        while opened:
            opened.pop().__exit__(None, None, None)

    def init_accumulators(self, reds, kept_after, scalar_acc) -> None:
        for n in reds:
            init = n.op.extra["identity"](n.dtype)
            if scalar_acc:
                self.src(f"{self.accname(n)} = {literal(init, n.dtype)}")
                continue
            # a row of accumulators over the kept axes after the first reduced one, in scratch
            shape = tuple(self.k.domain[a] for a in kept_after)
            acc = self.scratch.take(n.dtype.name, shape, self.layout.ws_end)
            self.acc_views[n.id] = acc
            opened = [self.loop(self.ax[a], self.n[a]) for a in kept_after]
            for o in opened:
                o.__enter__()
            self.store(acc, [self.ax[a] for a in kept_after], literal(init, n.dtype), role="t")
            for o in reversed(opened):
                o.__exit__(None, None, None)

    def epilogue(self, epi, val, kept_after) -> None:
        opened = [self.loop(self.ax[a], self.n[a]) for a in kept_after]
        for o in opened:
            o.__enter__()
        acc_idx = [self.ax[a] for a in kept_after]
        ev = dict(val) if not kept_after else {}
        need = self.k.needed_by(epi)
        epi_ids = {m.id for m in epi}
        for n in self.k.nodes:
            if n.op.kind == "reduce":
                self.emit_node(n, ev, acc_idx)
            elif n.id in epi_ids or (kept_after and n.id in need and n.op.kind != "matmul"):
                self.emit_node(n, ev)
        for o in reversed(opened):
            o.__exit__(None, None, None)

    # -- matmul --------------------------------------------------------------------------
    def axpy_update(self, mm: Node):
        """A kernel that is only ``P - c * (a @ b)`` written in place into P (SGD on a weight)
        is one gemm with alpha = -c and beta = 1: no temporary, no second pass."""
        rest = [n for n in self.k.nodes if n is not mm]
        if len(rest) != 2 or mm.id in self.shared:
            return None
        mul, upd = rest
        if mul.op.name != "mul" or upd.op.name != "sub" or mul.id in self.shared or upd.inputs[1] is not mul:
            return None
        c, m = mul.inputs if mul.inputs[1] is mm else mul.inputs[::-1]
        p = base_of(upd.inputs[0])[0]
        lr = scalar_constant(c)
        if m is not mm or lr is None or upd.inputs[0] is not p or self.inplace.get(upd.id) is not p:
            return None
        return upd, -lr[0]

    def operand(self, v: Node, rows: str, cols: str) -> tuple[str, str, str, list]:
        """(trans, pointer, leading dim) of a matmul operand's last two axes as BLAS reads them:
        row-major, or column-major read transposed; anything else is copied contiguous first."""
        view = self.view(v)
        if _blas_layout(view) is None:
            tmp = self.scratch.take(view.dtype, view.shape, self.layout.ws_end)
            self.scratch.copies.append((view, tmp))
            view = tmp
        s_r, s_c = view.strides[-2], view.strides[-1]
        batch = [(s, d) for s, d in zip(view.strides[:-2], view.shape[:-2])]
        p = self.ptr(view)
        if _blas_layout(view) == "NO_TRANS":
            return "NO_TRANS", p, _ld(self.int(s_r) if view.shape[-2] != 1 else None, cols), batch
        return "TRANS", p, _ld(self.int(s_c) if view.shape[-1] != 1 else None, rows), batch

    def matmul_call(self, n: Node) -> bool:
        """Emit the BLAS call(s); True when the kernel's epilogue went into the call too."""
        s = self.src
        nb = n.ndim - 2
        A, Bv = n.inputs
        m, kk, nn = self.dim(n.shape[-2]), self.dim(A.shape[-1]), self.dim(n.shape[-1])
        ta, pa, lda, ba = self.operand(A, m, kk)
        tb, pb, ldb, bb = self.operand(Bv, kk, nn)
        gemm = "cblas_sgemm" if n.dtype == np.float32 else "cblas_dgemm"
        fused = self.axpy_update(n) if nb == 0 else None
        one, zero = literal(1, n.dtype), literal(0, n.dtype)
        if fused is not None:
            upd, alpha = fused
            out = self.out_view(upd)
            po = self.ptr(out, "o")
            ldc = _ld(self.int(out.strides[0]) if out.shape[0] != 1 else None, nn)
            s(f"{gemm}(ROW_MAJOR, {ta}, {tb}, {m}, {nn}, {kk}, {self.constant(alpha, n.dtype)}, {pa}, {lda}, "
              f"{pb}, {ldb}, {one}, {po}, {ldc})  # {upd.op.name} in place")
            self.parallel = False  # no loops left to run in parallel
            return True
        out = self.out_view(n)
        po = self.ptr(out, "o")
        ldc = _ld(self.int(out.strides[-2]) if out.shape[-2] != 1 else None, nn)
        if nb == 0:
            s(f"{gemm}(ROW_MAJOR, {ta}, {tb}, {m}, {nn}, {kk}, {one}, {pa}, {lda}, {pb}, {ldb}, {zero}, {po}, {ldc})")
            return False
        opened = []
        for j in range(nb):
            opened.append(self.loop(f"m{j}", self.dim(n.shape[j])))
            opened[-1].__enter__()

        def at(p, batch):
            lead = nb - len(batch)
            terms = [f"m{j + lead}" if s_ == ONE else f"m{j + lead} * {self.int(s_)}"
                     for j, (s_, d) in enumerate(batch) if d != 1 and s_ != ZERO]
            return f"ptr_add({p}, {' + '.join(terms)})" if terms else p
        s(f"{gemm}(ROW_MAJOR, {ta}, {tb}, {m}, {nn}, {kk}, {one}, {at(pa, ba)}, {lda}, {at(pb, bb)}, {ldb}, "
          f"{zero}, {at(po, list(zip(out.strides[:-2], out.shape[:-2])))}, {ldc})")
        for o in reversed(opened):
            o.__exit__(None, None, None)
        return False


def _blas_layout(v: View) -> str | None:
    """How BLAS can read the last two axes in place: row-major (unit column stride, distinct rows)
    or column-major (read transposed); None when they must be copied (broadcasts, strided both ways)."""
    (r, c), (s_r, s_c) = v.shape[-2:], v.strides[-2:]
    if (c == 1 or s_c == ONE) and (r == 1 or s_r != ZERO):
        return "NO_TRANS"
    if (r == 1 or s_r == ONE) and (c == 1 or s_c != ZERO):
        return "TRANS"
    return None


def _ld(stride: str | None, width: str) -> str:
    """A leading dimension BLAS accepts: the row stride, at least the row width and 1. (gmax, not
    max: Python's max compiles an error path that calls into the interpreter.)"""
    e = "1"
    for x in dict.fromkeys(x for x in (stride, width) if x is not None and x not in ("0", "1")):
        e = f"gmax({x}, {e})"
    return e


class OtherWriter:
    """Gathers, scatters and copies: one op, explicit loops."""

    @staticmethod
    def write(w: LoopWriter, n: Node) -> None:
        name = n.op.name
        out = w.out_view(n)
        if name in ("take", "scatter_add"):
            axis, idx = n.attrs["axis"], n.inputs[1]
            src = n if name == "take" else n.inputs[0]
            x, iv, g = (w.view(n.inputs[0]), w.view(idx), None) if name == "take" else (None, w.view(idx), w.view(src))
            if name == "scatter_add":
                fill(w, out, 0)
            js = [f"j{t}" for t in range(src.ndim)]
            opened = [w.loop(j, w.dim(d)) for j, d in zip(js, src.shape)]
            for o in opened:
                o.__enter__()
            pre, mid, post = js[:axis], js[axis:axis + idx.ndim], js[axis + idx.ndim:]
            ix = w.checked(n, w.load(iv, mid))
            if name == "take":
                w.store(out, js, w.load(x, pre + [ix] + post))
            else:
                tgt = pre + [ix] + post
                w.store(out, tgt, f"{w.load(out, tgt)} + {w.load(g, js)}")
            for o in reversed(opened):
                o.__exit__(None, None, None)
        elif name == "concatenate":
            axis, start = n.attrs["axis"], 0
            for v in n.inputs:
                copy(w, w.view(v), out, lambda t, j, st=start: f"{j} + {w.int(freeze(st))}" if t == axis and st else j)
                start += v.shape[axis]
        elif name == "cumulative":  # each row in order: acc = combine(acc, x); out = acc (before it, if exclusive)
            axis, x = n.attrs["axis"], w.view(n.inputs[0])
            template, identity = COMBINE[n.attrs["combine"]]
            js = [f"j{t}" for t in range(n.ndim)]
            opened = [w.loop(j, w.dim(d)) for t, (j, d) in enumerate(zip(js, n.shape)) if t != axis and d != 1]
            for o in opened:
                o.__enter__()
            w.src(f"acc = {literal(identity, n.dtype)}")
            nd = w.dim(n.shape[axis])
            steps = f"range({nd} - 1, -1, -1)" if n.attrs["reverse"] else f"range({nd})"
            with w.src.block(f"for {js[axis]} in {steps}:"):
                idx = ["0" if d == 1 else j for j, d in zip(js, n.shape)]
                if n.attrs["exclusive"]:
                    w.store(out, idx, "acc")
                w.src(f"acc = {template.format('acc', w.load(x, idx))}")
                if not n.attrs["exclusive"]:
                    w.store(out, idx, "acc")
            for o in reversed(opened):
                o.__exit__(None, None, None)
        elif name == "argsort":
            OtherWriter.argsort(w, n, out)
        elif name == "unslice":
            index = n.attrs["index"]
            fill(w, out, 0)

            def at(t, j):
                if index[t] is None:
                    return j
                start, step = w.int(freeze(index[t][0])), w.int(freeze(index[t][2]))
                e = j if step == "1" else f"{step} * {j}"
                return e if start == "0" else f"{start} + {e}"
            copy(w, w.view(n.inputs[0]), out, at)
        else:
            raise NotImplementedError(f"no CPU lowering for {name}")


    @staticmethod
    def argsort(w: LoopWriter, n: Node, out: View) -> None:
        """Each row: a bottom-up merge sort of its indices (stable), in two scratch rows."""
        s, axis, x = w.src, n.attrs["axis"], w.view(n.inputs[0])
        nd = w.dim(n.shape[axis])
        a, b = (w.ptr(w.scratch.take("int64", (n.shape[axis],), w.layout.ws_end), "t") for _ in range(2))
        before = "(u > v or (u != u and v == v))" if n.attrs["descending"] else "(u < v or (v != v and u == u))"
        js = [f"j{t}" for t in range(n.ndim)]
        opened = [w.loop(j, w.dim(d)) for t, (j, d) in enumerate(zip(js, n.shape)) if t != axis and d != 1]
        for o in opened:
            o.__enter__()
        at = lambda k: ["0" if d == 1 else (k if t == axis else j) for t, (j, d) in enumerate(zip(js, n.shape))]
        with s.block(f"for q in range({nd}):"):
            s(f"{a}[q] = q")
        s("width = 1")
        with s.block(f"while width < {nd}:"):
            s("lo = 0")
            with s.block(f"while lo < {nd}:"):
                s(f"mid = gmin(lo + width, {nd})")
                s(f"hi = gmin(lo + 2 * width, {nd})")
                s("p = lo")
                s("r = mid")
                with s.block("for q in range(lo, hi):"):
                    s("take = p < mid")
                    with s.block("if take and r < hi:"):
                        s(f"u = {w.load(x, at(f'{a}[r]'))}")
                        s(f"v = {w.load(x, at(f'{a}[p]'))}")
                        s(f"take = not {before}")  # the right one goes first only if strictly before
                    with s.block("if take:"):
                        s(f"{b}[q] = {a}[p]")
                        s("p += 1")
                    with s.block("else:"):
                        s(f"{b}[q] = {a}[r]")
                        s("r += 1")
                s("lo = hi")
            with s.block(f"for q in range({nd}):"):
                s(f"{a}[q] = {b}[q]")
            s("width *= 2")
        with s.block(f"for q in range({nd}):"):
            w.store(out, at("q"), f"{a}[q]")
        for o in reversed(opened):
            o.__exit__(None, None, None)


def fill(w: KernelWriter, out: View, value) -> None:
    js = [f"z{t}" for t in range(len(out.shape))]
    opened = [w.loop(j, w.dim(d)) for j, d in zip(js, out.shape) if d != 1]
    for o in opened:
        o.__enter__()
    w.store(out, js, literal(value, np.dtype(out.dtype)))
    for o in reversed(opened):
        o.__exit__(None, None, None)


def copy(w: KernelWriter, src: View, dst: View, where=lambda t, j: j) -> None:
    """dst[where(t, j_t)...] = src[j...] over src's shape."""
    js = [f"j{t}" for t in range(len(src.shape))]
    opened = [w.loop(j, w.dim(d)) for j, d in zip(js, src.shape) if d != 1]
    for o in opened:
        o.__enter__()
    idx = ["0" if d == 1 else j for j, d in zip(js, src.shape)]
    w.store(dst, [where(t, j) for t, j in enumerate(idx)], w.load(src, idx))
    for o in reversed(opened):
        o.__exit__(None, None, None)


def collapse(src: View, dst: View) -> tuple[View, View]:
    """The same copy over fewer axes: unit axes dropped, and neighbours merged where both views
    step through them as one (a contiguous copy is one loop). Fewer shapes of copy kernel, so
    fewer to compile: a loop's carries and outputs are copies of every rank."""
    from ...shapes import form
    axes = [a for a, d in enumerate(src.shape) if d != 1]
    shape = [src.shape[a] for a in axes]
    st = [[s.strides[a] for a in axes] for s in (src, dst)]
    k = len(shape) - 1
    while k > 0:
        if all(form(dict(x[k - 1])) == form_mul(form(dict(x[k])), shape[k]) for x in st):
            shape[k - 1:k + 1] = [size((shape[k - 1], shape[k]))]
            for x in st:
                x[k - 1:k + 1] = [x[k]]
        k -= 1
    return tuple(View(v.base, v.offset, tuple(x), tuple(shape), v.dtype) for v, x in zip((src, dst), st))


def copy_code(src: View, dst: View, doc: str) -> KernelCode:
    """A kernel that copies ``src`` into ``dst`` (same shape)."""
    w = KernelWriter(None)
    src, dst = collapse(src, dst)
    copy(w, src, dst)
    return w.finish(f"copy over {len(src.shape)} axes ({doc})")


def can_parallelize(k: Kernel) -> bool:
    """prange over axis 0 is race-free for loops and row-wise reductions; a full
    reduction of a 1-d domain runs its chunks in parallel (a Numba reduction)."""
    if k.kind not in ("loop", "reduce", "matmul") or not k.domain:
        return False
    if not k.raxes:
        return True
    f = min(k.raxes)
    reds = [n for n in k.nodes if n.op.kind == "reduce"]
    return f >= 1 or (len(k.domain) == 1 and all(n.op.name == "sum" for n in reds))  # Numba's parfor reductions: sums


def kernel_code(k: Kernel, layout: Layout, inplace: dict | None = None, shared: set | None = None) -> KernelCode:
    """The kernel's serial code, and its parallel variant when it has one (same argument block)."""
    inplace, shared = inplace or {}, shared or set()
    code = LoopWriter(k, layout, False, inplace, shared).generate()
    if can_parallelize(k):
        par = LoopWriter(k, layout, True, inplace, shared)
        pcode = par.generate()
        if par.parallel and pcode.source != code.source:
            assert pcode.slots == code.slots, "serial and parallel kernels must read the same arguments"
            code.parallel_source = pcode.source
    return code


def is_loop_kernel(k: Kernel) -> bool:
    return k.kind in ("loop", "reduce", "matmul")


__all__ = ["KernelCode", "kernel_code", "copy_code", "literal", "describe", "peel", "is_loop_kernel", "CHUNK", "KERNEL",
           "can_parallelize"]
