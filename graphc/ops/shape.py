"""Shape primitives: reshape, transpose, broadcast_to, concatenate, slice (and its adjoint)."""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, GraphcError, ShapeError
from ..ir import Node, as_node, defop, make
from ..shapes import broadcast, check_dim, fmt_shape, infer_reshape, norm_axes, size


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
      lambda x, shape: x.reshape(shape), lambda g, n: [reshape(g, n.inputs[0].shape)])
defop("transpose", "shape", lambda x, axes: (tuple(x.shape[a] for a in axes), x.dtype),
      np.transpose, lambda g, n: [transpose(g, tuple(np.argsort(n.attrs["axes"])))])
defop("broadcast_to", "shape", _infer_broadcast_to, np.broadcast_to,
      lambda g, n: [_sum_to(g, n.inputs[0].shape)])
defop("concatenate", "shape", _infer_concat, lambda *xs, axis: np.concatenate(xs, axis), _grad_concat)
defop("slice", "shape", lambda x, index: (_slice_shape(x.shape, index), x.dtype),
      lambda x, index: x[_np_slice(index)],
      lambda g, n: [make("unslice", (g,), index=n.attrs["index"], shape=n.inputs[0].shape)])
defop("unslice", "shape", lambda g, index, shape: (tuple(shape), g.dtype), _unslice_ref,
      lambda g, n: [make("slice", (g,), index=n.attrs["index"])], doc="zeros with g written at index")


def _sum_to(g, shape):
    from .reduce import sum_to
    return sum_to(g, shape)


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


def _is_array(k) -> bool:
    return isinstance(k, (Node, np.ndarray, list))


def getitem(x: Node, key) -> Node:
    """NumPy indexing: ints, slices, None and ...; integer arrays or nodes gather, with NumPy's rules
    for where their (broadcast) axes go. One array is one ``take``; several index a view of their
    axes as one, by a flat index, so the gradient is one ``scatter_add``.

    >>> x[i, :, j]   # i, j broadcast to (n,): out[k, :] = x[i[k], :, j[k]]
    """
    from .index import index_coordinate, take
    key = key if isinstance(key, tuple) else (key,)
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise GraphcError("an index can only have a single ellipsis")
    n_axes = sum(1 for k in key if k is not None and k is not Ellipsis)
    if n_axes > x.ndim:
        raise ShapeError(f"too many indices for {x.ndim}-d {fmt_shape(x.shape)}")
    i = next((j for j, k in enumerate(key) if k is Ellipsis), None)  # `in` would compare arrays and nodes with ==
    if i is not None:
        key = key[:i] + (slice(None),) * (x.ndim - n_axes) + key[i + 1:]
    else:
        key = key + (slice(None),) * (x.ndim - n_axes)
    index, out_shape, axis, arrays = [], [], 0, []
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        d = x.shape[axis]
        if _is_array(k):
            arrays.append((len(out_shape), k, axis))  # (its axis in the sliced view, the index, its axis in x)
            index.append(None)
            out_shape.append(d)
        elif isinstance(k, slice) and k == slice(None):
            index.append(None)
            out_shape.append(d)
        elif not isinstance(d, int):
            raise ShapeError(f"cannot index symbolic dim {d!r} with {k!r}; only ':' is allowed")
        elif isinstance(k, slice):
            t = k.indices(d)
            if t[2] <= 0:
                raise ShapeError("negative slice steps are not supported")
            index.append(t)
            out_shape.append(len(range(*t)))
        elif isinstance(k, (int, np.integer)):
            if not -d <= k < d:
                raise ShapeError(f"index {k} is out of range for axis {axis} of size {d}")
            index.append((int(k) % d, int(k) % d + 1, 1))
        else:
            raise GraphcError(f"unsupported index {k!r}")
        axis += 1
    y = x if all(t is None for t in index) else make("slice", (x,), index=tuple(index))
    y = reshape(y, tuple(out_shape))
    if not arrays:
        return y
    # A slice or None between the integer (array or int) indices sends the indices' axes first.
    adv = [j for j, k in enumerate(key) if _is_array(k) or isinstance(k, (int, np.integer))]
    apart = adv[-1] - adv[0] + 1 != len(adv)
    coords = [index_coordinate(k, y.shape[p], "getitem", ax) for p, k, ax in arrays]
    if len(arrays) > 1:
        return _gather_arrays(y, [p for p, _, _ in arrays], coords, apart)
    (p, _, _), (idx, _) = arrays[0], coords[0]
    y = take(y, idx, p)  # numpy: a single array index replaces its axis by the index's shape
    if apart:
        nd = idx.ndim
        y = transpose(y, tuple(range(p, p + nd)) + tuple(a for a in range(y.ndim) if not p <= a < p + nd))
    return y


def _gather_arrays(y: Node, axes: list, coords: list, apart: bool) -> Node:
    """``y`` indexed by several integer arrays on ``axes``: their axes, moved next to each other (to the
    front when ``apart``), are viewed as one and gathered by one flat index of the broadcast indices."""
    from .index import flat_index, take
    try:
        broadcast(*(c.shape for c, _ in coords))
    except ShapeError:
        raise ShapeError("getitem: index arrays of shapes " + ", ".join(fmt_shape(c.shape) for c, _ in coords)
                         + " do not broadcast together") from None
    q = 0 if apart else axes[0]
    rest = [a for a in range(y.ndim) if a not in axes]
    y = transpose(y, rest[:q] + axes + rest[q:])
    dims = y.shape[q:q + len(axes)]
    y = reshape(y, y.shape[:q] + (size(dims),) + y.shape[q + len(axes):])
    flat = flat_index([c for c, _ in coords], dims, [k for k, (_, check) in enumerate(coords) if check])
    return take(y, flat, q)
