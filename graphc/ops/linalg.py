"""Matrix product: a primitive over the last two axes, with broadcast batch dims."""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError
from ..ir import Node, as_node, defop, make
from ..shapes import broadcast, fmt_shape
from .shape import reshape, swapaxes


def _infer(a: Node, b: Node):
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"{fmt_shape(a.shape)} @ {fmt_shape(b.shape)}: operands must be at least 2-d")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"{fmt_shape(a.shape)} @ {fmt_shape(b.shape)}: inner dims {a.shape[-1]} and {b.shape[-2]} differ")
    if a.dtype != b.dtype or a.dtype.kind != "f":
        raise DTypeError(f"{a.dtype} @ {b.dtype}: operands must share one float dtype")
    try:
        batch = broadcast(a.shape[:-2], b.shape[:-2])
    except ShapeError as e:
        raise ShapeError(f"{fmt_shape(a.shape)} @ {fmt_shape(b.shape)}: batch dims: {e}") from None
    return batch + (a.shape[-2], b.shape[-1]), a.dtype


# dA = g @ B^T, dB = A^T @ g; autodiff sums broadcast batch dims back.
defop("matmul", "matmul", _infer, np.matmul,
      lambda g, n: [g @ swapaxes(n.inputs[1], -1, -2), swapaxes(n.inputs[0], -1, -2) @ g])


def matmul(a, b) -> Node:
    """``a @ b`` with NumPy semantics: 1-d operands are promoted and the added axis dropped."""
    a, b = as_node(a), as_node(b, a)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}: scalars are not allowed; use *")
    a2 = reshape(a, (1,) + a.shape) if a.ndim == 1 else a
    b2 = reshape(b, b.shape + (1,)) if b.ndim == 1 else b
    out = make("matmul", (a2, b2))
    shape = out.shape
    if b.ndim == 1:
        shape = shape[:-1]
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:] if b.ndim > 1 else shape[:-1]
    return reshape(out, shape) if shape != out.shape else out


