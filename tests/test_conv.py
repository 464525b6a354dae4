"""conv2d, conv_transpose2d, max_pool2d, avg_pool2d and interpolate: composites of slices,
unslice, concatenate, take and matmul.

Gradients to second order against finite differences (float64), forward against direct
NumPy loops and against PyTorch where installed, the CPU backend's generated code against
the reference, the kernels they fuse into, and their errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphc as gc
from graphc.ops.conv import conv_transpose2d, interpolate

RNG = np.random.default_rng(0)


def pair(v):
    return (v, v) if isinstance(v, int) else v


def np_conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Direct loops: out[n, o, i, j] = sum_{c,di,dj} xpad[n, c, i*sh + di*dh, j*sw + dj*dw] * w[o, c, di, dj],
    over the channels of o's group."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, c, h, wd = xp.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (wd - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for g in range(groups):
        xg, wg = xp[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]
        for i in range(oh):
            for j in range(ow):
                patch = xg[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[:, g * og:(g + 1) * og, i, j] = np.einsum("nchw,ochw->no", patch, wg)
    return out if b is None else out + b[None, :, None, None]


def np_conv_transpose2d(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), dilation=(1, 1), groups=1):
    """Direct scatter: every input pixel adds its weighted kernel into the output at (i*sh + di*dh, j*sw + dj*dw),
    then ``padding`` rows and columns are cropped from each side."""
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // groups
    full = np.zeros((n, og * groups, (h - 1) * sh + dh * (kh - 1) + 1 + oph, (wd - 1) * sw + dw * (kw - 1) + 1 + opw))
    for ci in range(c):
        g = ci // cg
        for i in range(h):
            for j in range(wd):
                for di in range(kh):
                    for dj in range(kw):
                        r, q = i * sh + di * dh, j * sw + dj * dw
                        full[:, g * og:(g + 1) * og, r, q] += x[:, ci, i, j, None] * w[ci, :, di, dj]
    out = full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]
    return out if b is None else out + b[None, :, None, None]


def np_pool(x, k, s, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(x[:, :, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]], axis=(2, 3))
    return out


def np_pool2d(x, kind, kernel, stride, padding, ceil_mode, count_include_pad=True):
    """PyTorch's pooling, window by window: padding is -inf (max) or zeros (avg, counted unless
    ``count_include_pad=False``); with ``ceil_mode`` a last partial window starting inside the
    input or the left padding is kept."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    n, c, h, w = x.shape

    def n_out(size, k, s, p):
        out = (math.ceil if ceil_mode else math.floor)((size + 2 * p - k) / s) + 1
        return out - 1 if ceil_mode and (out - 1) * s >= size + p else out

    oh, ow = n_out(h, kh, sh, ph), n_out(w, kw, sw, pw)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * sh - ph, j * sw - pw
            r1, c1 = min(r0 + kh, h + ph), min(c0 + kw, w + pw)  # windows end at the right padding
            win = x[:, :, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
            if kind == "max":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                out[:, :, i, j] = win.sum(axis=(2, 3)) / ((r1 - r0) * (c1 - c0) if count_include_pad else win[0, 0].size)
    return out


CONV = [  # (x shape, w shape, stride, padding, bias)
    pytest.param((2, 3, 5, 6), (4, 3, 3, 3), 1, 0, True, id="valid"),
    pytest.param((2, 3, 5, 6), (4, 3, 3, 3), 1, 1, True, id="same"),
    pytest.param((2, 2, 7, 6), (3, 2, 3, 2), 2, 1, False, id="stride2_rect"),
    pytest.param((1, 2, 6, 7), (2, 2, 2, 3), (2, 1), (0, 2), True, id="tuple_args"),
    pytest.param((2, 1, 4, 4), (2, 1, 1, 1), 1, 0, True, id="1x1"),
]
POOL = [  # (kernel, stride)
    pytest.param(2, None, id="k2"),
    pytest.param(2, 2, id="k2s2_crop"),  # 5x7 input: the remainder is dropped
    pytest.param(3, 1, id="k3s1_overlap"),
    pytest.param(3, 2, id="k3s2"),
    pytest.param((2, 3), (1, 2), id="rect"),
]


@pytest.mark.parametrize("xs, ws, stride, padding, bias", CONV)
def test_conv2d_forward_matches_loops(xs, ws, stride, padding, bias):
    x, w, b = RNG.standard_normal(xs), RNG.standard_normal(ws), RNG.standard_normal(ws[0])
    xi, wi, bi = gc.input("x", ("n",) + xs[1:], "float64"), gc.input("w", ws, "float64"), gc.input("b", (ws[0],), "float64")
    y = gc.conv2d(xi, wi, bi if bias else None, stride=stride, padding=padding)
    want = np_conv2d(x, w, b if bias else None, pair(stride), pair(padding))
    assert y.shape == ("n",) + want.shape[1:]
    np.testing.assert_allclose(gc.function([xi, wi, bi], y)(x, w, b), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs, ws, stride, padding, bias", CONV)
def test_conv2d_gradients(xs, ws, stride, padding, bias):
    args = [RNG.standard_normal(xs), RNG.standard_normal(ws)] + ([RNG.standard_normal(ws[0])] if bias else [])
    gc.check_grad(lambda x, w, *b: gc.conv2d(x, w, *b, stride=stride, padding=padding), args, order=2)


@pytest.mark.parametrize("kernel, stride", POOL)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_forward_and_gradients(kind, kernel, stride):
    x = RNG.permutation(2 * 3 * 5 * 7).reshape(2, 3, 5, 7) * 0.1 + RNG.uniform(-0.01, 0.01, (2, 3, 5, 7))  # no ties
    op = gc.max_pool2d if kind == "max" else gc.avg_pool2d
    xi = gc.input("x", ("n", 3, 5, 7), "float64")
    want = np_pool(x, pair(kernel), pair(stride or kernel), np.max if kind == "max" else np.mean)
    np.testing.assert_allclose(gc.function([xi], op(xi, kernel, stride))(x), want, rtol=1e-12)
    gc.check_grad(lambda x: op(x, kernel, stride), [x], order=2)


def test_max_pool_ties_share_the_gradient():
    x = gc.input("x", (1, 1, 2, 2), "float64")
    g = gc.grad(gc.sum(gc.max_pool2d(x, 2)), x)
    np.testing.assert_allclose(gc.function([x], g)(np.ones((1, 1, 2, 2))), np.full((1, 1, 2, 2), 0.25))


@pytest.mark.parametrize("xs, ws, stride, padding, bias", CONV)
def test_conv2d_and_pools_match_torch(xs, ws, stride, padding, bias):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b = RNG.standard_normal(xs), RNG.standard_normal(ws), RNG.standard_normal(ws[0])
    xi, wi, bi = gc.input("x", xs, "float64"), gc.input("w", ws, "float64"), gc.input("b", (ws[0],), "float64")
    y = gc.conv2d(xi, wi, bi if bias else None, stride, padding)
    loss = gc.sum(gc.square(gc.max_pool2d(y, 2, 1)) + gc.avg_pool2d(y, 2, 1))
    got = gc.function([xi, wi, bi], [loss, *gc.grad(loss, [xi, wi, bi])])(x, w, b)
    tx, tw, tb = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    ty = F.conv2d(tx, tw, tb if bias else None, stride=stride, padding=padding)
    tl = (F.max_pool2d(ty, 2, 1) ** 2 + F.avg_pool2d(ty, 2, 1)).sum()
    tl.backward()
    for g, t in zip(got, [tl, tx.grad, tw.grad, tb.grad if bias else torch.zeros(ws[0], dtype=torch.float64)]):
        np.testing.assert_allclose(g, t.detach().numpy(), rtol=1e-10, atol=1e-10)


def _train_step(target, debug=False):
    """A conv -> relu -> pool -> conv -> avg-pool -> linear training step with SGD."""
    rng = np.random.default_rng(1)
    x = gc.input("x", ("batch", 2, 6, 6))
    y = gc.input("y", ("batch",), dtype="int64")
    w1 = gc.param("w1", rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.3)
    b1 = gc.param("b1", np.zeros(4, np.float32))
    w2 = gc.param("w2", rng.standard_normal((5, 4, 2, 2)).astype(np.float32) * 0.3)
    W = gc.param("W", rng.standard_normal((5, 3)).astype(np.float32) * 0.3)
    h = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, b1, padding=1)), 2)           # (b, 4, 3, 3)
    h = gc.avg_pool2d(gc.conv2d(h, w2, stride=1), 2)                          # (b, 5, 1, 1)
    loss = gc.softmax_cross_entropy(gc.reshape(h, ("batch", 5)) @ W, y)
    params = [w1, b1, w2, W]
    grads = gc.grad(loss, params)
    f = gc.function([x, y], [loss, *grads], updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)],
                    target=target, debug=debug)
    return f, params


