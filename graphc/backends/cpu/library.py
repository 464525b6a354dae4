"""The kernel library: each kernel body compiled once, by its structure, and kept on disk.

A kernel's source (``cpu/kernels.py``) holds only structure, so its hash names it: step and
predict, every layer with the same shape of code, and every model in every process share one
compiled kernel. ``<cache>/kernels/k_<key>.py`` is the source Numba compiles (a C-ABI
``cfunc``); ``k_<key>.o`` is the object code graphc keeps, behind a header with its symbol,
the symbols it needs and a checksum, so a new process loads it in a fraction of a millisecond
without Numba (``native.load_object``). A corrupt or unreadable entry is compiled again.

Compiling uses Numba; with many new kernels and a free core, a forked worker compiles part
of them (it inherits this process's warmed-up Numba, so it starts at once).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path

from ...errors import GraphcError
from ..common import diskcache
from . import native

HERE = Path(__file__).resolve().parent
FORMAT = "graphc-kernel-1"
# Only what lets float reductions vectorize (reassoc) and multiply-adds fuse (contract). Not nnan or
# ninf, and not nsz (with reassoc it folds x + (-x) to 0 when x is NaN), arcp (it turns 1/sqrt(0)
# into NaN through an approximate reciprocal square root) or afn: NaN and inf propagate as in NumPy.
FASTMATH = ("reassoc", "contract")
WORKER_MIN = 6            # new kernels before a worker process is worth its start
HEADER = """\
# graphc kernel library entry: one kernel, compiled by Numba as a C function (see cpu/abi.py).
import numpy as np  # noqa: F401
from numba import prange  # noqa: F401

from graphc.backends.cpu.abi import JIT as _ABI
from graphc.backends.cpu.mathfns import *  # noqa: F403 - the g* scalar functions of the ops' templates

globals().update(_ABI)
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
"""

_lock = threading.RLock()
_addresses: dict[str, int] = {}   # key -> address in this process
_state: dict = {}
_compiled: dict = {}               # key -> Numba's cfunc, for kernels compiled in this process


def inspect_llvm(key: str, source: str) -> str:
    """The LLVM IR of a kernel (compiled again here if it came from the disk library)."""
    if key not in _compiled:
        with _lock:
            _compile(key, source)
    return _compiled[key].inspect_llvm()


def _salt() -> str:
    """Everything besides a kernel's source that its machine code depends on."""
    if "salt" not in _state:
        import llvmlite
        try:
            from importlib.metadata import version
            nb = version("numba")
        except Exception:  # numba is a dependency; a broken install still compiles nothing stale
            nb = "?"
        runtime = b"".join((HERE / f).read_bytes() for f in ("mathfns.py", "abi.py"))
        _state["salt"] = "\0".join([FORMAT, nb, llvmlite.__version__, hashlib.sha256(runtime).hexdigest(),
                                    native.machine_key(), HEADER, repr(FASTMATH)])
    return _state["salt"]


def kernel_key(source: str) -> str:
    return hashlib.sha256(f"{source}\0{_salt()}".encode()).hexdigest()[:24]


def kernel_dir() -> Path:
    return diskcache.subdir("kernels")


def function_name(key: str) -> str:
    return f"k_{key}"


def named(source: str, key: str) -> str:
    from .kernels import KERNEL
    return source.replace(f"def {KERNEL}(", f"def {function_name(key)}(", 1)


# --- object files ----------------------------------------------------------------------------
def _write_object(key: str, obj: bytes, symbol: str, undefined: list[str]) -> None:
    head = json.dumps({"format": FORMAT, "key": key, "symbol": symbol, "undefined": undefined,
                       "sha256": hashlib.sha256(obj).hexdigest()}).encode()
    diskcache.write_atomic(kernel_dir() / f"k_{key}.o", head + b"\n" + obj)


