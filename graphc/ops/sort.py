"""Sorting along one axis: ``argsort`` is the primitive (a stable sort of each row, NaN last when
ascending and first when descending, as torch); ``sort`` and ``topk`` gather the values with the
indices, so their values are differentiable (the adjoint scatters back) and their indices not."""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Node, as_node, defop, make
from ..shapes import norm_axes


def _infer(x, axis, descending):
    if x.dtype == np.bool_:
        raise DTypeError("argsort of bool; cast with astype")
    return x.shape, np.dtype(np.int64)


def _ref(x, axis, descending):
    if not descending:
        return np.argsort(x, axis=axis, kind="stable")
    # stable descending: sort the reversed row ascending, reverse, and map positions back
    n = x.shape[axis]
    return np.ascontiguousarray(n - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis))


defop("argsort", "sort", _infer, _ref, lambda g, n: [None], doc="stable sort order along an axis")


def argsort(x, axis: int = -1, descending: bool = False) -> Node:
    """Indices that sort ``x`` along ``axis`` (stable: ties keep their order).

    >>> order = gc.argsort(scores, descending=True)
    """
    x = as_node(x)
    if x.ndim == 0:
        raise ShapeError("argsort of a 0-d value")
    return make("argsort", (x,), axis=norm_axes(axis, x.ndim)[0], descending=bool(descending))


def sort(x, axis: int = -1, descending: bool = False) -> tuple[Node, Node]:
    """(values, indices) sorted along ``axis``, as torch.sort (stable)."""
    from .index import take_along_axis
    x = as_node(x)
    idx = argsort(x, axis, descending)
    return take_along_axis(x, idx, idx.attrs["axis"]), idx


def topk(x, k: int, axis: int = -1, largest: bool = True) -> tuple[Node, Node]:
    """(values, indices) of the ``k`` largest (or smallest) along ``axis``, sorted, as torch.topk."""
    from .index import getitem
    x = as_node(x)
    axis = norm_axes(axis, x.ndim)[0]
    n = x.shape[axis]
    if not isinstance(k, int) or k < 0 or (isinstance(n, int) and k > n):
        raise ShapeError(f"topk: k={k!r} must be an int in [0, {n}]")
    values, idx = sort(x, axis, descending=largest)
    key = tuple(slice(None) if a != axis else slice(0, k) for a in range(x.ndim))
    return getitem(values, key), getitem(idx, key)
