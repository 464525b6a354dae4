"""conv2d, max_pool2d and avg_pool2d: composites of slices, unslice, concatenate and matmul.

Gradients to second order against finite differences (float64), forward against direct
NumPy loops and against PyTorch where installed, the CPU backend's generated code against
the reference, the kernels they fuse into, and their errors."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

RNG = np.random.default_rng(0)


def np_conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0)):
    """Direct loops: out[n, o, i, j] = sum_{c,di,dj} xpad[n, c, i*sh + di, j*sw + dj] * w[o, c, di, dj]."""
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, _, h, wd = xp.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out if b is None else out + b[None, :, None, None]


def np_pool(x, k, s, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(x[:, :, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]], axis=(2, 3))
    return out


def pair(v):
    return (v, v) if isinstance(v, int) else v


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
