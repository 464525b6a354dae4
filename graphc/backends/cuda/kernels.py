"""CUDA kernel source for one kernel of the fused schedule: a ``numba.cuda`` kernel.

Arrays are flat device buffers and views are index arithmetic (cuda/writer.py). Kinds:
- loop: a grid-stride loop over the flat domain, one element per iteration;
- reduce, "rows": one thread per kept index loops over the reduced axes (short rows, and
  reductions over leading axes such as a bias gradient, where neighbouring threads read
  neighbouring columns);
- reduce, "block": one block per kept index; its threads stride over the reduced axes and
  combine their partials in a shared-memory tree (long rows);
- reduce, "grid": a full reduction over many blocks, each leaving its tree's partial; the last
  block to finish (an atomic ticket) combines them and runs the epilogue;
- matmul: square tiles of A and B staged in shared memory, the fused epilogue applied to
  each output element before it is stored;
- take, concatenate, unslice: grid-stride gathers; scatter_add: a zero fill, then atomic adds.
The numba-cuda surface is kept small (numba-cuda is in maintenance mode): cuda.jit, cuda.grid,
cuda.gridsize, threadIdx/blockIdx/blockDim/gridDim, static cuda.shared.array, cuda.syncthreads,
cuda.atomic.add, and the scalar functions of cuda/mathfns.py. Generated code avoids what only the
simulator accepts: dicts, comprehensions, try, run-time-sized shared arrays, more than 48 KB of
shared memory, more than 1024 threads per block.
"""
from __future__ import annotations

import contextlib
from math import prod

import numpy as np

from ...ir import Node
from ...ops.cumulative import COMBINE
from ...passes.fusion import Kernel, base_of
from ..common.lowering import describe, literal, peel
from .mathfns import device_name
from .writer import KernelCode, KernelWriter

TPB = 256          # threads per block of grid-stride loops
BLOCK = 256        # threads (and shared slots) per block of a reduction
GRID = 1024        # blocks (and partials) of a full reduction at most
SHORT_ROW = 64     # reduced sizes up to this use one thread per row
TILE = 16          # matmul tile: 2 x 16 x 16 x 8 bytes = 4 KB of shared memory at most


def _loop(g: KernelWriter, k: Kernel) -> None:
    s = g.s
    s(f"n = {g.n(k.domain)}")
    g.set_domain(k.domain, "t")
    with s.block("for t in range(cuda.grid(1), n, cuda.gridsize(1)):"):
        g.decompose("t", list(range(len(k.domain))), k.domain)
        val: dict = {}
        for n in k.nodes:
            g.emit(n, val)
    g.code.launch = f"launch({g.n(k.domain)})"