def test_cpu_backend_matches_reference():
    """The generated CPU code (run without the JIT) against the NumPy reference, over three steps."""
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((3, 2, 6, 6)).astype(np.float32) for _ in range(3)]
    ys = [rng.integers(0, 3, 3) for _ in range(3)]
    (ref, pr), (cpu, pc) = _train_step("numpy"), _train_step("cpu", debug=True)
    for xv, yv in zip(xs, ys):
        for a, b in zip(ref(xv, yv), cpu(xv, yv)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    for a, b in zip(pr, pc):
        np.testing.assert_allclose(a.value, b.value, rtol=2e-5, atol=1e-6)


def test_conv_forward_is_three_kernels():
    """Padding (unslice), the patch matrix (one concatenate of strided views) and one matmul
    with the bias in its epilogue; the taps themselves are views, never kernels."""
    x = gc.input("x", ("b", 3, 8, 8))
    w, b = gc.param("w", np.ones((4, 3, 3, 3), np.float32)), gc.param("b", np.ones(4, np.float32))
    f = gc.function([x], gc.conv2d(x, w, b, padding=1))
    assert [k.kind for k in f.kernels] == ["unslice", "concatenate", "matmul"]
    f = gc.function([x], gc.max_pool2d(x, 2))
    assert [k.kind for k in f.kernels] == ["reduce"]  # disjoint windows: a view and one reduction
    f = gc.function([x], gc.max_pool2d(x, 3, 1))
    assert [k.kind for k in f.kernels] == ["loop"]    # overlapping: one elementwise loop over 9 strided views


@pytest.mark.parametrize("build, match", [
    (lambda x: gc.conv2d(x, gc.input("w", (4, 2, 3, 3))), "do not match input"),
    (lambda x: gc.conv2d(gc.input("v", (3, 8, 8)), gc.input("w", (4, 3, 3, 3))), "must be 4-d"),
    (lambda x: gc.conv2d(x, gc.input("w", (4, 3, 9, 3))), "larger than"),
    (lambda x: gc.conv2d(x, gc.input("w", (4, 3, 3, 3)), gc.input("b", (5,))), "bias"),
    (lambda x: gc.conv2d(x, gc.input("w", (4, 3, 3, 3)), stride=0), "stride"),
    (lambda x: gc.max_pool2d(x, 9), "larger than"),
    (lambda x: gc.avg_pool2d(gc.input("v", ("b", "c", 8, 8)), 2), "static"),
])
def test_errors_name_the_problem(build, match):
    with pytest.raises(gc.ShapeError, match=match):
        build(gc.input("x", ("b", 3, 8, 8)))


# --- dilation, groups, conv_transpose2d, padded pooling, interpolate ------------------------------
def distinct(*shape, seed=0):
    """Values with no ties (max pooling's gradient is then defined), not on a lattice."""
    rng = np.random.default_rng(seed)
    return rng.permutation(math.prod(shape)).reshape(shape) * 0.1 + rng.uniform(-0.01, 0.01, shape)


def torch_compare(gc_fn, torch_fn, args, rtol=1e-10, atol=1e-12):
    """Forward and the gradient of sum(out * r) for every argument, against torch autograd (float64)."""
    torch = pytest.importorskip("torch")
    r = RNG.standard_normal
    xs = [gc.input(f"a{i}", a.shape, "float64") for i, a in enumerate(args)]
    out = gc_fn(*xs)
    weights = r(out.shape)
    got = gc.function(xs, [out, *gc.grad(gc.sum(out * gc.constant(weights)), xs)])(*args)
    ts = [torch.tensor(a, requires_grad=True) for a in args]
    t_out = torch_fn(*ts)
    want = [t_out.detach().numpy(), *(g.numpy() for g in torch.autograd.grad((t_out * torch.tensor(weights)).sum(), ts))]
    assert got[0].shape == want[0].shape
    for k, (g, t) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, t, rtol=rtol, atol=atol, err_msg="output" if k == 0 else f"gradient of argument {k - 1}")


