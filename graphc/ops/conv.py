"""Convolution, pooling and resizing over NCHW images, as composites of primitives.

``conv2d`` is im2col: zero padding is the ``unslice`` primitive, each kernel tap is a
strided slice (a view), the taps are concatenated into patch rows and one matmul
applies the filters (a batched matmul over groups). ``conv_transpose2d`` scatters its
input every ``stride`` pixels into a zero image (one ``unslice``) and runs a stride-1
convolution over it with the kernel's taps in reverse order. Pooling with
``stride == kernel`` (the usual case) reshapes the image into windows and reduces them;
other strides combine strided slices elementwise. ``interpolate`` gathers rows and
columns (``take`` with constant indices) and weighs them with constant arrays. So every
backend lowers them, fusion sees ordinary kernels, and gradients (of any order) come from
the primitives' rules.
"""
from __future__ import annotations

import builtins
import functools
import math
import operator

import numpy as np

from ..errors import GraphcError, ShapeError
from ..ir import Node, as_node, constant, make
from ..shapes import fmt_shape
from . import elementwise as ew
from . import reduce as rd
from .index import take
from .linalg import matmul
from .shape import concatenate, reshape, transpose


def _pair(v, what: str) -> tuple[int, int]:
    a, b = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    zero_ok = what.endswith("padding")
    if a < 0 or b < 0 or (not zero_ok and (a == 0 or b == 0)):
        raise ShapeError(f"{what} {v!r} must be {'non-negative' if zero_ok else 'positive'}")
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


def _taps(x: Node, kernel: tuple, stride: tuple, out: tuple, dilation: tuple = (1, 1)) -> list[Node]:
    """x[..., i*dh::sh, j*dw::sw] cropped to the output size, for every tap (i, j) in row-major order."""
    (kh, kw), (sh, sw), (oh, ow), (dh, dw) = kernel, stride, out, dilation
    lead = (None,) * (x.ndim - 2)
    return [make("slice", (x,), index=lead + ((i * dh, i * dh + sh * (oh - 1) + 1, sh), (j * dw, j * dw + sw * (ow - 1) + 1, sw)))
            for i in range(kh) for j in range(kw)]


def pad2d(x, padding) -> Node:
    """Zero-pad the last two axes of an NCHW image by ``padding`` (int or (ph, pw)) on each side."""
    x = as_node(x)
    n, c, h, w = _image(x, "pad2d")
    ph, pw = _pair(padding, "padding")
    if ph == pw == 0:
        return x
    return make("unslice", (x,), index=(None, None, (ph, ph + h, 1), (pw, pw + w, 1)), shape=(n, c, h + 2 * ph, w + 2 * pw))


