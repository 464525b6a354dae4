"""Native code without Numba's dispatcher: load compiled kernels and run a step.

Numba compiles each kernel once (``library.py``); what graphc keeps is its object code. This
module loads object code into one llvmlite MCJIT engine per process, binds the symbols kernels
call (OpenBLAS's ``cblas_?gemm`` from the library SciPy ships, libm, and Numba's runtime for
parallel kernels), and runs a step with a driver written here in LLVM IR: it walks a *plan*,
an int64 array of (kernel address, argument block) pairs, and calls each kernel with
``(int64* args, int64* bases)``. ``bases`` holds the addresses of the step's buffers (param
arenas, workspace, constants), then those of the call's input and output arrays, which the
driver reads from the NumPy objects it is given. A warm start therefore imports neither Numba
nor SciPy, and a step costs one ctypes call.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir

from ...errors import GraphcError

_lock = threading.RLock()
_state: dict = {}
FORKS = [0]  # forks of this process since import (a child's view: its parent's count + 1)


def _after_fork() -> None:
    FORKS[0] += 1
    if _state.get("parallel"):  # the parent ran parallel kernels: OpenMP's pool does not survive a fork
        _state["no_parallel"] = True


def parallel_used() -> None:
    """A plan with parallel kernels is about to run (their thread pool starts)."""
    _state["parallel"] = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def parallel_ok() -> bool:
    """False in a process forked after its parent started the parallel kernels' thread pool
    (GNU OpenMP kills such a child): parallel kernels then run serially there."""
    return not _state.get("no_parallel")

# Where CPython keeps a tuple's items and NumPy an array's data pointer (checked at start-up).
TUPLE_ITEMS, ARRAY_DATA = 3 * 8, 2 * 8


def _target_machine():
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    target = ll.Target.from_default_triple()
    return target.create_target_machine(cpu=ll.get_host_cpu_name(), features=ll.get_host_cpu_features().flatten(),
                                        codemodel="jitdefault", jit=True)


def engine() -> ll.ExecutionEngine:
    """The process's engine; on first use, libm and libc are made visible to loaded code."""
    with _lock:
        if "engine" not in _state:
            for lib in ("m", "c"):
                path = ctypes.util.find_library(lib)
                if path:
                    ll.load_library_permanently(path)
            _state["engine"] = ll.create_mcjit_compiler(ll.parse_assembly(""), _target_machine())
        return _state["engine"]


def machine_key() -> str:
    """What object code depends on besides its source: CPU and LLVM versions."""
    if "machine" not in _state:
        _state["machine"] = "\0".join([ll.get_host_cpu_name(), ll.get_host_cpu_features().flatten(),
                                       ".".join(map(str, ll.llvm_version_info)), ll.get_default_triple(),
                                       os.environ.get("NUMBA_OPT", ""), os.environ.get("NUMBA_CPU_NAME", ""),
                                       os.environ.get("NUMBA_CPU_FEATURES", "")])
    return _state["machine"]


# --- BLAS by symbol -------------------------------------------------------------------------
BLAS_SYMBOLS = {"graphc_cblas_sgemm": "cblas_sgemm", "graphc_cblas_dgemm": "cblas_dgemm"}


def blas() -> ctypes.CDLL:
    """SciPy's bundled OpenBLAS (found without importing SciPy); its cblas gemms are bound to
    the names kernels call, so cached object code survives new processes."""
    with _lock:
        if "blas" not in _state:
            spec = importlib.util.find_spec("scipy")
            libs = []
            if spec is not None and spec.submodule_search_locations:
                pkg = list(spec.submodule_search_locations)[0]  # wheels: scipy.libs (Linux, Windows), .dylibs (macOS)
                libs = sorted(glob.glob(os.path.join(os.path.dirname(pkg), "scipy.libs", "*scipy_openblas*"))
                              + glob.glob(os.path.join(pkg, ".dylibs", "*scipy_openblas*")))
            if not libs:
                raise GraphcError("target='cpu' needs the OpenBLAS that SciPy's wheels ship "
                                  "(scipy.libs/libscipy_openblas*); install scipy from PyPI")
            lib = ctypes.CDLL(libs[0])
            prefix = "scipy_" if hasattr(lib, "scipy_cblas_sgemm") else ""
            for ours, theirs in BLAS_SYMBOLS.items():
                ll.add_symbol(ours, ctypes.cast(getattr(lib, prefix + theirs), ctypes.c_void_p).value)
            _state["blas_threads"] = getattr(lib, prefix + "openblas_set_num_threads", None)
            _state["blas_get_threads"] = getattr(lib, prefix + "openblas_get_num_threads", None)
            _state["blas"] = lib
        return _state["blas"]


def set_blas_threads(n: int) -> int | None:
    """Set the threads of the OpenBLAS that kernels call (SciPy's copy, which SciPy uses too);
    return the count it had, for the caller to restore after the step."""
    blas()
    get, set_ = _state["blas_get_threads"], _state["blas_threads"]
    if get is None or set_ is None:
        return None
    before = int(get())
    if before != n:
        set_(ctypes.c_int(n))
    return before


@contextmanager
def passive_wait() -> Iterator[None]:
    """OMP_WAIT_POLICY=PASSIVE while an OpenMP runtime starts (it reads its environment once,
    when it loads), unless the user chose a policy; os.environ is left as it was. Spinning
    worker threads steal the core a busy neighbour needs: a step then runs tens of times slower.
    Set only here, the policy reaches graphc's own pool and no other library's (torch's)."""
    if "OMP_WAIT_POLICY" in os.environ:
        yield
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        yield
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)