CONV_EXT = [  # (x shape, w shape, stride, padding, dilation, groups, bias)
    pytest.param((2, 3, 7, 8), (4, 3, 3, 3), 1, 2, 2, 1, True, id="dilation2"),
    pytest.param((1, 2, 8, 7), (3, 2, 2, 3), (2, 1), (1, 0), (3, 1), 1, False, id="dilation_rect"),
    pytest.param((2, 4, 5, 6), (6, 2, 3, 3), 1, 1, 1, 2, True, id="groups2"),
    pytest.param((2, 3, 5, 5), (3, 1, 3, 3), 2, 1, 1, 3, True, id="depthwise"),
    pytest.param((1, 3, 6, 5), (6, 1, 2, 2), 1, 0, 2, 3, False, id="depthwise_multiplier2_dilated"),
    pytest.param((2, 2, 7, 7), (3, 2, 2, 2), 3, 0, 1, 1, True, id="stride_gt_kernel"),
]
CONVT = [  # (x shape, w shape, stride, padding, output_padding, dilation, groups, bias)
    pytest.param((2, 3, 4, 5), (3, 2, 3, 3), 1, 0, 0, 1, 1, True, id="basic"),
    pytest.param((2, 2, 3, 4), (2, 3, 3, 3), 2, 1, 1, 1, 1, True, id="stride2_output_padding1"),
    pytest.param((1, 2, 4, 3), (2, 2, 2, 3), (1, 2), (0, 1), (1, 0), 2, 1, False, id="dilation2"),
    pytest.param((2, 4, 3, 3), (4, 3, 3, 2), 2, 0, (1, 0), 1, 2, True, id="groups2"),
    pytest.param((1, 3, 4, 4), (3, 1, 3, 3), 2, 1, 0, 1, 3, False, id="depthwise"),
    pytest.param((1, 2, 5, 5), (2, 2, 1, 2), 3, 1, 0, 1, 1, True, id="padding_beyond_kernel"),  # crops the scattered image
    pytest.param((1, 2, 3, 3), (2, 2, 2, 2), 3, 0, 2, 1, 1, True, id="stride_gt_kernel"),
]
PADDED_POOL = [  # (kernel, stride, padding, ceil_mode) on 5x7 images
    pytest.param(3, 2, 1, False, id="pad1"),
    pytest.param(2, 2, 0, True, id="ceil"),  # a last partial window
    pytest.param(3, 2, 1, True, id="pad_ceil"),
    pytest.param(3, 3, 1, True, id="disjoint_pad_ceil"),  # kernel == stride: the reshape path
    pytest.param(2, 3, 0, False, id="stride_gt_kernel"),
    pytest.param(2, 3, 1, True, id="stride_gt_kernel_pad_ceil"),
    pytest.param((3, 2), (2, 1), (1, 0), True, id="rect"),
]
INTERP = [  # (size, scale_factor, mode, align_corners) on 4x5 images
    pytest.param(None, 2, "nearest", None, id="nearest_x2"),
    pytest.param((7, 11), None, "nearest", None, id="nearest_size_not_multiple"),
    pytest.param((3, 2), None, "nearest", None, id="nearest_down"),
    pytest.param(None, (1.5, 0.7), "nearest", None, id="nearest_scale_fraction"),
    pytest.param(None, 2, "bilinear", False, id="bilinear_x2"),
    pytest.param(None, 2, "bilinear", True, id="bilinear_x2_align_corners"),
    pytest.param((7, 11), None, "bilinear", None, id="bilinear_size_not_multiple"),
    pytest.param((7, 11), None, "bilinear", True, id="bilinear_size_align_corners"),
    pytest.param((3, 1), None, "bilinear", True, id="bilinear_down_align_corners"),
    pytest.param(None, (1.5, 0.7), "bilinear", False, id="bilinear_scale_fraction"),
]