def _im2col(xp: Node, w: Node, b, stride: tuple, dilation: tuple, groups: int, transposed: bool, op: str) -> Node:
    """A convolution of the padded image ``xp`` (N, C, Hp, Wp). ``w`` is (OUT, C/groups, KH, KW),
    or with ``transposed`` (C, OUT/groups, KH, KW) applied with its taps flipped."""
    n, c, hp, wp = xp.shape
    kh, kw = w.shape[2:]
    out_ch = w.shape[1] * groups if transposed else w.shape[0]
    (sh, sw), (dh, dw) = stride, dilation
    oh, ow = _out_size(hp, dh * (kh - 1) + 1, sh, op), _out_size(wp, dw * (kw - 1) + 1, sw, op)
    taps = _taps(xp if groups == 1 else reshape(xp, (n, groups, c // groups, hp, wp)), (kh, kw), (sh, sw), (oh, ow), (dh, dw))
    taps = taps[::-1] if transposed else taps  # a flipped kernel is the taps in reverse order
    if b is not None:
        b = as_node(b, xp)
        if b.shape != (out_ch,):
            raise ShapeError(f"{op}: bias {fmt_shape(b.shape)} must be ({out_ch},)")
    k = kh * kw * (c // groups)
    if groups == 1:
        # Patch rows ordered (tap, channel): each tap is transposed to channels-last before the
        # concatenation, so the patch matrix is written once, contiguously, by one copy kernel.
        cols = concatenate([transpose(t, (0, 2, 3, 1)) for t in taps], axis=3)
        filters = reshape(transpose(w, (2, 3, 0, 1) if transposed else (2, 3, 1, 0)), (k, out_ch))
        y = matmul(reshape(cols, (-1, k)), filters)
        y = y if b is None else y + b  # on the 2-d product, so it joins the matmul's epilogue
        return transpose(reshape(y, (n, oh, ow, out_ch)), (0, 3, 1, 2))
    # groups: patch columns (G, C/G*taps, N*OH*OW) ordered (channel, tap), so that the filters are
    # w itself, viewed as (G, OUT/G, C/G*KH*KW), and one batched matmul gives (OUT, N, OH, OW), a
    # transpose away from the result: the output stays a view (a reshape of a transpose would copy).
    cg, og = c // groups, out_ch // groups
    cols = concatenate([reshape(transpose(t, (1, 2, 0, 3, 4)), (groups, cg, 1, n, oh, ow)) for t in taps], axis=2)
    if transposed:  # (C, OUT/G, KH, KW) -> (G, OUT/G, C/G, KH, KW)
        w = transpose(reshape(w, (groups, cg, og, kh, kw)), (0, 2, 1, 3, 4))
    y = matmul(reshape(w, (groups, og, k)), reshape(cols, (groups, k, -1)))
    y = y if b is None else y + reshape(b, (groups, og, 1))
    return transpose(reshape(y, (out_ch, n, oh, ow)), (1, 0, 2, 3))


def _filters(x: Node, w, groups, op: str, transposed: bool) -> Node:
    """``w`` as a node, checked against the input's channels and ``groups``."""
    _, c, _, _ = _image(x, op)
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ShapeError(f"{op}: groups {groups!r} must be a positive int")
    if c % groups:
        raise ShapeError(f"{op}: {c} input channels are not divisible by groups={groups}")
    w = as_node(w, x)
    want = f"({c}, OUT/{groups}, KH, KW)" if transposed else f"(OUT, {c // groups}, KH, KW)"
    if w.ndim != 4 or w.shape[0 if transposed else 1] != (c if transposed else c // groups):
        raise ShapeError(f"{op}: filters {fmt_shape(w.shape)} do not match input {fmt_shape(x.shape)}; expected {want}")
    if not transposed and w.shape[0] % groups:
        raise ShapeError(f"{op}: {w.shape[0]} output channels are not divisible by groups={groups}")
    return w


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1) -> Node:
    """2-D cross-correlation, as PyTorch's ``conv2d``: ``x`` (N, C, H, W), ``w`` (OUT, C/groups,
    KH, KW), optional bias ``b`` (OUT,); returns (N, OUT, OH, OW). Taps are ``dilation`` pixels
    apart; ``groups`` splits the channels into independent convolutions (``groups=C``: depthwise).

    >>> y = gc.conv2d(x, w, b, stride=1, padding=1)   # 'same' size for 3x3 filters
    """
    x = as_node(x)
    w = _filters(x, w, groups, "conv2d", transposed=False)
    return _im2col(pad2d(x, padding), w, b, _pair(stride, "stride"), _pair(dilation, "dilation"), int(groups), False, "conv2d")


def conv_transpose2d(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1) -> Node:
    """The adjoint of ``conv2d`` (PyTorch's ``conv_transpose2d``): ``x`` (N, C, H, W), ``w``
    (C, OUT/groups, KH, KW); returns (N, OUT, OH, OW) with
    OH = (H - 1)*stride - 2*padding + dilation*(KH - 1) + output_padding + 1.

    >>> up = gc.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)   # doubles H and W for 3x3
    """
    op = "conv_transpose2d"
    x = as_node(x)
    w = _filters(x, w, groups, op, transposed=True)
    n, c, h, wd = x.shape
    stride, pad = _pair(stride, "stride"), _pair(padding, "padding")
    out_pad, dilation = _pair(output_padding, "output_padding"), _pair(dilation, "dilation")
    index, shape, crop = [None, None], [n, c], [None, None]
    for size, k, s, p, o, d in zip((h, wd), w.shape[2:], stride, pad, out_pad, dilation):
        if o >= s and o >= d:
            raise ShapeError(f"{op}: output_padding {o} must be smaller than the stride {s} or the dilation {d}")
        out = (size - 1) * s - 2 * p + d * (k - 1) + o + 1
        if out < 1:
            raise ShapeError(f"{op}: the output size {out} of input size {size} is not positive")
        # x every s pixels, with d*(k-1) - p zeros before and that plus output_padding after
        border, span = d * (k - 1) - p, (size - 1) * s + 1
        lo = border if border > 0 else 0
        index.append((lo, lo + span, s))
        shape.append(span + 2 * lo + o)
        crop.append(None if border >= 0 else (-border, span + o + border, 1))
    xz = x if all(t == (0, d, 1) for t, d in zip(index[2:], shape[2:])) else make(
        "unslice", (x,), index=tuple(index), shape=tuple(shape))
    if crop != [None] * 4:  # padding beyond d*(k-1): the outer rows of the scattered image drop out
        xz = make("slice", (xz,), index=tuple(crop))
    return _im2col(xz, w, b, (1, 1), dilation, int(groups), True, op)


# --- pooling ----------------------------------------------------------------------------------
def _pool_size(size: int, k: int, s: int, p: int, ceil_mode: bool, op: str) -> int:
    """PyTorch's output size: with ``ceil_mode`` a last partial window counts if it starts
    inside the input or the left padding."""
    if p > k // 2:
        raise ShapeError(f"{op}: padding {p} must be at most half the window {k}")
    if size + 2 * p < k:
        raise ShapeError(f"{op}: window {k} is larger than the (padded) input size {size + 2 * p}")
    out = (size + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


def _window_counts(size: int, k: int, s: int, p: int, out: int, include_pad: bool) -> np.ndarray:
    """How many elements each window averages over, as PyTorch counts them."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    return end - start if include_pad else np.minimum(end, size) - np.maximum(start, 0)


def _pool(x, kernel, stride, padding, ceil_mode, op: str, count_include_pad=True, divisor_override=None) -> Node:
    x = as_node(x)
    is_max = op == "max_pool2d"
    if not is_max and x.dtype.kind != "f":
        x = ew.cast(x, np.float32)
    n, c, h, w = _image(x, op)
    (kh, kw), (ph, pw) = _pair(kernel, "kernel"), _pair(padding, "padding")
    sh, sw = _pair(kernel if stride is None else stride, "stride")
    oh, ow = _pool_size(h, kh, sh, ph, ceil_mode, op), _pool_size(w, kw, sw, pw, ceil_mode, op)
    # the windows read ph rows before the image, and after it what the last window reaches (with ceil_mode, past ph)
    after_h, after_w = builtins.max(0, (oh - 1) * sh + kh - ph - h), builtins.max(0, (ow - 1) * sw + kw - pw - w)
    border = None
    if ph or pw or after_h or after_w:
        hp, wp = ph + h + after_h, pw + w + after_w
        x = make("unslice", (x,), index=(None, None, (ph, ph + h, 1), (pw, pw + w, 1)), shape=(n, c, hp, wp))
        if is_max:  # max pooling pads with -inf: a constant border, added window by window so that it fuses
            border = np.full((1, 1, hp, wp), -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min, x.dtype)
            border[:, :, ph:ph + h, pw:pw + w] = 0
            border = constant(border)
    if (kh, kw) == (sh, sw):  # disjoint windows: crop the remainder, view as windows, reduce
        def windows(v: Node) -> Node:
            if (oh * kh, ow * kw) != v.shape[2:]:
                v = make("slice", (v,), index=(None, None, (0, oh * kh, 1), (0, ow * kw, 1)))
            return reshape(v, v.shape[:2] + (oh, kh, ow, kw))
        out = (rd.max if is_max else rd.sum)(windows(x) if border is None else windows(x) + windows(border), (3, 5))
    else:  # overlapping or gapped windows: one elementwise kernel over the strided taps
        taps = _taps(x, (kh, kw), (sh, sw), (oh, ow))
        if border is not None:
            taps = [t + b for t, b in zip(taps, _taps(border, (kh, kw), (sh, sw), (oh, ow)))]
        out = functools.reduce(ew.maximum if is_max else operator.add, taps)
    if is_max:
        return out
    if divisor_override is not None:
        return out / float(divisor_override)
    counts = np.outer(_window_counts(h, kh, sh, ph, oh, count_include_pad), _window_counts(w, kw, sw, pw, ow, count_include_pad))
    return out / (float(counts[0, 0]) if (counts == counts[0, 0]).all() else constant(counts.astype(x.dtype)))


def max_pool2d(x, kernel=2, stride=None, padding=0, ceil_mode=False) -> Node:
    """Max over ``kernel`` windows every ``stride`` pixels (default: ``kernel``), as PyTorch's
    ``max_pool2d``: ``padding`` (at most half the window) is -inf; without ``ceil_mode`` the
    remainder is dropped, with it a last partial window is kept. Tied maxima share the gradient.

    >>> p = gc.max_pool2d(gc.relu(y), kernel=2, stride=2)
    """
    return _pool(x, kernel, stride, padding, ceil_mode, "max_pool2d")


def avg_pool2d(x, kernel=2, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None) -> Node:
    """Mean over ``kernel`` windows every ``stride`` pixels (default: ``kernel``), as PyTorch's
    ``avg_pool2d``: zero ``padding``, counted in the divisor unless ``count_include_pad=False``.

    >>> q = gc.avg_pool2d(x, kernel=3, stride=2, padding=1, count_include_pad=False)
    """
    return _pool(x, kernel, stride, padding, ceil_mode, "avg_pool2d", count_include_pad, divisor_override)


# --- resizing ---------------------------------------------------------------------------------
def _nearest(x: Node, axis: int, n_in: int, n_out: int, scale: float | None) -> Node:
    """PyTorch's "nearest": source index floor(dst * scale) in float32, scale = 1/scale_factor or in/out."""
    if n_out == n_in:
        return x
    if n_out == 2 * n_in:
        idx = np.arange(n_out) >> 1
    else:
        s = np.float32(1.0 / scale) if scale else np.float32(n_in) / np.float32(n_out)
        idx = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * s).astype(np.int64), n_in - 1)
    return take(x, constant(idx), axis)


def _linear(x: Node, axis: int, n_in: int, n_out: int, scale: float | None, align_corners: bool) -> Node:
    """Linear interpolation along ``axis``, with PyTorch's source coordinates."""
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = np.maximum((1.0 / scale if scale else n_in / n_out) * (dst + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0, 0.0, 1.0)
    if not lam.any():
        return x if n_in == n_out and np.array_equal(i0, np.arange(n_in)) else take(x, constant(i0), axis)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    shape = (n_out,) + (1,) * (x.ndim - 1 - axis)
    return (take(x, constant(i0), axis) * constant((1.0 - lam).reshape(shape).astype(x.dtype))
            + take(x, constant(i1), axis) * constant(lam.reshape(shape).astype(x.dtype)))


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None) -> Node:
    """Resize NCHW images to ``size`` (OH, OW) or by ``scale_factor``, as PyTorch's
    ``interpolate``: ``mode="nearest"`` (source pixel floor(dst * in/out)) or ``"bilinear"``
    (``align_corners`` False by default). Gathers with constant indices and constant weights.

    >>> up = gc.interpolate(x, scale_factor=2, mode="bilinear")
    """
    op = "interpolate"
    x = as_node(x)
    _, _, h, w = _image(x, op)
    if mode not in ("nearest", "bilinear"):
        raise GraphcError(f"{op}: mode {mode!r} is not 'nearest' or 'bilinear'")
    if mode == "bilinear" and x.dtype.kind != "f":
        x = ew.cast(x, np.float32)
    if align_corners is not None and mode != "bilinear":
        raise GraphcError(f"{op}: align_corners applies to mode='bilinear' only")
    if (size is None) == (scale_factor is None):
        raise ShapeError(f"{op}: give exactly one of size and scale_factor")
    if size is not None:
        out, scales = _pair(size, "size"), (None, None)
    else:
        scales = (float(scale_factor),) * 2 if np.ndim(scale_factor) == 0 else tuple(float(s) for s in scale_factor)
        if len(scales) != 2 or not all(s > 0 for s in scales):
            raise ShapeError(f"{op}: scale_factor {scale_factor!r} must be positive, one or two numbers")
        out = tuple(math.floor(d * s) for d, s in zip((h, w), scales))
        if min(out) < 1:
            raise ShapeError(f"{op}: scale_factor {scale_factor!r} makes {h}x{w} images empty")
    for axis, n_in, n_out, s in zip((2, 3), (h, w), out, scales):
        x = _nearest(x, axis, n_in, n_out, s) if mode == "nearest" else _linear(x, axis, n_in, n_out, s, bool(align_corners))
    return x