def _reduce(g: KernelWriter, k: Kernel) -> None:
    s, D, r = g.s, k.domain, len(k.domain)
    kept = [a for a in range(r) if a not in k.raxes]
    red = list(k.raxes)
    reds = [n for n in k.nodes if n.op.kind == "reduce"]
    after = k.after_reduce()
    nred = prod(D[a] for a in red) if all(isinstance(D[a], int) for a in red) else None
    if nred is not None and nred <= SHORT_ROW:
        mode = "rows"
    elif not kept:
        mode = "grid"
    else:
        mode = "block" if all(a < min(red) for a in kept) else "rows"
    g.set_domain(D, None)
    for n in reds:  # acc0, acc1, ... (and sh0, sh1, ...) by the reduction's place in the kernel
        g.acc(n)
    nk, nr = g.n([D[a] for a in kept]), g.n([D[a] for a in red])
    s(f"nk = {nk}")
    s(f"nr = {nr}")
    if mode != "rows":
        for n in reds:
            s(f"{_sh(g, n)} = cuda.shared.array({BLOCK}, np.{n.dtype.name})")
        s("tid = cuda.threadIdx.x")
    if mode == "rows":
        loop, inner = "for t in range(cuda.grid(1), nk, cuda.gridsize(1)):", "for u in range(nr):"
        g.code.launch = f"launch({nk})"
    elif mode == "block":
        loop, inner = "for t in range(cuda.blockIdx.x, nk, cuda.gridDim.x):", "for u in range(tid, nr, cuda.blockDim.x):"
        g.code.launch = f"rows({nk}, {nr}, {BLOCK})"
    else:
        loop, inner = None, "for u in range(cuda.grid(1), nr, cuda.gridsize(1)):"
        g.code.launch = f"grid({nr}, {BLOCK}, {GRID})"
    # values before the reduction that nothing but the epilogue needs are computed there only
    stack = reds + [n for n in k.nodes if n.id in g.out_ids and n.id not in after and n.op.kind != "reduce"]
    feed = {n.id for n in stack}
    while stack:
        for i in stack.pop().inputs:
            b = base_of(i)[0]
            if b.id in g.inside and b.id not in feed and b.op.kind != "reduce":
                feed.add(b.id)
                stack.append(b)
    with s.block(loop) if loop else contextlib.nullcontext():
        g.decompose("t", kept, D)
        for n in reds:
            s(f"{g.acc(n)} = {_init(n)}")
        val: dict = {}
        with s.block(inner):
            g.decompose("u", red, D)
            for n in k.nodes:
                if n.id not in after and n.op.kind != "reduce" and n.id in feed:
                    g.emit(n, val)
            for n in reds:
                s(f"{g.acc(n)} = {_combine(n, g.acc(n), g.read(n, 0, val))}  # {describe(n)}")
        if mode == "rows":
            _epilogue(g, k, after)
            return
        _tree(g, reds)
        if mode == "block":
            with s.block("if tid == 0:"):
                _epilogue(g, k, after)
            s("cuda.syncthreads()  # the shared arrays are reused by the block's next row")
            return
        # grid: each block leaves its partial; the last block to finish combines them (in a fixed
        # order, so the result does not depend on timing), runs the epilogue and resets the ticket
        parts = [g.scratch(n.dtype, GRID) for n in reds]
        ticket = g.scratch(np.dtype(np.int32), 1)
        s("last = cuda.shared.array(1, np.int32)")
        with s.block("if tid == 0:"):
            for n, p in zip(reds, parts):
                s(f"{p}[cuda.blockIdx.x] = {_sh(g, n)}[0]")
            s("cuda.threadfence()  # partials are visible before the ticket is taken")
            s(f"last[0] = np.int32(cuda.atomic.add({ticket}, 0, 1) == cuda.gridDim.x - 1)")
        s("cuda.syncthreads()")
        with s.block("if last[0]:"):
            for n in reds:
                s(f"{g.acc(n)} = {_init(n)}")
            with s.block("for u in range(tid, cuda.gridDim.x, cuda.blockDim.x):"):
                for n, p in zip(reds, parts):
                    s(f"{g.acc(n)} = {_combine(n, g.acc(n), f'{p}[u]')}")
            _tree(g, reds)
            with s.block("if tid == 0:"):
                s(f"{ticket}[0] = 0")
                _epilogue(g, k, after)


def _init(n: Node) -> str:
    return literal(n.op.extra["identity"](n.dtype), n.dtype)


def _combine(n: Node, a: str, b: str) -> str:
    return n.op.extra["combine"].format(a, b)


def _sh(g: KernelWriter, n: Node) -> str:
    """The shared array of reduction ``n``'s block tree."""
    return g.namer.name("sh", n.id)


def _tree(g: KernelWriter, reds: list[Node]) -> None:
    """Combine the block's per-thread accumulators in shared memory (blockDim.x is a power of
    two); thread 0 ends with the block's result in its accumulator."""
    s = g.s
    for n in reds:
        s(f"{_sh(g, n)}[tid] = {g.acc(n)}")
    s("cuda.syncthreads()")
    s("w = cuda.blockDim.x // 2")
    with s.block("while w > 0:"):
        with s.block("if tid < w:"):
            for n in reds:
                sh = _sh(g, n)
                s(f"{sh}[tid] = {_combine(n, f'{sh}[tid]', f'{sh}[tid + w]')}")
        s("cuda.syncthreads()")
        s("w //= 2")
    for n in reds:
        s(f"{g.acc(n)} = {_sh(g, n)}[0]")


def _epilogue(g: KernelWriter, k: Kernel, after: set[int]) -> None:
    """Ops on reduced values, per kept index; the values they need from before the
    reduction vary over kept axes only, and are computed again here."""
    need = k.needed_by([n for n in k.nodes if n.id in after])
    red = set(k.raxes)
    saved = g.ax
    g.ax = ["0" if a in red else x for a, x in enumerate(g.ax)]  # reduced axes have size 1 here
    val: dict = {}
    for n in k.nodes:
        if n.op.kind == "reduce" or n.id in after or n.id in need:
            g.emit(n, val)
    g.ax = saved