@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups, bias", CONV_EXT)
def test_conv2d_dilation_groups(xs, ws, stride, padding, dilation, groups, bias):
    x, w, b = RNG.standard_normal(xs), RNG.standard_normal(ws), RNG.standard_normal(ws[0])
    xi, wi, bi = gc.input("x", ("n",) + xs[1:], "float64"), gc.input("w", ws, "float64"), gc.input("b", (ws[0],), "float64")
    y = gc.conv2d(xi, wi, bi if bias else None, stride, padding, dilation, groups)
    want = np_conv2d(x, w, b if bias else None, pair(stride), pair(padding), pair(dilation), groups)
    assert y.shape == ("n",) + want.shape[1:]
    np.testing.assert_allclose(gc.function([xi, wi, bi], y)(x, w, b), want, rtol=1e-12, atol=1e-12)
    args = [x, w] + ([b] if bias else [])
    gc.check_grad(lambda x, w, *b: gc.conv2d(x, w, *b, stride=stride, padding=padding, dilation=dilation, groups=groups),
                  args, order=2)


@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups, bias", CONV_EXT)
def test_conv2d_dilation_groups_match_torch(xs, ws, stride, padding, dilation, groups, bias):
    F = pytest.importorskip("torch").nn.functional
    args = [RNG.standard_normal(xs), RNG.standard_normal(ws)] + ([RNG.standard_normal(ws[0])] if bias else [])
    torch_compare(lambda x, w, *b: gc.conv2d(x, w, b[0] if b else None, stride, padding, dilation, groups),
                  lambda x, w, *b: F.conv2d(x, w, *(b or [None]), stride, padding, dilation, groups), args)


