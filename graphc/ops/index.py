"""Integer indexing: take (embeddings, gathers), its adjoint scatter_add, and one_hot; and, as
composites of these, take_along_axis and torch's scatter_add along an axis.

Indices are range-checked: 0 <= i < n (``index_bound`` and ``index_arg`` in the op table). An
index that is an input is checked in Python before a step runs; a computed one inside the kernel
that reads it (compiled code does no bounds checks of its own). The composites gather from a flat
view with one computed index (``flat_index``), built so that it leaves the range exactly when one
of the user's indices leaves its own axis."""
from __future__ import annotations

from math import prod

import numpy as np

from ..errors import DTypeError, GraphcError, ShapeError
from ..ir import Node, as_node, constant, defop, make
from ..shapes import broadcast, fmt_shape, is_concrete, norm_axes, size
from . import elementwise as ew
from .shape import broadcast_to, reshape, slice_axis, transpose


def check_range(idx: np.ndarray, n: int) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx[(idx < 0) | (idx >= n)].flat[0]
        raise IndexError(f"index {bad} is out of range [0, {n})")


def _int_index(idx: Node) -> None:
    if idx.dtype.kind not in "iu":
        raise DTypeError(f"indices have dtype {idx.dtype}, expected an integer dtype")


def _infer_take(x, idx, axis):
    _int_index(idx)
    return x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype


def _take_ref(x, idx, axis):
    check_range(idx, x.shape[axis])
    return np.take(x, idx, axis=axis)


def _infer_scatter(g, idx, axis, size):
    _int_index(idx)
    return g.shape[:axis] + (size,) + g.shape[axis + idx.ndim:], g.dtype


def _scatter_ref(g, idx, axis, size):
    check_range(idx, size)
    out = np.zeros(g.shape[:axis] + (size,) + g.shape[axis + idx.ndim:], g.dtype)
    # Move the scattered axis first: out[idx[j]] += g[j] for every index position j.
    gm = np.moveaxis(g, tuple(range(axis, axis + idx.ndim)), tuple(range(idx.ndim)))
    np.add.at(np.moveaxis(out, axis, 0), idx, gm)
    return out


def _one_hot_ref(idx, depth, dtype):
    check_range(idx, depth)
    return (idx[..., None] == np.arange(depth)).astype(dtype)


def _infer_one_hot(idx, depth, dtype):
    _int_index(idx)
    return idx.shape + (depth,), np.dtype(dtype)


defop("take", "index", _infer_take, _take_ref,
      lambda g, n: [make("scatter_add", (g, n.inputs[1]), axis=n.attrs["axis"], size=n.inputs[0].shape[n.attrs["axis"]]), None],
      index_bound=lambda n: n.inputs[0].shape[n.attrs["axis"]], index_arg=1)
defop("scatter_add", "index", _infer_scatter, _scatter_ref,
      lambda g, n: [make("take", (g, n.inputs[1]), axis=n.attrs["axis"]), None],
      index_bound=lambda n: n.attrs["size"], index_arg=1, dim_attrs=("size",))
defop("one_hot", "index", _infer_one_hot, _one_hot_ref, lambda g, n: [None],
      index_bound=lambda n: n.attrs["depth"], index_arg=0, unaligned=(0,))


def take(x, indices, axis: int = 0) -> Node:
    """``np.take``: rows of an embedding table, or any gather along ``axis``."""
    x = as_node(x)
    idx = as_node(indices)
    return make("take", (x, idx), axis=norm_axes(axis, x.ndim)[0])


def one_hot(indices, depth: int, dtype="float32") -> Node:
    """One-hot rows: ``out[..., k] = (indices[...] == k)``."""
    return make("one_hot", (as_node(indices),), depth=int(depth), dtype=np.dtype(dtype))


def _infer_pick(z, idx):
    _int_index(idx)
    if z.shape[:-1] != idx.shape:
        from ..errors import ShapeError
        from ..shapes import fmt_shape
        raise ShapeError(f"indices {fmt_shape(idx.shape)} do not match {fmt_shape(z.shape)} without its last axis")
    return idx.shape, z.dtype


