"""Convolution and pooling over NCHW images, as composites of primitives.

``conv2d`` is im2col: zero padding is the ``unslice`` primitive, each kernel tap is a
strided slice (a view), the taps are concatenated into patch rows and one matmul
applies the filters. Pooling with ``stride == kernel`` (the usual case) reshapes the
image into windows and reduces them; other strides combine strided slices
elementwise. So every backend lowers them, fusion sees ordinary kernels, and
gradients (of any order) come from the primitives' rules.
"""
from __future__ import annotations

from ..errors import ShapeError
from ..ir import Node, as_node, make
from ..shapes import fmt_shape
from . import elementwise as ew
from .linalg import matmul
from .reduce import max, mean
from .shape import concatenate, reshape, transpose


def _pair(v, what: str) -> tuple[int, int]:
    a, b = (v, v) if isinstance(v, int) else tuple(v)
    if a < 0 or b < 0 or (what != "padding" and (a == 0 or b == 0)):
        raise ShapeError(f"{what} {v!r} must be {'non-negative' if what == 'padding' else 'positive'}")
    return int(a), int(b)


def _image(x: Node, op: str) -> tuple:
    if x.ndim != 4:
        raise ShapeError(f"{op}: input {fmt_shape(x.shape)} must be 4-d (N, C, H, W)")
    if not all(isinstance(d, int) for d in x.shape[1:]):
        raise ShapeError(f"{op}: channels, height and width of {fmt_shape(x.shape)} must be static")
    return x.shape


def _out_size(size: int, k: int, s: int, op: str) -> int:
    if size < k:
        raise ShapeError(f"{op}: window {k} is larger than the (padded) input size {size}")
    return (size - k) // s + 1


def _taps(x: Node, kernel: tuple, stride: tuple, out: tuple) -> list[Node]:
    """x[:, :, i::sh, j::sw] cropped to the output size, for every tap (i, j) in row-major order."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    return [make("slice", (x,), index=(None, None, (i, i + sh * (oh - 1) + 1, sh), (j, j + sw * (ow - 1) + 1, sw)))
            for i in range(kh) for j in range(kw)]


def pad2d(x, padding) -> Node:
    """Zero-pad the last two axes of an NCHW image by ``padding`` (int or (ph, pw)) on each side."""
    x = as_node(x)
    n, c, h, w = _image(x, "pad2d")
    ph, pw = _pair(padding, "padding")
    if ph == pw == 0:
        return x
    return make("unslice", (x,), index=(None, None, (ph, ph + h, 1), (pw, pw + w, 1)), shape=(n, c, h + 2 * ph, w + 2 * pw))


def conv2d(x, w, b=None, stride=1, padding=0) -> Node:
    """2-D cross-correlation, as PyTorch's ``conv2d``: ``x`` (N, C, H, W), ``w`` (OUT, C, KH, KW),
    optional bias ``b`` (OUT,); returns (N, OUT, OH, OW).

    >>> y = gc.conv2d(x, w, b, stride=1, padding=1)   # 'same' size for 3x3 filters
    """
    x = as_node(x)
    w = as_node(w, x)
    _, c, _, _ = _image(x, "conv2d")
    if w.ndim != 4 or w.shape[1] != c:
        raise ShapeError(f"conv2d: filters {fmt_shape(w.shape)} do not match input {fmt_shape(x.shape)}; "
                         f"expected (OUT, {c}, KH, KW)")
    out_ch, _, kh, kw = w.shape
    sh, sw = _pair(stride, "stride")
    xp = pad2d(x, padding)
    n, _, hp, wp = xp.shape
    oh, ow = _out_size(hp, kh, sh, "conv2d"), _out_size(wp, kw, sw, "conv2d")
    # Patch rows ordered (tap, channel): each tap is transposed to channels-last before the
    # concatenation, so the patch matrix is written once, contiguously, by one copy kernel.
    cols = concatenate([transpose(t, (0, 2, 3, 1)) for t in _taps(xp, (kh, kw), (sh, sw), (oh, ow))], axis=3)
    filters = reshape(transpose(w, (2, 3, 1, 0)), (kh * kw * c, out_ch))
    y = matmul(reshape(cols, (-1, kh * kw * c)), filters)
    if b is not None:
        b = as_node(b, x)
        if b.shape != (out_ch,):
            raise ShapeError(f"conv2d: bias {fmt_shape(b.shape)} must be ({out_ch},)")
        y = y + b  # on the 2-d product, so it joins the matmul's epilogue
    return transpose(reshape(y, (n, oh, ow, out_ch)), (0, 3, 1, 2))


def _pool(x, kernel, stride, op: str, reduce_windows, combine, scale: bool = False) -> Node:
    x = as_node(x)
    n, c, h, w = _image(x, op)
    kh, kw = _pair(kernel, "kernel")
    sh, sw = _pair(kernel if stride is None else stride, "stride")
    oh, ow = _out_size(h, kh, sh, op), _out_size(w, kw, sw, op)
    if (kh, kw) == (sh, sw):  # disjoint windows: crop the remainder, view as windows, reduce
        if (oh * kh, ow * kw) != (h, w):
            x = make("slice", (x,), index=(None, None, (0, oh * kh, 1), (0, ow * kw, 1)))
        return reduce_windows(reshape(x, (n, c, oh, kh, ow, kw)), (3, 5))
    # overlapping or gapped windows: one elementwise kernel over the strided taps
    taps = _taps(x, (kh, kw), (sh, sw), (oh, ow))
    out = taps[0]
    for t in taps[1:]:
        out = combine(out, t)
    return out * (1.0 / (kh * kw)) if scale else out


def max_pool2d(x, kernel=2, stride=None) -> Node:
    """Max over ``kernel`` windows every ``stride`` pixels (default: ``kernel``), as PyTorch's
    ``max_pool2d`` without padding (the remainder is dropped). Tied maxima share the gradient.

    >>> p = gc.max_pool2d(gc.relu(y), kernel=2, stride=2)
    """
    return _pool(x, kernel, stride, "max_pool2d", max, ew.maximum)


def avg_pool2d(x, kernel=2, stride=None) -> Node:
    """Mean over ``kernel`` windows every ``stride`` pixels (default: ``kernel``), as PyTorch's
    ``avg_pool2d`` without padding.

    >>> q = gc.avg_pool2d(x, kernel=2)
    """
    return _pool(x, kernel, stride, "avg_pool2d", mean, lambda a, b: a + b, scale=True)
