"""graphc changes nothing process-wide: not os.environ (so PyTorch's OpenMP starts as it would
without graphc), not SciPy's BLAS thread count, signal handlers or warning filters after a call.
Its own OpenMP pool still waits passively. Each check runs in a fresh interpreter."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STEP = """
import numpy as np
import graphc as gc
from graphc.backends.cpu import program as cpu
cpu.PARALLEL_MIN = 0  # kernels with a parallel variant run it: Numba's OpenMP pool starts
x = gc.input("x", ("n", 64))
W = gc.param("W", np.ones((64, 64), np.float32))
loss = gc.sum(gc.tanh(x @ W))
f = gc.function([x], loss, updates=[(W, W - 0.1 * gc.grad(loss, W))], target="cpu", threads={threads})
f(np.ones((4096, 64), np.float32))
f(np.ones((4096, 64), np.float32))
"""


def run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_import_and_steps_leave_the_process_as_it_was():
    """os.environ, signal handlers, warning filters and SciPy's OpenBLAS thread count are the
    same before ``import graphc`` and after compiling and running parallel steps (with the
    governor pinning one thread), while graphc's OpenMP pool runs with the passive wait policy."""
    res = run("""
import ctypes, os, signal, warnings
import numba, numpy, scipy.linalg  # (their own imports add warning filters: not graphc's doing)
env, filters = dict(os.environ), list(warnings.filters)
handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
""" + STEP.format(threads=1) + """
from graphc.backends.cpu import native as native
assert dict(os.environ) == env, {k: v for k, v in os.environ.items() if env.get(k) != v}
assert {s: signal.getsignal(s) for s in handlers} == handlers
assert warnings.filters == filters
blas = int(native._state["blas_get_threads"]())
assert blas == os.cpu_count() or blas == len(os.sched_getaffinity(0)), blas  # not the 1 the step used
for lib in sorted({l.split()[-1] for l in open("/proc/self/maps") if "libgomp" in l}):
    ctypes.CDLL(lib).omp_display_env(0)
print("ok")
""")
    assert "ok" in res.stdout
    if "OMP_WAIT_POLICY" in res.stderr:  # GNU OpenMP's own report of graphc's pool
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in res.stderr


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
@pytest.mark.parametrize("graphc_first", [
    "import graphc",                                     # the reported case: imported before torch's first op
    "import torch\n" + STEP.format(threads=None),        # graphc's parallel steps ran before torch's first op
])
def test_torch_openmp_is_the_same_with_and_without_graphc(graphc_first):
    """torch's parallel settings, and its OpenMP runtime's wait policy, are the same whether or
    not graphc was imported (and ran parallel steps, with its own pool passive) first."""
    probe = """
import ctypes, torch
torch.ones(256, 256) @ torch.ones(256, 256)
print(torch.__config__.parallel_info())
import graphc
from graphc.backends.cpu import native as native
native.start_threads()  # graphc's pool: the passive policy, wherever it starts
print(sorted({l.split()[-1] for l in open("/proc/self/maps") if "gomp" in l}), flush=True)
for lib in sorted({l.split()[-1] for l in open("/proc/self/maps") if "gomp" in l}):
    ctypes.CDLL(lib).omp_display_env(0) if hasattr(ctypes.CDLL(lib), "omp_display_env") else None
"""
    alone = run(probe)
    after = run(graphc_first + "\n" + probe)
    assert alone.stdout == after.stdout
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in after.stderr  # graphc's pool, a runtime of its own
    info = lambda out: out.split("[")[0]
    assert "OMP_WAIT_POLICY" not in info(after.stdout)
