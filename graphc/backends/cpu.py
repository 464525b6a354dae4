"""The CPU backend: the whole step as one ``numba.njit`` function.

Generated source has one small njit function per kernel (compiled separately, so
compile time stays linear) and a ``step`` function that slices params out of a flat
arena, slices the workspace by the memory plan, calls the kernels in order and
returns copies of the outputs. The module is written to the disk cache and imported,
so Numba's ``cache=True`` keeps the machine code across processes."""
from __future__ import annotations

import re
import time
from collections import Counter
from math import prod

import numba
import numpy as np

from .. import __version__
from ..graph import toposort
from ..ir import Node
from ..passes.fusion import Kernel, base_of
from ..program import Program
from ..shapes import linear_form, resolve, size
from . import cpu_math, diskcache
from .loops import KernelCode, describe, is_loop_kernel, kernel_code, literal
from .source import Source
from .threads import Governor

PARALLEL_MIN = 1 << 18  # elements; below this a parallel launch costs more than it saves
SYMBOLIC_GUESS = 256    # a symbolic dim's size when deciding serial or parallel
BLAS_THREADED_FLOPS = 1 << 22  # smaller matmuls run on one thread whatever the setting

HEADER = """\
# graphc {version}: one training step for the CPU, compiled with numba.njit.
# Kernels are small njit functions; `step` runs them in order. Read it top to bottom.
import numpy as np
from numba import njit, prange

from graphc.backends.cpu_math import (  # noqa: F401
    gemm, gexp, glog, glog1p, gmax, gmin, grand, gsigmoid, gsoftplus, gtanh)

# no nnan/ninf: NaN and inf propagate as in NumPy; reassoc lets float reductions vectorize
FASTMATH = {{"nsz", "arcp", "contract", "afn", "reassoc"}}
NO_WRAPPERS = {{"no_cpython_wrapper": True, "no_cfunc_wrapper": True}}
"""


def _dim(d) -> str:
    return str(d) if isinstance(d, int) else d.replace("*", " * ")


