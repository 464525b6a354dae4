"""Thread counts for BLAS and Numba's parallel loops, adapted to a busy machine.

On a shared machine a neighbour may keep a core busy. Two BLAS threads then wait on
each other across a contended core and a step runs tens of times slower (measured:
an MLP step 6.5 ms alone, 124 ms with a busy neighbour; one thread: 8 ms). The
governor watches each step's time: when steps run much slower than the best seen with
all threads, it drops to one thread, and it probes all threads again now and then."""
from __future__ import annotations

import os

import numba

SLOW = 3.0       # a step this many times slower than the best counts as contended
STRIKES = 3      # consecutive slow steps before dropping to one thread
PROBE_EVERY = 64  # steps at one thread between probes with all threads

_blas = None
_current: int | None = None


def available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _blas_libs():
    """The OpenBLAS that Numba's np.dot calls (SciPy's), through threadpoolctl."""
    global _blas
    if _blas is None:
        import scipy.linalg.cython_blas  # noqa: F401 - loads the library Numba uses
        from threadpoolctl import ThreadpoolController
        _blas = [lib for lib in ThreadpoolController().lib_controllers
                 if lib.user_api == "blas" and "scipy" in lib.filepath and "numpy" not in lib.filepath]
    return _blas


def set_threads(n: int) -> None:
    """Threads for BLAS calls and parallel loops in compiled steps."""
    global _current
    if n == _current:
        return
    for lib in _blas_libs():
        lib.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _current = n


class Governor:
    def __init__(self, threads: int | None = None) -> None:
        self.max = threads or available()
        self.fixed = threads is not None or self.max == 1
        self.mode = self.max
        self.best = {self.max: float("inf"), 1: float("inf")}
        self.strikes = 0
        self.calls = 0
        self.switches = 0

    def before(self) -> None:
        self.calls += 1
        if self.mode == 1 and not self.fixed and self.calls % PROBE_EVERY == 0:
            self.mode = self.max  # probe: is the neighbour gone?
            self.strikes = STRIKES - 1
        set_threads(self.mode)

    def after(self, seconds: float) -> None:
        m = self.mode
        self.best[m] = min(self.best[m], seconds)
        if self.fixed or m == 1:
            return
        if seconds > SLOW * self.best[m] and (self.best[1] == float("inf") or seconds > self.best[1]):
            self.strikes += 1
            if self.strikes >= STRIKES:
                self.mode, self.strikes, self.switches = 1, 0, self.switches + 1
        else:
            self.strikes = 0

    def describe(self) -> str:
        return (f"{self.mode} of {self.max} threads now; {self.switches} drops to 1 thread under contention; "
                f"best step {self.best[self.max] * 1e3:.3f} ms with {self.max} threads")
