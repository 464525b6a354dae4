"""``gc.function``: validate a graph, compile it for a target, and call it safely.

Every argument is checked in Python before any backend runs (compiled code does no
bounds checks), and param updates are committed only after the whole step succeeded."""
from __future__ import annotations

import threading
from _thread import get_ident
from collections.abc import Sequence
from typing import Any

import numpy as np

from .atomic import REENTERED, guard_for
from .errors import DTypeError, GraphcError, InputError, ShapeError, fmt_site
from .graph import toposort
from .ir import Node, as_node
from .ops import broadcast_to
from .program import Program, build_program
from .shapes import broadcast, fmt_shape, resolve_dim

TARGETS = ("numpy", "cpu", "cuda")


def _normalize_updates(updates) -> list[tuple[Node, Node]]:
    if updates is None:
        return []
    items = list(updates.items()) if isinstance(updates, dict) else list(updates)
    out, seen = [], set()
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise GraphcError(f"updates must be (param, expression) pairs, got {item!r}")
        p, e = item
        if not isinstance(p, Node) or p.op.name != "param":
            raise GraphcError(f"update target {p!r} is not a param")
        if p.id in seen:
            raise GraphcError(f"param {p.name} is updated twice")
        seen.add(p.id)
        e = as_node(e, p)
        if e.dtype != p.dtype:
            raise DTypeError(f"update of {p.name}: expression {e.label()} has dtype {e.dtype}, param is {p.dtype}")
        if e.shape != p.shape:
            try:
                if broadcast(e.shape, p.shape) != p.shape:
                    raise ShapeError("")
            except ShapeError:
                raise ShapeError(f"update of {p.name}: expression {e.label()} has shape {fmt_shape(e.shape)}, "
                                 f"param has {fmt_shape(p.shape)}") from None
            e = broadcast_to(e, p.shape)
        out.append((p, e))
    return out


