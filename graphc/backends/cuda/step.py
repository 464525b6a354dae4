"""The generated CUDA module: one ``numba.cuda`` kernel per kernel of the program, plus
``params`` (slices each param out of its dtype's arena, once), ``buffers`` (slices the
workspace once per set of dims) and ``step`` (launches the kernels in order). Where things
live is the CPU's layout (common/layout.py): params at their arena offsets, the memory plan's
slots at theirs, and past them, placed in the order they are met, what only this backend
needs: loops' carries and contiguous copies, loop bodies' slots, staged updates, the grid
reductions' scratch. ``step`` is plain Python: a kernel launch is a Python call either way, and a
plain function keeps the module readable and the launches easy to time one by one.

A ``scan`` is a host loop in ``step``: ``for t in range(T)`` launches the kernels of the loop
body's own program (generated once, whatever ``T``; a symbolic ``T`` is a dim argument), with
the body's placeholders bound to flat device buffers: each carry to one of two buffers that
swap after every step (the body writes the next carry into the other one), each x to the
step's slice of its xs, each closure value to its buffer. A y is written straight into its
slot of the stacked output. Inputs that are strided views are copied contiguous once, before
the loop.

An ``allreduce`` (``graphc.distributed``) runs on the host: ``step`` copies its input from the
device into a page-locked host buffer (``buffers`` makes one per all-reduce), starts the
all-reduce there in place (``mpi.Pending``, an ``MPI_Iallreduce``) and goes on
launching the kernels that do not need it; just before the first kernel that reads its result
(or before the outputs and updates) it waits and copies the result into its device buffer. The
memory plan keeps the input live until then; here it is on the host from the start. Inside a
loop body it is refused."""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..._version import __version__
from ...errors import GraphcError, fmt_site
from ...graph import toposort
from ...ir import Node
from ...passes.fusion import Kernel, base_of
from ...program import Program
from ...shapes import fmt_shape, linear_form, size
from ..common.layout import Layout, commit_plan, fadd
from ..common.lowering import describe
from ..common.source import Source, comment
from . import mathfns as cuda_math
from .kernels import TPB, copy_code, kernel_code
from .writer import KernelCode, _paren, dim, numel

HEADER = '''\
# graphc {version}: one training step for NVIDIA GPUs, compiled with numba.cuda.
# Every array is a flat slice of a device array per dtype (params' arena, the workspace); views are
# index arithmetic inside the kernels. `params` slices the arenas once, `buffers` the workspace once
# per set of dims; `step` launches the kernels in order.
# A scan is a loop in `step` launching its body's kernels, generated once whatever the number of steps.
import numpy as np
from numba import cuda

from graphc.backends.cuda.mathfns import {math}  # noqa: F401

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

COLLECTIVES = '''\
from graphc import mpi  # all-reduces across the ranks of an MPI job (mpi4py), run on the host


def host_buffer(n, dtype):
    """n elements of page-locked host memory (fast copies to and from the device)."""
    return cuda.pinned_array(max(n, 1), dtype)[:n]


def allreduce_start(src, host, op):
    """Copy the all-reduce's input (flat, on the device) to the host once the kernels before it
    are done, and start the all-reduce there, in place; the step goes on launching kernels."""
    if host.size:
        src[:host.size].copy_to_host(host)
    return mpi.Pending(host, host, op)


def allreduce_wait(pending, host, dst):
    """Complete an all-reduce and copy its result into its buffer (flat, on the device)."""
    pending.wait()
    if host.size:
        dst[:host.size].copy_to_device(host)
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
    """The program's nodes of ``kind`` in program order (for params, then the update targets it does not read)."""
    found = {n.id: n for n in toposort(prog.roots) if n.op.name == kind}
    if kind == "param":
        for p, _ in prog.updates:
            found.setdefault(p.id, p)
    return list(found.values())