def _matmul(g: KernelWriter, k: Kernel) -> None:
    s, D, r = g.s, k.domain, len(k.domain)
    mm = next(n for n in k.nodes if n.op.kind == "matmul")
    A, B = mm.inputs
    M, N, K = D[-2], D[-1], A.shape[-1]
    small = [d for d in (M, N) if isinstance(d, int) and d <= 8]  # a skinny product wastes most of a wide tile
    T = TILE if not small else 4 if len(small) == 2 and max(M, N) <= 4 else 8
    g.set_domain(D, None)
    m, nn, kk, nb = g.d(M), g.d(N), g.d(K), g.n(D[:-2])
    zero = literal(0, mm.dtype)
    s(f"sA = cuda.shared.array(({T}, {T}), np.{mm.dtype.name})")
    s(f"sB = cuda.shared.array(({T}, {T}), np.{mm.dtype.name})")
    s("tx = cuda.threadIdx.x")
    s("ty = cuda.threadIdx.y")
    s(f"i{r - 1} = cuda.blockIdx.x * {T} + tx")
    s(f"i{r - 2} = cuda.blockIdx.y * {T} + ty")
    s(f"# {describe(mm)}: {A.shape} @ {B.shape}, {T}x{T} tiles")
    with s.block(f"for z in range(cuda.blockIdx.z, {nb}, cuda.gridDim.z):"):
        g.decompose("z", list(range(r - 2)), D)
        s(f"acc = {zero}")
        with s.block(f"for k0 in range(0, {kk}, {T}):"):
            s("ka = k0 + tx")
            s("kb = k0 + ty")
            ia = g.index(A.shape[:-2], r - 2 - (A.ndim - 2)) + [f"i{r - 2}", "ka"]
            ib = g.index(B.shape[:-2], r - 2 - (B.ndim - 2)) + ["kb", f"i{r - 1}"]
            s(f"sA[ty, tx] = {g.load(A, ia)} if i{r - 2} < {m} and ka < {kk} else {zero}")
            s(f"sB[ty, tx] = {g.load(B, ib)} if kb < {kk} and i{r - 1} < {nn} else {zero}")
            s("cuda.syncthreads()")
            with s.block(f"for j in range({T}):"):
                s("acc += sA[ty, j] * sB[j, tx]")
            s("cuda.syncthreads()")
        with s.block(f"if i{r - 2} < {m} and i{r - 1} < {nn}:"):
            val = {mm.id: "acc"}
            if mm.id in g.out_ids:
                s(f"{g.out(mm)}[{g.linear(g.index(D), D)}] = acc")
            for n in k.nodes:
                if n is not mm:
                    g.emit(n, val)
    g.code.launch = f"tiles({nb}, {g.d(M)}, {g.d(N)}, {T})"


def _gather(g: KernelWriter, k: Kernel) -> None:
    """take, scatter_add, concatenate, unslice: one op, a grid-stride loop."""
    s, n = g.s, k.nodes[0]
    name = n.op.name
    space = n.inputs[0].shape if name == "scatter_add" else n.shape
    g.set_domain(space, "t")
    s(f"n = {g.n(space)}")
    g.code.launch = f"launch({g.n(space)})"
    o = g.out(n)
    s(f"# {describe(n)}")
    with s.block("for t in range(cuda.grid(1), n, cuda.gridsize(1)):"):
        g.decompose("t", list(range(len(space))), space)
        ax = g.ax
        if name in ("take", "scatter_add"):
            axis, idx = n.attrs["axis"], n.inputs[1]
            at = g.checked(n, g.load(idx, ax[axis:axis + idx.ndim]))
            s(f"j = {at}")
            tgt = ax[:axis] + ["j"] + ax[axis + idx.ndim:]
            if name == "take":
                s(f"{o}[t] = {g.load(n.inputs[0], tgt)}")
            else:
                g.code.zero_first.append(n)
                s(f"cuda.atomic.add({o}, {g.linear(tgt, n.shape)}, {g.load(n.inputs[0], ax)})")
        elif name == "concatenate":
            axis, start = n.attrs["axis"], 0
            for j, x in enumerate(n.inputs):
                cond = f"{'if' if j == 0 else 'elif'} {ax[axis]} < {start + x.shape[axis]}:" if j < len(n.inputs) - 1 else "else:"
                with s.block(cond):
                    idx = list(ax)
                    idx[axis] = f"{ax[axis]} - {start}" if start else ax[axis]
                    s(f"{o}[t] = {g.load(x, idx)}")
                start += x.shape[axis]
        elif name == "unslice":
            conds, idx = [], list(ax)
            for a, t in enumerate(n.attrs["index"]):
                if t is None:
                    continue
                lo, hi, step = t
                conds.append(f"{lo} <= {ax[a]} < {hi}" + (f" and ({ax[a]} - {lo}) % {step} == 0" if step != 1 else ""))
                idx[a] = f"({ax[a]} - {lo}) // {step}" if step != 1 else f"{ax[a]} - {lo}"
            with s.block(f"if {' and '.join(conds) or 'True'}:"):
                s(f"{o}[t] = {g.load(n.inputs[0], idx)}")
            with s.block("else:"):
                s(f"{o}[t] = {literal(0, n.dtype)}")
        else:
            raise NotImplementedError(f"no CUDA lowering for {name}")


