"""target="cuda": the step on an NVIDIA GPU through numba-cuda, or on Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported; slow, for tests).

Memory follows the CPU's layout (common/layout.py): a program allocates one device array per
param dtype (the arena) and, per set of dims, one per workspace dtype; the generated ``params``
and ``buffers`` slice every param and buffer out of them at the layout's offsets. Params and
optimizer state live on the device between calls. Each param's store keeps one device copy, a
slice of the arena of the program that ran last (a training step and an eval function share it:
the other one's first step after a switch moves the value into its own arena, on the device),
and a host copy synchronised lazily: ``W.value`` downloads the device copy when a step has
changed it, and a value that was set, or handed out by ``W.value`` (the caller may write into it,
as with the CPU target), is uploaded before the next step. Inputs are copied to the device once per call, or used where they lie
when they are device arrays; outputs come back as NumPy arrays, or stay on the device with
``device_arrays=True``. Function validates every argument before ``run``.

numba-cuda is in maintenance mode, so everything this backend asks of it sits here and in the
generated module: ``device_api`` (availability), ``to_device``, ``device_array``,
``copy_to_host``/``copy_to_device``, ``as_cuda_array``, ``pinned_array`` (host buffers of
all-reduces, cuda/step.py), and the kernel surface listed in cuda/kernels.py.
"""
from __future__ import annotations

import os
import time
import types
from typing import Any

import numpy as np

from ... import mpi
from ...atomic import held_signals
from ...errors import GraphcError, InputError, fmt_site
from ...ir import Node, _ParamStore
from ...passes.fusion import base_of
from ...program import Program
from ...shapes import fmt_shape, form_eval, resolve
from ..common import diskcache
from ..common.evaluate import evaluate

SIM_HINT = ("To run the CUDA kernels on the CPU instead (slow; for tests and CI), set NUMBA_ENABLE_CUDASIM=1 "
            "before numba is first imported.")


def device_api() -> types.ModuleType:
    """``numba.cuda`` when it can run kernels (a GPU and its driver, or the simulator);
    otherwise a GraphcError that says what is missing and names the simulator."""
    try:
        from numba import config, cuda
    except ImportError as e:  # numba itself is a dependency; numba.cuda may still fail to import
        raise GraphcError(f'target="cuda" needs numba-cuda: pip install "graphc[cuda]" ({e}). {SIM_HINT}') from None
    if config.ENABLE_CUDASIM:
        return cuda
    late = " (NUMBA_ENABLE_CUDASIM is set, but numba was imported before it was)" if os.environ.get(
        "NUMBA_ENABLE_CUDASIM") == "1" else ""
    try:
        ok = cuda.is_available()
    except Exception as e:  # a broken driver install raises instead of answering
        ok, why = False, str(e)
    else:
        why = str(getattr(cuda, "cuda_error", lambda: None)() or "no CUDA driver or GPU was found")
    if not ok:
        raise GraphcError(f'target="cuda": no usable NVIDIA GPU: {" ".join(why.split()).rstrip(".:")}. Install the driver and '
                          f'numba-cuda (pip install "graphc[cuda]", which brings numba-cuda[cu13]). {SIM_HINT}{late}')
    return cuda


def _is_device_array(a: Any) -> bool:
    return hasattr(a, "copy_to_host") and hasattr(a, "dtype") and hasattr(a, "shape")


class DeviceParamStore(_ParamStore):
    """A param's value on the device and on the host; each copy says whether it is stale."""

    __slots__ = ("_host", "_dev", "_host_stale", "_dev_stale")

    def __init__(self, value: np.ndarray):  # not the parent's: it would go through .value
        self._host, self._dev, self._host_stale, self._dev_stale = value, None, False, True

    @property
    def value(self) -> np.ndarray:
        if self._host_stale:
            h = self._host
            if h.flags.c_contiguous and h.flags.writeable:  # in place: views handed out earlier see it too
                self._dev.copy_to_host(h.reshape(-1))
            else:
                self._host = self._dev.copy_to_host().reshape(h.shape)
            self._host_stale = False
        self._dev_stale = True  # the caller may write into the array it gets
        return self._host

    @value.setter
    def value(self, new: np.ndarray) -> None:
        self._host, self._host_stale, self._dev_stale = new, False, True

    def bind(self, view, cuda: types.ModuleType):
        """Keep the device copy in ``view``, this param's slice of a program's arena: a value on the
        device in another program's arena is copied over (device to device), a newer host copy is
        uploaded. Returns ``view``."""
        if self._dev is not view:
            if self._dev is not None and not self._dev_stale and view.size:
                view.copy_to_device(self._dev[:view.size])
            self._dev = view
        return self.device(cuda)

    def device(self, cuda: types.ModuleType):
        """The flat device copy, uploaded first if the host copy is newer."""
        if self._dev is None:
            self._dev = cuda.device_array(max(self._host.size, 1), self._host.dtype)
        if self._dev_stale:
            self._dev[:self._host.size].copy_to_device(np.ascontiguousarray(self._host).reshape(-1))
            self._dev_stale = False
        return self._dev

    def updated(self) -> None:
        """A step wrote the device copy."""
        self._host_stale, self._dev_stale = True, False