def in_order(prog: Program) -> list:
    """The memory plan's buffers (kernel outputs) in the order the schedule writes them; their
    names are their positions in this order (node ids would depend on what the process built before)."""
    pos = {o.id: j for j, o in enumerate(o for k in prog.kernels for o in k.outputs)}
    return sorted(prog.memory.buffers.values(), key=lambda b: pos[b.node.id])


def programs(prog: Program):
    """``prog`` and the programs of its loop bodies, nested ones included."""
    yield prog
    for b in prog.bodies.values():
        yield from programs(b)


def _run(i: str, n: str) -> str:
    """The slice of flat elements ``[i * n, (i + 1) * n)``: entry ``i`` along a leading axis."""
    if n == "1":
        return f"{i}:{i} + 1"
    return f"{i} * {_paren(n)}:({i} + 1) * {_paren(n)}"


def _dotted(path: str) -> str:
    """A loop body's kernel as people read it: ``3.0`` is kernel 0 in the body of kernel 3."""
    return path.replace("_", ".")


def _every_step(xs: Node) -> Node | None:
    """The value each step's slice of ``xs`` holds (flat: its elements in order), when ``xs`` only
    repeats it along the steps."""
    while xs.op.name == "stop_gradient":
        xs = xs.inputs[0]
    if xs.op.name != "broadcast_to":
        return None
    v = xs.inputs[0]
    if tuple(v.shape) == tuple(xs.shape[1:]) or tuple(v.shape) == (1,) + tuple(xs.shape[1:]):
        return v
    return None


