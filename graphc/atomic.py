"""Steps run whole: one at a time per group of functions that share params, never re-entered,
and with their updates committed all together or not at all.

- **Threads.** Functions that share a param share a lock (a union-find over params), so a
  training step and a predict function called from two threads see each other's params
  whole, and concurrent calls of one step give the results of serial calls.
- **Re-entry.** A step called again by the thread already inside it (from a signal handler,
  say) is refused with a ``GraphcError``: it would see half-updated params.
- **Signals.** ``held_signals()`` holds signals with Python handlers while a backend commits
  updates in Python (the numpy target); a Ctrl-C then arrives as ``KeyboardInterrupt`` right
  after, with every param updated. The compiled targets commit inside native code, which
  Python's signal handlers cannot interrupt.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import GraphcError


class Guard:
    """One node of the union-find; the root's lock serializes its group."""

    __slots__ = ("lock", "parent", "inside")

    def __init__(self) -> None:
        self.lock, self.parent, self.inside = threading.Lock(), None, None

    def root(self) -> Guard:
        g = self
        while g.parent is not None:
            g = g.parent
        return g


_union = threading.Lock()
REENTERED = ("a step was called while a step of its group (functions sharing params) runs on this thread, from a "
             "signal handler or a callback; a step cannot be re-entered: call it after the running step returns")


def guard_for(params: list) -> Guard:
    """The guard of a function over ``params``: merged with every function sharing one of them."""
    with _union:
        roots = []
        for p in params:
            g = getattr(p, "_guard", None)
            if g is None:
                g = p._guard = Guard()
            r = g.root()
            if all(r is not q for q in roots):
                roots.append(r)
        if not roots:
            return Guard()
        for r in roots[1:]:
            r.parent = roots[0]
        return roots[0]


@contextmanager
def running(guard: Guard) -> Iterator[None]:
    """Hold the group's lock for one call; refuse a call from inside a call on the same thread."""
    me = threading.get_ident()
    root = guard.root()
    if root.inside == me:
        raise GraphcError(REENTERED)
    with root.lock:
        root.inside = me
        try:
            yield
        finally:
            root.inside = None


_HELD = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGALRM", "SIGUSR1", "SIGUSR2") if hasattr(signal, n)]


@contextmanager
def held_signals() -> Iterator[None]:
    """Signals with Python handlers wait until the block ends; then they are raised again, so a
    Ctrl-C raises ``KeyboardInterrupt`` there. (Blocking them with the signal mask would not do:
    another thread may take a process signal and trip the main thread's handler.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python signal handlers run only in the main thread
        return
    got: list[int] = []
    old = {}
    for sig in _HELD:
        h = signal.getsignal(sig)
        if callable(h):
            old[sig] = signal.signal(sig, lambda s, frame: got.append(s))
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        for sig in dict.fromkeys(got):
            signal.raise_signal(sig)