class Function:
    """A compiled step. Call it with arrays for its inputs, in order."""

    def __init__(self, inputs: Sequence[Node], outputs, updates=None, target: str = "numpy", optimize: bool = True,
                 debug: bool = False, threads: int | None = None, device_arrays: bool = False, compile: str = "sync"):
        if target not in TARGETS:
            raise GraphcError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        if compile not in ("sync", "background"):
            raise GraphcError(f"compile={compile!r}: choose 'sync' (the default) or 'background'")
        self.target, self.optimize, self.debug, self.threads = target, optimize, debug, threads
        self.device_arrays = device_arrays
        self.inputs = list(inputs) if not isinstance(inputs, Node) else [inputs]
        names = set()
        for x in self.inputs:
            if not isinstance(x, Node) or x.op.name != "input":
                raise GraphcError(f"inputs must be gc.input nodes, got {x!r}")
            if x.name in names:
                raise GraphcError(f"input name {x.name!r} appears twice")
            names.add(x.name)
        self.single = isinstance(outputs, Node)
        self.outputs = [outputs] if self.single else list(outputs)
        for o in self.outputs:
            if not isinstance(o, Node):
                raise GraphcError(f"outputs must be graph nodes, got {type(o).__name__}")
        self.updates = _normalize_updates(updates)
        self.roots = self.outputs + [e for _, e in self.updates]
        order = toposort(self.roots)
        given = {x.id for x in self.inputs}
        for n in order:
            if n.op.name == "input" and n.id not in given:
                raise GraphcError(f"the graph needs input {n.name!r} ({fmt_site(n.site)}), which is not in the inputs list")
        self.params = [n for n in order if n.op.name == "param"]
        self.collective = any(n.op.kind == "collective" for n in order)  # runs with other ranks: see __call__
        if target in ("cpu", "cuda"):
            half = next((n for n in order if n.dtype == np.float16), None)
            if half is not None:  # Numba has no float16 arithmetic: refuse here, not deep in a compiler
                raise DTypeError(f"target={target!r} does not compute in float16 ({half.label()}); cast to float32 "
                                 "with .astype('float32') (as PyTorch's CPU does internally), or use target='numpy'")
        # every param the step touches, in a stable order: read ones, then update targets
        seen = {p.id for p in self.params}
        self.all_params = self.params + [p for p, _ in self.updates if p.id not in seen]
        self._index_checks = self._find_index_checks(order)
        # per input, the axes of fixed size and those that bind a symbolic dim, checked per call
        self._fixed = {x.id: [(k, d) for k, d in enumerate(x.shape) if isinstance(d, int)] for x in self.inputs}
        self._named = {x.id: [(k, d) for k, d in enumerate(x.shape) if not isinstance(d, int)] for x in self.inputs}
        self._last_env: dict | None = None
        self._prog: Program | None = None
        self._guard = guard_for(self.all_params)
        self._pending: _Background | None = None
        if compile == "background" and target == "cpu" and not debug:
            from .backends.reference import ReferenceProgram
            self._program = ReferenceProgram(self.program, self.inputs)
            self._pending = _Background(lambda: self._compile(bind_now=False))
        else:
            self._program = self._compile()

    @property
    def program(self) -> Program:
        """The optimized program: graph after passes, kernels, memory plan. Built on first use
        (a compiled step loaded from the disk cache runs without it)."""
        if self._prog is None:
            validated = {}  # input id -> bounds its values are checked against before each call
            for k, bound, _ in self._index_checks:
                validated.setdefault(self.inputs[k].id, set()).add(bound)
            self._prog = build_program(self.outputs, self.updates, self.optimize, validated)
        return self._prog

    def _find_index_checks(self, order):
        """Index operands that come straight from an input are range-checked at call time."""
        pos = {x.id: k for k, x in enumerate(self.inputs)}
        checks = []
        for n in order:
            bound = n.op.extra.get("index_bound")
            if bound is None:
                continue
            idx = n.inputs[n.op.extra["index_arg"]]
            if idx.id in pos:
                checks.append((pos[idx.id], bound(n), n))
        return checks

    def _compile(self, bind_now: bool = True):
        if self.target == "cpu":
            from .backends.cpu.program import CpuProgram
            return CpuProgram(self, debug=self.debug, threads=self.threads, bind_now=bind_now)
        if self.target == "cuda":
            from .backends.cuda.program import CudaProgram
            return CudaProgram(self.program, self.inputs, device_arrays=self.device_arrays)
        from .backends.reference import ReferenceProgram
        return ReferenceProgram(self.program, self.inputs)

    def __reduce__(self):
        raise TypeError("a compiled graphc Function cannot be pickled: build it again with gc.function in the "
                        "new process (its kernels load from the disk cache), and save params with np.save(path, W.value)")

    @property
    def source(self) -> str | None:
        """The generated module (compiled targets), one commented function per kernel."""
        return getattr(self._program, "source", None)

    @property
    def cache_info(self) -> str | None:
        describe = getattr(self._program, "describe_cache", None)
        return describe() if describe else None

    @property
    def kernels(self) -> list:
        """The step's kernels in execution order (see ``graphc.passes.fusion.Kernel``)."""
        return self.program.kernels

    def profile(self, *args, repeat: int = 20) -> list[float]:
        """Median seconds per kernel for these arguments (compiled targets; params are
        updated ``repeat`` times, as by that many calls)."""
        arrays, env = self._bind(args)
        return self._program.profile(arrays, env, repeat)

    def report(self, env: dict | None = None) -> str:
        """What the compiler did: passes, kernels, fusion decisions, memory, FLOPs and bytes."""
        from .report import report
        return report(self, env if env is not None else self._last_env)

    def _convert(self, x: Node, a, device_view):
        """An argument that is not already a numpy array of the input's dtype."""
        d = device_view(a) if device_view is not None else None
        if d is not None:
            if d.dtype != x.dtype:
                raise InputError(f"input {x.name} ({fmt_site(x.site)}): device array of dtype {d.dtype}, expected "
                                 f"{x.dtype}; device arrays are not cast")
            return d
        if type(a) in (bool, int, float):  # Python scalars are weakly typed, as in JAX: they take x's dtype
            if x.dtype.kind not in {bool: "biuf", int: "iuf", float: "f"}[type(a)]:
                raise InputError(f"input {x.name} ({fmt_site(x.site)}): a Python {type(a).__name__} for a {x.dtype} "
                                 f"input; pass np.{x.dtype.name}(...) or a value of that kind")
            if x.dtype.kind in "iu" and not np.iinfo(x.dtype).min <= a <= np.iinfo(x.dtype).max:
                raise InputError(f"input {x.name} ({fmt_site(x.site)}): {a} does not fit in {x.dtype}")
            return np.asarray(a, dtype=x.dtype)
        if isinstance(a, np.generic):
            a = np.asarray(a)
        if not isinstance(a, np.ndarray):
            raise InputError(f"input {x.name} ({fmt_site(x.site)}): expected a numpy array, got {type(a).__name__}")
        if a.dtype != x.dtype:
            if not np.can_cast(a.dtype, x.dtype, "safe"):
                raise InputError(f"input {x.name} ({fmt_site(x.site)}): dtype {a.dtype} cannot be cast safely to "
                                 f"{x.dtype}; convert it with .astype(np.{x.dtype.name})")
            a = a.astype(x.dtype)
        return a

    def _bind(self, args: tuple) -> tuple[dict, dict]:
        if len(args) != len(self.inputs):
            names = ", ".join(x.name for x in self.inputs)
            raise InputError(f"expected {len(self.inputs)} arguments ({names}), got {len(args)}")
        env: dict[str, int] = {}
        who: dict[str, str] = {}
        feeds = []
        device_view = getattr(self._program, "device_view", None)  # target="cuda": device arrays, no copy
        for x, a in zip(self.inputs, args):
            if type(a) is not np.ndarray or a.dtype != x.dtype:  # the common case skips all of this
                a = self._convert(x, a, device_view)
            shape = a.shape
            if len(shape) != x.ndim:
                raise InputError(f"input {x.name} ({fmt_site(x.site)}): expected {x.ndim}-d shape {fmt_shape(x.shape)}, "
                                 f"got {a.ndim}-d {fmt_shape(shape)}")
            for axis, d in self._fixed[x.id]:
                if shape[axis] != d:
                    raise InputError(f"input {x.name} ({fmt_site(x.site)}): axis {axis} has size {shape[axis]}, "
                                     f"expected {d} (shape {fmt_shape(x.shape)})")
            for axis, d in self._named[x.id]:
                actual = shape[axis]
                bound = env.setdefault(d, actual)
                if bound != actual:
                    raise InputError(f"input {x.name} ({fmt_site(x.site)}): dim {d!r} is {actual} here but {bound} "
                                     f"in input {who[d]}")
                who.setdefault(d, x.name)
            feeds.append(a)
        for k, bound, n in self._index_checks:
            a, n_max = feeds[k], resolve_dim(bound, env)
            a = a if isinstance(a, np.ndarray) else a.copy_to_host()  # indices on the device are checked on the host
            if a.size and (a.min() < 0 or a.max() >= n_max):
                bad = a[(a < 0) | (a >= n_max)].flat[0]
                raise InputError(f"input {self.inputs[k].name}: index {bad} is out of range [0, {n_max}) "
                                 f"for {n.op.name} ({fmt_site(n.site)})")
        return feeds, env

    def _bind_agreed(self, args: tuple) -> tuple[dict, dict]:
        """A step with collectives: every rank checks its arguments and the ranks agree before
        any of them starts, so bad input on one rank raises on all, and nothing changes."""
        from . import mpi
        try:
            bound = self._bind(args)
        except Exception as e:
            mpi.agree(e)
            raise
        mpi.agree(None)
        return bound

    def __call__(self, *args: Any):
        # One step at a time per group of functions sharing params; never re-entered (atomic.py).
        # Written out, not as atomic.running(): a generator context manager costs a microsecond.
        g, me = self._guard, get_ident()
        while g.parent is not None:
            g = g.parent
        if g.inside == me:
            raise GraphcError(REENTERED)
        with g.lock:
            g.inside = me
            try:
                if self._pending is not None and self._pending.done.is_set():
                    self._program, self._pending = self._pending.result(), None
                if self.collective:
                    arrays, env = self._bind_agreed(args)
                else:
                    arrays, env = self._bind(args)
                self._last_env = env
                outs = self._program.run(arrays, env)
            finally:
                g.inside = None
        return outs[0] if self.single else outs

    def wait(self) -> Function:
        """With ``compile="background"``: block until the compiled step is ready (it is used
        from the next call on); without, return at once."""
        if self._pending is not None:
            self._pending.done.wait()
            self._program, self._pending = self._pending.result(), None
        return self