@pytest.mark.parametrize("xs, ws, stride, padding, output_padding, dilation, groups, bias", CONVT)
def test_conv_transpose2d(xs, ws, stride, padding, output_padding, dilation, groups, bias):
    x, w = RNG.standard_normal(xs), RNG.standard_normal(ws)
    b = RNG.standard_normal(ws[1] * groups)
    xi, wi, bi = gc.input("x", ("n",) + xs[1:], "float64"), gc.input("w", ws, "float64"), gc.input("b", b.shape, "float64")
    y = conv_transpose2d(xi, wi, bi if bias else None, stride, padding, output_padding, dilation, groups)
    want = np_conv_transpose2d(x, w, b if bias else None, pair(stride), pair(padding), pair(output_padding),
                               pair(dilation), groups)
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = pair(stride), pair(padding), pair(output_padding), pair(dilation)
    assert want.shape[2:] == ((xs[2] - 1) * sh - 2 * ph + dh * (ws[2] - 1) + oph + 1,
                              (xs[3] - 1) * sw - 2 * pw + dw * (ws[3] - 1) + opw + 1)
    assert y.shape == ("n",) + want.shape[1:]
    np.testing.assert_allclose(gc.function([xi, wi, bi], y)(x, w, b), want, rtol=1e-12, atol=1e-12)
    gc.check_grad(lambda x, w, *b: conv_transpose2d(x, w, b[0] if b else None, stride, padding, output_padding, dilation, groups),
                  [x, w] + ([b] if bias else []), order=2)