def _pick_ref(z, idx):
    check_range(idx, z.shape[-1])
    return np.take_along_axis(z, idx[..., None], axis=-1)[..., 0]


# pick(z, y)[...] = z[..., y[...]]: what sum(one_hot(y) * z, -1) computes, without the one-hot.
defop("pick", "index", _infer_pick, _pick_ref,
      lambda g, n: [make("reshape", (g,), shape=g.shape + (1,)) * one_hot(n.inputs[1], n.inputs[0].shape[-1], g.dtype), None],
      index_bound=lambda n: n.inputs[0].shape[-1], index_arg=1, unaligned=(0, 1))


def pick(z, indices) -> Node:
    """``z[..., indices[...]]``: one entry of the last axis per row (e.g. the label's logit)."""
    return make("pick", (as_node(z), as_node(indices)))


# --- composites: flat indices, take_along_axis, scatter_add along an axis ----------------------
def dims_value(dims) -> int | Node:
    """The product of ``dims``: an int when they are static, else an int64 ``count`` node (known at call time)."""
    dims = tuple(dims)
    return prod(dims) if is_concrete(dims) else make("count", (), dims=dims, dtype=np.dtype(np.int64))


def index_coordinate(index, n, fn: str, axis: int, negative: bool = True) -> tuple[Node, bool]:
    """An integer index along an axis of size ``n`` as a node, and whether it may be out of
    range. Arrays are checked here (``negative``: NumPy's wrap-around of -n <= i < 0); a node, or an
    array on a symbolic axis, is checked when the step runs (see ``flat_index``)."""
    if isinstance(index, Node):
        if index.dtype.kind not in "iu":
            raise DTypeError(f"{fn}: indices have dtype {index.dtype}, expected an integer dtype")
        return index, True
    arr = np.asarray(index)
    if arr.size == 0:
        arr = arr.astype(np.int64)  # [] is float64 to NumPy
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"{fn}: indices have dtype {arr.dtype}, expected an integer dtype"
                         + (" (boolean masks are not supported: use gc.where)" if arr.dtype == np.bool_ else ""))
    arr = arr.astype(np.int64)
    if not isinstance(n, int):
        return constant(arr), True
    lo = -n if negative else 0
    bad = arr[(arr < lo) | (arr >= n)]
    if bad.size:
        raise ShapeError(f"{fn}: index {bad.flat[0]} is out of range for axis {axis} of size {n}")
    return constant(np.where(arr < 0, arr + n, arr)), False


def flat_index(coords, dims, checked=()) -> Node:
    """Row-major position of ``coords`` (integer nodes broadcast together, one per dim of ``dims``; None
    for one that is always 0, on an axis of size 1) in an array of shape ``dims``, in int64.

    The coordinates at positions ``checked`` may be out of range (computed or input indices). The
    result then leaves [0, size) too, so the take or scatter_add that reads it raises exactly when one
    of them is bad: the outermost needs nothing (the others add less than one of its steps); any other
    is replaced, where bad, by itself when negative, by ``size + (i - n)`` when too large."""
    total, flat = dims_value(dims), None
    for k, c in enumerate(coords):
        if c is not None:
            stride = dims_value(dims[k + 1:])
            term = c if isinstance(stride, int) and stride == 1 else _int64(c) * stride
            flat = term if flat is None else flat + term
    if flat is None:
        return constant(np.int64(0))
    for k, c in enumerate(coords):
        if k in checked and not all(d == 1 for d in dims[:k]):
            c, n = _int64(c), dims_value((dims[k],))
            flat = ew.where(c < 0, c, ew.where(c >= n, total + (c - n), flat))
    return flat


def _int64(i: Node) -> Node:
    return ew.cast(i, np.int64)


def _fits(a, b) -> bool:
    return a == b or isinstance(a, int) and isinstance(b, int) and a <= b


