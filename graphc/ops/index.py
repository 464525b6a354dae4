"""Integer indexing: take (embeddings, gathers), its adjoint scatter_add, and one_hot.

Indices are range-checked: 0 <= i < n (``index_bound`` and ``index_arg`` in the op table). An
index that is an input is checked in Python before a step runs; a computed one inside the kernel
that reads it (compiled code does no bounds checks of its own)."""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError
from ..ir import Node, as_node, defop, make
from ..shapes import norm_axes


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
      index_bound=lambda n: n.attrs["size"], index_arg=1)
defop("one_hot", "index", _infer_one_hot, _one_hot_ref, lambda g, n: [None],
      index_bound=lambda n: n.attrs["depth"], index_arg=0)


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
      index_bound=lambda n: n.inputs[0].shape[-1], index_arg=1)


def pick(z, indices) -> Node:
    """``z[..., indices[...]]``: one entry of the last axis per row (e.g. the label's logit)."""
    return make("pick", (as_node(z), as_node(indices)))