@pytest.mark.parametrize("xs, ws, stride, padding, output_padding, dilation, groups, bias", CONVT)
def test_conv_transpose2d_matches_torch(xs, ws, stride, padding, output_padding, dilation, groups, bias):
    F = pytest.importorskip("torch").nn.functional
    args = [RNG.standard_normal(xs), RNG.standard_normal(ws)] + ([RNG.standard_normal(ws[1] * groups)] if bias else [])
    torch_compare(lambda x, w, *b: conv_transpose2d(x, w, b[0] if b else None, stride, padding, output_padding, dilation, groups),
                  lambda x, w, *b: F.conv_transpose2d(x, w, *(b or [None]), stride, padding, output_padding, groups, dilation),
                  args)


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    """<conv2d(x, w), y> == <x, conv_transpose2d(y, w)> with the same stride, padding and dilation."""
    x, w, y = RNG.standard_normal((2, 4, 9, 8)), RNG.standard_normal((6, 2, 3, 2)), RNG.standard_normal((2, 6, 5, 4))
    kw = dict(stride=2, padding=1, dilation=(1, 2), groups=2)
    xi, wi, yi = (gc.input(k, v.shape, "float64") for k, v in (("x", x), ("w", w), ("y", y)))
    conv, back = gc.conv2d(xi, wi, **kw), conv_transpose2d(yi, wi, output_padding=(0, 1), **kw)
    assert conv.shape == y.shape and back.shape == x.shape
    lhs, rhs = gc.function([xi, wi, yi], [gc.sum(conv * yi), gc.sum(xi * back)])(x, w, y)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", PADDED_POOL)
@pytest.mark.parametrize("kind", ["max", "avg", "avg_exclude_pad"])
def test_padded_and_ceil_mode_pools(kind, kernel, stride, padding, ceil_mode):
    x = distinct(2, 3, 5, 7)
    if kind == "max":
        op = lambda v: gc.max_pool2d(v, kernel, stride, padding, ceil_mode)  # noqa: E731
    else:
        op = lambda v: gc.avg_pool2d(v, kernel, stride, padding, ceil_mode, kind == "avg")  # noqa: E731
    xi = gc.input("x", ("n", 3, 5, 7), "float64")
    want = np_pool2d(x, kind[:3], kernel, stride, padding, ceil_mode, kind == "avg")
    np.testing.assert_allclose(gc.function([xi], op(xi))(x), want, rtol=1e-12)
    gc.check_grad(op, [x], order=2)


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", PADDED_POOL)
def test_padded_pools_match_torch(kernel, stride, padding, ceil_mode):
    F = pytest.importorskip("torch").nn.functional
    x = distinct(2, 3, 5, 7, seed=1) - 3.5  # negative values: the -inf padding must never win
    torch_compare(lambda v: gc.max_pool2d(v, kernel, stride, padding, ceil_mode),
                  lambda v: F.max_pool2d(v, kernel, stride, padding, ceil_mode=ceil_mode), [x])
    for include in (True, False):
        torch_compare(lambda v: gc.avg_pool2d(v, kernel, stride, padding, ceil_mode, include),
                      lambda v: F.avg_pool2d(v, kernel, stride, padding, ceil_mode, include), [x])
    torch_compare(lambda v: gc.avg_pool2d(v, kernel, stride, padding, ceil_mode, divisor_override=5),
                  lambda v: F.avg_pool2d(v, kernel, stride, padding, ceil_mode, divisor_override=5), [x])


def test_max_pool_pads_with_minus_infinity():
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)  # all negative: zero padding would win every border window
    xi = gc.input("x", x.shape, "float64")
    got = gc.function([xi], gc.max_pool2d(xi, 3, 2, 1))(x)
    np.testing.assert_array_equal(got, [[[[-1.0, -2.0], [-5.0, -6.0]]]])


@pytest.mark.parametrize("size, scale_factor, mode, align_corners", INTERP)
def test_interpolate(size, scale_factor, mode, align_corners):
    x = RNG.standard_normal((2, 3, 4, 5))
    gc.check_grad(lambda v: interpolate(v, size, scale_factor, mode, align_corners), [x], order=2)
    F = pytest.importorskip("torch").nn.functional
    torch_compare(lambda v: interpolate(v, size, scale_factor, mode, align_corners),
                  lambda v: F.interpolate(v, size, scale_factor, mode, align_corners), [x])