def _shape(shape) -> str:
    return "(" + ", ".join(_dim(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _linear(form: Counter) -> str:
    terms = [(names, c) for names, c in sorted(form.items()) if c]
    return " + ".join((" * ".join(([str(c)] if c != 1 or not names else []) + list(names))) for names, c in terms) or "0"


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


class _StepWriter:
    """Writes ``step``: names for every value, views realized as NumPy views."""

    def __init__(self, prog: Program, inputs: list[Node]):
        self.prog, self.inputs = prog, inputs
        self.src = Source()
        self.names: dict[int, str] = {}
        self.contig: dict[int, bool] = {}
        self.consts: list[Node] = []
        self.params = sorted({n.id: n for n in _sources(prog, "param")}.values(), key=lambda n: n.id)
        self.param_dtypes = sorted({p.dtype.name for p in self.params})
        self.ws_dtypes = sorted({dt.name for _, dt in prog.memory.slots})

    def ref(self, v: Node) -> str:
        """Expression for the value of ``v`` in ``step``."""
        if v.id in self.names:
            return self.names[v.id]
        op = v.op.name
        if op == "constant":
            if v.attrs["value"].size == 1 and v.ndim == 0:
                return f"np.asarray({literal(v.attrs['value'], v.dtype)})"
            self.consts.append(v)
            e, c = f"K{len(self.consts) - 1}", True
        elif op == "count":
            e, c = f"np.{v.dtype.name}({' * '.join(_dim(d) for d in v.attrs['dims'])})", True
        elif op == "reshape":
            x = self.ref(v.inputs[0])
            x = x if self.contig[v.inputs[0].id] else f"np.ascontiguousarray({x})"
            e, c = f"{x}.reshape({_shape(v.shape)})", True
        elif op == "transpose":  # .T types as Fortran order, so BLAS takes it without a copy
            x = self.ref(v.inputs[0])
            e, c = (f"{x}.T" if v.attrs["axes"] == (1, 0) else f"{x}.transpose({v.attrs['axes']})"), False
        elif op == "broadcast_to":
            e, c = f"np.broadcast_to({self.ref(v.inputs[0])}, {_shape(v.shape)})", False
        elif op == "slice":
            idx = ", ".join(":" if t is None else f"{t[0]}:{t[1]}:{t[2]}" for t in v.attrs["index"])
            e, c = f"{self.ref(v.inputs[0])}[{idx}]", False
        elif op == "stop_gradient":
            e, c = self.ref(v.inputs[0]), self.contig[v.inputs[0].id]
        else:
            raise AssertionError(f"{v!r} has no buffer")
        self.names[v.id], self.contig[v.id] = e, c
        return e

    def write(self, codes: list[tuple[Kernel, KernelCode]]) -> str:
        s, prog = self.src, self.prog
        args = [f"P_{d}" for d in self.param_dtypes] + [f"W_{d}" for d in self.ws_dtypes]
        body = Source()
        body.depth = 1
        s, self.src = body, body
        dims_seen = set()
        for x in self.inputs:
            name = f"in_{_ident(x.name)}"
            self.names[x.id], self.contig[x.id] = name, True
            for j, d in enumerate(x.shape):
                if isinstance(d, str) and d not in dims_seen:
                    dims_seen.add(d)
                    s(f"{d} = {name}.shape[{j}]")
        s("# params: views into the flat arena")
        offsets: dict[str, int] = {}
        for j, p in enumerate(self.params):
            off = offsets.get(p.dtype.name, 0)
            n = prod(p.shape)
            name = f"p{j}"
            s(f"{name} = P_{p.dtype.name}[{off}:{off + n}].reshape({_shape(p.shape)})  # {p.name}")
            offsets[p.dtype.name] = off + n
            self.names[p.id], self.contig[p.id] = name, True
        s("# workspace: slots of the memory plan (buffers of disjoint lifetimes share one)")
        slot_off, cursor = {}, {}
        for j, (sz, dt) in enumerate(prog.memory.slots):
            start = cursor.get(dt.name, Counter())
            slot_off[j] = start
            cursor[dt.name] = start + linear_form(sz)
        for b in sorted(prog.memory.buffers.values(), key=lambda b: b.node.id):
            n = b.node
            if b.slot < 0:
                p = prog.memory.inplace[n.id]
                self.names[n.id], self.contig[n.id] = self.names[p.id], True
                continue
            off = slot_off[b.slot]
            name = f"BUF__{n.id}"
            end = off + linear_form(size(n.shape))
            s(f"{name} = W_{n.dtype.name}[{_linear(off)}:{_linear(end)}].reshape({_shape(n.shape)})")
            self.names[n.id], self.contig[n.id] = name, True
        for k, code in codes:
            s(f"# kernel {k.index}: {k.kind} over {k.domain}" + (f", reducing axes {k.raxes}" if k.raxes else "")
              + (f"; same code as {code.name}" if code.same_as is not None else ""))
            if code.same_as is not None:
                for n in k.nodes:
                    s(f"#   {describe(n)}")
            call = [_dim(d) for d in (k.domain if is_loop_kernel(k) else ())]
            call += [self.ref(u) for u in code.reads] + [self.ref(u) for u in code.scalars]
            call += [self.ref(w) for w in code.writes]
            s(f"{code.name}({', '.join(call)})")
        n_out = prog.n_outputs
        # outputs are taken before any param is overwritten: they see the step's old params
        outs = [self.ref(o) for o in prog.roots[:n_out] if o.op.kind != "source"]
        for j, o in enumerate(outs):
            s(f"out{j} = {o}.copy()")
        copies = [(p, e) for p, e in prog.updates if e.id not in prog.memory.inplace]
        if copies:
            s("# updates that could not be written in place; values that are params are read first,")
            s("# so that updates like (a, b), (b, a) swap")
        targets, staged = {p.id for p, _ in copies}, {}
        for j, (p, e) in enumerate(copies):
            if base_of(e)[0].id in targets:
                staged[p.id] = f"u{j}"
                s(f"u{j} = {self.ref(e)}.copy()")
        for p, e in copies:  # explicit loops: slice assignment costs seconds of Numba compile time
            src, dst = staged.get(p.id) or self.ref(e), self.names[p.id]
            for t in range(p.ndim):
                s.lines.append("    " * s.depth + f"for j{t} in range({p.shape[t]}):")
                s.depth += 1
            js = ", ".join(f"j{t}" for t in range(p.ndim)) or "()"
            s(f"{dst}[{js}] = {src}[{js}]  # {p.name}")
            s.depth -= p.ndim
        s("return (" + "".join(f"out{j}, " for j in range(len(outs))) + ")")
        args += [f"K{j}" for j in range(len(self.consts))] + [f"in_{_ident(x.name)}" for x in self.inputs]
        head = Source()
        head("@njit(cache=True, nogil=True)")
        head(f"def step({', '.join(args)}):")
        head(f'    """The whole step: {len(prog.kernels)} kernels. '
             f'Inputs: {", ".join(f"{x.name} {x.dtype.name}{_shape(x.shape)}" for x in self.inputs)}."""')
        self.arg_names = args
        return head.text() + body.text()


def _sources(prog: Program, kind: str) -> list[Node]:
    found = [n for n in toposort(prog.roots) if n.op.name == kind]
    found += [p for p, _ in prog.updates if kind == "param"]
    return found


def _code_key(code: KernelCode) -> str:
    """A kernel's code without its name and comments: equal keys compile to one function."""
    lines = [ln.split("  #")[0].rstrip() for ln in code.source.splitlines()
             if not ln.strip().startswith(("#", '"""'))]
    text = "\n".join(lines).replace(code.name, "KERNEL")
    names: dict[str, str] = {}  # value names carry node ids: number them by first use
    return re.sub(r"\b(V|ACC|PART)__\d+\b", lambda m: names.setdefault(m.group(0), f"{m.group(1)}_{len(names)}"), text)


def generate(prog: Program, inputs: list[Node], wrappers: bool = False) -> tuple[str, _StepWriter]:
    codes, first, bodies = [], {}, []
    shared = {base_of(v)[0].id for k in prog.kernels for v in k.inputs} | {base_of(r)[0].id for r in prog.roots}
    for k in prog.kernels:
        n = prod(resolve(k.domain, _Guess()))
        code = kernel_code(k, f"k{k.index}_{k.kind}", parallel=n >= PARALLEL_MIN, wrappers=wrappers,
                           inplace=prog.memory.inplace, shared=shared)
        key = _code_key(code)
        if key in first:  # e.g. the same layer twice: one function, compiled once
            code.name, code.same_as = first[key].name, first[key]
        else:
            first[key] = code
            bodies.append(code.source)
        codes.append((k, code))
    w = _StepWriter(prog, inputs)
    step = w.write(codes)
    text = HEADER.format(version=__version__) + "\n\n" + "\n\n".join(bodies) + "\n\n" + step
    # Value names carry node ids, which depend on what the process built before; number them
    # by position in the program instead, so the same model always generates the same module.
    order = {n.id: i for i, n in enumerate(toposort(prog.roots))}
    prefix = {"V": "v", "ACC": "acc", "PART": "part", "BUF": "b"}
    text = re.sub(r"\b(V|ACC|PART|BUF)__(\d+)\b", lambda m: f"{prefix[m.group(1)]}{order[int(m.group(2))]}", text)
    return text, w


class _Guess(dict):
    def __missing__(self, key):
        return SYMBOLIC_GUESS


def _nojit(*args, **kwargs):
    if args and callable(args[0]):
        return args[0]
    return lambda f: f


class CpuProgram:
    """Compiles a program to one njit step; ``run`` validates nothing (Function did)."""

    def __init__(self, program: Program, inputs: list[Node], debug: bool = False, threads: int | None = None):
        t0 = time.perf_counter()
        self.program, self.inputs, self.debug = program, inputs, debug
        self.source, w = generate(program, inputs)
        # writable copies: read-only arrays type differently in Numba and would compile step twice
        self.params, self.consts = w.params, [np.array(c.attrs["value"]) for c in w.consts]
        self.param_dtypes, self.ws_dtypes = w.param_dtypes, w.ws_dtypes
        if debug:
            ns: dict = {"njit": _nojit, "prange": range, "__name__": "graphc_debug"}
            text = self.source.replace("from numba import njit, prange", "")
            exec(compile(text, "<graphc debug step>", "exec"), ns)
            self.module, self.cache_hit = None, False
            self._step = ns["step"]
        else:
            self.module, self.cache_hit = diskcache.load_module(self.source, salt=cpu_math.SOURCE_HASH)
            self._step = self.module.step
        self._arena()
        # OpenBLAS runs small products on one thread anyway: only big ones need governing
        big = any(k.kind == "matmul" and k.flops(_Guess()) >= BLAS_THREADED_FLOPS for k in program.kernels)
        self.governor = Governor(threads, blas=big, parallel="parallel=True" in self.source)
        self._workspaces: dict[tuple, list[np.ndarray]] = {}
        self._dimnames = sorted({d for x in inputs for d in x.shape if isinstance(d, str)})
        self.out_is_source = [o.op.kind == "source" for o in program.roots[:program.n_outputs]]
        self.any_source_out = any(self.out_is_source)
        if not debug:
            self._compile()
        self.compile_seconds = time.perf_counter() - t0

    def _arena(self) -> None:
        self.arenas, self.views = [], []
        for dt in self.param_dtypes:
            ps = [p for p in self.params if p.dtype.name == dt]
            arena = np.empty(sum(prod(p.shape) for p in ps), dt)
            off = 0
            for p in ps:
                n = prod(p.shape)
                view = arena[off:off + n].reshape(p.shape)
                view[...] = p._param.value
                p._param.value = view
                self.views.append((p, view))
                off += n
            self.arenas.append(arena)

    def _bind_params(self) -> None:
        """Params live in this program's arena; a value set elsewhere is copied back in."""
        for p, view in self.views:
            cur = p._param.value
            if cur is not view:
                view[...] = cur
                p._param.value = view

    def _workspace(self, env: dict) -> list[np.ndarray]:
        key = tuple(map(env.__getitem__, self._dimnames))
        ws = self._workspaces.get(key)
        if ws is None:
            totals = {dt: 0 for dt in self.ws_dtypes}
            for sz, dt in self.program.memory.slots:
                totals[dt.name] += prod(resolve((sz,), env))
            ws = [np.empty(totals[dt], dt) for dt in self.ws_dtypes]
            self._workspaces[key] = ws
        return ws

    def _signature(self):
        arr = lambda dt, nd: numba.types.Array(numba.from_dtype(np.dtype(dt)), nd, "C")
        sig = [arr(dt, 1) for dt in self.param_dtypes] + [arr(dt, 1) for dt in self.ws_dtypes]
        sig += [arr(c.dtype, c.ndim) for c in self.consts] + [arr(x.dtype, x.ndim) for x in self.inputs]
        return tuple(sig)

    def _compile(self) -> None:
        if self.module is not None:
            diskcache.call_with_cache_recovery(self._step.compile, self._signature())

    def run(self, arrays: list[np.ndarray], env: dict) -> list[np.ndarray]:
        self._bind_params()
        ws = self._workspace(env)
        # np.ascontiguousarray would turn a 0-d array into 1-d
        args = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
        prog = self.program
        # outputs that are params or inputs themselves are taken before the step updates params
        src_out = [np.array(self._source_value(o, arrays), copy=True) if is_src else None
                   for o, is_src in zip(prog.roots[:prog.n_outputs], self.out_is_source)] if self.any_source_out else ()
        gov = self.governor
        if gov.idle:
            res = iter(self._step(*self.arenas, *ws, *self.consts, *args))
        else:
            gov.before()
            t = time.perf_counter()
            res = iter(self._step(*self.arenas, *ws, *self.consts, *args))
            gov.after(time.perf_counter() - t)
        if not self.any_source_out:
            return list(res)
        return [v if v is not None else next(res) for v in src_out]

    def _source_value(self, o: Node, arrays):
        if o.op.name == "param":
            return o._param.value
        if o.op.name == "constant":
            return o.attrs["value"]
        return arrays[[x.id for x in self.inputs].index(o.id)]

    def profile(self, arrays: list[np.ndarray], env: dict, repeat: int = 20) -> list[float]:
        """Median seconds of each kernel: ``step`` runs as Python, calling the jitted kernels."""
        times: dict[int, list[float]] = {}

        def timed(k: int, fn):
            def call(*a):
                t = time.perf_counter()
                fn(*a)
                times.setdefault(k, []).append(time.perf_counter() - t)
            return call
        body = self.source[self.source.index("@njit(cache=True, nogil=True)\ndef step("):]
        body = body.replace("@njit(cache=True, nogil=True)\n", "")
        lines, current = [], None
        for line in body.splitlines():
            m = re.match(r"\s*# kernel (\d+):", line)
            current = int(m.group(1)) if m else current
            call = re.match(r"(\s*)(k\d+_\w+)\(", line)
            if call and current is not None:
                line = f"{call.group(1)}_timed({current}, {call.group(2)})(" + line[call.end():]
            lines.append(line)
        body = "\n".join(lines)
        if self.module is None:
            ns: dict = {}
        else:  # a variant whose kernels Python may call
            ns = dict(vars(diskcache.load_module(generate(self.program, self.inputs, wrappers=True)[0],
                                                 salt=cpu_math.SOURCE_HASH)[0]))
        ns["_timed"] = timed
        exec(compile(body, "<graphc profile>", "exec"), ns)
        self._bind_params()
        ws = self._workspace(env)
        args = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
        for _ in range(repeat):
            ns["step"](*self.arenas, *ws, *self.consts, *args)
        return [float(np.median(times.get(k.index, [0.0]))) for k in self.program.kernels]

    def describe_cache(self) -> str:
        if self.debug:
            return "debug mode: generated code runs as plain Python, no JIT"
        where = self.module.__file__
        state = "hit" if self.cache_hit else "miss"
        return f"{state} ({where}); build + compile {self.compile_seconds:.2f} s\nthreads: {self.governor.describe()}"


__all__ = ["CpuProgram", "generate"]
