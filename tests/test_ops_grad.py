"""Every op: forward against NumPy (float32 and float64, dtype preserved) and
gradients against finite differences, first and second order, in float64.

One table drives both. Each case is ``fn(m, *args)``, written once and run with
``m = gc`` on graph inputs and with ``m = NP`` (direct NumPy formulas, float64) on
arrays. Inputs are drawn away from kinks: relu/abs/max/min never see ties or zeros,
log/sqrt/div/pow only see values in [0.5, 2].
"""
from __future__ import annotations

import math
import types

import numpy as np
import pytest

import graphc as gc

# --- the NumPy side: direct formulas, no tricks ---------------------------------------


def _np_softmax(x, axis=-1):
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def _np_sce(logits, labels):
    logp = np.log(_np_softmax(logits))
    if labels.dtype.kind in "iu":
        return -np.mean(np.take_along_axis(logp, labels[..., None], -1))
    return -np.mean(np.sum(labels * logp, -1))


NP = types.SimpleNamespace(
    exp=np.exp, log=np.log, log1p=np.log1p, tanh=np.tanh, sqrt=np.sqrt, abs=np.abs, square=np.square,
    sigmoid=lambda x: 1 / (1 + np.exp(-x)), softplus=lambda x: np.log(1 + np.exp(x)), relu=lambda x: np.maximum(x, 0),
    maximum=np.maximum, minimum=np.minimum, arctan2=np.arctan2, where=np.where, cast=lambda x, dt: x.astype(dt),
    stop_gradient=lambda x: x,
    sum=np.sum, mean=np.mean, max=np.max, min=np.min,
    logsumexp=lambda x, axis=None, keepdims=False: np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
    matmul=np.matmul, transpose=np.transpose, reshape=np.reshape, broadcast_to=np.broadcast_to,
    concatenate=np.concatenate, expand_dims=np.expand_dims, squeeze=np.squeeze,
    take=lambda x, i, axis=0: np.take(x, i, axis=axis),
    one_hot=lambda idx, depth, dtype="float32": np.eye(depth, dtype=dtype)[idx],
    softmax=_np_softmax, log_softmax=lambda x, axis=-1: np.log(_np_softmax(x, axis)),
    softmax_cross_entropy=_np_sce, mse=lambda p, t: np.mean((p - t) ** 2),
    sin=np.sin, cos=np.cos, tan=np.tan, arcsin=np.arcsin, arccos=np.arccos, arctan=np.arctan, sinh=np.sinh, cosh=np.cosh,
    arcsinh=np.arcsinh, arccosh=np.arccosh, arctanh=np.arctanh, expm1=np.expm1, exp2=np.exp2, log2=np.log2, log10=np.log10,
    erf=lambda x: np.vectorize(math.erf)(x), erfc=lambda x: np.vectorize(math.erfc)(x),
    floor=np.floor, ceil=np.ceil, trunc=np.trunc, round=np.rint, reciprocal=np.reciprocal, rsqrt=lambda x: 1 / np.sqrt(x),
    clip=np.clip, silu=lambda x: x / (1 + np.exp(-x)), softsign=lambda x: x / (1 + np.abs(x)),
    elu=lambda x, a=1.0: np.where(x > 0, x, a * np.expm1(x)), leaky_relu=lambda x, s=0.01: np.where(x > 0, x, s * x),
    hardtanh=lambda x, lo=-1.0, hi=1.0: np.clip(x, lo, hi),
    gelu=lambda x, approximate="none": 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2))) if approximate == "none"
    else 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
    prod=np.prod, var=lambda x, axis=None, correction=1, keepdims=False: np.var(x, axis=axis, ddof=correction, keepdims=keepdims),
    std=lambda x, axis=None, correction=1, keepdims=False: np.std(x, axis=axis, ddof=correction, keepdims=keepdims),
    cumsum=lambda x, axis=None, reverse=False: np.flip(np.cumsum(np.flip(x, axis), axis), axis) if reverse
    else np.cumsum(x, axis),
    cumprod=lambda x, axis=None, reverse=False: np.flip(np.cumprod(np.flip(x, axis), axis), axis) if reverse
    else np.cumprod(x, axis),
    logcumsumexp=lambda x, axis=None, reverse=False: np.log(NP.cumsum(np.exp(x), axis, reverse)),
    sort=lambda x, axis=-1, descending=False: (-np.sort(-x, axis) if descending else np.sort(x, axis), None),
    topk=lambda x, k, axis=-1, largest=True: (np.take(-np.sort(-x, axis) if largest else np.sort(x, axis), range(k), axis), None),
    einsum=np.einsum, where_=np.where,
)