def _store(p: Node) -> DeviceParamStore:
    st = p._param
    if not isinstance(st, DeviceParamStore):
        st = p._param = DeviceParamStore(st.value)
    return st


class CudaProgram:
    """Generates and imports the CUDA module of a program; ``run`` executes one step."""

    def __init__(self, program: Program, inputs: list[Node], device_arrays: bool = False):
        t0 = time.perf_counter()
        self.cuda = device_api()
        from . import mathfns as cuda_math  # importing them imports numba.cuda
        from . import step as cuda_step

        self.program, self.inputs, self.device_arrays = program, inputs, device_arrays
        self.simulator = cuda_math.SIMULATOR
        self.source, self.writer = cuda_step.generate(program, inputs)
        self.module, self.cache_hit = diskcache.load_module(self.source, salt=cuda_math.SOURCE_HASH)
        self.params, layout = self.writer.params, self.writer.layout
        self.arenas = tuple(self.cuda.device_array(max(layout.arena_size[dt], 1), dt) for dt in layout.param_dtypes)
        self.param_views = self.module.params(*self.arenas)  # each param's slice of its arena
        for p, view in zip(self.params, self.param_views):
            _store(p).bind(view, self.cuda)
        self.consts = tuple(self.cuda.to_device(np.ascontiguousarray(c.attrs["value"]).reshape(-1))
                            for c in self.writer.consts)
        self.errors = self.cuda.to_device(np.zeros(2, np.int64))  # a failed index check: (its number, the index)
        self._workspaces: dict[tuple, tuple] = {}
        self._inputs: dict[tuple, Any] = {}
        self.compile_seconds = time.perf_counter() - t0  # kernels compile at their first launch

    # -- data movement -----------------------------------------------------------------------
    def device_view(self, a: Any):
        """A device array to use as an input where it lies (no copy), or None for host data."""
        if isinstance(a, np.ndarray) or not (_is_device_array(a) or hasattr(a, "__cuda_array_interface__")):
            return None
        d = a if _is_device_array(a) else self.cuda.as_cuda_array(a)
        if not d.is_c_contiguous():
            raise InputError(f"a device array input of shape {fmt_shape(d.shape)} is not C-contiguous; "
                             "make a contiguous copy on the device first")
        return d

    def _input(self, j: int, a) -> Any:
        """Input ``j`` on the device: copied into a buffer kept per input and size (no allocation
        per call), or a device array used where it lies."""
        if not isinstance(a, np.ndarray):
            return a.reshape(a.size)
        buf = self._inputs.get((j, a.size))
        if buf is None:
            buf = self._inputs[(j, a.size)] = self.cuda.device_array(max(a.size, 1), a.dtype)
        if a.size:
            buf.copy_to_device(np.ascontiguousarray(a).reshape(-1))
        return buf

    def _workspace(self, key: tuple, env: dict) -> tuple:
        ws = self._workspaces.get(key)
        if ws is None:
            ends = self.writer.layout.ws_end  # the memory plan's slots, then loops' own buffers and staged updates
            slabs = [self.cuda.device_array(max(form_eval(ends.get(dt, {}), env), 1), dt) for dt in self.writer.ws_dtypes]
            ws = (self.module.buffers(*slabs, *key), self._staging(env))
            self._workspaces[key] = ws
        return ws

    def _staging(self, env: dict) -> tuple:
        """Flat device arrays that gathered outputs are written into."""
        return tuple(self.cuda.device_array(max(int(np.prod(resolve(o.shape, env))), 1), o.dtype)
                     for how, o in self.writer.outputs if how == "gather")

    # -- one step ----------------------------------------------------------------------------
    def run(self, arrays: list, env: dict) -> list:
        key = tuple(env[d] for d in self.writer.dims)
        P = tuple(_store(p).bind(view, self.cuda) for p, view in zip(self.params, self.param_views))
        B, X = self._workspace(key, env)
        if self.device_arrays:  # the caller keeps the results: fresh arrays every call
            X = self._staging(env)
        ins = tuple(self._input(j, a) for j, a in enumerate(arrays))
        try:
            with held_signals():  # the step launches kernels and update copies from Python: all or none
                res = self.module.step(B, X, P, self.consts, ins, self.errors, *key)
        except self.module.IndexOutOfRange:
            j, value = (int(v) for v in self.errors.copy_to_host())
            self.errors.copy_to_device(np.zeros(2, np.int64))
            n = self.writer.checks[j - 1]
            bound = resolve((n.op.extra["index_bound"](n),), env)[0]
            msg = f"{n.op.name} ({fmt_site(n.site)}): index {value} is out of range [0, {bound})"
            if self.writer.hosts and mpi.size() > 1:  # the other ranks would wait for this one's all-reduces
                mpi.abort(msg)
            raise GraphcError(msg) from None
        for p, _ in self.program.updates:
            p._param.updated()
        return [self._output(how, o, r, env) for (how, o), r in zip(self.writer.outputs, res)]

    def _output(self, how: str, o: Node, r, env: dict):
        shape = tuple(resolve(o.shape, env))
        if how == "host":
            v = np.array(evaluate(o, {}, env), copy=True)
            return self.cuda.to_device(v) if self.device_arrays else v
        n = int(np.prod(shape))
        if not self.device_arrays:
            return r[:n].copy_to_host().reshape(shape)
        if how == "direct":  # a workspace slice: the next call overwrites it
            fresh = self.cuda.device_array(max(n, 1), o.dtype)
            self.module.copy[self.module.launch(n)](n, r, fresh)
            r = fresh
        return r[:n].reshape(shape)

    # -- introspection -------------------------------------------------------------------------
    def profile(self, arrays: list, env: dict, repeat: int = 20) -> list[float]:
        """Median seconds of each kernel: ``step`` runs with each launch synchronised and timed (a
        scan's: the launches of its body's kernels over all its steps)."""
        times: dict[int, list[float]] = {}
        run: dict[int, float] = {}
        cuda = self.cuda

        class Timed:
            def __init__(self, kern, index):
                self.kern, self.index = kern, index

            def __getitem__(self, config):
                def call(*args):
                    cuda.synchronize()
                    t = time.perf_counter()
                    self.kern[config](*args)
                    cuda.synchronize()
                    run[self.index] = run.get(self.index, 0.0) + time.perf_counter() - t
                return call
        ns = dict(vars(self.module))
        for name, index in self.writer.kernel_of.items():
            ns[name] = Timed(ns[name], index)
        step = types.FunctionType(self.module.step.__code__, ns)
        saved, self.module = self.module, types.SimpleNamespace(**{**vars(self.module), "step": step})
        try:
            for _ in range(repeat):
                run.clear()
                self.run(arrays, env)
                for index, t in run.items():
                    times.setdefault(index, []).append(t)
        finally:
            self.module = saved
        return [float(np.median(times.get(k.index, [0.0]))) for k in self.program.kernels]

    def describe_cache(self) -> str:
        where = "the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)" if self.simulator else "the GPU"
        state = "hit" if self.cache_hit else "miss"
        return (f"{state} ({self.module.__file__}); build {self.compile_seconds:.2f} s; kernels for {where} "
                "compile at their first launch")


