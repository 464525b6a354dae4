"""Padding, as ``np.pad`` (and PyTorch's ``F.pad`` modes), as a composite of the shape primitives.

"constant" writes x into zeros with the ``unslice`` primitive (plus ``where`` over an ``iota`` mask
for another value). The other modes copy rows of x: each pad is cut into runs of source rows that
are views (a slice for "circular", a broadcast edge for "replicate") or a reversed slice (a small
gather, for "reflect"), and the runs are concatenated around x.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import Node, as_node, constant, make
from ..shapes import fmt_shape
from .arange import iota
from .elementwise import where
from .rearrange import flip
from .shape import broadcast_to, concatenate, slice_axis

MODES = {"constant": "constant", "reflect": "reflect", "replicate": "replicate", "edge": "replicate",
         "circular": "circular", "wrap": "circular"}


def pad(x, pad_width, mode: str = "constant", value=0) -> Node:
    """Pad with ``pad_width`` as in ``np.pad``: ((before, after) per axis), or one (before, after), or
    one int, for every axis. Modes: "constant" (``value``), "reflect" (mirror without repeating the
    edge), "replicate" (the edge; NumPy's "edge") and "circular" (NumPy's "wrap"). Padded axes must
    be static; pads wider than the axis repeat the pattern, as NumPy does.

    >>> pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    """
    x = as_node(x)
    kind = MODES.get(mode) if isinstance(mode, str) else None
    if kind is None:
        raise ShapeError(f"pad: mode {mode!r} is not one of " + ", ".join(repr(m) for m in MODES))
    widths = _widths(pad_width, x.ndim)
    if kind != "constant" and (isinstance(value, Node) or value != 0):
        raise ShapeError(f"pad: a value ({value!r}) is only for mode 'constant', not {mode!r}")
    axes = [a for a, w in enumerate(widths) if w != (0, 0)]
    for a in axes:
        if not isinstance(x.shape[a], int):
            raise ShapeError(f"pad: axis {a} of {fmt_shape(x.shape)} is symbolic ({x.shape[a]!r}); padded axes must be static")
        if kind != "constant" and x.shape[a] == 0:
            raise ShapeError(f"pad: cannot pad empty axis {a} of {fmt_shape(x.shape)} in mode {mode!r}")
    if not axes:
        return x
    if kind == "constant":
        return _constant(x, widths, value)
    for a in axes:
        before, after = widths[a]
        src = _sources(x.shape[a], before, after, kind)
        x = concatenate([*_runs(x, a, src[:before]), x, *_runs(x, a, src[before + x.shape[a]:])], a)
    return x


def _widths(pad_width, ndim: int) -> list[tuple[int, int]]:
    """``pad_width`` as one (before, after) per axis, with NumPy's broadcasting of the short forms."""
    arr = np.asarray(pad_width)
    if arr.dtype.kind not in "iu" or arr.ndim > 2:
        raise ShapeError(f"pad: pad_width {pad_width!r} must be ints: (before, after) per axis, one pair, or one int")
    try:
        arr = np.broadcast_to(arr, (ndim, 2))
    except ValueError:
        raise ShapeError(f"pad: pad_width {pad_width!r} does not fit {ndim} axes; give (before, after) per axis") from None
    if (arr < 0).any():
        raise ShapeError(f"pad: pad_width {pad_width!r} has negative widths")
    return [(int(b), int(e)) for b, e in arr]


def _constant(x: Node, widths: list, value) -> Node:
    shape = tuple(d + b + e if (b, e) != (0, 0) else d for d, (b, e) in zip(x.shape, widths))
    index = tuple((b, b + d, 1) if (b, e) != (0, 0) else None for d, (b, e) in zip(x.shape, widths))
    y = make("unslice", (x,), index=index, shape=shape)
    if isinstance(value, Node) or value != 0:
        fill = value if isinstance(value, Node) else constant(np.array(value, dtype=x.dtype))
        for a, (b, e) in enumerate(widths):  # outside [b, b + d) on any axis: the value
            if b:
                y = where(iota(shape, a) >= b, y, fill)
            if e:
                y = where(iota(shape, a) < b + x.shape[a], y, fill)
    return y


def _sources(n: int, before: int, after: int, kind: str) -> np.ndarray:
    """For each position of a padded axis, the position of x it copies."""
    p = np.arange(-before, n + after)
    if kind == "replicate":
        return np.clip(p, 0, n - 1)
    if kind == "circular":
        return p % n
    period = 2 * (n - 1)  # reflect: ... 2 1 [0 1 2 ... n-1] n-2 n-3 ...
    if period == 0:
        return np.zeros_like(p)
    m = p % period
    return np.where(m < n, m, period - m)


def _runs(x: Node, axis: int, src: np.ndarray) -> list[Node]:
    """Rows ``src`` of x along ``axis``, as runs that step by +1 (slices), 0 (a broadcast row) or -1
    (reversed slices)."""
    out, i = [], 0
    while i < len(src):
        step = int(src[i + 1] - src[i]) if i + 1 < len(src) and abs(int(src[i + 1] - src[i])) <= 1 else 1
        j = i + 1
        while j < len(src) and src[j] - src[j - 1] == step:
            j += 1
        first, count = int(src[i]), j - i
        if step == 1:
            out.append(slice_axis(x, axis, first, first + count))
        elif step == 0:
            row = slice_axis(x, axis, first, first + 1)
            out.append(broadcast_to(row, row.shape[:axis] + (count,) + row.shape[axis + 1:]))
        else:
            out.append(flip(slice_axis(x, axis, first - count + 1, first + 1), axis))
        i = j
    return out
