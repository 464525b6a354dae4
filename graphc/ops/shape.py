"""Shape primitives: reshape, transpose, broadcast_to, concatenate, slice (and its adjoint)."""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Node, as_node, defop, make
from ..shapes import broadcast, check_dim, fmt_shape, infer_reshape, norm_axes


def _np_slice(index):
    return tuple(slice(*t) if t is not None else slice(None) for t in index)


def _slice_shape(shape, index):
    return tuple(d if t is None else len(range(*t)) for d, t in zip(shape, index))


def _unslice_ref(g, index, shape):
    out = np.zeros(shape, g.dtype)
    out[_np_slice(index)] = g
    return out


def _infer_broadcast_to(x, shape):
    if broadcast(x.shape, shape) != tuple(shape):
        raise ShapeError(f"cannot broadcast {fmt_shape(x.shape)} to {fmt_shape(shape)}")
    return tuple(shape), x.dtype


def _infer_concat(*xs, axis):
    base = xs[0].shape
    for x in xs:
        if x.ndim != len(base) or any(a != b for i, (a, b) in enumerate(zip(x.shape, base)) if i != axis):
            raise ShapeError("shapes " + ", ".join(fmt_shape(x.shape) for x in xs) + f" differ off axis {axis}")
        if not isinstance(x.shape[axis], int):
            raise ShapeError(f"cannot concatenate along symbolic dim {x.shape[axis]!r}")
        if x.dtype != xs[0].dtype:
            raise DTypeError(f"dtypes {xs[0].dtype} and {x.dtype} differ; cast first")
    out = list(base)
    out[axis] = sum(x.shape[axis] for x in xs)
    return tuple(out), xs[0].dtype


def _grad_concat(g, n):
    axis, start, out = n.attrs["axis"], 0, []
    for x in n.inputs:
        index = [None] * g.ndim
        index[axis] = (start, start + x.shape[axis], 1)
        out.append(make("slice", (g,), index=tuple(index)))
        start += x.shape[axis]
    return out


defop("reshape", "shape", lambda x, shape: (infer_reshape(x.shape, shape), x.dtype),
      lambda x, shape: x.reshape(shape), lambda g, n: [reshape(g, n.inputs[0].shape)], view=True)
defop("transpose", "shape", lambda x, axes: (tuple(x.shape[a] for a in axes), x.dtype),
      np.transpose, lambda g, n: [transpose(g, tuple(np.argsort(n.attrs["axes"])))], view=True)
defop("broadcast_to", "shape", _infer_broadcast_to, np.broadcast_to,
      lambda g, n: [sum_to(g, n.inputs[0].shape)], view=True)
defop("concatenate", "shape", _infer_concat, lambda *xs, axis: np.concatenate(xs, axis), _grad_concat)
defop("slice", "shape", lambda x, index: (_slice_shape(x.shape, index), x.dtype),
      lambda x, index: x[_np_slice(index)],
      lambda g, n: [make("unslice", (g,), index=n.attrs["index"], shape=n.inputs[0].shape)], view=True)
defop("unslice", "shape", lambda g, index, shape: (tuple(shape), g.dtype), _unslice_ref,
      lambda g, n: [make("slice", (g,), index=n.attrs["index"])], doc="zeros with g written at index")


def sum_to(x: Node, shape: tuple) -> Node:
    """Sum a broadcast result back to ``shape`` (the adjoint of broadcasting)."""
    if x.shape == tuple(shape):
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, d in enumerate(shape) if d == 1 and x.shape[i + lead] != 1)
    if not axes:
        return reshape(x, shape)
    return reshape(make("sum", (x,), axes=axes, keepdims=True), shape)  # (the primitive: reduce.py builds on this module)


def reshape(x, shape) -> Node:
    """Reshape, with at most one -1; symbolic dims carry through (e.g. ("batch", -1))."""
    x = as_node(x)
    shape = (shape,) if isinstance(shape, (int, str)) else tuple(shape)
    if infer_reshape(x.shape, shape) == x.shape:
        return x
    return make("reshape", (x,), shape=infer_reshape(x.shape, shape))


def transpose(x, axes=None) -> Node:
    """Permute axes; reverses them when ``axes`` is None (``x.T``)."""
    x = as_node(x)
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(axes)
    if sorted(a + x.ndim if a < 0 else a for a in axes) != list(range(x.ndim)):
        raise ShapeError(f"transpose: axes {axes} are not a permutation of {x.ndim} axes")
    axes = tuple(a % x.ndim for a in axes)
    if axes == tuple(range(x.ndim)):
        return x
    return make("transpose", (x,), axes=axes)


def swapaxes(x, a: int, b: int) -> Node:
    x = as_node(x)
    axes = list(range(x.ndim))
    a, b = norm_axes(a, x.ndim)[0], norm_axes(b, x.ndim)[0]
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, axes)


def broadcast_to(x, shape) -> Node:
    x = as_node(x)
    shape = tuple(check_dim(d) for d in shape)
    return x if x.shape == shape else make("broadcast_to", (x,), shape=shape)


def concatenate(xs, axis: int = 0) -> Node:
    xs = [as_node(x) for x in xs]
    if not xs:
        raise ShapeError("concatenate: no inputs")
    axis = norm_axes(axis, xs[0].ndim)[0]
    return xs[0] if len(xs) == 1 else make("concatenate", tuple(xs), axis=axis)


def expand_dims(x, axis: int) -> Node:
    x = as_node(x)
    if not -x.ndim - 1 <= axis <= x.ndim:
        raise ShapeError(f"axis {axis} is out of range for a new axis of {x.ndim}-d {fmt_shape(x.shape)}")
    axis %= x.ndim + 1
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(x, axis=None) -> Node:
    x = as_node(x)
    axes = tuple(i for i, d in enumerate(x.shape) if d == 1) if axis is None else norm_axes(axis, x.ndim)
    if any(x.shape[a] != 1 for a in axes):
        raise ShapeError(f"squeeze: axes {axes} of {fmt_shape(x.shape)} are not all 1")
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def slice_axis(x: Node, axis: int, start: int, stop: int, step: int = 1) -> Node:
    """``x[..., start:stop:step, ...]`` on one (static) axis, with Python's slice semantics; a view."""
    if step <= 0:
        raise ShapeError(f"slice step {step} must be positive")
    t = slice(start, stop, step).indices(x.shape[axis])
    if len(range(*t)) == 0:
        t = (t[0], t[0], 1)
    if t == (0, x.shape[axis], 1):
        return x
    index = [None] * x.ndim
    index[axis] = t
    return make("slice", (x,), index=tuple(index))