def take_along_axis(x, indices, axis: int | None) -> Node:
    """``np.take_along_axis``: ``out[..., j, ...] = x[..., indices[..., j, ...], ...]`` along ``axis``; the
    other axes of ``indices`` broadcast against ``x``'s (``axis=None``: 1-d indices into flattened x).

    >>> top = take_along_axis(scores, order[:, :3], axis=1)   # e.g. order from an argsort
    """
    from .arange import iota
    x = as_node(x)
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    ndim = np.ndim(indices) if not isinstance(indices, Node) else indices.ndim
    if ndim != x.ndim:
        raise ShapeError(f"take_along_axis: indices have {ndim} axes, x {fmt_shape(x.shape)} has {x.ndim}; "
                         "give them the same number (size-1 axes broadcast)")
    axis = _axis("take_along_axis", axis, x.ndim)
    idx, check = index_coordinate(indices, x.shape[axis], "take_along_axis", axis)
    try:
        out = tuple(i if d == axis else broadcast((x.shape[d],), (i,))[0] for d, i in enumerate(idx.shape))
    except ShapeError:
        raise ShapeError(f"take_along_axis: indices {fmt_shape(idx.shape)} do not broadcast against "
                         f"x {fmt_shape(x.shape)} off axis {axis}") from None
    coords = [idx if d == axis else None if x.shape[d] == 1 else iota(out, d) for d in range(x.ndim)]
    flat = flat_index(coords, x.shape, (axis,) if check else ())
    return take(reshape(x, (-1,)), broadcast_to(flat, out), 0)


def scatter_add(x, indices, src, axis: int) -> Node:
    """``torch.Tensor.scatter_add`` along ``axis``: x plus ``src[p]`` added at ``x[p with indices[p] on
    axis]`` for every position p of ``indices`` (repeats accumulate). ``indices``, ``src`` and ``x``
    have the same number of axes; indices are no larger than src, nor than x off ``axis``.

    >>> counts = scatter_add(gc.constant(np.zeros((2, 5))), labels, ones, axis=1)
    """
    from .arange import iota
    x = as_node(x)
    src = as_node(src, x)
    axis = _axis("scatter_add", axis, x.ndim)
    idx, check = index_coordinate(indices, x.shape[axis], "scatter_add", axis, negative=False)
    if not idx.ndim == src.ndim == x.ndim:
        raise ShapeError(f"scatter_add: x {fmt_shape(x.shape)}, indices {fmt_shape(idx.shape)} and "
                         f"src {fmt_shape(src.shape)} must have the same number of axes")
    if src.dtype != x.dtype:
        raise DTypeError(f"scatter_add: src has dtype {src.dtype}, x {x.dtype}; cast first")
    for d, i in enumerate(idx.shape):
        if not _fits(i, src.shape[d]) or d != axis and not _fits(i, x.shape[d]):
            raise ShapeError(f"scatter_add: indices {fmt_shape(idx.shape)} are larger than src {fmt_shape(src.shape)} "
                             f"or x {fmt_shape(x.shape)} (off axis {axis}) along axis {d}")
        if i != src.shape[d]:  # only the part of src that indices cover is added, as torch does
            src = slice_axis(src, d, 0, i)
    coords = [idx if d == axis else None if x.shape[d] == 1 else iota(idx.shape, d) for d in range(x.ndim)]
    flat = flat_index(coords, x.shape, (axis,) if check else ())
    added = make("scatter_add", (src, flat), axis=0, size=size(x.shape))
    return x + reshape(added, x.shape)


def _axis(fn: str, axis: int, ndim: int) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise ShapeError(f"{fn}: axis {axis!r} must be an int")
    try:
        return norm_axes(axis, ndim)[0]
    except ShapeError as e:
        raise ShapeError(f"{fn}: {e}") from None


def _is_array(k) -> bool:
    return isinstance(k, (Node, np.ndarray, list))


def getitem(x: Node, key) -> Node:
    """NumPy indexing: ints, slices, None and ...; integer arrays or nodes gather, with NumPy's rules
    for where their (broadcast) axes go. One array is one ``take``; several index a view of their
    axes as one, by a flat index, so the gradient is one ``scatter_add``.

    >>> x[i, :, j]   # i, j broadcast to (n,): out[k, :] = x[i[k], :, j[k]]
    """
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