# --- argument kinds ---------------------------------------------------------------------


class A:
    """An argument: its shape and how to draw it."""

    def __init__(self, *shape, kind="normal", off=0.25, high=None):
        self.shape, self.kind, self.off, self.high = shape, kind, off, high

    def draw(self, rng):
        n = int(np.prod(self.shape, dtype=int))
        if self.kind == "normal":
            return rng.standard_normal(self.shape)
        if self.kind == "pos":  # domain of log, sqrt, pow; safe divisor
            return rng.uniform(0.5, 2.0, self.shape)
        if self.kind == "sep":  # distinct, away from 0 and from the other offset's grid: no ties, no kinks
            k = rng.permutation(n) - n // 2 + self.off
            return (0.5 * k + rng.uniform(-0.05, 0.05, n)).reshape(self.shape)
        if self.kind == "int":
            return rng.integers(0, self.high, self.shape)
        if self.kind == "bool":
            return rng.random(self.shape) < 0.5
        if self.kind == "unit":  # inside (-1, 1), away from its ends: arcsin, arccos, arctanh
            return rng.uniform(-0.8, 0.8, self.shape)
        if self.kind == "above1":  # arccosh
            return rng.uniform(1.5, 3.0, self.shape)
        raise AssertionError(self.kind)


def N(*s):
    return A(*s)


def P(*s):
    return A(*s, kind="pos")


def S(*s, off=0.25):
    return A(*s, kind="sep", off=off)


def I(*s, high):  # noqa: E743 - an int argument
    return A(*s, kind="int", high=high)


IDX = np.array([[2, 0], [2, 3]])  # repeats: the adjoint of take must accumulate


def case(name, fn, *args):
    return pytest.param(fn, args, id=name)


