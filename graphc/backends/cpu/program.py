"""The CPU backend: a step is a plan of calls to library kernels, run by one native call.

Cold, the program (passes, fusion, memory plan) is laid out in flat buffers (``layout.py``) and
each kernel is written over raw pointers (``cpu/kernels.py``); kernels come from the kernel library
(``library.py``: compiled once per structure, shared by every model and process). The result
is a *step spec*: kernel keys, one argument block per call (sizes, strides and offsets as forms
in the symbolic dims), the arena and workspace layout and the outputs. It is stored under a hash
of the graph before passes, so a warm start skips passes, code generation and Numba: it loads
the spec and the kernels' object code and is ready. Per set of dims the spec resolves to an
int64 plan that ``native.driver`` walks in one ctypes call (the GIL released).

``f.source`` is the generated module: the kernels, and ``step``, the same calls as Python; it
runs as is, without the JIT, under ``debug=True``.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from math import prod
from pathlib import Path

import numpy as np

from ... import mpi
from ..._version import __version__
from ...errors import GraphcError
from ...shapes import resolve
from . import library, native
from .step import (
    SPEC_FORMAT,
    StepBuilder,
    base_label,
    base_names,
    bits,
    debug_namespace,
    evaluate,
    flat_calls,
    flat_hosts,
    render,
    unnpy,
)
from .threads import Governor

# Work (elements, ten per transcendental) below which a parallel kernel gains nothing here: a
# launch wakes sleeping threads (tens of us), and kernels this small take ~0.2 ms on one core.
# Measured: W4 (1e6 elements, tanh and sigmoid, 40e6) runs 1.9x faster on 2 threads; the
# transformer's biggest loops (<= 3.2e6 at batch 64) gained nothing.
PARALLEL_MIN = 8_000_000


def graphc_hash() -> str:
    """Hash of graphc's own sources: a cached step is only valid for the compiler that wrote it."""
    if not _HASH:
        root = Path(__file__).resolve().parents[2]  # graphc itself
        h = hashlib.sha256(__version__.encode())
        for f in sorted(root.rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
        _HASH.append(h.hexdigest())
    return _HASH[0]


_HASH: list = []


class _Plan:
    """A spec resolved for one set of dims: the int64 plan, the bases it points into, outputs."""

    __slots__ = ("plan", "addr", "template", "workspace", "n_calls", "outs", "parallel", "keys", "kernel_of", "hosts")


class CpuProgram:
    """One compiled step. ``run`` validates nothing (Function did)."""

    def __init__(self, fn, debug: bool = False, threads: int | None = None, bind_now: bool = True):
        t0 = time.perf_counter()
        debug = debug or _jit_disabled()
        self.fn, self.inputs, self.params, self.debug = fn, fn.inputs, fn.all_params, debug
        self.dims = sorted({d for x in self.inputs for d in x.shape if isinstance(d, str)})
        self.key = _step_key(fn)
        self.library_stats: dict = {"compiled": 0, "reused": 0}
        spec = None if debug else library.load_step(self.key)
        self.cache_hit = spec is not None and self._matches(spec)
        if not self.cache_hit:
            spec = StepBuilder(fn.program, self.inputs, self.params).build()
        self.spec = spec
        self.labels = {name: j for j, name in enumerate(base_names(spec))}
        self.consts = [unnpy(c) for c in spec["consts"]]
        self.outputs = spec["outputs"]
        self.errors = np.zeros(2, np.int64)  # a failed index check: (its number + 1, the index)
        self.all_out = all(o[0] == "out" for o in self.outputs)
        self._addr: dict[str, int] = {}
        self._plans: dict[tuple, _Plan] = {}
        self._forks = native.FORKS[0]
        if debug:
            self._debug_ns: dict = {}
        else:
            keys = {c["key"]: spec["kernels"][c["key"]] for c in flat_calls(spec["calls"])}
            self._addr.update(library.ensure(keys, self.library_stats))
            if not self.cache_hit:
                library.save_step(self.key, spec)
            self._run = native.driver()
        self.arenas: list | None = None
        if bind_now:  # else params move into the arena at the first call, in the caller's thread
            self._arena()
        self.governor = Governor(threads, blas=spec["blas_threads"], parallel=False)
        self.compile_seconds = time.perf_counter() - t0

    def _matches(self, spec: dict) -> bool:
        """A spec found on disk belongs to this graph (the key says so) and reads as expected."""
        try:
            return (spec["format"] == SPEC_FORMAT and len(spec["params"]) == len(self.params)
                    and all(dt == p.dtype.name and tuple(sh) == p.shape for (dt, sh), p in zip(spec["params"], self.params))
                    and all(c["key"] in spec["kernels"] for c in flat_calls(spec["calls"])))
        except (KeyError, TypeError, ValueError):
            return False

    @property
    def source(self) -> str:
        """The generated module, with the kernels the last call's dims chose."""
        env = self.fn._last_env
        last = self._plans.get(tuple(env[d] for d in self.dims)) if env is not None else None
        return render(self.spec, self.dims, last.keys if last else None)

    # -- params ---------------------------------------------------------------------------------
    def _arena(self) -> None:
        self.arenas, self.views = [], []
        for dt in self.spec["param_dtypes"]:
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

    # -- plans ---------------------------------------------------------------------------------
    def _address(self, key: str) -> int:
        if key not in self._addr:
            self._addr.update(library.ensure({key: self.spec["kernels"][key]}, self.library_stats))
        return self._addr[key]

    def _resolve(self, slot: list, env: dict) -> int:
        kind = slot[0]
        if kind == "int":
            return evaluate(slot[1], env)
        if kind == "base":
            return self.labels[base_label(slot[1])]
        if kind == "bits":
            return slot[1]
        return bits(prod(resolve(tuple(slot[2]), env)), slot[1])

    def plan(self, env: dict) -> _Plan:
        if self._forks != native.FORKS[0]:  # a forked child: plans may hold parallel kernels it cannot run
            self._plans, self._forks = {}, native.FORKS[0]
        key = tuple(map(env.__getitem__, self.dims))
        got = self._plans.get(key)
        if got is not None:
            return got
        spec, pl = self.spec, _Plan()
        pl.hosts = []
        flat = list(flat_calls(spec["calls"]))
        scratch = {dt: max((evaluate(c["scratch"][dt], env) for c in flat if dt in c["scratch"]), default=0)
                   for dt in spec["ws_dtypes"]}
        pl.workspace = [np.empty(evaluate(spec["ws_end"].get(dt, []), env) + scratch[dt], dt) for dt in spec["ws_dtypes"]]
        bases = self.arenas + pl.workspace + self.consts + [self.errors]
        pl.template = np.array([b.ctypes.data for b in bases], np.int64)
        pl.keys = []
        for c in flat:
            par = c["pkey"] is not None and evaluate(c["work"], env) >= PARALLEL_MIN and native.parallel_ok()
            pl.keys.append(c["pkey"] if par else c["key"])
        pl.parallel = any(k != c["key"] for k, c in zip(pl.keys, flat))
        if pl.parallel:
            native.parallel_used()
        addr = {id(c): 0 if self.debug else self._address(k) for c, k in zip(flat, pl.keys)}
        addrs, kernel_of, words, lens = self._expand(spec["calls"], env, addr, pl.hosts)
        n = pl.n_calls = len(addrs)
        head = np.array([n, pl.template.ctypes.data, len(bases), self.errors.ctypes.data if spec["checks"] else 0])
        at = native.PLAN_HEAD + 2 * n + np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        table = np.stack([addrs, at], axis=1).reshape(-1) if n else np.zeros(0, np.int64)
        pl.plan = np.concatenate([head, table, words]).astype(np.int64)
        pl.kernel_of = kernel_of
        pl.addr = pl.plan.ctypes.data  # (.ctypes costs a microsecond: not per call)
        pl.outs = [(tuple(evaluate(d, env) for d in o[2]), np.dtype(o[1])) for o in self.outputs if o[0] == "out"]
        if pl.parallel and not self.governor.parallel:
            self.governor = Governor(self.governor.threads, blas=self.governor.blas, parallel=True)
        self._plans[key] = pl
        return pl

    def _expand(self, calls: list[dict], env: dict, addr: dict, hosts: list | None = None) -> tuple:
        """The plan's calls: (kernel addresses, kernel numbers, argument words, words per call).
        A loop's calls repeat once per step; their arguments are affine in the loop's counter
        (offsets of the step's slices), so the words of step t are those of step 0 plus t times
        the difference from step 1: one plan serves any number of steps without compiling.
        Host calls (collectives) go to ``hosts`` as (calls before them, what they do)."""
        addrs, kernel_of, words, lens = [], [], [], []
        for c in calls:
            if "host" in c:
                hosts.append((sum(len(a) for a in addrs), self._host_action(c, env)))
                continue
            if "loop" in c:
                T = evaluate(c["loop"], env)
                if T <= 0:
                    continue
                a0, k0, w0, l0 = self._expand(c["calls"], {**env, c["var"]: 0}, addr)
                if T > 1:
                    w1 = self._expand(c["calls"], {**env, c["var"]: 1}, addr)[2]
                    w0 = (w0[None, :] + np.arange(T, dtype=np.int64)[:, None] * (w1 - w0)[None, :]).reshape(-1)
                addrs.append(np.tile(a0, T))
                kernel_of.append(np.tile(k0, T))
                words.append(w0)
                lens.append(np.tile(l0, T))
                continue
            block = [self._resolve(sl, env) for sl in c["slots"]]
            addrs.append(np.array([addr[id(c)]], np.int64))
            kernel_of.append(np.array([-1 if c["kernel"] is None else c["kernel"]], np.int64))
            words.append(np.array(block, np.int64))
            lens.append(np.array([len(block)], np.int64))
        cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)
        return cat(addrs), cat(kernel_of), cat(words), cat(lens)

    def _host_action(self, c: dict, env: dict):
        """A collective's start or wait, as a function of the step's flat base arrays."""
        j = c["id"]
        if c["host"] == "wait":
            def wait(B, pending):
                pending.pop(j).wait()
            return wait
        m = self.spec["collectives"][j]
        n = evaluate(m["count"], env)
        (sb, so), (db, do) = [(self.labels[base_label(b)], evaluate(off, env)) for b, off in (m["src"], m["dst"])]

        def start(B, pending):
            pending[j] = mpi.Pending(B[sb][so:so + n], B[db][do:do + n], m["op"])
        return start

    def _flat_bases(self, pl: _Plan, args: list, outs: list) -> list:
        flat = lambda a: (a.view(np.uint8) if a.dtype == np.bool_ else a).reshape(-1)
        return [flat(b) for b in self.arenas + pl.workspace + self.consts + [self.errors] + args + outs]

    def _run_with_hosts(self, pl: _Plan, args: list, outs: list) -> float:
        """The plan in stretches between host calls: the driver runs kernels, the host runs
        collectives (a started all-reduce proceeds while the next stretch runs). Returns the
        seconds spent in kernels (what the thread governor judges)."""
        arrays, B, pending, at, busy = tuple(args + outs), self._flat_bases(pl, args, outs), {}, 0, 0.0
        clock = time.perf_counter
        for pos, action in pl.hosts:
            while pos > at:
                # while an all-reduce is in flight, kernels run one call at a time with a progress
                # test between them: MPI moves the message on only inside MPI calls
                stop = at + 1 if pending else pos
                t = clock()
                self._run(pl.addr, arrays, at, stop)
                busy += clock() - t
                at = stop
                if self.errors[0]:
                    break
                for p in pending.values():
                    p.progress()
            if self.errors[0]:
                break
            action(B, pending)
        else:
            if at < pl.n_calls:
                t = clock()
                self._run(pl.addr, arrays, at, pl.n_calls)
                busy += clock() - t
        for p in pending.values():  # (after an error: complete what was started)
            p.wait()
        return busy

    # -- running ---------------------------------------------------------------------------------
    def run(self, arrays: list[np.ndarray], env: dict) -> list[np.ndarray]:
        if self.arenas is None:
            self._arena()
        self._bind_params()
        pl = self.plan(env)
        # np.ascontiguousarray would turn a 0-d array into 1-d
        args = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
        outs = [np.empty(shape, dt) for shape, dt in pl.outs]
        before = None if self.all_out else self._source_outputs(args, env)  # params as they were
        if self.debug:
            self._debug_call(pl, args, outs, env)
        elif pl.hosts:
            gov = self.governor
            gov.before()
            gov.after(self._run_with_hosts(pl, args, outs))
        else:
            gov = self.governor
            if gov.idle:
                self._run(pl.addr, tuple(args + outs), 0, pl.n_calls)
            else:
                gov.before()
                t = time.perf_counter()
                self._run(pl.addr, tuple(args + outs), 0, pl.n_calls)
                gov.after(time.perf_counter() - t)
        if self.errors[0]:
            self._index_error()
        if before is None:
            return outs
        it = iter(outs)
        return [next(it) if b is None else b for b in before]

    def _index_error(self):
        """A kernel found an index out of range and the driver stopped after it: nothing was
        committed (steps with such checks update params only after their last kernel). In a
        job of several ranks whose step has collectives, the others would wait forever for this
        rank's: the job is aborted with the message."""
        j, value = int(self.errors[0]) - 1, int(self.errors[1])
        self.errors[:] = 0
        op, site, bound = self.spec["checks"][j]
        n = evaluate(bound, self.fn._last_env or {})
        msg = f"{op} ({site}): index {value} is out of range [0, {n})"
        if self.spec.get("collectives") and mpi.size() > 1:
            mpi.abort(msg)
        raise GraphcError(msg)

    def _source_outputs(self, args: list, env: dict) -> list:
        res = []
        for o in self.outputs:
            kind = o[0]
            if kind == "out":
                res.append(None)
            elif kind == "param":
                res.append(np.array(self.params[o[1]]._param.value, copy=True))
            elif kind == "input":
                res.append(np.array(args[o[1]], copy=True))
            elif kind == "const":
                res.append(unnpy(o[1]))
            else:
                res.append(np.array(prod(resolve(tuple(o[2]), env)), o[1]))
        return res

    def _debug_call(self, pl: _Plan, args: list, outs: list, env: dict) -> None:
        flat = lambda a: (a.view(np.uint8) if a.dtype == np.bool_ else a).reshape(-1)
        B = [flat(b) for b in self.arenas + pl.workspace + self.consts + [self.errors] + args + outs]
        key = tuple(pl.keys)
        if key not in self._debug_ns:
            self._debug_ns[key] = debug_namespace(render(self.spec, self.dims, pl.keys))
        ns = self._debug_ns[key]
        if self.spec.get("collectives"):
            actions, pending = {}, {}
            for c in flat_hosts(self.spec["calls"]):
                actions[(c["host"], c["id"])] = self._host_action(c, env)
            ns["collective_start"] = lambda j, B: actions[("start", j)](B, pending)
            ns["collective_wait"] = lambda j, B: actions[("wait", j)](B, pending)
        ns["step"](B, *(env[d] for d in self.dims))

    def profile(self, arrays: list[np.ndarray], env: dict, repeat: int = 20) -> list[float]:
        """Median seconds of each kernel (with the copies it needs), run call by call."""
        if self.arenas is None:
            self._arena()
        self._bind_params()
        pl = self.plan(env)
        args = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
        outs = tuple(args + [np.empty(shape, dt) for shape, dt in pl.outs])
        times: dict[int, list[float]] = {}
        for _ in range(repeat):
            per: dict[int, float] = {}
            for j, kernel in enumerate(pl.kernel_of.tolist()):
                t = time.perf_counter()
                self._run(pl.addr, outs, j, j + 1)
                if kernel >= 0:
                    per[kernel] = per.get(kernel, 0.0) + time.perf_counter() - t
            for k, v in per.items():
                times.setdefault(k, []).append(v)
        return [float(np.median(times.get(k, [0.0]))) for k in range(self.spec["n_kernels"])]

    def describe_cache(self) -> str:
        if self.debug:
            return "debug mode: generated code runs as plain Python, no JIT"
        st = self.library_stats
        state = "hit" if self.cache_hit else "miss"
        return (f"{state} (step {self.key[:12]} in {library.step_path(self.key).parent}); kernels: "
                f"{st.get('compiled', 0)} compiled, {st.get('reused', 0)} from the library"
                + (" (a worker process compiled some)" if st.get("workers") else "")
                + f"; build {self.compile_seconds:.2f} s\nthreads: {self.governor.describe()}")


def _jit_disabled() -> bool:
    """NUMBA_DISABLE_JIT=1: Numba compiles nothing, so the step runs as plain Python (debug=True)."""
    numba = sys.modules.get("numba")
    if numba is not None:
        return bool(numba.config.DISABLE_JIT)
    return os.environ.get("NUMBA_DISABLE_JIT", "0").strip() not in ("", "0")


def _step_key(fn) -> str:
    """The step's cache key: the graph before passes, the compiler, the kernel toolchain."""
    from ...graph import structure_key
    ups = {p.id: k for k, p in enumerate(fn.all_params)}
    extra = repr(("cpu", SPEC_FORMAT, fn.optimize, len(fn.outputs), [ups[p.id] for p, _ in fn.updates],
                  graphc_hash(), library.kernel_key("")))
    return structure_key(fn.outputs + [e for _, e in fn.updates], fn.inputs, fn.all_params, extra)


__all__ = ["CpuProgram", "PARALLEL_MIN"]
