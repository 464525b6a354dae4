"""Reductions: sum and max primitives; mean, var, argmax and the like as composites."""
from __future__ import annotations

from math import prod as _prod

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
    # Ties share the gradient equally, so the adjoint sums to g (max and min alike).
    x, axes = n.inputs[0], n.attrs["axes"]
    y = sh.reshape(n, _kept(x.shape, axes))
    mask = ew.cast(ew.ew("eq", x, y), x.dtype)
    gk = sh.reshape(g, _kept(x.shape, axes))
    return [mask * (gk / sum(mask, axes, keepdims=True))]


def _np_sum(x, axes, keepdims):
    return np.sum(x, axis=axes, keepdims=keepdims, dtype=x.dtype)


def _grad_prod(g: Node, n: Node):
    # The product of every other element: exclusive products from both ends, no division (zeros
    # are exact, as torch.prod's). The reduced axes are moved last and flattened into one.
    from .cumulative import cumprod
    x, axes = n.inputs[0], n.attrs["axes"]
    keep = [a for a in range(x.ndim) if a not in axes]
    perm = keep + list(axes)
    flat = sh.reshape(sh.transpose(x, perm), tuple(x.shape[a] for a in keep) + (size(tuple(x.shape[a] for a in axes)),))
    others = cumprod(flat, -1, exclusive=True) * cumprod(flat, -1, reverse=True, exclusive=True)
    back = sh.transpose(sh.reshape(others, tuple(x.shape[a] for a in perm)), tuple(perm.index(a) for a in range(x.ndim)))
    return [back * sh.broadcast_to(sh.reshape(g, _kept(x.shape, axes)), x.shape)]


def _lowest(dt: np.dtype):
    return -np.inf if dt.kind == "f" else np.iinfo(dt).min


def _highest(dt: np.dtype):
    return np.inf if dt.kind == "f" else np.iinfo(dt).max


# identity and combine: how a backend accumulates (the combine is a scalar template, like an
# elementwise op's; gmax/gmin propagate NaN as NumPy does)
defop("sum", "reduce", _infer, _np_sum, _grad_sum, doc="sum over axes", identity=lambda dt: 0, combine="({0} + {1})")
defop("prod", "reduce", _infer, lambda x, axes, keepdims: np.prod(x, axis=axes, keepdims=keepdims, dtype=x.dtype), _grad_prod,
      doc="product over axes", identity=lambda dt: 1, combine="({0} * {1})")
defop("max", "reduce", _infer, lambda x, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims), _grad_max,
      doc="max over axes", identity=_lowest, combine="gmax({0}, {1})")
defop("min", "reduce", _infer, lambda x, axes, keepdims: np.min(x, axis=axes, keepdims=keepdims), _grad_max,
      doc="min over axes", identity=_highest, combine="gmin({0}, {1})")
defop("count", "meta", lambda dims, dtype: ((), np.dtype(dtype)),
      lambda dims, dtype: np.asarray(_prod(dims), dtype), None,
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
    """Minimum over ``axis``; the gradient is shared among ties."""
    return _reduce("min", x, axis, keepdims)


def prod(x, axis=None, keepdims: bool = False) -> Node:
    """Product over ``axis``; the gradient is exact at zeros (no division)."""
    return _reduce("prod", x, axis, keepdims)


def mean(x, axis=None, keepdims: bool = False) -> Node:
    """Mean over ``axis``; symbolic dims are counted at call time."""
    x = as_node(x)
    if x.dtype.kind != "f":
        x = ew.cast(x, np.float32)
    axes = norm_axes(axis, x.ndim)
    dims = tuple(x.shape[a] for a in axes)
    n = size(dims) if is_concrete(dims) else make("count", (), dims=dims, dtype=x.dtype)
    return sum(x, axes, keepdims) / n


def _arg(x, axis, keepdims: bool, best) -> Node:
    """The first index of ``best`` (max or min) along ``axis``, as NumPy: a NaN wins (argmax and
    argmin both return the first NaN). Composite: the best value, then the least index that holds
    it (``iota`` gives the indices), so it fuses and runs on every backend."""
    from .arange import iota
    x = as_node(x)
    if axis is None:
        x, axis = sh.reshape(x, (-1,)), 0
    axis = norm_axes(axis, x.ndim)[0]
    hit = ew.ew("logical_or", x == best(x, axis, keepdims=True), x != x)
    idx = ew.where(hit, iota(x.shape, axis), np.iinfo(np.int64).max)
    return _reduce("min", idx, axis, keepdims)


def argmax(x, axis=None, keepdims: bool = False) -> Node:
    """Index of the maximum along ``axis`` (flattened when None); the first one on ties."""
    return _arg(x, axis, keepdims, max)


def argmin(x, axis=None, keepdims: bool = False) -> Node:
    """Index of the minimum along ``axis`` (flattened when None); the first one on ties."""
    return _arg(x, axis, keepdims, min)


def any(x, axis=None, keepdims: bool = False) -> Node:  # noqa: A001
    """Whether any element along ``axis`` is non-zero (NaN counts as true)."""
    x = as_node(x)
    return _reduce("max", ew.cast(ew.ew("ne", x, 0) if x.dtype != np.bool_ else x, np.int8), axis, keepdims) != 0


def all(x, axis=None, keepdims: bool = False) -> Node:  # noqa: A001
    """Whether every element along ``axis`` is non-zero."""
    x = as_node(x)
    return _reduce("min", ew.cast(ew.ew("ne", x, 0) if x.dtype != np.bool_ else x, np.int8), axis, keepdims) != 0


def var(x, axis=None, correction: int = 1, keepdims: bool = False) -> Node:
    """Variance over ``axis`` with ``correction`` (torch's; 1, the default, is the unbiased estimate,
    0 is NumPy's default)."""
    x = as_node(x)
    if x.dtype.kind != "f":
        x = ew.cast(x, np.float32)
    axes = norm_axes(axis, x.ndim)
    d = x - mean(x, axes, keepdims=True)
    dims = tuple(x.shape[a] for a in axes)
    n = size(dims) if is_concrete(dims) else make("count", (), dims=dims, dtype=x.dtype)
    return sum(d * d, axes, keepdims) / (n - correction)


def std(x, axis=None, correction: int = 1, keepdims: bool = False) -> Node:
    """Standard deviation: sqrt(var(x, axis, correction))."""
    return ew.sqrt(var(x, axis, correction, keepdims))