def kernel_ptx(program: Program, inputs: list[Node], cc: tuple[int, int] = (9, 0)) -> dict[str, str]:
    """PTX of every generated kernel, type-checked as real CUDA does it (the simulator accepts
    code that hardware rejects). Needs numba-cuda with its compiler libraries (``numba-cuda[cu13]``),
    not a GPU: without one, device functions are compiled for ``cc`` instead of the current device."""
    import numba
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    from . import step as cuda_step

    source, writer = cuda_step.generate(program, inputs)
    module, _ = diskcache.load_module(source, salt="ptx")
    saved = dispatcher.get_current_device
    if not cuda.is_available():  # numba-cuda asks the current device for the cc of device functions
        dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        arr = lambda n: numba.from_dtype(base_of(n)[0].dtype)[::1]
        out = {}
        for code in writer.codes:
            sig = [numba.int64] * len(code.syms) + [arr(v) for v in code.reads]
            sig += [numba.from_dtype(c.dtype) for c in code.scalars] + [arr(w) for w in code.writes]
            sig += [numba.from_dtype(dt)[::1] for dt, _ in code.scratch]
            sig += [numba.int64[::1]] if code.checks else []  # E, the error word of index checks
            out[code.name], _ = cuda.compile_ptx(getattr(module, code.name).py_func, tuple(sig), cc=cc)
        return out
    finally:
        dispatcher.get_current_device = saved


__all__ = ["CudaProgram", "DeviceParamStore", "device_api", "kernel_ptx"]
