"""Thread counts for BLAS and Numba's parallel loops, adapted to a busy machine.

On a shared machine a neighbour may keep a core busy. Two BLAS threads then wait on
each other across a contended core and a step runs tens of times slower (measured: an
MLP step 6.5 ms alone, 124 ms with a busy neighbour; with one thread, 8 ms). The
governor times every step. It compares both thread counts once early on; while all threads
win it only looks again when steps suddenly slow down (a probe costs a few slow steps, which
matters for big steps); while one thread wins it probes back with exponential backoff."""
from __future__ import annotations

import os
from collections import deque
from statistics import median

from .native import set_blas_threads, start_threads

SLOW = 3.0          # a step this many times slower than the best seen is a warning sign
PROBE_STEPS = 3     # steps run with the other thread count per probe
FIRST_PROBE = 8
MAX_INTERVAL = 1024


def available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Governor:
    """Chooses 1 or all threads per step. ``before``/``after`` wrap every step."""

    def __init__(self, threads: int | None = None, blas: bool = True, parallel: bool = True) -> None:
        self.threads = threads
        self.max = threads or available()
        self.blas, self.parallel = blas, parallel
        self.fixed = threads is not None or self.max == 1 or not (blas or parallel)
        self.idle = not (blas or parallel)  # nothing to set: skip even the bookkeeping
        self.mode = self.max
        self.recent = {self.max: deque(maxlen=5), 1: deque(maxlen=5)}
        self.best = {self.max: float("inf"), 1: float("inf")}
        self.calls, self.interval, self.next_probe = 0, FIRST_PROBE, FIRST_PROBE
        self.probing, self.probe_from, self.slow, self.switches = 0, self.max, 0, 0
        self._numba_prev: int | None = None
        self._blas_prev: int | None = None

    def before(self) -> None:
        self.calls += 1
        if not self.fixed and not self.probing and self.calls >= self.next_probe:
            self.probe_from, self.probing = self.mode, PROBE_STEPS
            self.mode = 1 if self.mode == self.max else self.max
        if self.blas:  # SciPy's OpenBLAS: its thread count is restored after the step
            before = set_blas_threads(self.mode)
            self._blas_prev = before if before != self.mode else None
        if self.parallel and self.mode < _numba().config.NUMBA_NUM_THREADS:
            numba = _numba()
            start_threads()
            # numba's thread count is OpenMP's, which other libraries (torch) share: restore it
            self._numba_prev = numba.get_num_threads()
            numba.set_num_threads(self.mode)

    def after(self, seconds: float) -> None:
        if self._blas_prev is not None:
            set_blas_threads(self._blas_prev)
            self._blas_prev = None
        if self._numba_prev is not None:
            _numba().set_num_threads(self._numba_prev)
            self._numba_prev = None
        m = self.mode
        self.recent[m].append(seconds)
        self.best[m] = min(self.best[m], seconds)
        if self.fixed:
            return
        if self.probing:
            self.probing -= 1
            if not self.probing:
                pick = min(self.recent, key=lambda k: median(self.recent[k]) if self.recent[k] else float("inf"))
                kept = pick == self.probe_from
                self.interval = min(self.interval * 2, MAX_INTERVAL) if kept else FIRST_PROBE
                self.switches += not kept
                self.mode, self.next_probe = pick, self.calls + self.interval
                if pick == self.max:  # all threads win: look again only when steps slow down
                    self.next_probe = float("inf")
            return
        self.slow = self.slow + 1 if seconds > SLOW * self.best[m] else 0
        if self.slow >= PROBE_STEPS:  # something changed: look again now
            self.slow, self.next_probe, self.interval = 0, self.calls, FIRST_PROBE

    def describe(self) -> str:
        if self.fixed:
            return f"{self.mode} thread(s), fixed"
        best = ", ".join(f"{m} thread(s) {t * 1e3:.3f} ms" for m, t in self.best.items() if t < float("inf"))
        return f"{self.mode} of {self.max} threads now; {self.switches} switches; best steps: {best}"


def _numba():
    import numba  # only steps with parallel kernels get here, and those loaded Numba already
    return numba