class StepWriter:
    """Names every buffer and writes ``buffers`` and ``step``."""

    def __init__(self, prog: Program, inputs: list[Node]):
        self.prog, self.inputs = prog, inputs
        self.params = sources(prog, "param")
        seen: dict[int, Node] = {}  # array constants of the step and of its loop bodies
        for p in programs(prog):
            for c in sources(p, "constant"):
                if c.attrs["value"].size > 1:
                    seen.setdefault(c.id, c)
        self.consts = list(seen.values())
        self.dims = sorted({d for x in inputs for d in x.shape if isinstance(d, str)})
        self.names: dict[int, str] = {}  # the step's own scope; a loop body has its own
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
        # The layout (common/layout.py, the CPU's): params in one arena per dtype; the workspace, one
        # array per dtype: the memory plan's slots, then each loop's own (its body's slots, carries,
        # copies) and the staged updates, placed past them as they are met.
        self.layout = Layout(prog, inputs, self.params)
        self.entries: list[tuple] = []  # (name, offset form, size, dtype, note): what `buffers` returns
        for b in in_order(prog):
            if b.node.id in self.names:
                continue
            if b.slot < 0:
                self.names[b.node.id] = self.names[prog.memory.inplace[b.node.id].id]
            else:
                self.names[b.node.id] = name = f"b{len(self.entries)}"
                self.entries.append((name, self.layout.slot_at[b.slot], size(b.node.shape), b.node.dtype.name,
                                     f"{b.node.op.name} {b.node.shape}"))
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
        self.codes: list[KernelCode] = []
        self.kernel_of: dict[str, int] = {}  # generated kernel -> the step's kernel it runs for (profiles)
        run = Source()
        run.depth = 1
        self.check_at = 0
        self.hosts: list[tuple] = []  # (name, size, dtype, note): host buffers of the all-reduces
        self.pending: dict[int, tuple] = {}  # all-reduces started, not yet waited for: node id -> (kernel, dst)
        self.program(prog, None, self.names, run)
        self.wait_for(set(self.pending), run, "read by the outputs or updates")
        if self.checks:  # right after the last kernel that checks an index: no param has changed yet
            stop = Source()
            stop.depth = 1
            stop("# an index found out of range by a kernel above: stop before any output or update")
            with stop.block("if E.copy_to_host()[0]:"):
                stop("raise IndexOutOfRange()")
            run.lines[self.check_at:self.check_at] = stop.lines
        gathers = [(j, copy_code(o, f"out{j}_copy", f"output {j}"))
                   for j, (how, o) in enumerate(self.outputs) if how == "gather"]
        # the CPU's commit plan (common/layout.py), then the in-place updates that race, written to U<j>
        copies = commit_plan(prog) + [(p, e, False) for p, e in self.staged]
        staged = {e.id for _, e in self.staged}
        update_codes = []  # (param, value, copy kernel or None for a flat copy, U<j> it is saved in first)
        for j, (p, e, stage) in enumerate(copies):
            if (base_of(e)[0].id in prog.memory.buffers and _contiguous(e)) or e.id in staged:
                update_codes.append((p, e, None, None))
                continue
            code = copy_code(e, f"update{j}_copy", f"update of {self.names[p.id]}")  # (param names may hold counters)
            if stage:  # reads a param that another copy overwrites (a swap): save it first
                self.staged.append((p, e))
            update_codes.append((p, e, code, f"U{len(self.staged) - 1}" if stage else None))
        for j, (p, _) in enumerate(self.staged):
            self.aux(f"U{j}", p.shape, p.dtype, f"the update of {self.names[p.id]}, staged")
        self.codes += [c for _, c in gathers] + [c for _, _, c, _ in update_codes if c]
        self.scratch = [sc for c in self.codes for sc in c.scratch]  # (dtype, size), named S0, S1, ... in order
        owner = [c.name for c in self.codes for _ in c.scratch]
        for j, (dt, n) in enumerate(self.scratch):  # zeroed once per workspace, left zero by their kernels
            self.aux(f"S{j}", (n,), dt, f"scratch of {owner[j]} (a grid reduction's partials or ticket), zeroed")
        self.ws_dtypes = self.layout.ws_dtypes
        math = ", ".join(n for n in cuda_math.__all__ if n[0] == "g")
        text = [HEADER.format(version=__version__, math=math, cache=not cuda_math.SIMULATOR, tpb=TPB)]
        text += [COLLECTIVES] if self.hosts else []
        text += [c.source for c in self.codes]
        text += [self.param_views(), self.buffers(), self.step(run, gathers, update_codes)]
        return "\n\n".join(text)

    # -- the kernels of a program, loops included ---------------------------------------------------
    def program(self, prog: Program, path: str | None, names: dict, s: Source) -> None:
        """Launches of ``prog``'s kernels into ``s``; ``path`` names a loop body (``"3"``: the body of
        the step's kernel 3, ``"3_0"``: of kernel 0 in that body), ``names`` its scope."""
        read_later = {base_of(v)[0].id for k in prog.kernels for v in k.inputs} | {base_of(r)[0].id for r in prog.roots}
        where = "" if path is None else f"body of kernel {_dotted(path)}, "
        for k in prog.kernels:
            at = str(k.index) if path is None else f"{path}_{k.index}"
            if path is None:
                self.root = k.index
            checks = len(self.checks)
            if path is None:
                self.wait_for({base_of(v)[0].id for v in k.inputs}, s, f"read by kernel {k.index}")
            if k.kind == "allreduce":
                if path is not None:
                    raise GraphcError(f"allreduce inside a loop body ({fmt_site(k.nodes[0].site)}) is not supported "
                                      "on target='cuda': all-reduce the scan's results instead")
                self.allreduce(k, at, names, s)
            elif k.kind == "scan":
                self.scan(k, prog, at, names, s, where)
            else:
                skip = {o.id for o in k.outputs if o.op.kind == "matmul" and o.id not in read_later}
                code = self.add(kernel_code(k, f"k{at}_{k.kind}", skip, self.checks, prog.checked))
                s(f"# {where}kernel {k.index}: {k.kind} over {k.domain}" + (f", reducing axes {k.raxes}" if k.raxes else ""))
                for z in code.zero_first:
                    s(f"fill0[launch({numel(z.shape)})]({numel(z.shape)}, {names[z.id]})")
                s(self.call(code, [names[w.id] for w in code.writes], names))
            if path is None and len(self.checks) > checks:
                self.check_at = len(s.lines)

    def allreduce(self, k: Kernel, at: str, names: dict, s: Source) -> None:
        """Start an all-reduce (see the module's docstring); ``wait_for`` completes it."""
        n = k.nodes[0]
        v = n.inputs[0]
        s(f"# kernel {k.index}: all-reduce {n.attrs['op']} of {fmt_shape(n.shape)} {n.dtype.name} across ranks "
          f"({comment(fmt_site(n.site))}): to the host, started there")
        b = base_of(v)[0]
        if _contiguous(v) and b.id in names:
            src = names[b.id]
        else:  # a strided view (or a constant): one contiguous copy on the device first
            src = self.aux(f"a{at}_in", v.shape, v.dtype, f"kernel {at}: the all-reduce's input, contiguous")
            self.fill(v, src, names, s, f"{at}_in", "the all-reduce's input, copied contiguous")
        host = f"h{at}"
        self.hosts.append((host, numel(n.shape), n.dtype, f"host copy of all-reduce kernel {at}"))
        s(f'r{at} = allreduce_start({src}, {host}, "{n.attrs["op"]}")')
        self.pending[n.id] = (at, names[n.id])

    def wait_for(self, reads: set, s: Source, why: str) -> None:
        """Waits for the started all-reduces whose results the next launch reads (``reads``: ids
        of the buffers it reads), each result copied into its device buffer."""
        for nid, (at, dst) in list(self.pending.items()):
            if nid in reads:
                del self.pending[nid]
                s(f"allreduce_wait(r{at}, h{at}, {dst})  # the result of all-reduce kernel {at}, {why}")

    def add(self, code: KernelCode) -> KernelCode:
        self.codes.append(code)
        self.kernel_of[code.name] = self.root
        return code

    def aux(self, name: str, shape: tuple, dtype, note: str) -> str:
        """A workspace buffer of its own (a loop's carry, a contiguous copy, a staged update), placed
        past everything before it."""
        dt = np.dtype(dtype).name
        self.entries.append((name, self.layout.extra_slot(size(shape), dt), size(shape), dt, note))
        return name

    def fill(self, v: Node, dst: str, names: dict, s: Source, tag: str, note: str) -> None:
        """Write the value of ``v`` (a view, constant or buffer of scope ``names``) into flat ``dst``."""
        b = base_of(v)[0]
        if _contiguous(v) and b.id in names:
            s(f"copy[launch({numel(v.shape)})]({numel(v.shape)}, {names[b.id]}, {dst})  # {note}")
        else:
            s(self.call(self.add(copy_code(v, f"k{tag}_copy", note)), [dst], names) + f"  # {note}")

    def operand(self, v: Node, names: dict, s: Source, path: str, tag: str, note: str) -> str:
        """A flat, contiguous buffer holding ``v``: its own buffer, or a copy made here (once per call)."""
        b = base_of(v)[0]
        if _contiguous(v) and b.id in names:
            return names[b.id]
        tmp = self.aux(f"a{path}_{tag}", v.shape, v.dtype, f"scan kernel {_dotted(path)}: {note} copied contiguous")
        self.fill(v, tmp, names, s, f"{path}_{tag}", f"{note}, copied contiguous for the loop")
        return tmp

    def scan(self, k: Kernel, prog: Program, path: str, names: dict, s: Source, where: str) -> None:
        """A scan as a host loop over its body's kernels (see the module's docstring)."""
        sn = k.nodes[0]
        body, bprog = sn.attrs["body"], prog.bodies[sn.id]
        C, X = len(body.carry), len(body.xs)
        T, rev = dim(sn.attrs["length"]), sn.attrs["reverse"]
        mem = bprog.memory
        outs = {n.attrs["index"]: n for n in k.outputs if n.op.name == "scan_get"}
        used = {base_of(v)[0].id for kk in bprog.kernels for v in kk.inputs} | {base_of(r)[0].id for r in bprog.roots}
        s(f"# {where}kernel {k.index}: scan over {sn.attrs['length']} steps" + (", the last first" if rev else "")
          + f" ({describe(sn)})")
        bnames = {c.id: self.names[c.id] for c in self.consts}  # the body's scope
        own = set()  # body buffers that live in a carry buffer or an output slot instead of the workspace

        def movable(r: Node) -> bool:  # a body buffer, in order: the kernel that computes it can write it elsewhere
            rb = base_of(r)[0]
            return _contiguous(r) and rb.id in mem.buffers and mem.buffers[rb.id].slot >= 0 and rb.id not in own
        cur, nxt = {}, {}
        late = []  # (value, buffer, tag, note): copies after the body's kernels (none reads what another writes)
        for j, (p, v) in enumerate(zip(body.carry, sn.inputs[:C])):
            cur[j] = bnames[p.id] = self.aux(f"c{path}_{j}", p.shape, p.dtype, f"scan kernel {_dotted(path)}: carry {j}")
            self.fill(v, cur[j], names, s, f"{path}_init{j}", f"initial carry {j}")
            r = bprog.roots[j]
            if r.id == p.id:
                continue  # passed on unchanged: one buffer
            nxt[j] = self.aux(f"n{path}_{j}", p.shape, p.dtype, f"scan kernel {_dotted(path)}: next carry {j}")
            if movable(r):
                bnames[base_of(r)[0].id] = nxt[j]
                own.add(base_of(r)[0].id)
            else:
                late.append((r, nxt[j], f"{path}_carry{j}", f"next carry {j}"))
        xs = {}
        for j, (p, v) in enumerate(zip(body.xs, sn.inputs[C:C + X])):
            if p.id not in used:
                continue
            same = _every_step(v)
            if same is not None:  # a broadcast along the steps: every step reads the same value
                bnames[p.id] = self.operand(same, names, s, path, f"xs{j}", f"xs {j} (the same at every step)")
            else:
                xs[j] = self.operand(v, names, s, path, f"xs{j}", f"xs {j}")
                bnames[p.id] = f"x{path}_{j}"
        for j, (p, v) in enumerate(zip(body.closure, sn.inputs[C + X:])):
            if p.id in used:
                bnames[p.id] = self.operand(v, names, s, path, f"closure{j}", f"closure value {j}")
        ys = {}
        for j, y in enumerate(bprog.roots[C:]):
            if C + j not in outs:
                continue
            ys[j] = f"y{path}_{j}"
            if movable(y):
                bnames[base_of(y)[0].id] = ys[j]
                own.add(base_of(y)[0].id)
            else:
                late.append((y, ys[j], f"{path}_y{j}", f"y {j}"))
        at = [self.layout.extra_slot(sz, dt.name) for sz, dt in mem.slots]  # the body's memory plan, past the rest
        for j, b in enumerate(b for b in in_order(bprog) if b.node.id not in own):
            bnames[b.node.id] = f"b{path}_{j}"
            self.entries.append((bnames[b.node.id], at[b.slot], size(b.node.shape), b.node.dtype.name,
                                 f"{b.node.op.name} {b.node.shape}, in the body of kernel {_dotted(path)}"))
        t = f"t{path}"
        with s.block(f"for {t} in range({T}):"):
            if rev:
                s(f"i{path} = {T} - 1 - {t}  # reversed: step {t} reads and writes entry i{path}")
                t = f"i{path}"
            for j, src in xs.items():
                s(f"{bnames[body.xs[j].id]} = {src}[{_run(t, numel(body.xs[j].shape))}]  # xs {j} at this step")
            for j, dst in ys.items():
                n = numel(bprog.roots[C + j].shape)
                s(f"{dst} = {names[outs[C + j].id]}[{_run(t, n)}]  # this step's slot of stacked y {j}")
            self.program(bprog, path, bnames, s)
            for v, dst, tag, note in late:
                self.fill(v, dst, bnames, s, tag, note)
            if nxt:
                a = ", ".join(f"{cur[j]}, {nxt[j]}" for j in nxt)
                b = ", ".join(f"{nxt[j]}, {cur[j]}" for j in nxt)
                s(f"{a} = {b}  # the next carries become the current ones")
        for j in range(C):
            if j in outs:
                n = numel(body.carry[j].shape)
                s(f"copy[launch({n})]({n}, {cur[j]}, {names[outs[j].id]})  # final carry {j}")

    # -- the module's functions --------------------------------------------------------------------
    def param_views(self) -> str:
        s = Source()
        with s.block(f"def params({', '.join(f'P_{d}' for d in self.layout.param_dtypes)}):"):
            s('"""Each param\'s slice of its arena (one device array per dtype) at the layout\'s offsets."""')
            for j, p in enumerate(self.params):
                dt, off = self.layout.param_at[p.id]
                s(f"p{j} = P_{dt}[{off}:{off + size(p.shape)}]  # param {j}: {dt}{tuple(p.shape)}")
            s(f"return ({''.join(f'p{j}, ' for j in range(len(self.params)))})")
        return s.text()

    def buffers(self) -> str:
        s = Source()
        args = [f"W_{d}" for d in self.ws_dtypes] + [f"d_{_ident(d)}" for d in self.dims]
        with s.block(f"def buffers({', '.join(args)}):"):
            hosts = ", then host buffers of the all-reduces" if self.hosts else ""
            s(f'"""Each buffer\'s slice of its workspace (one device array per dtype) at the layout\'s offsets; '
              f'buffers of disjoint lifetimes share a slot{hosts}."""')
            names = []
            for name, off, sz, dt, note in self.entries:
                s(f"{name} = W_{dt}[{_linear(off)}:{_linear(fadd(off, linear_form(sz)))}]  # {comment(note)}")
                names.append(name)
            for j, (_, n) in enumerate(self.scratch):
                s(f"fill0[launch({n})]({n}, S{j})")
            for name, n, dt, note in self.hosts:
                s(f"{name} = host_buffer({n}, np.{dt.name})  # {note}")
                names.append(name)
            s(f"return ({''.join(f'{x}, ' for x in names)})")
        self.buffer_names = names
        return s.text()

    def step(self, run: Source, gathers, update_codes) -> str:
        prog, s = self.prog, Source()
        args = ["B", "X", "P", "K", "I", "E"] + [f"d_{_ident(d)}" for d in self.dims]
        with s.block(f"def step({', '.join(args)}):"):
            s(f'"""The whole step: {len(prog.kernels)} kernels."""')
            for j, x in enumerate(self.inputs):
                s(f"# in{j}: input {comment(x.name)} {x.dtype.name}{tuple(x.shape)}")
            for tup, names in (("B", self.buffer_names), ("P", [self.names[p.id] for p in self.params]),
                               ("K", [self.names[c.id] for c in self.consts]), ("I", [self.names[x.id] for x in self.inputs]),
                               ("X", [f"X{j}" for j, _ in gathers])):
                if names:
                    s(f"{''.join(f'{n}, ' for n in names)}= {tup}")
            s.lines += run.lines
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

    def call(self, code: KernelCode, writes: list[str], names: dict | None = None) -> str:
        names = self.names if names is None else names
        args = list(code.syms) + [names[base_of(v)[0].id] for v in code.reads]
        args += [f"np.{c.dtype.name}({numel(c.attrs['dims'])})" for c in code.scalars] + writes
        first = sum(len(c.scratch) for c in self.codes[:self.codes.index(code)])
        args += [f"S{first + j}" for j in range(len(code.scratch))] + (["E"] if code.checks else [])
        return f"{code.name}[{code.launch}]({', '.join(args)})"


def generate(prog: Program, inputs: list[Node]) -> tuple[str, StepWriter]:
    w = StepWriter(prog, inputs)
    return w.write(), w


__all__ = ["generate", "StepWriter", "sources", "programs"]
