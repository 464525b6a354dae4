"""Index values as an op: ``iota(shape, axis)[..., i, ...] = i``. It has no inputs and lowers to
the loop index itself, so masks built from it (``tril``, causal attention, ``argmax``) fuse into
their consumers and work for symbolic dims, where a constant array could not."""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import Node, defop, make
from ..shapes import check_dim, norm_axes


def _infer(shape, axis, dtype):
    return tuple(shape), np.dtype(dtype)


def _ref(shape, axis, dtype):
    a = np.arange(shape[axis], dtype=dtype)
    return np.broadcast_to(a.reshape([-1 if k == axis else 1 for k in range(len(shape))]), tuple(shape))


defop("iota", "elementwise", _infer, _ref, lambda g, n: [], doc="the index along one axis")


def iota(shape, axis: int = 0, dtype="int64") -> Node:
    """An array of ``shape`` whose values are their own index along ``axis`` (dims may be symbolic).

    >>> causal = gc.iota((t, t), 0) >= gc.iota((t, t), 1)
    """
    shape = (shape,) if isinstance(shape, (int, str)) else tuple(check_dim(d) for d in shape)
    if not shape:
        raise ShapeError("iota needs at least one axis")
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise ShapeError(f"iota of dtype {dtype}: give an integer or float dtype")
    return make("iota", (), shape=shape, axis=norm_axes(axis, len(shape))[0], dtype=dtype)


def arange(start, stop=None, step: int = 1, dtype="int64") -> Node:
    """``np.arange`` as a node: ``arange(n)`` (``n`` may be a symbolic dim) or ``arange(start, stop, step)``."""
    if stop is None:
        return iota((start,), 0, dtype)
    if not all(isinstance(v, int) for v in (start, stop, step)) or step == 0:
        raise ShapeError(f"arange({start}, {stop}, {step}): give ints and a non-zero step")
    n = max(0, -(-(stop - start) // step))
    out = iota((n,), 0, dtype)
    out = out * step if step != 1 else out
    return out + start if start else out