CASES = [
    # unary
    case("neg", lambda m, x: -x, N(3, 4)),
    case("exp", lambda m, x: m.exp(x), N(3, 4)),
    case("log", lambda m, x: m.log(x), P(3, 4)),
    case("log1p", lambda m, x: m.log1p(x), P(3, 4)),
    case("tanh", lambda m, x: m.tanh(x), N(3, 4)),
    case("sigmoid", lambda m, x: m.sigmoid(x), N(3, 4)),
    case("softplus", lambda m, x: m.softplus(x), N(3, 4)),
    case("relu", lambda m, x: m.relu(x), S(3, 4)),
    case("sqrt", lambda m, x: m.sqrt(x), P(3, 4)),
    case("abs", lambda m, x: m.abs(x), S(3, 4)),
    case("abs_op", lambda m, x: abs(x) * x, S(3, 4)),
    case("square", lambda m, x: m.square(x), N(3, 4)),
    case("stop_gradient_const", lambda m, x: x * m.stop_gradient(x * 0 + 2.0), N(3, 4)),
    case("scalar_consts", lambda m, x: 2.0 * x + 1 - x / 3 + 0.5 ** x - 1.5 / (x * x + 1), N(3, 4)),
    case("pow_const", lambda m, x: x ** 2 + x ** 0.5 + x ** -1.5, P(3, 4)),
    # binary, with broadcasting
    case("add", lambda m, a, b: a + b, N(3, 4), N(3, 4)),
    case("add_bcast_row", lambda m, a, b: a + b, N(3, 4), N(4)),
    case("sub_bcast_scalar", lambda m, a, b: a - b, N(), N(3, 4)),
    case("mul_outer", lambda m, a, b: a * b, N(3, 1), N(1, 4)),
    case("mul_self", lambda m, a: a * a * a, N(3, 4)),
    case("mul_rank3", lambda m, a, b: a * b, N(2, 1, 4), N(3, 1)),
    case("div", lambda m, a, b: a / b, N(3, 4), P(3, 4)),
    case("div_bcast", lambda m, a, b: a / b, N(4), P(3, 1)),
    case("pow", lambda m, a, b: a ** b, P(3, 4), N(3, 4)),
    case("pow_bcast", lambda m, a, b: a ** b, P(3, 1), N(4)),
    case("maximum", lambda m, a, b: m.maximum(a, b), S(3, 4), S(3, 4, off=0.75)),
    case("maximum_bcast", lambda m, a, b: m.maximum(a, b), S(3, 4), S(4, off=0.75)),
    case("minimum", lambda m, a, b: m.minimum(a, b), S(3, 4), S(3, 4, off=0.75)),
    case("arctan2_bcast", lambda m, a, b: m.arctan2(a, b), N(3, 4), S(4, off=0.75)),
    case("minimum_bcast", lambda m, a, b: m.minimum(a, b), S(3, 1), S(1, 4, off=0.75)),
    case("where", lambda m, c, a, b: m.where(c, a, b), A(3, 4, kind="bool"), N(3, 4), N(3, 4)),
    case("where_bcast", lambda m, c, a, b: m.where(c, a, b), A(3, 1, kind="bool"), N(4), N(3, 4)),
    case("where_cmp", lambda m, a, b: m.where(a > b, a * b, a - b) + m.where(a <= 0, 0.0, a), S(3, 4), S(4, off=0.75)),
    case("where_scalar", lambda m, a: m.where(a < 0, a * a, 1.0), S(3, 4)),
    # reductions, every axis form
    *[case(f"{r}_{tag}", (lambda r, ax, kd: lambda m, x: getattr(m, r)(x, axis=ax, keepdims=kd))(r, ax, kd), S(2, 3, 4))
      for r in ("sum", "mean", "max", "min", "logsumexp")
      for tag, ax, kd in (("all", None, False), ("ax0", 0, False), ("ax1_keep", 1, True), ("axneg", -1, False),
                          ("tuple", (0, 2), False), ("tuple_keep", (1, 2), True), ("all_keep", None, True))],
    case("max_of_row_broadcast", lambda m, x: m.max(x, axis=1, keepdims=True) * x, S(3, 4)),
    # matmul
    case("matmul_2d", lambda m, a, b: a @ b, N(3, 4), N(4, 5)),
    case("matmul_fn", lambda m, a, b: m.matmul(a, b), N(3, 4), N(4, 2)),
    case("matmul_batched", lambda m, a, b: a @ b, N(2, 3, 4), N(2, 4, 5)),
    case("matmul_bcast_batch", lambda m, a, b: a @ b, N(2, 1, 3, 4), N(5, 4, 2)),
    case("matmul_bcast_2d_3d", lambda m, a, b: a @ b, N(3, 4), N(2, 4, 5)),
    case("matmul_vec_mat", lambda m, a, b: a @ b, N(4), N(4, 5)),
    case("matmul_mat_vec", lambda m, a, b: a @ b, N(3, 4), N(4)),
    case("matmul_vec_vec", lambda m, a, b: a @ b, N(4), N(4)),
    case("matmul_vec_batched", lambda m, a, b: a @ b, N(4), N(2, 4, 5)),
    case("matmul_batched_vec", lambda m, a, b: a @ b, N(2, 3, 4), N(4)),
    case("matmul_self_T", lambda m, a: a @ a.T, N(3, 4)),
    # shapes
    case("T", lambda m, x: x.T, N(3, 4)),
    case("transpose_perm", lambda m, x: m.transpose(x, (1, 2, 0)), N(2, 3, 4)),
    case("transpose_neg", lambda m, x: m.transpose(x, (-1, 0, 1)), N(2, 3, 4)),
    case("reshape", lambda m, x: m.reshape(x, (6, 4)), N(2, 3, 4)),
    case("reshape_minus1", lambda m, x: m.reshape(x, (4, -1)), N(2, 3, 4)),
    case("reshape_method", lambda m, x: x.reshape(-1), N(2, 3, 4)),
    case("reshape_method_args", lambda m, x: x.reshape(3, 2, 4), N(2, 3, 4)),
    case("broadcast_to", lambda m, x: m.broadcast_to(x, (2, 3, 4)), N(3, 1)),
    case("broadcast_to_row", lambda m, x: m.broadcast_to(x, (3, 4)), N(4)),
    case("concat_ax0", lambda m, a, b: m.concatenate([a, b], 0), N(2, 4), N(3, 4)),
    case("concat_ax1_3", lambda m, a, b, c: m.concatenate([a, b, c], axis=1), N(3, 1), N(3, 2), N(3, 4)),
    case("concat_axneg_repeat", lambda m, a: m.concatenate([a, a * 2], axis=-1), N(3, 2)),
    case("expand_dims", lambda m, x: m.expand_dims(x, 1), N(3, 4)),
    case("expand_dims_neg", lambda m, x: m.expand_dims(x, -1), N(3, 4)),
    case("squeeze", lambda m, x: m.squeeze(x), N(3, 1, 4, 1)),
    case("squeeze_axis", lambda m, x: m.squeeze(x, 1), N(3, 1, 4, 1)),
    case("slice", lambda m, x: x[1:3], N(4, 5)),
    case("slice_ax1", lambda m, x: x[:, 1:4], N(4, 5)),
    case("slice_step", lambda m, x: x[::2, 1::3], N(4, 5)),
    case("slice_neg", lambda m, x: x[-3:-1], N(4, 5)),
    case("int_index", lambda m, x: x[1], N(4, 5)),
    case("int_index_neg", lambda m, x: x[:, -1], N(4, 5)),
    case("newaxis", lambda m, x: x[:, None] * x[None], N(4, 5)),
    case("ellipsis", lambda m, x: x[..., 1:3] + x[..., 0, None], N(2, 3, 4)),
    case("slice_overlap", lambda m, x: x[0:3] * x[1:4], N(4, 5)),
    case("gather_getitem", lambda m, x: x[IDX], N(4, 3)),
    case("gather_getitem_ax1", lambda m, x: x[:, IDX[0]], N(2, 4, 3)),
    case("gather_getitem_mixed", lambda m, x: x[0, :, IDX[1]], N(3, 5, 4)),
    case("gather_getitem_node", lambda m, x, i: x[i] * x[:, i] + m.sum(x[i[1:3]]), N(4, 4), I(4, high=4)),
    case("take", lambda m, x: m.take(x, IDX), N(4, 3)),
    case("take_ax1", lambda m, x: m.take(x, IDX, axis=1), N(2, 4, 3)),
    case("take_input_idx", lambda m, x, i: m.take(x, i) * 2.0, N(5, 3), I(6, high=5)),
    case("one_hot", lambda m, x, y: m.one_hot(y, 5, x.dtype) * x, N(3, 5), I(3, high=5)),
    # composites
    case("softmax", lambda m, x: m.softmax(x), N(3, 5)),
    case("softmax_ax0", lambda m, x: m.softmax(x, axis=0), N(3, 5)),
    case("log_softmax", lambda m, x: m.log_softmax(x), N(3, 5)),
    case("log_softmax_3d", lambda m, x: m.log_softmax(x, 1), N(2, 3, 4)),
    case("log_of_softmax", lambda m, x: m.log(m.softmax(x)) * m.softmax(x, axis=0), N(3, 5)),
    case("sce_int", lambda m, z, y: m.softmax_cross_entropy(z, y), N(6, 5), I(6, high=5)),
    case("sce_int_3d", lambda m, z, y: m.softmax_cross_entropy(z, y), N(2, 3, 5), I(2, 3, high=5)),
    case("sce_probs", lambda m, z, t: m.softmax_cross_entropy(z, m.softmax(t)), N(4, 5), N(4, 5)),
    case("mse", lambda m, p, t: m.mse(p, t), N(4, 3), N(4, 3)),
    case("mse_bcast", lambda m, p, t: m.mse(p, t), N(4, 3), N(3)),
    case("mlp", lambda m, x, W1, b1, W2: m.tanh(x @ W1 + b1) @ W2, N(5, 4), N(4, 6), N(6), N(6, 3)),
    case("layernorm", lambda m, x: (x - m.mean(x, axis=-1, keepdims=True))
         / m.sqrt(m.mean(m.square(x - m.mean(x, axis=-1, keepdims=True)), axis=-1, keepdims=True) + 1e-5), N(3, 6)),
    # the op surface of issue 12: elementwise
    *[case(op, (lambda op: lambda m, x: getattr(m, op)(x))(op), arg) for op, arg in (
        ("sin", N(3, 4)), ("cos", N(3, 4)), ("tan", A(3, 4, kind="pos")), ("arcsin", A(3, 4, kind="unit")),
        ("arccos", A(3, 4, kind="unit")), ("arctan", N(3, 4)), ("sinh", N(3, 4)), ("cosh", N(3, 4)), ("arcsinh", N(3, 4)),
        ("arccosh", A(3, 4, kind="above1")), ("arctanh", A(3, 4, kind="unit")), ("erf", N(3, 4)), ("erfc", N(3, 4)),
        ("expm1", N(3, 4)), ("exp2", N(3, 4)), ("log2", P(3, 4)), ("log10", P(3, 4)), ("reciprocal", P(3, 4)),
        ("rsqrt", P(3, 4)), ("silu", N(3, 4)), ("softsign", S(3, 4)), ("gelu", N(3, 4)), ("elu", S(3, 4)),
        ("leaky_relu", S(3, 4)), ("hardtanh", S(3, 4)))],
    case("gelu_tanh", lambda m, x: m.gelu(x, approximate="tanh"), N(3, 4)),
    case("clip", lambda m, x: m.clip(x, -0.6, 0.9), S(3, 4)),
    case("rounding", lambda m, x: x * (m.floor(x) + m.ceil(x) * 2 + m.trunc(x) * 3 + m.round(x) * 4), S(3, 4)),
    case("floordiv_mod", lambda m, a, b: a % b + (a // b) * 0.5, S(3, 4), P(4)),
    # reductions and scans
    *[case(f"{r}_{tag}", (lambda r, ax, kd: lambda m, x: getattr(m, r)(x, axis=ax, keepdims=kd))(r, ax, kd), S(2, 3, 4))
      for r in ("prod", "var", "std")
      for tag, ax, kd in (("all", None, False), ("ax1_keep", 1, True), ("tuple", (0, 2), False))],
    case("var_correction0", lambda m, x: m.var(x, axis=1, correction=0), S(3, 4)),
    *[case(f"{r}_{tag}", (lambda r, ax, rev: lambda m, x: getattr(m, r)(x, axis=ax, reverse=rev))(r, ax, rev), S(3, 4))
      for r in ("cumsum", "cumprod", "logcumsumexp")
      for tag, ax, rev in (("ax1", 1, False), ("ax0_rev", 0, True), ("flat", None, False))],
    case("sort_values", lambda m, x: m.sort(x, axis=1)[0] * m.sort(x, axis=0, descending=True)[0], S(3, 4)),
    case("topk_values", lambda m, x: m.topk(x, 2, axis=1)[0], S(3, 4)),
    case("einsum_attention", lambda m, q, k: m.einsum("bqd,bkd->bqk", q, k), N(2, 3, 4), N(2, 5, 4)),
]


def _draw(args, seed=0):
    rng = np.random.default_rng(seed)
    return [a.draw(rng) for a in args]


def _inputs(vals, dtype):
    """Graph inputs for ``vals``, float ones as ``dtype``, plus the arrays to feed them."""
    feeds = [v.astype(dtype) if v.dtype.kind == "f" else v for v in vals]
    xs = [gc.input(f"a{i}", v.shape, v.dtype) for i, v in enumerate(feeds)]
    return xs, feeds


@pytest.mark.parametrize("fn, args", CASES)
def test_grad_first_and_second_order(fn, args):
    gc.check_grad(lambda *xs: fn(gc, *xs), _draw(args), order=2)


@pytest.mark.parametrize("optimize", [True, False], ids=["opt", "noopt"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn, args", CASES)
def test_forward_matches_numpy(fn, args, dtype, optimize):
    """With the passes, and without them: each op's own NumPy reference."""
    vals = _draw(args)
    xs, feeds = _inputs(vals, dtype)
    out = fn(gc, *xs)
    got = gc.function(xs, out, optimize=optimize)(*feeds)
    want = fn(NP, *vals)
    assert out.dtype == np.dtype(dtype)
    assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype) and got.shape == np.shape(want)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == "float32" else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("fn, args", CASES)
def test_float32_stays_float32(fn, args):
    """No silent float64 anywhere: forward, gradients and second-order gradients, Python scalars included."""
    xs, feeds = _inputs(_draw(args), "float32")
    out = fn(gc, *xs)
    loss = gc.sum(out * 1.5) + 0.5
    fl = [x for x in xs if x.dtype.kind == "f"]
    gs = gc.grad(loss, fl)
    gg = gc.grad(sum((gc.sum(g * g) for g in gs), gc.constant(0.0, "float32")), fl)
    for n in gc.toposort([loss, *gs, *gg]):
        assert n.dtype != np.float64, f"{n!r} is float64 in a float32 graph"
    vals = gc.function(xs, [loss, *gs, *gg])(*feeds)
    assert [v.dtype for v in vals] == [np.dtype("float32")] * len(vals)
    assert [v.shape for v in vals[1:]] == [x.shape for x in fl] * 2


# --- ops that check_grad cannot see, and exact adjoints ---------------------------------


def _fd_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


def test_gradient_penalty_grad_of_grad():
    """sum(grad(L, x)**2), differentiated again w.r.t. x and W (WGAN-GP style)."""
    def penalty(x, W):
        L = gc.sum(gc.tanh(x @ W))
        gx = gc.grad(L, x)
        return gc.sum(gx ** 2)

    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)) * 0.5
    gc.check_grad(penalty, [x, W], order=2)
    # the value itself, against the closed form d/dx sum(tanh(xW)) = (1 - tanh(xW)^2) W^T
    xs = [gc.input("x", x.shape, "float64"), gc.input("W", W.shape, "float64")]
    got = gc.function(xs, penalty(*xs))(x, W)
    np.testing.assert_allclose(got, np.sum(((1 - np.tanh(x @ W) ** 2) @ W.T) ** 2), rtol=1e-12)


def test_gradient_penalty_exact_gradient():
    """The full gradient of the penalty, coordinate by coordinate (not only a projection)."""
    rng = np.random.default_rng(1)
    x0, W0 = rng.standard_normal((2, 3)), rng.standard_normal((3, 2))
    x = gc.input("x", (2, 3), "float64")
    W = gc.param("W", W0)
    gx = gc.grad(gc.sum(gc.sigmoid(x @ W) * 3.0), x)
    pen = gc.sum(gc.square(gx))
    gW = gc.grad(pen, W)
    f = gc.function([x], [pen, gW])

    def pen_np(Wv):
        s = 1 / (1 + np.exp(-(x0 @ Wv)))
        return np.sum(((3 * s * (1 - s)) @ Wv.T) ** 2)

    p, g = f(x0)
    np.testing.assert_allclose(p, pen_np(W0), rtol=1e-12)
    np.testing.assert_allclose(g, _fd_grad(pen_np, W0), rtol=1e-6, atol=1e-8)


def test_stop_gradient():
    x = gc.input("x", (3,), "float64")
    xv = np.array([1.0, -2.0, 3.0])
    g = gc.grad(gc.sum(x * gc.stop_gradient(x)), x)
    np.testing.assert_array_equal(gc.function([x], g)(xv), xv)
    g0 = gc.grad(gc.sum(gc.stop_gradient(x * 2)), x)
    np.testing.assert_array_equal(gc.function([x], g0)(xv), np.zeros(3))


def test_softmax_shift_is_stop_gradient_exact():
    """softmax/logsumexp subtract a stop_gradient max; the gradient must still be exact."""
    x = gc.input("x", (2, 4), "float64")
    xv = np.array([[1.0, 5.0, 2.0, 5.0 - 1e-3], [0.0, 0.0, 0.0, 1.0]])  # near-ties in the max
    g = gc.function([x], gc.grad(gc.sum(gc.logsumexp(x, axis=1)), x))(xv)
    np.testing.assert_allclose(g, NP.softmax(xv), rtol=1e-13)


def test_cast_gradient():
    x = gc.input("x", (3, 4), "float64")
    y = gc.exp(gc.cast(gc.cast(x, "float32"), "float64"))
    gx = gc.grad(gc.sum(y), x)
    assert gx.dtype == np.float64
    xv = np.random.default_rng(0).standard_normal((3, 4))
    gc.check_grad(lambda x: gc.exp(gc.cast(x, "float32").astype("float64")) * x, [xv], order=2, eps=1e-3, rtol=2e-3, atol=1e-4)
    p = gc.param("p", np.ones((2,), np.float32))
    gp = gc.grad(gc.sum(gc.cast(p, "float64") * 2.0), p)
    assert gp.dtype == np.float32
    np.testing.assert_array_equal(gc.function([], gp)(), np.full(2, 2.0, np.float32))


def test_max_ties_share_gradient():
    x = gc.input("x", (2, 3), "float64")
    xv = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    g = gc.function([x], gc.grad(gc.sum(gc.max(x, axis=1)), x))(xv)
    np.testing.assert_allclose(g, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    g = gc.function([x], gc.grad(gc.sum(gc.relu(x - 2.0)), x))(xv)
    np.testing.assert_array_equal(g, [[0, 1, 1], [0, 0, 0]])  # relu'(0) == 0


def test_take_adjoint_accumulates_repeats():
    table = gc.param("E", np.zeros((5, 2)))
    idx = gc.input("i", (4,), "int64")
    g = gc.grad(gc.sum(gc.take(table, idx)), table)
    np.testing.assert_array_equal(gc.function([idx], g)(np.array([1, 1, 4, 1])), [[0, 0], [3, 3], [0, 0], [0, 0], [1, 1]])


def test_grad_of_unused_and_integer_paths():
    x = gc.input("x", (3,), "float64")
    y = gc.input("y", ("n",), "float64")
    i = gc.input("i", (3,), "int64")
    loss = gc.sum(x * gc.cast(i, "float64"))
    gx, gy = gc.grad(loss, [x, y])
    assert gy.shape == ("n",)
    vx, vy = gc.function([x, i, y], [gx, gy])(np.ones(3), np.array([1, 2, 3]), np.ones(4))
    np.testing.assert_array_equal(vx, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(vy, np.zeros(4))


def test_symbolic_dims_grad():
    """Gradients through symbolic reshapes, means and broadcasts, checked for two batch sizes."""
    def fn(x, w):
        h = gc.reshape(x, ("b", -1)) @ w
        return gc.mean(gc.tanh(h), axis=0) + gc.mean(h)

    for batch in (2, 5):
        rng = np.random.default_rng(batch)
        x, w = gc.input("x", ("b", 2, 3), "float64"), gc.input("w", (6, 4), "float64")
        assert fn(x, w).shape == (4,)
        xv, wv = rng.standard_normal((batch, 2, 3)), rng.standard_normal((6, 4))
        got = gc.function([x, w], fn(x, w))(xv, wv)
        h = xv.reshape(batch, -1) @ wv
        np.testing.assert_allclose(got, np.tanh(h).mean(0) + h.mean(), rtol=1e-12)
    # check_grad binds the symbolic dims from the arguments
    gc.check_grad(lambda x: gc.mean(gc.square(x), axis=0), [np.random.default_rng(0).standard_normal((5, 3))])


def test_symbolic_products_have_one_spelling():
    b = gc.input("b", ("batch", 3, 4))
    flat = gc.reshape(b, (-1,))
    assert flat.shape == ("12*batch",)
    assert gc.reshape(b, ("batch*12",)).shape == flat.shape
    assert (flat + gc.reshape(b, ("batch*3*4",))).shape == flat.shape
    assert gc.reshape(b, ("3*batch", "2*2")).shape == ("3*batch", 4)
    y = gc.reshape(gc.reshape(b, ("batch*3", 4)), ("batch", 12))
    v = gc.function([b], y)(np.arange(24.0, dtype=np.float32).reshape(2, 3, 4))
    np.testing.assert_array_equal(v, np.arange(24.0).reshape(2, 12))


def test_negative_axes_match_numpy():
    xv = np.random.default_rng(0).standard_normal((2, 3, 4))
    x = gc.input("x", (2, 3, 4), "float64")
    outs = [gc.transpose(x, (-1, 0, -2)), gc.swapaxes(x, -1, 0), gc.expand_dims(x, -4), gc.expand_dims(x, 3),
            gc.sum(x, -2), gc.squeeze(gc.expand_dims(x, -2), -2), gc.concatenate([x, x], -2), x.mT]
    want = [xv.transpose(-1, 0, -2), np.swapaxes(xv, -1, 0), xv[None], xv[..., None], xv.sum(-2), xv,
            np.concatenate([xv, xv], -2), np.swapaxes(xv, -1, -2)]
    for g, w in zip(gc.function([x], outs)(xv), want):
        np.testing.assert_array_equal(g, w)


def test_mixed_precision_gradients_keep_each_dtype():
    x32, x64 = gc.input("x32", (3,)), gc.input("x64", (3,), "float64")
    p16 = gc.param("p16", np.ones(3, np.float16))
    loss = gc.sum(x32 * x64 * gc.cast(p16, "float32"))
    g32, g64, g16 = gc.grad(loss, [x32, x64, p16])
    assert (loss.dtype, g32.dtype, g64.dtype, g16.dtype) == (np.float64, np.float32, np.float64, np.float16)
    vals = gc.function([x32, x64], [g32, g64, g16])(np.ones(3, np.float32), np.full(3, 2.0))
    assert [v.dtype for v in vals] == [np.float32, np.float64, np.float16]
    np.testing.assert_array_equal(vals[0], [2, 2, 2])


def test_float32_symbolic_graph_stays_float32():
    """The training-step shape: symbolic batch, means that count the batch at call time."""
    x, y = gc.input("x", ("batch", 4)), gc.input("y", ("batch",), "int64")
    W = gc.param("W", np.ones((4, 3), np.float32))
    h = gc.reshape(x, ("batch", 2, 2)).mean(axis=(1,)) * 0.5
    loss = gc.softmax_cross_entropy(gc.concatenate([h, h], 1) @ W[:, 0:2], y) + gc.mse(x, 1) + gc.mean(y) * 0.0
    gW = gc.grad(loss, W)
    gx = gc.grad(loss, x)
    pen = gc.grad(gc.sum(gx * gx), W)
    for n in gc.toposort([loss, gW, pen]):
        assert n.dtype != np.float64, n
    vals = gc.function([x, y], [loss, gW, pen])(np.ones((5, 4), np.float32), np.zeros(5, np.int64))
    assert [v.dtype for v in vals] == [np.float32] * 3


def test_logsumexp_of_all_neg_inf_is_neg_inf():
    x = gc.input("x", (2, 3))
    v = gc.function([x], gc.logsumexp(x, axis=1))(np.array([[-np.inf] * 3, [0, -np.inf, 0]], np.float32))
    np.testing.assert_allclose(v, [-np.inf, np.log(2)], rtol=1e-6)


# --- forward-only ops: comparisons, casts, sign, one_hot ---------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_comparisons_and_where_forward(dtype):
    rng = np.random.default_rng(0)
    av, bv = rng.integers(-2, 3, (3, 4)).astype(dtype), rng.integers(-2, 3, (4,)).astype(dtype)
    a, b = gc.input("a", (3, 4), dtype), gc.input("b", (4,), dtype)
    outs = [a < b, a <= b, a > b, a >= b, a == b, a != b, a < 0.5, 1 > a]
    got = gc.function([a, b], outs)(av, bv)
    want = [av < bv, av <= bv, av > bv, av >= bv, av == bv, av != bv, av < 0.5, 1 > av]
    for g, w in zip(got, want):
        assert g.dtype == np.bool_
        np.testing.assert_array_equal(g, w)
    w = gc.function([a, b], gc.where(a > b, a, b * 2))(av, bv)
    assert w.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(w, np.where(av > bv, av, bv * 2))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cast_sign_one_hot_forward(dtype):
    xv = np.array([[-1.5, 0.0, 2.7], [3.2, -0.1, 1e-3]], dtype)
    x = gc.input("x", (2, 3), dtype)
    y = gc.input("y", (2,), "int64")
    outs = [gc.cast(x, "int32"), x.astype("float16"), gc.sign(x), gc.one_hot(y, 4), gc.one_hot(y, 4, dtype),
            gc.cast(y, dtype), gc.mean(y), gc.cast(x > 0, dtype)]
    got = gc.function([x, y], outs)(xv, np.array([3, 0]))
    want = [xv.astype("int32"), xv.astype("float16"), np.sign(xv), np.eye(4, dtype="float32")[[3, 0]],
            np.eye(4, dtype=dtype)[[3, 0]], np.array([3, 0], dtype), np.float32(1.5), (xv > 0).astype(dtype)]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        np.testing.assert_array_equal(g, w)
    assert gc.cast(x, dtype) is x  # a no-op cast adds no node


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_scalars_and_reflected_ops_keep_dtype(dtype):
    x = gc.input("x", (3,), dtype)
    exprs = [np.float64(2.0) * x, x * np.float64(2.0), np.float32(1) - x, 2 ** x, 3 / x, x ** 2, -x + 1,
             gc.maximum(x, 0.5), gc.where(x > 0, x, 0), gc.mean(x) * 2, gc.logsumexp(x) + 1, gc.relu(x) * True]
    xv = np.array([0.5, 1.0, 2.0], dtype)
    for e, v in zip(exprs, gc.function([x], exprs)(xv)):
        assert e.dtype == np.dtype(dtype) and v.dtype == np.dtype(dtype), e


def test_extreme_values_are_stable():
    """sigmoid, softplus, logsumexp, softmax and cross-entropy do not overflow."""
    xv = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0], np.float32)
    x = gc.input("x", (5,))
    sig, sp, lse, sm = gc.function([x], [gc.sigmoid(x), gc.softplus(x), gc.logsumexp(x), gc.softmax(x)])(xv)
    assert np.all(np.isfinite(sig)) and np.all(np.isfinite(sp)) and np.isfinite(lse) and np.all(np.isfinite(sm))
    np.testing.assert_allclose(sig, [0, 9.357623e-14, 0.5, 1, 1], rtol=1e-5)
    np.testing.assert_allclose(sp, [0, 9.357623e-14, np.log(2), 30, 1000], rtol=1e-5)
    np.testing.assert_allclose(lse, 1000.0)
    np.testing.assert_allclose(sm, [0, 0, 0, 0, 1], atol=1e-30)
    z = gc.input("z", (1, 3))
    loss = gc.softmax_cross_entropy(z, np.array([0]))
    gz = gc.grad(loss, z)
    lv, gv = gc.function([z], [loss, gz])(np.array([[0.0, 1000.0, -1000.0]], np.float32))
    np.testing.assert_allclose(lv, 1000.0)
    np.testing.assert_allclose(gv, [[-1, 1, 0]], atol=1e-6)
