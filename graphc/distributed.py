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

from collections.abc import Iterator

import numpy as np

from .errors import InputError
from .mpi import Pending, abort, agree, allreduce_array, comm, comm_stats, init, launched, rank, size
from .ops.collective import BUCKET_BYTES, allreduce, allreduce_buckets


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
    c = comm()
    if c is None or size() == 1:
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
    n = size()
    if batch_size % n:
        raise InputError(f"batch size {batch_size} does not split across {n} ranks: choose a multiple of {n}")
    return batch_size // n


def shard(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """This rank's contiguous slice of ``x`` along ``axis`` (the global batch), a view."""
    b = local_batch(x.shape[axis])
    r = rank()
    return np.take(x, range(r * b, (r + 1) * b), axis=axis) if axis else x[r * b:(r + 1) * b]


def batches(n: int, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True) -> Iterator[np.ndarray]:
    """Indexes of this rank's share of each full global batch of an epoch over ``n`` samples.
    The shuffle is drawn from ``(seed, epoch)``, the same on every rank; the last partial batch
    is dropped so every step has the same shape on every rank."""
    local = local_batch(batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    r = rank()
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start + r * local:start + (r + 1) * local]


__all__ = ["allreduce", "allreduce_buckets", "BUCKET_BYTES",
           "init", "rank", "size", "comm", "abort", "allreduce_array", "Pending", "agree", "broadcast", "local_batch",
           "shard", "batches", "comm_stats", "launched"]
