"""Reductions: sum and max primitives; mean, min, sum_to as composites."""
from __future__ import annotations

from math import prod

import numpy as np

from ..errors import DTypeError
from ..ir import Node, as_node, defop, make
from ..shapes import is_concrete, norm_axes, size
from . import elementwise as ew
from . import shape as sh


def _kept(shape: tuple, axes: tuple) -> tuple:
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _infer(x: Node, axes: tuple, keepdims: bool):
    out = _kept(x.shape, axes) if keepdims else tuple(d for i, d in enumerate(x.shape) if i not in axes)
    if x.dtype == np.bool_:
        raise DTypeError("reduction of bool; cast with astype")
    return out, x.dtype


def _grad_sum(g: Node, n: Node):
    x = n.inputs[0]
    return [sh.broadcast_to(sh.reshape(g, _kept(x.shape, n.attrs["axes"])), x.shape)]


def _grad_max(g: Node, n: Node):
    # Ties share the gradient equally, so the adjoint sums to g.
    x, axes = n.inputs[0], n.attrs["axes"]
    y = sh.reshape(n, _kept(x.shape, axes))
    mask = ew.cast(ew.ew("eq", x, y), x.dtype)
    gk = sh.reshape(g, _kept(x.shape, axes))
    return [mask * (gk / sum(mask, axes, keepdims=True))]


def _np_sum(x, axes, keepdims):
    return np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


defop("sum", "reduce", _infer, _np_sum, _grad_sum, doc="sum over axes")
defop("max", "reduce", _infer, lambda x, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims), _grad_max,
      doc="max over axes")
defop("count", "meta", lambda dims, dtype: ((), np.dtype(dtype)),
      lambda dims, dtype: np.asarray(prod(dims), dtype), None,
      doc="the product of some dims, known at call time when they are symbolic")


def _reduce(name: str, x, axis, keepdims: bool) -> Node:
    x = as_node(x)
    axes = norm_axes(axis, x.ndim)
    if not axes and not keepdims:
        return x
    return make(name, (x,), axes=axes, keepdims=bool(keepdims))


def sum(x, axis=None, keepdims: bool = False) -> Node:  # noqa: A001 - NumPy's name
    """Sum over ``axis`` (None, an int or a tuple)."""
    return _reduce("sum", x, axis, keepdims)


def max(x, axis=None, keepdims: bool = False) -> Node:  # noqa: A001
    """Maximum over ``axis``; the gradient is shared among ties."""
    return _reduce("max", x, axis, keepdims)


def min(x, axis=None, keepdims: bool = False) -> Node:  # noqa: A001
    return -max(-as_node(x), axis, keepdims)


def mean(x, axis=None, keepdims: bool = False) -> Node:
    """Mean over ``axis``; symbolic dims are counted at call time."""
    x = as_node(x)
    if x.dtype.kind != "f":
        x = ew.cast(x, np.float32)
    axes = norm_axes(axis, x.ndim)
    dims = tuple(x.shape[a] for a in axes)
    n = size(dims) if is_concrete(dims) else make("count", (), dims=dims, dtype=x.dtype)
    return sum(x, axes, keepdims) / n


def sum_to(x: Node, shape: tuple) -> Node:
    """Sum a broadcast result back to ``shape`` (the adjoint of broadcasting)."""
    if x.shape == tuple(shape):
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, d in enumerate(shape) if d == 1 and x.shape[i + lead] != 1)
    return sh.reshape(sum(x, axes, keepdims=True), shape) if axes else sh.reshape(x, shape)
