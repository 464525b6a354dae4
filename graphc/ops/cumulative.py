"""Cumulative ops along one axis: ``cumsum``, ``cumprod`` and ``logcumsumexp``, forward or reversed,
inclusive or exclusive. One primitive, ``cumulative``, whose ``combine`` is a reduction's (add,
mul, logaddexp); backends run each row in order. The gradients are graph ops: cumsum's is a
cumsum the other way; cumprod's and logcumsumexp's build the (n, n) matrix of partial derivatives
from the row itself (no division, so zeros and huge ranges stay exact)."""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError
from ..ir import Node, as_node, defop, make
from ..shapes import norm_axes
from . import elementwise as ew
from . import shape as sh
from .arange import iota

COMBINE = {"add": ("({0} + {1})", 0), "mul": ("({0} * {1})", 1), "logaddexp": ("glogaddexp({0}, {1})", -np.inf)}


def _infer(x, axis, reverse, exclusive, combine):
    if x.dtype == np.bool_ or (combine == "logaddexp" and x.dtype.kind != "f"):
        raise DTypeError(f"cumulative {combine} of {x.dtype}; cast with astype")
    return x.shape, x.dtype


def _ref(x, axis, reverse, exclusive, combine):
    y = np.flip(x, axis) if reverse else x
    with np.errstate(all="ignore"):
        if combine == "logaddexp":
            r = np.logaddexp.accumulate(y, axis=axis) if y.size else y.copy()
        else:
            r = (np.cumsum if combine == "add" else np.cumprod)(y, axis=axis, dtype=x.dtype)
    if exclusive and r.shape[axis]:  # shift by one: the first entry is the identity
        first = np.full_like(np.take(r, [0], axis=axis), COMBINE[combine][1])
        r = np.concatenate([first, np.take(r, range(r.shape[axis] - 1), axis=axis)], axis=axis)
    return np.ascontiguousarray(np.flip(r, axis) if reverse else r)


def _last(x: Node, axis: int) -> Node:
    """``x`` with ``axis`` moved last (its own inverse when applied to the result with the same axis)."""
    perm = [a for a in range(x.ndim) if a != axis] + [axis]
    return sh.transpose(x, perm)


def _back(x: Node, axis: int) -> Node:
    perm = [a for a in range(x.ndim) if a != axis] + [axis]
    return sh.transpose(x, [perm.index(a) for a in range(x.ndim)])


def _pairs(x: Node, reverse: bool, exclusive: bool):
    """For a row of length n along the last axis: i (rows), j (columns) and the mask of the
    outputs j that input i feeds."""
    n = x.shape[-1]
    i, j = iota(x.shape + (n,), x.ndim - 1), iota(x.shape + (n,), x.ndim)
    if reverse:
        return i, j, (j < i) if exclusive else (j <= i)
    return i, j, (j > i) if exclusive else (j >= i)


def _grad(g: Node, n: Node):
    x, (axis, reverse, exclusive, combine) = n.inputs[0], (n.attrs[k] for k in ("axis", "reverse", "exclusive", "combine"))
    if combine == "add":
        return [cumulative(g, axis, not reverse, exclusive, "add")]
    xl, gl = _last(x, axis), _last(g, axis)
    i, j, feeds = _pairs(xl, reverse, exclusive)
    if combine == "mul":
        # d y_j / d x_i = the product of x_k over j's prefix with x_i left out
        rows = ew.where(i == j, 1, sh.expand_dims(xl, -2))  # row i: x with x_i replaced by 1
        part = cumulative(rows, rows.ndim - 1, reverse, exclusive, "mul")
    else:  # logaddexp: d y_j / d x_i = exp(x_i - y_j), masked in the exponent (no inf * 0 anywhere)
        yl = _last(n, axis)
        part = ew.exp(ew.where(feeds, sh.expand_dims(xl, -1) - sh.expand_dims(yl, -2), -np.inf))
    terms = ew.where(feeds, part * sh.expand_dims(gl, -2), 0)
    # summed over the last axis with the primitive (reduce.py builds prod's gradient on this module)
    return [_back(make("sum", (terms,), axes=(terms.ndim - 1,), keepdims=False), axis)]


defop("cumulative", "scan", _infer, _ref, _grad, doc="running combine (add, mul, logaddexp) along an axis",
      identity=lambda combine, dt: COMBINE[combine][1])


def cumulative(x, axis, reverse: bool = False, exclusive: bool = False, combine: str = "add") -> Node:
    x = as_node(x)
    if combine not in COMBINE:
        raise DTypeError(f"cumulative: combine {combine!r}; choose one of {', '.join(COMBINE)}")
    if axis is None:
        x, axis = sh.reshape(x, (-1,)), 0
    return make("cumulative", (x,), axis=norm_axes(axis, x.ndim)[0], reverse=bool(reverse), exclusive=bool(exclusive),
                combine=combine)


def cumsum(x, axis=None, reverse: bool = False, exclusive: bool = False) -> Node:
    """Running sums along ``axis`` (flattened when None, as np.cumsum); ``reverse`` runs from the end.

    >>> gc.cumsum(x, axis=1)
    """
    return cumulative(x, axis, reverse, exclusive, "add")


def cumprod(x, axis=None, reverse: bool = False, exclusive: bool = False) -> Node:
    """Running products along ``axis``; the gradient is exact at zeros."""
    return cumulative(x, axis, reverse, exclusive, "mul")


def logcumsumexp(x, axis=None, reverse: bool = False) -> Node:
    """log(cumsum(exp(x))) without overflow or underflow (a running logaddexp)."""
    return cumulative(x, axis, reverse, False, "logaddexp")