def _cumulative(g: KernelWriter, k: Kernel) -> None:
    """One thread per row along the axis, running the combine in order (or from the end)."""
    s, n = g.s, k.nodes[0]
    axis, shape = n.attrs["axis"], n.shape
    rows = tuple(1 if a == axis else d for a, d in enumerate(shape))
    g.set_domain(shape, None)
    template, identity = COMBINE[n.attrs["combine"]]
    o = g.out(n)
    s(f"rows = {g.n(rows)}")
    g.code.launch = f"launch({g.n(rows)})"
    s(f"# {describe(n)}")
    with s.block("for r in range(cuda.grid(1), rows, cuda.gridsize(1)):"):
        g.decompose("r", [a for a in range(len(shape)) if a != axis], rows)
        s(f"acc = {literal(identity, n.dtype)}")
        nd = g.d(shape[axis])
        with s.block(f"for i{axis} in {f'range({nd} - 1, -1, -1)' if n.attrs['reverse'] else f'range({nd})'}:"):
            idx = g.index(shape)
            if n.attrs["exclusive"]:
                s(f"{o}[{g.linear(idx, shape)}] = acc")
            s(f"acc = {device_name(template, n.dtype).format('acc', g.load(n.inputs[0], idx))}")
            if not n.attrs["exclusive"]:
                s(f"{o}[{g.linear(idx, shape)}] = acc")


def _argsort(g: KernelWriter, k: Kernel) -> None:
    """One thread per row: an insertion sort of the row's indices, written in place in the output
    (stable: an element moves left only past strictly later-ordered ones)."""
    s, n = g.s, k.nodes[0]
    axis, shape = n.attrs["axis"], n.shape
    rows = tuple(1 if a == axis else d for a, d in enumerate(shape))
    g.set_domain(shape, None)
    o = g.out(n)
    s(f"rows = {g.n(rows)}")
    g.code.launch = f"launch({g.n(rows)})"
    before = "(u > v or (u != u and v == v))" if n.attrs["descending"] else "(u < v or (v != v and u == u))"
    at = lambda i: g.linear(g.index(shape)[:axis] + [i] + g.index(shape)[axis + 1:], shape)
    val = lambda i: g.load(n.inputs[0], g.index(shape)[:axis] + [i] + g.index(shape)[axis + 1:])
    s(f"# {describe(n)}")
    with s.block("for r in range(cuda.grid(1), rows, cuda.gridsize(1)):"):
        g.decompose("r", [a for a in range(len(shape)) if a != axis], rows)
        nd = g.d(shape[axis])
        with s.block(f"for p in range({nd}):"):
            s(f"{o}[{at('p')}] = p")
        with s.block(f"for p in range(1, {nd}):"):
            s(f"key = {o}[{at('p')}]")
            s("q = p - 1")
            with s.block("while q >= 0:"):
                s(f"u = {val('key')}")
                s(f"v = {val(o + '[' + at('q') + ']')}")
                with s.block(f"if not {before}:"):
                    s("break")
                s(f"{o}[{at('q + 1')}] = {o}[{at('q')}]")
                s("q -= 1")
            s(f"{o}[{at('q + 1')}] = key")


def kernel_code(k: Kernel, name: str, skip_writes: set[int], sites: list | None = None,
                checked: set = frozenset()) -> KernelCode:
    """``skip_writes``: outputs nobody reads (a matmul's raw product under its epilogue);
    ``checked``: index ops to range-check, numbered in ``sites`` across the step."""
    g = KernelWriter(k, name, skip_writes, sites, checked)
    kinds = ", ".join(sorted({n.op.name for n in k.nodes}))
    dom = f"{k.kind} over {k.domain}" + (f", reducing axes {k.raxes}" if k.raxes else "")
    {"loop": _loop, "reduce": _reduce, "matmul": _matmul, "cumulative": _cumulative, "argsort": _argsort}.get(
        k.kind, _gather)(g, k)
    return g.finish(f"kernel {k.index} ({dom}): {kinds}")


def copy_code(v: Node, name: str, why: str) -> KernelCode:
    """A kernel that writes the value of view ``v`` into a fresh flat buffer (``v`` may be a
    count known from the dims, handed to a loop body: a scalar argument)."""
    g = KernelWriter(None, name, set())
    g.set_domain(v.shape, "t")
    g.s(f"n = {g.n(v.shape)}")
    with g.s.block("for t in range(cuda.grid(1), n, cuda.gridsize(1)):"):
        g.decompose("t", list(range(v.ndim)), v.shape)
        value = g.scalar_arg(peel(v)) if peel(v).op.name == "count" else g.load(v, g.index(v.shape))
        g.s(f"o0[t] = {value}")
    g.code.writes.append(v)
    g.code.launch = f"launch({g.n(v.shape)})"
    return g.finish(f"{why}: {v.op.name} {v.shape}")


__all__ = ["kernel_code", "copy_code", "TPB"]
