"""Every op of issue 12's surface against PyTorch: forward values and gradients of sum(out * r), in
float64, on the numpy and cpu targets, including edge cases: zeros, negative zeros, ties, +-inf,
NaN, empty axes and integer limits. NaN must match NaN, and infinities their sign."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch")
F = torch.nn.functional
TARGETS = ["numpy", "cpu"]
EDGE = np.array([-np.inf, -3.5, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.5, np.inf, np.nan])
RNG = np.random.default_rng(0)


def same(got, want, what: str, rtol=1e-9, atol=1e-12) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs torch {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def compare(gc_fn, torch_fn, args, target, grad=True, rtol=1e-9, atol=1e-12):
    """Forward and the gradient of sum(out * r) for every float argument, against torch autograd."""
    xs = [gc.input(f"a{i}", a.shape, a.dtype) for i, a in enumerate(args)]
    out = gc_fn(*xs)
    floats = [k for k, a in enumerate(args) if a.dtype.kind == "f"] if grad else []
    r = np.random.default_rng(1).standard_normal(out.shape)
    grads = gc.grad(gc.sum(out * gc.constant(r)), [xs[k] for k in floats]) if floats else []
    got = gc.function(xs, [out, *grads], target=target)(*args)
    ts = [torch.tensor(a, requires_grad=k in floats) for k, a in enumerate(args)]
    t_out = torch_fn(*ts)
    same(got[0], t_out.detach().numpy(), "forward", rtol, atol)
    if floats:
        t_grads = torch.autograd.grad((t_out * torch.tensor(r)).sum(), [ts[k] for k in floats], allow_unused=True)
        for k, g, tg in zip(floats, got[1:], t_grads):
            same(g, np.zeros_like(g) if tg is None else tg.numpy(), f"gradient of argument {k}", rtol, atol)


UNARY = {  # graphc, torch, the edge values where both are defined (None: all of EDGE)
    "sin": (gc.sin, torch.sin, None), "cos": (gc.cos, torch.cos, None), "tan": (gc.tan, torch.tan, None),
    "arcsin": (gc.arcsin, torch.asin, None), "arccos": (gc.arccos, torch.acos, None), "arctan": (gc.arctan, torch.atan, None),
    "sinh": (gc.sinh, torch.sinh, None), "cosh": (gc.cosh, torch.cosh, None), "arcsinh": (gc.arcsinh, torch.asinh, None),
    "arccosh": (gc.arccosh, torch.acosh, None), "arctanh": (gc.arctanh, torch.atanh, None),
    "erf": (gc.erf, torch.erf, None), "erfc": (gc.erfc, torch.erfc, None), "expm1": (gc.expm1, torch.expm1, None),
    "exp2": (gc.exp2, torch.exp2, None), "log2": (gc.log2, torch.log2, None), "log10": (gc.log10, torch.log10, None),
    "floor": (gc.floor, torch.floor, None), "ceil": (gc.ceil, torch.ceil, None), "trunc": (gc.trunc, torch.trunc, None),
    "round": (gc.round, torch.round, None), "reciprocal": (gc.reciprocal, torch.reciprocal, None),
    "rsqrt": (gc.rsqrt, torch.rsqrt, None), "sign": (gc.sign, torch.sign, None), "relu": (gc.relu, torch.relu, None),
    "gelu": (gc.gelu, F.gelu, None), "gelu_tanh": (lambda x: gc.gelu(x, "tanh"), lambda t: F.gelu(t, approximate="tanh"), None),
    "silu": (gc.silu, F.silu, None), "elu": (lambda x: gc.elu(x, 0.7), lambda t: F.elu(t, 0.7), None),
    "leaky_relu": (lambda x: gc.leaky_relu(x, 0.1), lambda t: F.leaky_relu(t, 0.1), None),
    "softsign": (gc.softsign, F.softsign, None), "hardtanh": (gc.hardtanh, F.hardtanh, None),
    "clip": (lambda x: gc.clip(x, -1.0, 2.0), lambda t: torch.clamp(t, -1.0, 2.0), None),
}
# Where the derivative itself is infinite or undefined, torch's formula and ours may reach NaN or
# inf by different roads; these points are checked for the forward value only.
NO_GRAD_AT = {"arcsin": (-1, 1), "arccos": (-1, 1), "arctanh": (-1, 1), "arccosh": (-1, 1), "rsqrt": (0,), "reciprocal": (0,),
              "log2": (0,), "log10": (0,), "tan": (), "gelu": (-np.inf,), "gelu_tanh": (-np.inf, np.inf), "silu": (-np.inf,),
              "softsign": (-np.inf, np.inf), "exp2": (), "sinh": (), "cosh": (), "elu": (-np.inf,),
              "hardtanh": ()}  # (torch's own hardtanh gradient at NaN is 1 or 0 depending on the array's length)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary_ops_with_edge_cases(name, target):
    ours, theirs, _ = UNARY[name]
    x = np.concatenate([EDGE, [-1.0, 1.0], RNG.uniform(-3, 3, 20)])
    if name == "sign":  # NumPy's sign(NaN) is NaN, torch's 0: graphc follows NumPy
        x = x[~np.isnan(x)]
    compare(ours, theirs, [x], target, grad=False)  # forward on every value, NaN and inf included
    bad = NO_GRAD_AT.get(name, ())
    smooth = x[np.isfinite(x) & ~np.isin(x, bad)] if name in NO_GRAD_AT else x
    compare(ours, theirs, [smooth], target)


@pytest.mark.parametrize("target", TARGETS)
def test_binary_ops_with_edge_cases(target):
    a = np.array([-7.0, -7.0, 7.0, 7.0, -0.0, 5.5, -5.5, np.inf, 3.0, np.nan])
    b = np.array([2.0, -2.0, 2.0, -2.0, 3.0, 0.5, 0.5, 2.0, np.inf, 1.0])
    compare(lambda x, y: x % y, torch.remainder, [a, b], target, grad=False)
    compare(lambda x, y: x // y, lambda x, y: torch.floor_divide(x, y), [a, b], target, grad=False)
    fin = np.isfinite(a) & np.isfinite(b)
    compare(lambda x, y: x % y, torch.remainder, [a[fin], b[fin]], target)
    ai, bi = np.array([-7, 7, -7, 7, 0, 2 ** 62], np.int64), np.array([2, -2, -2, 3, 5, 3], np.int64)
    compare(lambda x, y: x // y, lambda x, y: torch.div(x, y, rounding_mode="floor"), [ai, bi], target)
    compare(lambda x, y: x % y, torch.remainder, [ai, bi], target)
    ties = np.array([1.0, 2.0, 2.0, -0.0, 0.0]), np.array([1.0, 1.0, 3.0, 0.0, -0.0])
    compare(gc.maximum, torch.maximum, list(ties), target)
    compare(gc.minimum, torch.minimum, list(ties), target)
    # every quadrant, the axes, signed zeros and infinities (no gradient at the origin: 0/0 in both)
    y = np.array([1.0, 1.0, -1.0, -1.0, 0.0, -0.0, 0.0, 2.0, np.inf, -3.0])
    x = np.array([1.0, -1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 0.0, 1.0, np.inf])
    compare(gc.arctan2, torch.atan2, [y, x], target, grad=False)
    compare(gc.arctan2, torch.atan2, [np.array([0.5, -2.0, 3.0]), np.array([-1.5, 0.25, 4.0])], target)
    base, expo = np.array([0.0, 0.0, 0.0, 2.0, 1.5]), np.array([0.0, 2.0, 3.5, 0.0, -1.0])
    compare(lambda x, y: x ** y, torch.pow, [base, expo], target)


@pytest.mark.parametrize("target", TARGETS)
def test_logical_ops(target):
    a, b = np.array([0.0, 1.0, -0.0, np.nan, 2.0]), np.array([1.0, 1.0, 0.0, 0.0, np.inf])
    for ours, theirs in ((gc.logical_and, torch.logical_and), (gc.logical_or, torch.logical_or)):
        compare(ours, theirs, [a, b], target, grad=False)
    compare(gc.logical_not, torch.logical_not, [a], target, grad=False)
    compare(lambda x, y: (x > 0) & ~(y > 0) | (x < 0), lambda x, y: (x > 0) & ~(y > 0) | (x < 0), [a, b], target, grad=False)


@pytest.mark.parametrize("target", TARGETS)
def test_reductions_with_ties_zeros_and_nan(target):
    x = np.array([[1.0, 3.0, 3.0, -2.0], [0.0, 5.0, 0.0, 2.0], [0.0, -1.0, 4.0, 4.0]])
    compare(lambda v: gc.prod(v, axis=1), lambda t: torch.prod(t, 1), [x], target)  # one zero, two zeros
    compare(lambda v: gc.prod(v), torch.prod, [x[:, 1:]], target)
    compare(lambda v: gc.min(v, axis=1), lambda t: torch.amin(t, 1), [x], target)  # ties share the gradient
    compare(lambda v: gc.max(v, axis=0), lambda t: torch.amax(t, 0), [x], target)
    for c in (0, 1):
        compare(lambda v: gc.var(v, axis=1, correction=c), lambda t: torch.var(t, 1, correction=c), [x], target)
        compare(lambda v: gc.std(v, axis=0, correction=c), lambda t: torch.std(t, 0, correction=c), [x], target)
    withnan = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 2.0, -1.0, 0.0]])
    for ours, theirs in ((gc.argmax, torch.argmax), (gc.argmin, torch.argmin)):
        compare(lambda v: ours(v, axis=1), lambda t: theirs(t, 1), [x], target, grad=False)  # the first on ties
        compare(lambda v: ours(v, axis=1), lambda t: theirs(t, 1), [withnan], target, grad=False)
        compare(lambda v: ours(v), lambda t: theirs(t), [x], target, grad=False)
    compare(lambda v: gc.any(v, axis=1), lambda t: torch.any(t, 1), [withnan * 0], target, grad=False)
    compare(lambda v: gc.all(v, axis=0), lambda t: torch.all(t, 0), [x], target, grad=False)
    empty = np.zeros((3, 0))
    compare(lambda v: gc.sum(v, axis=1), lambda t: torch.sum(t, 1), [empty], target)
    compare(lambda v: gc.prod(v, axis=1), lambda t: torch.prod(t, 1), [empty], target)


@pytest.mark.parametrize("target", TARGETS)
def test_integer_limits(target):
    for dt, tdt in (("int32", torch.int32), ("int64", torch.int64), ("uint8", torch.uint8)):
        info = np.iinfo(dt)
        v = np.array([[info.min, 0, info.max], [1, info.max, info.min]], dt)
        xs = gc.input("x", v.shape, dt)
        got = gc.function([xs], [gc.min(xs, axis=1), gc.max(xs, axis=0), gc.argmin(xs, 1), gc.argmax(xs, 1)], target=target)(v)
        t = torch.tensor(v.astype(np.int64) if dt == "uint8" else v)
        want = [torch.amin(t, 1), torch.amax(t, 0), torch.argmin(t, 1), torch.argmax(t, 1)]
        for g, w in zip(got, want):
            assert g.tolist() == w.tolist(), (dt, g, w)
        assert tdt is not None


@pytest.mark.parametrize("target", TARGETS)
def test_cumulative_ops(target):
    x = np.array([[0.5, -2.0, 0.0, 3.0, 1.5], [1.0, 0.0, 0.0, -1.0, 2.0], [-700.0, 1.0, 700.0, -np.inf, 2.0]])
    for rev in (False, True):
        flip = (lambda f: lambda t: torch.flip(f(torch.flip(t, [1])), [1])) if rev else (lambda f: f)
        compare(lambda v: gc.cumsum(v, 1, reverse=rev), flip(lambda t: torch.cumsum(t, 1)), [x[:2]], target)
        compare(lambda v: gc.cumprod(v, 1, reverse=rev), flip(lambda t: torch.cumprod(t, 1)), [x[:2]], target)  # zeros
        compare(lambda v: gc.logcumsumexp(v, 1, reverse=rev), flip(lambda t: torch.logcumsumexp(t, 1)), [x], target, grad=False)
        compare(lambda v: gc.logcumsumexp(v, 1, reverse=rev), flip(lambda t: torch.logcumsumexp(t, 1)), [x[:2]], target)
    compare(lambda v: gc.cumsum(v, 0), lambda t: torch.cumsum(t, 0), [x[:2]], target)


@pytest.mark.parametrize("target", TARGETS)
def test_sorting_is_stable_and_matches_torch(target):
    x = np.array([[3.0, 1.0, 2.0, 1.0, -0.5, 2.0], [5.0, -1.0, 5.0, 0.0, 5.0, 2.0]])
    for desc in (False, True):
        compare(lambda v: gc.sort(v, 1, descending=desc)[0], lambda t: torch.sort(t, dim=1, descending=desc, stable=True)[0],
                [x], target)
        compare(lambda v: gc.argsort(v, 1, descending=desc), lambda t: torch.sort(t, dim=1, descending=desc, stable=True)[1],
                [x], target, grad=False)
    compare(lambda v: gc.argsort(v, 0), lambda t: torch.argsort(t, dim=0, stable=True), [x], target, grad=False)
    y = np.array([[3.0, 1.0, 4.0, 1.5, 9.0, 2.6], [2.0, 7.0, 1.0, 8.0, 2.8, 1.8]])  # no ties: topk's order is torch's
    for largest in (True, False):
        compare(lambda v: gc.topk(v, 3, 1, largest)[0], lambda t: torch.topk(t, 3, 1, largest)[0], [y], target)
        compare(lambda v: gc.topk(v, 3, 1, largest)[1], lambda t: torch.topk(t, 3, 1, largest)[1], [y], target, grad=False)
    nan = np.array([2.0, np.nan, -1.0, np.nan, 0.0])
    compare(lambda v: gc.sort(v)[0], lambda t: torch.sort(t, stable=True)[0], [nan], target, grad=False)  # NaN last
    compare(lambda v: gc.sort(v, descending=True)[0], lambda t: torch.sort(t, descending=True, stable=True)[0],
            [nan], target, grad=False)  # NaN first