class _Background:
    """Compiles in a thread while the step runs on the reference plan."""

    def __init__(self, build):
        self.done, self.value, self.error = threading.Event(), None, None
        threading.Thread(target=self._run, args=(build,), daemon=True, name="graphc-compile").start()

    def _run(self, build) -> None:
        try:
            self.value = build()
        except BaseException as e:  # raised in the caller's thread at its next call
            self.error = e
        finally:
            self.done.set()

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def function(inputs: Sequence[Node], outputs, updates=None, target: str = "numpy", optimize: bool = True,
             debug: bool = False, threads: int | None = None, device_arrays: bool = False,
             compile: str = "sync") -> Function:
    """Compile ``outputs`` (a node or a list) of ``inputs``, with param ``updates``
    applied after each call, for ``target`` ("numpy", the reference, "cpu", or "cuda": NVIDIA GPUs
    through numba-cuda, or its simulator with NUMBA_ENABLE_CUDASIM=1; ``device_arrays=True``
    returns device arrays there; device array inputs are always used without a copy).
    ``optimize=False`` skips the passes and fusion; ``debug=True`` runs generated
    code as plain Python (no JIT) for readable tracebacks. ``threads`` fixes the thread
    count of compiled steps; by default they use every core and drop to one when a busy
    neighbour makes steps much slower.

    ``compile="background"`` (target "cpu") returns at once: the first calls run on the NumPy
    reference plan while the kernels compile in a thread, then calls switch to the compiled
    step (``f.wait()`` blocks until then). Both compute the same step, but not to the last bit:
    the loss trajectory differs from an all-compiled run at float32 rounding. The default,
    "sync", compiles before returning and is deterministic.

    >>> f = gc.function([x, y], [loss, gW], updates=[(W, W - 0.1 * gW)])
    """
    return Function(inputs, outputs, updates, target, optimize, debug, threads, device_arrays, compile)