def _read_object(key: str) -> tuple[bytes, str, list[str]] | None:
    try:
        data = (kernel_dir() / f"k_{key}.o").read_bytes()
        head, _, obj = data.partition(b"\n")
        meta = json.loads(head)
        if meta.get("format") != FORMAT or meta.get("key") != key or hashlib.sha256(obj).hexdigest() != meta["sha256"]:
            return None
        return obj, str(meta["symbol"]), [str(s) for s in meta["undefined"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or corrupt: compiled again


# --- compiling ---------------------------------------------------------------------------------
def _compile(key: str, source: str) -> tuple[int, bytes, str, list[str]]:
    """Numba-compile one kernel in this process; returns (address, object, symbol, undefined)."""
    import numba
    from numba import types

    native.blas()  # the symbols kernels call must exist before Numba links them
    if "prange(" in source:  # compiling a parallel kernel loads Numba's threading layer: ours, passive
        native.start_threads()
    py = kernel_dir() / f"k_{key}.py"
    text = HEADER + "\n\n" + named(source, key)
    if not py.exists() or py.read_text() != text:
        diskcache.write_atomic(py, text.encode())
    name = f"graphc_kernel_{key}"
    spec = importlib.util.spec_from_file_location(name, py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sig = types.void(types.CPointer(types.int64), types.CPointer(types.int64))
    cf = numba.cfunc(sig, nogil=True, fastmath=set(FASTMATH), error_model="numpy",
                     parallel="prange(" in source)(getattr(mod, function_name(key)))
    lib = cf._library
    obj = lib.serialize_using_object_code()[2][0]
    module = lib._final_module
    undefined = sorted({f.name for f in module.functions if f.is_declaration and not f.name.startswith("llvm.")}
                       | {g.name for g in module.global_variables if g.is_declaration})
    _compiled[key] = cf
    return cf.address, obj, cf.native_name, undefined


def _compile_and_store(key: str, source: str) -> int:
    addr, obj, symbol, undefined = _compile(key, source)
    _write_object(key, obj, symbol, undefined)
    return addr


def _load(key: str) -> int | None:
    entry = _read_object(key)
    if entry is None:
        return None
    try:
        return native.load_object(*entry)
    except GraphcError:
        return None


def _worker(jobs: list[tuple[str, str]], conn) -> None:
    try:
        for key, source in jobs:
            _compile_and_store(key, source)
        conn.send(None)
    except BaseException as e:  # reported to the parent, which compiles what is missing itself
        conn.send(repr(e))
    finally:
        conn.close()


def _free_cores() -> int:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(0, len(os.sched_getaffinity(0)) - round(load)) if hasattr(os, "sched_getaffinity") else 0


def ensure(kernels: dict[str, str], stats: dict | None = None, workers: bool | None = None) -> dict[str, int]:
    """Addresses of ``{key: source}``: from this process, else the disk library, else compiled
    (the sources Numba compiles are written next to their objects). ``stats`` counts
    ``compiled`` and ``reused`` kernels and compile ``workers``."""
    stats = stats if stats is not None else {}
    out, todo = {}, []
    with _lock:
        for key, source in kernels.items():
            addr = _addresses.get(key) or _load(key)
            if addr:
                _addresses[key] = out[key] = addr
                stats["reused"] = stats.get("reused", 0) + 1
            else:
                todo.append((key, source))
        if not todo:
            return out
        t0 = time.perf_counter()
        todo.sort(key=lambda kv: -len(kv[1]))   # longest first: a rough cost order
        mine, theirs = todo, []
        use_workers = workers if workers is not None else (
            len(todo) >= WORKER_MIN and sys.platform.startswith("linux") and _free_cores() >= 1
            and threading.current_thread() is threading.main_thread()
            and os.environ.get("GRAPHC_COMPILE_WORKERS", "1") != "0")
        proc = None
        if use_workers:
            # The first kernel warms Numba up here, so the forked worker starts warm.
            key, source = todo[0]
            _addresses[key] = out[key] = _compile_and_store(key, source)
            rest = todo[1:]
            mine, theirs = rest[0::2], rest[1::2]
            import multiprocessing as mp
            ctx = mp.get_context("fork")
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(theirs, child), daemon=True)
            with warnings.catch_warnings():
                # Python 3.12+ warns on fork with native threads alive (OpenBLAS's, OpenMP's); the
                # child only compiles and writes files, never touches those pools, then _exits.
                warnings.simplefilter("ignore", DeprecationWarning)
                proc.start()
            child.close()
            stats["workers"] = 1
        for key, source in mine:
            if key not in out:
                _addresses[key] = out[key] = _compile_and_store(key, source)
        if proc is not None:
            err = parent.recv() if parent.poll(3600) else "no answer"
            proc.join()
            for key, source in theirs:
                addr = _load(key) if err is None else None
                _addresses[key] = out[key] = addr or _compile_and_store(key, source)
        stats["compiled"] = stats.get("compiled", 0) + len(todo)
        stats["compile_s"] = stats.get("compile_s", 0.0) + time.perf_counter() - t0
    return out


# --- step specs ----------------------------------------------------------------------------------
def step_path(key: str) -> Path:
    return diskcache.subdir("steps") / f"{key}.json"


def save_step(key: str, spec: dict) -> None:
    diskcache.write_atomic(step_path(key), json.dumps({"format": FORMAT, "key": key, "spec": spec}).encode())


def load_step(key: str) -> dict | None:
    try:
        data = json.loads(step_path(key).read_bytes())
        if data.get("format") != FORMAT or data.get("key") != key:
            return None
        return data["spec"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
