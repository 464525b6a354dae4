"""Rearranging ops, as composites of the shape primitives: flip, roll, split, chunk, stack, tile,
repeat, tril, triu and diagonal, with NumPy's names and semantics.

Most are views: slices, reshapes, transposes and broadcasts, which cost nothing or one copy.
Reversal needs a gather (the slice primitive has no negative steps), with an index built from
``iota`` so that it works for symbolic dims; the triangles are ``where`` over an ``iota`` mask.
Every backend lowers them, and gradients of any order come from the primitives' rules.
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Node, as_node, constant
from ..shapes import fmt_shape, norm_axes, size
from .arange import iota
from .elementwise import where
from .index import dims_value, take
from .shape import broadcast_to, concatenate, expand_dims, reshape, slice_axis, transpose


def _axes(fn: str, axis, ndim: int) -> tuple:
    try:
        return norm_axes(axis, ndim)
    except ShapeError as e:
        raise ShapeError(f"{fn}: {e}") from None


def _static(fn: str, x: Node, axis: int) -> int:
    d = x.shape[axis]
    if not isinstance(d, int):
        raise ShapeError(f"{fn}: axis {axis} of {fmt_shape(x.shape)} is symbolic ({d!r}); it must be static")
    return d


def _int(fn: str, what: str, v, low: int | None = None) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        raise ShapeError(f"{fn}: {what} {v.item() if isinstance(v, np.generic) else v!r} must be an int")
    if low is not None and v < low:
        raise ShapeError(f"{fn}: {what} {v} must be at least {low}")
    return int(v)


def flip(x, axis=None) -> Node:
    """Reverse the order of elements along ``axis`` (an int, a tuple, or None for all), as ``np.flip``.
    Works on symbolic dims; adjacent axes are reversed together by one gather.

    >>> flip(x, -1)   # x[..., ::-1]
    """
    x = as_node(x)
    runs: list[list[int]] = []  # [first, stop) of adjacent reversed axes
    for a in _axes("flip", axis, x.ndim):
        if x.shape[a] in (0, 1):
            continue
        if runs and runs[-1][1] == a:
            runs[-1][1] = a + 1
        else:
            runs.append([a, a + 1])
    shape = x.shape
    for a, b in runs:
        n = size(shape[a:b])
        rev = (dims_value((n,)) - 1) - iota((n,), 0)
        x = reshape(take(reshape(x, shape[:a] + (n,) + shape[b:]), rev, a), shape)
    return x


def roll(x, shift, axis=None) -> Node:
    """Shift elements along ``axis`` cyclically, as ``np.roll`` (``axis=None``: over the flattened
    array); ``shift`` and ``axis`` are ints or tuples. Rolled axes must be static.

    >>> roll(x, 1, axis=0)   # the last row first
    """
    x = as_node(x)
    if axis is None:
        return reshape(roll(reshape(x, (-1,)), shift, 0), x.shape)
    try:
        pairs = np.broadcast(np.asarray(shift), np.asarray(axis))
    except ValueError:
        raise ShapeError(f"roll: shift {shift!r} and axis {axis!r} have different lengths") from None
    total: dict[int, int] = {}
    for s, a in pairs:
        a = _axes("roll", _int("roll", "axis", a), x.ndim)[0]
        total[a] = total.get(a, 0) + _int("roll", "shift", s)
    for a, s in total.items():
        n = _static("roll", x, a) if s else 0
        s = s % n if n else 0
        if s:
            x = concatenate([slice_axis(x, a, n - s, n), slice_axis(x, a, 0, n - s)], a)
    return x


def split(x, indices_or_sections, axis: int = 0) -> list[Node]:
    """Split into views along ``axis``, as ``np.split``: an int gives that many equal sections, a list
    the split points (Python slice semantics: negative counts from the end, past the end is empty).

    >>> a, b, c = split(x, [2, 5], axis=1)   # x[:, :2], x[:, 2:5], x[:, 5:]
    """
    x = as_node(x)
    a = _axes("split", _int("split", "axis", axis), x.ndim)[0]
    n = _static("split", x, a)
    if isinstance(indices_or_sections, (int, np.integer)):
        k = _int("split", "sections", indices_or_sections, 1)
        if n % k:
            raise ShapeError(f"split: axis {a} of size {n} does not split into {k} equal sections; "
                             "give split points, or use chunk")
        points = [n // k * i for i in range(1, k)]
    else:
        points = [_int("split", "split point", p) for p in indices_or_sections]
    bounds = [0, *points, n]
    return [slice_axis(x, a, s, e) for s, e in zip(bounds, bounds[1:])]


def chunk(x, chunks: int, axis: int = 0) -> list[Node]:
    """Split into ``chunks`` views of ceil(n / chunks) along ``axis``, as ``torch.chunk``: the last
    is smaller, and there may be fewer than ``chunks``.

    >>> q, k, v = chunk(qkv, 3, axis=-1)
    """
    x = as_node(x)
    k = _int("chunk", "chunks", chunks, 1)
    a = _axes("chunk", _int("chunk", "axis", axis), x.ndim)[0]
    n = _static("chunk", x, a)
    if n == 0:
        return [x] * k  # torch: `chunks` empty pieces
    step = -(-n // k)
    return [slice_axis(x, a, s, s + step) for s in range(0, n, step)]


def stack(xs, axis: int = 0) -> Node:
    """Join arrays of one shape along a new ``axis``, as ``np.stack``.

    >>> pair = stack([x, y], axis=-1)   # (..., 2)
    """
    like = next((v for v in xs if isinstance(v, Node)), None)
    xs = [as_node(v, like) for v in xs]
    if not xs:
        raise ShapeError("stack: no inputs")
    if any(v.shape != xs[0].shape for v in xs):
        raise ShapeError("stack: shapes " + ", ".join(fmt_shape(v.shape) for v in xs) + " differ")
    if any(v.dtype != xs[0].dtype for v in xs):
        raise DTypeError("stack: dtypes " + ", ".join(str(v.dtype) for v in xs) + " differ; cast first")
    nd = xs[0].ndim + 1
    if not -nd <= _int("stack", "axis", axis) < nd:
        raise ShapeError(f"stack: axis {axis} is out of range for a new axis of {nd - 1}-d inputs")
    return concatenate([expand_dims(v, axis % nd) for v in xs], axis % nd)


def tile(x, reps) -> Node:
    """Repeat the whole array ``reps`` times along each axis, as ``np.tile`` (``reps`` an int or a tuple;
    the shorter of ``reps`` and the shape is padded with leading 1s). A broadcast view, copied once.

    >>> tile(np.array([1, 2]), (2, 2))   # [[1, 2, 1, 2], [1, 2, 1, 2]]
    """
    x = as_node(x)
    reps = (reps,) if isinstance(reps, (int, np.integer)) else tuple(reps)
    reps = tuple(_int("tile", "reps", r, 0) for r in reps)
    nd = max(x.ndim, len(reps))
    reps = (1,) * (nd - len(reps)) + reps
    x = reshape(x, (1,) * (nd - x.ndim) + x.shape)
    if all(r == 1 for r in reps):
        return x
    # Each axis d as (r, d): a new axis broadcast to r in front of it, then the two merged.
    split_shape = tuple(v for d in x.shape for v in (1, d))
    wide = tuple(v for r, d in zip(reps, x.shape) for v in (r, d))
    return reshape(broadcast_to(reshape(x, split_shape), wide), tuple(size((r, d)) for r, d in zip(reps, x.shape)))


def repeat(x, repeats: int, axis: int | None = None) -> Node:
    """Repeat each element ``repeats`` times along ``axis``, as ``np.repeat`` with an int (PyTorch's
    ``repeat_interleave``); ``axis=None`` repeats the flattened array. A broadcast view, copied once.

    >>> repeat(np.array([1, 2]), 2)   # [1, 1, 2, 2]
    """
    x = as_node(x)
    if not isinstance(repeats, (int, np.integer)) or isinstance(repeats, bool):
        raise ShapeError(f"repeat: repeats {repeats!r} must be an int (per-element counts are not supported)")
    r = _int("repeat", "repeats", repeats, 0)
    if axis is None:
        x, a = reshape(x, (-1,)), 0
    else:
        a = _axes("repeat", _int("repeat", "axis", axis), x.ndim)[0]
    if r == 1:
        return x
    s = x.shape
    y = broadcast_to(reshape(x, s[:a + 1] + (1,) + s[a + 1:]), s[:a + 1] + (r,) + s[a + 1:])
    return reshape(y, s[:a] + (size((s[a], r)),) + s[a + 1:])


def _triangle(fn: str, x, k: int, lower: bool) -> Node:
    x = as_node(x)
    if x.ndim < 2:
        raise ShapeError(f"{fn}: input {fmt_shape(x.shape)} needs at least 2 axes")
    k = _int(fn, "k", k)
    mn = x.shape[-2:]
    above = iota(mn, 1) - iota(mn, 0)  # j - i: 0 on the diagonal, k on the k-th above it
    return where(above <= k if lower else above >= k, x, constant(np.zeros((), x.dtype)))


def tril(x, k: int = 0) -> Node:
    """The lower triangle of the last two axes (``j - i <= k``), zeros above, as ``np.tril``; the dims
    may be symbolic.

    >>> tril(scores, k=0)   # a causal mask's pattern
    """
    return _triangle("tril", x, k, lower=True)


def triu(x, k: int = 0) -> Node:
    """The upper triangle of the last two axes (``j - i >= k``), zeros below, as ``np.triu``.

    >>> triu(x, k=1)   # strictly above the diagonal
    """
    return _triangle("triu", x, k, lower=False)


def diagonal(x, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Node:
    """The diagonal ``x[..., i, i + offset]`` of axes ``axis1`` and ``axis2``, as ``np.diagonal``: the
    other axes first, the diagonal last. A strided view of the two (static) axes viewed as one.

    >>> diagonal(x, 0, -2, -1)   # the diagonals of a batch of matrices
    """
    x = as_node(x)
    if x.ndim < 2:
        raise ShapeError(f"diagonal: input {fmt_shape(x.shape)} needs at least 2 axes")
    off = _int("diagonal", "offset", offset)
    a1 = _axes("diagonal", _int("diagonal", "axis1", axis1), x.ndim)[0]
    a2 = _axes("diagonal", _int("diagonal", "axis2", axis2), x.ndim)[0]
    if a1 == a2:
        raise ShapeError(f"diagonal: axis1 and axis2 are both axis {a1}")
    n1, n2 = _static("diagonal", x, a1), _static("diagonal", x, a2)
    y = transpose(x, [a for a in range(x.ndim) if a not in (a1, a2)] + [a1, a2])
    y = reshape(y, y.shape[:-2] + (n1 * n2,))
    length = max(0, min(n1, n2 - off) if off >= 0 else min(n1 + off, n2))
    start = off if off >= 0 else -off * n2
    stop = start + (length - 1) * (n2 + 1) + 1 if length else start
    return slice_axis(y, y.ndim - 1, start, stop, n2 + 1)