def start_threads() -> None:
    """Start Numba's thread pool (its OpenMP runtime) with the passive wait policy. Everything
    in graphc that may start it (running or compiling parallel kernels, the thread governor)
    calls this first."""
    with _lock:
        if not _state.get("threads"):
            from numba.np.ufunc.parallel import _launch_threads
            with passive_wait():
                _launch_threads()
            _state["threads"] = True


def _numba_runtime() -> None:
    """Parallel kernels call Numba's runtime (NRT, thread pool, helpers): set it up."""
    with _lock:
        if not _state.get("numba"):
            from numba.core.registry import cpu_target
            from numba.core.runtime import nrt
            nrt.rtsys.initialize(cpu_target.target_context)  # NRT's and Numba's helper symbols
            start_threads()  # the thread pool's
            _state["numba"] = True


def load_object(obj: bytes, symbol: str, undefined: list[str]) -> int:
    """Load one kernel's object code; return the address of ``symbol``. Symbols the object
    needs are checked first: an unresolved one would abort the process inside LLVM."""
    blas()
    missing = [s for s in undefined if not ll.address_of_symbol(s)]
    if missing:
        _numba_runtime()
        missing = [s for s in missing if not ll.address_of_symbol(s)]
        if missing:
            raise GraphcError(f"kernel object needs unknown symbols {missing}")
    with _lock:
        ee = engine()
        ee.add_object_file(ll.ObjectFileRef.from_data(obj))
        ee.finalize_object()
        addr = ee.get_function_address(symbol)
    if not addr:
        raise GraphcError(f"kernel object does not define {symbol}")
    return addr


# --- the driver -----------------------------------------------------------------------------
# plan: [n_calls, template address, template length, error word address (or 0),
#        (kernel address, args offset) * n_calls, args...]
PLAN_HEAD = 4


def _driver_ir() -> str:
    m = ir.Module("graphc_driver")
    i64, i8p = ir.IntType(64), ir.IntType(8).as_pointer()
    p64 = i64.as_pointer()
    kernel_t = ir.FunctionType(ir.VoidType(), [p64, p64]).as_pointer()
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [p64, i8p, i64, i64]), "graphc_run")
    plan, arrays, first, last = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    c = lambda v: ir.Constant(i64, v)
    load = lambda ptr, k: b.load(b.gep(ptr, [k]))
    tmpl = b.inttoptr(load(plan, c(1)), p64)
    ntmpl = load(plan, c(2))
    errp = load(plan, c(3))
    n_arrays = b.load(b.bitcast(b.gep(arrays, [c(16)]), p64))  # ob_size
    bases = b.alloca(i64, b.add(ntmpl, n_arrays), name="bases")

    def loop(name, start, stop, body):
        head, blk, done = (fn.append_basic_block(f"{name}.{s}") for s in ("head", "body", "done"))
        pre = b.block
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(i64)
        i.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", i, stop), blk, done)
        b.position_at_end(blk)
        body(i)
        i.add_incoming(b.add(i, c(1)), b.block)
        b.branch(head)
        b.position_at_end(done)

    loop("tmpl", c(0), ntmpl, lambda i: b.store(load(tmpl, i), b.gep(bases, [i])))

    def array(j):
        item = b.load(b.bitcast(b.gep(arrays, [b.add(c(TUPLE_ITEMS), b.mul(j, c(8)))]), i8p.as_pointer()))
        data = b.load(b.bitcast(b.gep(item, [c(ARRAY_DATA)]), p64))
        b.store(data, b.gep(bases, [b.add(ntmpl, j)]))
    loop("arrays", c(0), n_arrays, array)

    stop = fn.append_basic_block("stop")

    def call(i):
        at = b.add(c(PLAN_HEAD), b.mul(i, c(2)))
        kernel = b.inttoptr(load(plan, at), kernel_t)
        args = b.gep(plan, [load(plan, b.add(at, c(1)))])
        b.call(kernel, [args, bases])
        # a kernel that found a bad index set the error word: run nothing after it
        checked, go_on = fn.append_basic_block("checked"), fn.append_basic_block("go_on")
        b.cbranch(b.icmp_signed("!=", errp, c(0)), checked, go_on)
        b.position_at_end(checked)
        failed = b.icmp_signed("!=", b.load(b.inttoptr(errp, p64)), c(0))
        b.cbranch(failed, stop, go_on)
        b.position_at_end(go_on)
    loop("calls", first, last, call)
    b.ret_void()
    b.position_at_end(stop)
    b.ret_void()
    return str(m)


def _check_object_layout() -> None:
    """The driver reads tuple items and array data pointers at fixed offsets: confirm them."""
    a = np.zeros(3)
    t = (a,)
    item = ctypes.c_void_p.from_address(id(t) + TUPLE_ITEMS).value
    data = ctypes.c_void_p.from_address(id(a) + ARRAY_DATA).value
    if item != id(a) or data != a.ctypes.data:
        raise GraphcError("target='cpu': this Python or NumPy lays out tuples or arrays differently")


Runner = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.py_object, ctypes.c_int64, ctypes.c_int64)


def driver():
    """``run(plan address, tuple of arrays, first call, end call)``; releases the GIL."""
    with _lock:
        if "driver" not in _state:
            _check_object_layout()
            ee = engine()
            mod = ll.parse_assembly(_driver_ir())
            mod.verify()
            ee.add_module(mod)
            ee.finalize_object()
            _state["driver"] = Runner(ee.get_function_address("graphc_run"))
        return _state["driver"]