def test_interpolate_known_values():
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    xi = gc.input("x", x.shape, "float64")
    nearest = gc.function([xi], interpolate(xi, scale_factor=2))(x)
    np.testing.assert_array_equal(nearest, x.repeat(2, 2).repeat(2, 3))
    corners = gc.function([xi], interpolate(xi, size=(3, 5), mode="bilinear", align_corners=True))(x)
    np.testing.assert_allclose(corners[0, 0], [[0, 0.5, 1, 1.5, 2], [1.5, 2, 2.5, 3, 3.5], [3, 3.5, 4, 4.5, 5]])
    half = gc.function([xi], interpolate(xi, size=(2, 6), mode="bilinear"))(x)  # pixel centres: edges clamp
    np.testing.assert_allclose(half[0, 0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2])
    same = interpolate(xi, size=(2, 3), mode="bilinear")
    assert same is xi


# --- the CPU backend on the new ops ---------------------------------------------------------------
CPU_CASES = [
    pytest.param(lambda x, w: gc.conv2d(x, w, stride=2, padding=1, groups=2), (3, 4, 6, 7), (4, 2, 3, 3), id="grouped_conv"),
    pytest.param(lambda x, w: gc.conv2d(x, w, padding=2, dilation=2, groups=4), (2, 4, 6, 6), (8, 1, 3, 3), id="depthwise"),
    pytest.param(lambda x, w: conv_transpose2d(x, w, stride=2, padding=1, output_padding=1, groups=2), (2, 4, 4, 3),
                 (4, 3, 3, 3), id="conv_transpose_groups"),
    pytest.param(lambda x, w: gc.max_pool2d(gc.conv2d(x, w, dilation=(2, 1)), 3, 2, 1, ceil_mode=True), (2, 2, 9, 8),
                 (3, 2, 2, 2), id="max_pool_pad_ceil"),
    pytest.param(lambda x, w: gc.avg_pool2d(conv_transpose2d(x, w), 3, 2, 1, True, count_include_pad=False), (2, 2, 5, 6),
                 (2, 3, 2, 2), id="avg_pool_exclude_pad"),
    pytest.param(lambda x, w: interpolate(gc.conv2d(x, w), size=(7, 9), mode="bilinear"), (2, 2, 4, 5), (3, 2, 1, 1),
                 id="bilinear"),
    pytest.param(lambda x, w: interpolate(gc.conv2d(x, w), scale_factor=(2, 1.5)), (2, 2, 4, 5), (3, 2, 1, 1), id="nearest"),
]


