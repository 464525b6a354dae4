"""Collectives across the ranks of an MPI job (``graphc.distributed``): ``allreduce``.

A graph op like any other: its shape rule, its reference (``mpi4py`` on the host) and its
gradient sit here. The adjoint of an all-reduce is the all-reduce of the adjoint: with every
rank's loss summed (or averaged) into the job's loss, each rank's input feeds every rank's
output. Backends run it on the host between stretches of compiled kernels; the kernel schedule
starts it as soon as its input is ready (``fusion.schedule``) and the step waits for it just
before the first kernel that reads it. Running alone (one rank), it is the identity.
"""
from __future__ import annotations

import numpy as np

from .. import mpi
from ..errors import DTypeError, GraphcError
from ..ir import Node, as_node, defop, make

OPS = ("sum", "mean", "max", "min")


def _infer(x, op):
    if op not in OPS:
        raise GraphcError(f"allreduce: op {op!r} is not one of {', '.join(OPS)}")
    if x.dtype == np.bool_ or (op == "mean" and x.dtype.kind != "f"):
        raise DTypeError(f"allreduce {op} of {x.dtype}: cast to a float dtype with astype")
    return x.shape, x.dtype


def _ref(x, op):
    return mpi.allreduce_array(np.asarray(x), op)


def _grad(g: Node, n: Node):
    op = n.attrs["op"]
    if op in ("max", "min"):
        raise GraphcError(f"allreduce {op} has no gradient here (it would need every rank's argmax)")
    return [allreduce(g, op)]


defop("allreduce", "collective", _infer, _ref, _grad, doc="sum, mean, max or min over every rank of an MPI job",
      collective=True)


def allreduce(x, op: str = "sum") -> Node:
    """``op`` ("sum", "mean", "max" or "min") of ``x`` over every rank of the job
    (``gc.distributed.init``); each rank gets the result. Alone, it is ``x``."""
    return make("allreduce", (as_node(x),), op=op)


BUCKET_BYTES = 25 << 20  # PyTorch DDP's default bucket (25 MiB)


def allreduce_buckets(xs, op: str = "mean", bucket_bytes: int = BUCKET_BYTES) -> list[Node]:
    """``allreduce`` of each of ``xs`` as few messages: consecutive values of one dtype are
    flattened into a bucket of up to ``bucket_bytes`` (one contiguous buffer, one all-reduce)
    and sliced back. Give gradients last layer first: that is the order the backward pass
    computes them in, so the first bucket's all-reduce can start while earlier layers' backward
    still runs."""
    from . import shape as sh
    xs = [as_node(x) for x in xs]
    out: list[Node | None] = [None] * len(xs)
    buckets: list[list[int]] = []
    open_: dict = {}  # dtype -> (bucket index, bytes so far)
    for j, x in enumerate(xs):
        nbytes = _nbytes(x)
        b = open_.get(x.dtype)
        if b is None or (b[1] + nbytes > bucket_bytes and b[1] > 0):
            buckets.append([])
            b = (len(buckets) - 1, 0)
        buckets[b[0]].append(j)
        open_[x.dtype] = (b[0], b[1] + nbytes)
    for members in buckets:
        flat = [sh.reshape(xs[j], (-1,)) for j in members]
        red = allreduce(sh.concatenate(flat) if len(flat) > 1 else flat[0], op)
        at = 0
        for j, f in zip(members, flat):
            n = f.shape[0]
            out[j] = sh.reshape(sh.slice_axis(red, 0, at, at + n) if len(flat) > 1 else red, xs[j].shape)
            at += n
    return out


def _nbytes(x: Node) -> int:
    n = 1
    for d in x.shape:
        if not isinstance(d, int):
            raise GraphcError(f"allreduce_buckets: {x.label()} has symbolic dim {d!r}; bucket values of fixed shape")
        n *= d
    return n * x.dtype.itemsize


__all__ = ["allreduce", "allreduce_buckets", "BUCKET_BYTES"]
