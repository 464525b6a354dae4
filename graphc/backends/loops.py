"""Loop-nest code generation for one kernel: readable Python that Numba compiles.

A kernel function takes its domain dims ``n0, n1, ...``, the arrays it reads and the
arrays it writes. Loops run over the domain in row-major order; every value is
computed at the shallowest loop level it varies at (loop-invariant code is hoisted),
reductions accumulate in scalars (or rows of accumulators when a kept axis follows a
reduced one), and ops that need a reduction's result run in an epilogue."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import fmt_site
from ..ir import Node
from ..passes.fusion import Kernel, base_of
from .source import Source

CHUNK = 4096  # float32 sums add blocks of this many terms: error ~(CHUNK + n/CHUNK) ulp, not n


def literal(value, dtype: np.dtype) -> str:
    """A typed scalar literal: float32 code never meets a float64 constant."""
    v = np.asarray(value).item()
    if dtype == np.bool_:
        return repr(bool(v))
    if dtype.kind == "f" and not np.isfinite(v):
        return f"np.{dtype.name}({'np.nan' if v != v else ('np.inf' if v > 0 else '-np.inf')})"
    return f"np.{dtype.name}({float(v) if dtype.kind == 'f' else int(v)!r})"


def peel(v: Node) -> Node:
    """What a loop reads for ``v``: outer broadcasts become index arithmetic."""
    while v.op.name in ("broadcast_to", "stop_gradient"):
        v = v.inputs[0]
    return v


def is_scalar_const(v: Node) -> bool:
    v = peel(v)
    return v.op.name == "constant" and v.attrs["value"].size == 1


def describe(n: Node) -> str:
    return f"{n.op.name} ({n.phase}, {fmt_site(n.site)})"


@dataclass
class KernelCode:
    name: str
    source: str
    reads: list[Node] = field(default_factory=list)    # arrays read, in argument order (peeled)
    scalars: list[Node] = field(default_factory=list)  # count values, in argument order
    writes: list[Node] = field(default_factory=list)   # arrays written, in argument order
    parallel: bool = False
    same_as: KernelCode | None = None  # set when an identical kernel's function is reused


class _Gen:
    def __init__(self, k: Kernel, name: str, parallel: bool, wrappers: bool = False,
                 inplace: dict | None = None, shared: set | None = None):
        self.k, self.name, self.parallel, self.wrappers = k, name, parallel, wrappers
        self.inplace = inplace or {}  # output node id -> the param it overwrites
        self.shared = shared or set()  # node ids other kernels read
        self.r = len(k.domain) if k.kind in ("loop", "reduce", "matmul") else 0
        self.inside = {n.id for n in k.nodes}
        self.code = KernelCode(name, "")
        self.arg: dict[int, str] = {}
        self.out_ids = {o.id for o in k.outputs}
        self.src = Source()
        self.preload: dict[str, str] = {}

    # -- arguments -------------------------------------------------------------------
    def array(self, v: Node) -> str:
        if v.id not in self.arg:
            self.arg[v.id] = f"a{len(self.code.reads)}"
            self.code.reads.append(v)
        return self.arg[v.id]

    def scalar_arg(self, v: Node) -> str:
        if v.id not in self.arg:
            self.arg[v.id] = f"c{len(self.code.scalars)}"
            self.code.scalars.append(v)
        return self.arg[v.id]

    def out(self, n: Node) -> str:
        p = self.inplace.get(n.id)
        if p is not None:
            # An in-place update writes through the same argument it reads the param from:
            # LLVM then sees one pointer, not two that may overlap, and still vectorizes.
            return self.array(p)
        if ("o", n.id) not in self.arg:
            self.arg[("o", n.id)] = f"o{len(self.code.writes)}"
            self.code.writes.append(n)
        return self.arg[("o", n.id)]

    # -- indexing --------------------------------------------------------------------
    def index(self, shape: tuple, lead: int | None = None) -> str:
        """Index of an array of ``shape`` right-aligned in the domain (unit dims read 0)."""
        lead = self.r - len(shape) if lead is None else lead
        if not shape:
            return "()"
        return ", ".join("0" if d == 1 else f"i{j + lead}" for j, d in enumerate(shape))

    def depth(self, n: Node) -> int:
        nd = n.ndim
        axes = [j + self.r - nd for j, d in enumerate(n.shape) if d != 1]
        return max(axes) + 1 if axes else 0

    def read(self, n: Node, pos: int, val: dict) -> str:
        """Expression for operand ``pos`` of ``n``."""
        v = n.inputs[pos]
        b = base_of(v)[0]
        if b.id in self.inside:
            return val[b.id]
        if is_scalar_const(v):
            u = peel(v)
            while u.op.kind == "shape":
                u = u.inputs[0]
            return literal(u.attrs["value"], u.dtype)
        u = peel(v)
        if u.op.name == "count":
            return self.scalar_arg(u)
        a = self.array(u)
        if u.ndim == 0:  # loaded once up front: Numba's parfor lowering cannot index 0-d arrays
            if a not in self.preload:
                self.preload[a] = f"{a}[()]"
            return f"{a}s"
        if n.op.name == "one_hot":
            return f"{a}[{self.index(u.shape, self.r - n.ndim)}]"
        if n.op.name == "pick" and pos == 0:
            rows = self.index(u.shape[:-1], self.r - n.ndim)
            return f"{a}[{rows + ', ' if rows != '()' else ''}{{idx}}]"
        return f"{a}[{self.index(u.shape)}]"

    def expr(self, n: Node, val: dict) -> str:
        args = [self.read(n, i, val) for i in range(len(n.inputs))]
        if n.op.name == "one_hot":
            k = f"i{self.r - 1}"
            return f"np.{n.dtype.name}({args[0]} == {k})"
        if n.op.name == "pick":
            return args[0].replace("{idx}", args[1])
        if n.op.name == "cast":
            return f"np.{n.dtype.name}({args[0]})"
        if n.op.name == "stop_gradient":
            return args[0]
        if n.op.name == "random_uniform":  # hashed from the element's flat index
            flat = "0"
            for j, d in enumerate(n.shape):
                if d != 1:
                    a = j + self.r - n.ndim
                    flat = f"i{a}" if flat == "0" else f"({flat}) * n{a} + i{a}"
            rnd = n.op.scalar.format(*args, salt=n.attrs["salt"], flat=flat)
            return rnd if n.dtype == np.float32 else f"np.{n.dtype.name}({rnd})"
        return n.op.scalar.format(*args)

    # -- statements -------------------------------------------------------------------
    def emit_node(self, n: Node, val: dict, acc_index: str = "") -> None:
        s = self.src
        name = f"V__{n.id}"
        if n.op.kind == "reduce":
            val[n.id] = f"ACC__{n.id}" + (f"[{acc_index}]" if acc_index else "")
            name = val[n.id]
        elif n.op.kind == "matmul":
            val[n.id] = f"{self.out(n)}[{self.index(n.shape)}]"
            s(f"{name} = {val[n.id]}  # {describe(n)}")
            val[n.id] = name
        else:
            s(f"{name} = {self.expr(n, val)}  # {describe(n)}")
            val[n.id] = name
        if n.id in self.out_ids and n.op.kind != "matmul":
            s(f"{self.out(n)}[{self.own_index(n)}] = {name}")

    def own_index(self, n: Node) -> str:
        """Where ``n``'s value goes in its own array; a reduction without keepdims keeps
        only the unreduced axes of the domain."""
        if n.op.kind == "reduce" and not n.attrs["keepdims"]:
            kept = [a for a in range(self.r) if a not in n.attrs["axes"]]
            return ", ".join("0" if self.k.domain[a] == 1 else f"i{a}" for a in kept) or "()"
        return self.index(n.shape)

    def generate(self) -> KernelCode:
        k, s = self.k, self.src
        kinds = ", ".join(sorted({n.op.name for n in k.nodes}))
        body = Source()
        self.src = body
        body.depth = 1
        if k.kind in ("loop", "reduce", "matmul"):
            self.loops()
        else:
            self.other()
        dims = [f"n{j}" for j in range(self.r)]
        args = dims + [f"a{j}" for j in range(len(self.code.reads))] + \
            [f"c{j}" for j in range(len(self.code.scalars))] + [f"o{j}" for j in range(len(self.code.writes))]
        # Kernels are only called from `step`: no Python or C entry points to compile (a third
        # of the compile time), unless a profiler wants to call them one by one.
        flags = ("" if not self.parallel else ", parallel=True") + ("" if self.wrappers else ", **NO_WRAPPERS")
        s(f"@njit(cache=True, nogil=True, fastmath=FASTMATH, error_model='numpy'{flags})")
        with s.block(f"def {self.name}({', '.join(args)}):"):
            s(f'"""kernel {k.index} ({k.kind} over {k.domain}): {kinds}"""')
            for n in k.nodes:
                s(f"# {describe(n)}")
            for a, e in self.preload.items():
                s(f"{a}s = {e}")
        s.lines += body.lines
        self.code.source = s.text()
        self.code.parallel = self.parallel
        return self.code

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
        # loop over slices); a deeper one adds each innermost row first. Error ~(block + n/block) ulp.
        chunk = r == 1 and bool(raxes) and fsum and not (isinstance(last, int) and last <= CHUNK)
        rowpart = r >= 2 and scalar_acc and f < r - 1 and r - 1 in raxes and fsum
        by_depth: dict[int, list[Node]] = {}
        for n in main:
            if n.op.kind != "reduce":
                by_depth.setdefault(self.depth(n), []).append(n)
        reds = [n for n in k.nodes if n.op.kind == "reduce"]
        sums = [n for n in reds if n.op.name == "sum"]
        # loops deeper than any value varies are not opened (e.g. a domain (3, 1))
        top = r if reds else max(by_depth, default=0)
        opened = []
        for a in range(top):
            if a == f and raxes:
                self.init_accumulators(reds, kept_after, scalar_acc)
            for n in by_depth.get(a, []):
                self.emit_node(n, val)
            rng = "prange" if (self.parallel and a == 0 and (not raxes or f >= 1)) else "range"
            if chunk:
                opened.append(s.block(f"for q in {'prange' if self.parallel else 'range'}((n0 + {CHUNK - 1}) // {CHUNK}):"))
                opened[-1].__enter__()
                s(f"lo = q * {CHUNK}")
                s(f"hi = min(n0, lo + {CHUNK})")
                for n in sums:
                    s(f"PART__{n.id} = {literal(0, n.dtype)}")
                slices_at = len(s.lines)
                opened.append(s.block("for i0 in range(hi - lo):"))
            else:
                if rowpart and a == r - 1:
                    for n in sums:
                        s(f"PART__{n.id} = {literal(0, n.dtype)}")
                opened.append(s.block(f"for i{a} in {rng}(n{a}):"))
            opened[-1].__enter__()
        for n in by_depth.get(top, []):
            self.emit_node(n, val)
        acc_idx = ", ".join(f"i{a}" for a in kept_after)
        for n in reds:
            v = self.read(n, 0, val)
            tgt = f"ACC__{n.id}" + (f"[{acc_idx}]" if acc_idx else "")
            if (chunk or rowpart) and n.op.name == "sum":
                tgt = f"PART__{n.id}"
            if n.op.name == "sum":
                s(f"{tgt} += {v}  # {describe(n)}")
            else:
                s(f"{tgt} = gmax({tgt}, {v})  # {describe(n)}")
        if chunk:  # the block reads and writes slices, so each block is a fresh, vectorizable loop
            body = s.lines[slices_at:]
            names = sorted(set(re.findall(r"\b([ao]\d+)\[i0\b", "\n".join(body))))
            s.lines[slices_at:] = [re.sub(r"\b([ao]\d+)\[i0\b", r"\1c[i0", line) for line in body]
            pad = "    " * (s.depth - 1)
            s.lines[slices_at:slices_at] = [f"{pad}{a}c = {a}[lo:hi]" for a in names]
        # close loops down to depth f, adding partial sums on the way
        for a in reversed(range(min(f, top), top)):
            opened.pop().__exit__(None, None, None)
            if (chunk and a == 0) or (rowpart and a == r - 1):
                for n in sums:
                    s(f"ACC__{n.id} += PART__{n.id}")
            if chunk and a == 0:
                opened.pop().__exit__(None, None, None)
        if epi or reds:
            self.epilogue(reds, epi, val, kept_after)
        while opened:
            opened.pop().__exit__(None, None, None)

    def init_accumulators(self, reds, kept_after, scalar_acc) -> None:
        for n in reds:
            init = 0 if n.op.name == "sum" else (-np.inf if n.dtype.kind == "f" else np.iinfo(n.dtype).min)
            if scalar_acc:
                self.src(f"ACC__{n.id} = {literal(init, n.dtype)}")
                continue
            shape = ", ".join(f"n{a}" for a in kept_after)
            self.src(f"ACC__{n.id} = np.zeros(({shape},), np.{n.dtype.name})")
            if init != 0:  # np.full would cost seconds of compile time; a loop costs nothing
                idx = ", ".join(f"i{a}" for a in kept_after)
                for a in kept_after:
                    self.src.lines.append("    " * self.src.depth + f"for i{a} in range(n{a}):")
                    self.src.depth += 1
                self.src(f"ACC__{n.id}[{idx}] = {literal(init, n.dtype)}")
                self.src.depth -= len(kept_after)

    def epilogue(self, reds, epi, val, kept_after) -> None:
        s = self.src
        opened = []
        for a in kept_after:
            opened.append(s.block(f"for i{a} in range(n{a}):"))
            opened[-1].__enter__()
        acc_idx = ", ".join(f"i{a}" for a in kept_after)
        ev = dict(val) if not kept_after else {}
        need = self.k.needed_by(epi)
        for n in self.k.nodes:
            if n.op.kind == "reduce":
                self.emit_node(n, ev, acc_idx)
            elif n.id in {m.id for m in epi} or (kept_after and n.id in need and n.op.kind != "matmul"):
                self.emit_node(n, ev)
        while opened:
            opened.pop().__exit__(None, None, None)

    def axpy_update(self, mm: Node) -> tuple[Node, str] | None:
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
        if m is not mm or not is_scalar_const(c) or upd.inputs[0] is not p or self.inplace.get(upd.id) is not p:
            return None
        return upd, literal(-peel(c).attrs["value"], mm.dtype)

    def matmul_call(self, n: Node) -> bool:
        """Emit the BLAS call(s); True when the kernel's epilogue went into the call too."""
        s = self.src
        batch = n.ndim - 2
        # gemm reads each operand's layout from its strides: transposed views need no copy (a
        # broadcast operand stays a broadcast view, which gemm copies: BLAS needs real strides)
        A, B = (v.inputs[0] if v.op.name == "stop_gradient" else v for v in n.inputs)
        a, b = self.array(A), self.array(B)
        gemm = "gemm"
        s(f"# {describe(n)}: {A.shape} @ {B.shape}")
        fused = self.axpy_update(n) if batch == 0 else None
        if fused is not None:
            upd, alpha = fused
            s(f"{gemm}({a}, {b}, {self.out(upd)}, {alpha}, {literal(1, n.dtype)})  # {describe(upd)}, in place")
            self.parallel = False  # no loops left to run in parallel
            return True
        o = self.out(n)
        if batch == 0:
            s(f"{gemm}({a}, {b}, {o}, {literal(1, n.dtype)}, {literal(0, n.dtype)})")
            return False
        idx = [f"m{j}" for j in range(batch)]
        for j in range(batch):
            s.lines.append("    " * s.depth + f"for m{j} in range({o}.shape[{j}]):")
            s.depth += 1

        def sub(arr, shape):
            lead = batch - (len(shape) - 2)
            parts = ["0" if shape[j] == 1 else idx[j + lead] for j in range(len(shape) - 2)]
            return f"{arr}[{', '.join(parts)}]" if parts else arr
        s(f"{gemm}({sub(a, A.shape)}, {sub(b, B.shape)}, {o}[{', '.join(idx)}], "
          f"{literal(1, n.dtype)}, {literal(0, n.dtype)})")
        s.depth -= batch
        return False

    def other(self) -> None:
        """Gathers, scatters and copies: one op, explicit loops."""
        n = self.k.nodes[0]
        s = self.src
        ins = [self.array(v) for v in n.inputs]
        o = self.out(n)
        name = n.op.name
        if name in ("take", "scatter_add"):
            axis = n.attrs["axis"]
            idx = n.inputs[1]
            src_shape = n.shape if name == "take" else n.inputs[0].shape
            if name == "scatter_add":
                self.fill(o, n.ndim, 0)
            lo = [f"j{t}" for t in range(len(src_shape))]
            for t, _ in enumerate(src_shape):
                s.lines.append("    " * s.depth + f"for j{t} in range({('' if name == 'take' else ins[0]) or o}.shape[{t}]):")
                s.depth += 1
            pre, mid, post = lo[:axis], lo[axis:axis + idx.ndim], lo[axis + idx.ndim:]
            ix = f"{ins[1]}[{', '.join(mid) if mid else '()'}]"
            tgt = ", ".join(pre + [ix] + post)
            if name == "take":
                s(f"{o}[{', '.join(lo)}] = {ins[0]}[{tgt}]")
            else:
                s(f"{o}[{tgt}] += {ins[0]}[{', '.join(lo)}]")
            s.depth -= len(src_shape)
        elif name == "concatenate":
            axis, start = n.attrs["axis"], 0
            for a, v in zip(ins, n.inputs):
                self.copy(o, a, v.ndim, lambda t, j: f"{j} + {start}" if t == axis else j)
                start += v.shape[axis]
        elif name == "unslice":
            index = n.attrs["index"]
            self.fill(o, n.ndim, 0)
            self.copy(o, ins[0], n.ndim, lambda t, j: j if index[t] is None else f"{index[t][0]} + {index[t][2]} * {j}")
        else:
            raise NotImplementedError(f"no CPU lowering for {name}")


    def fill(self, o: str, ndim: int, value) -> None:
        s = self.src
        for t in range(ndim):
            s.lines.append("    " * s.depth + f"for z{t} in range({o}.shape[{t}]):")
            s.depth += 1
        s(f"{o}[{', '.join(f'z{t}' for t in range(ndim)) or '()'}] = 0")
        s.depth -= ndim

    def copy(self, dst: str, src: str, ndim: int, where) -> None:
        """dst[where(t, j_t)...] = src[j...] over src's shape."""
        s = self.src
        for t in range(ndim):
            s.lines.append("    " * s.depth + f"for j{t} in range({src}.shape[{t}]):")
            s.depth += 1
        js = [f"j{t}" for t in range(ndim)]
        s(f"{dst}[{', '.join(where(t, j) for t, j in enumerate(js)) or '()'}] = {src}[{', '.join(js) or '()'}]")
        s.depth -= ndim


def can_parallelize(k: Kernel) -> bool:
    """prange over axis 0 is race-free for loops and row-wise reductions; a full
    reduction of a 1-d domain runs its chunks in parallel (a Numba reduction)."""
    if k.kind not in ("loop", "reduce", "matmul") or not k.domain:
        return False
    if not k.raxes:
        return True
    f = min(k.raxes)
    return f >= 1 or (len(k.domain) == 1 and any(n.op.name == "sum" for n in k.nodes)
                      and not any(n.op.name == "max" for n in k.nodes))


def kernel_code(k: Kernel, name: str, parallel: bool = False, wrappers: bool = False,
                inplace: dict | None = None, shared: set | None = None) -> KernelCode:
    return _Gen(k, name, parallel and can_parallelize(k), wrappers, inplace, shared).generate()


def is_loop_kernel(k: Kernel) -> bool:
    return k.kind in ("loop", "reduce", "matmul")


__all__ = ["KernelCode", "kernel_code", "literal", "peel", "is_loop_kernel", "CHUNK"]