@pytest.mark.parametrize("build, xs, ws", CPU_CASES)
def test_cpu_backend_matches_reference_on_new_ops(build, xs, ws):
    """Forward and gradients of float32 graphs, generated CPU code (run without the JIT) against the
    reference. Each output is multiplied by a random array, so that it is computed by a kernel."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    xi, wi = gc.input("x", ("batch",) + xs[1:]), gc.input("w", ws)
    y = build(xi, wi)
    rand = lambda shape: gc.constant(rng.standard_normal((1,) + shape[1:]).astype(np.float32))  # noqa: E731
    r = rand(y.shape)
    loss = gc.sum(gc.square(y) * r)
    outs = [y * r, *(g * rand(g.shape) for g in gc.grad(loss, [xi, wi]))]
    ref, cpu = (gc.function([xi, wi], outs, target=t, debug=True)(x, w) for t in ("numpy", "cpu"))
    for a, b in zip(ref, cpu):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_new_ops_kernels():
    """Groups: one concatenate and one batched matmul; conv_transpose2d: the scatter into a zero
    image (unslice), patches and a matmul; padded max pooling: the -inf border fuses into the
    window loop; nearest resizing: two gathers."""
    x = gc.input("x", ("b", 4, 8, 8))
    kinds = lambda y: [k.kind for k in gc.function([x], y).kernels]  # noqa: E731
    assert kinds(gc.conv2d(x, gc.param("w", np.ones((4, 1, 3, 3), np.float32)), groups=4)) == ["concatenate", "matmul"]
    assert kinds(gc.conv2d(x, gc.param("w", np.ones((6, 2, 3, 3), np.float32)), padding=1, dilation=2, groups=2)) == \
        ["unslice", "concatenate", "matmul"]
    assert kinds(conv_transpose2d(x, gc.param("w", np.ones((4, 2, 3, 3), np.float32)), stride=2)) == \
        ["unslice", "concatenate", "matmul"]
    assert kinds(gc.max_pool2d(x, 3, 2, 1)) == ["unslice", "loop"]
    assert kinds(gc.max_pool2d(x, 2, 2, 1)) == ["unslice", "reduce"]
    assert kinds(gc.avg_pool2d(x, 3, 1, 1)) == ["unslice", "loop"]
    assert kinds(interpolate(x, scale_factor=2)) == ["take", "take"]


@pytest.mark.parametrize("build, error, match", [
    (lambda x: gc.conv2d(x, gc.input("w", (4, 1, 3, 3)), groups=2), gc.ShapeError, "not divisible by groups=2"),
    (lambda x: gc.conv2d(x, gc.input("w", (5, 1, 3, 3)), groups=3), gc.ShapeError, "5 output channels are not divisible"),
    (lambda x: gc.conv2d(x, gc.input("w", (3, 3, 3, 3)), groups=3), gc.ShapeError, r"expected \(OUT, 1, KH, KW\)"),
    (lambda x: gc.conv2d(x, gc.input("w", (3, 3, 3, 3)), groups=0), gc.ShapeError, "groups"),
    (lambda x: gc.conv2d(x, gc.input("w", (3, 3, 3, 3)), dilation=0), gc.ShapeError, "dilation"),
    (lambda x: gc.conv2d(x, gc.input("w", (3, 3, 3, 3)), dilation=4), gc.ShapeError, "larger than"),
    (lambda x: conv_transpose2d(x, gc.input("w", (2, 3, 3, 3))), gc.ShapeError, r"expected \(3, OUT/1, KH, KW\)"),
    (lambda x: conv_transpose2d(x, gc.input("w", (3, 3, 3, 3)), groups=2), gc.ShapeError, "not divisible by groups=2"),
    (lambda x: conv_transpose2d(x, gc.input("w", (3, 3, 3, 3)), stride=2, output_padding=2), gc.ShapeError,
     "output_padding 2 must be smaller"),
    (lambda x: conv_transpose2d(x, gc.input("w", (3, 3, 1, 1)), padding=5), gc.ShapeError, "not positive"),
    (lambda x: conv_transpose2d(x, gc.input("w", (3, 3, 3, 3)), gc.input("b", (4,))), gc.ShapeError, "bias"),
    (lambda x: gc.max_pool2d(x, 3, padding=2), gc.ShapeError, "at most half"),
    (lambda x: gc.avg_pool2d(x, 2, padding=-1), gc.ShapeError, "non-negative"),
    (lambda x: interpolate(x), gc.ShapeError, "exactly one of size and scale_factor"),
    (lambda x: interpolate(x, size=4, scale_factor=2), gc.ShapeError, "exactly one"),
    (lambda x: interpolate(x, scale_factor=0.1), gc.ShapeError, "empty"),
    (lambda x: interpolate(x, scale_factor=-2), gc.ShapeError, "positive"),
    (lambda x: interpolate(x, size=(4, 0)), gc.ShapeError, "size"),
    (lambda x: interpolate(x, size=4, mode="bicubic"), gc.GraphcError, "mode 'bicubic'"),
    (lambda x: interpolate(x, size=4, align_corners=True), gc.GraphcError, "align_corners"),
    (lambda x: interpolate(gc.input("v", ("b", 3, "h", 8)), size=4), gc.ShapeError, "static"),
])
def test_new_ops_errors(build, error, match):
    with pytest.raises(error, match=match):
        build(gc.input("x", ("b", 3, 8, 8)))
