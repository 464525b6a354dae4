"""Regression tests for the five wrong answers issue 12 reported, and tie splitting; every test is a
function of the target, so tests/test_cuda_backend.py runs the same checks on the simulator."""
import numpy as np
import pytest

import graphc as gc

TARGETS = ["numpy", "cpu"]


def check_integer_min(target):
    x = gc.input("x", (2,), "int32")
    assert int(gc.function([x], gc.min(x), target=target)(np.array([0, -2 ** 31], np.int32))) == -2 ** 31
    u = gc.input("u", (3,), "uint8")
    assert int(gc.function([u], gc.min(u), target=target)(np.array([0, 1, 2], np.uint8))) == 0
    v = gc.input("v", (2, 3), "int64")
    got = gc.function([v], [gc.min(v, axis=1), gc.max(v, axis=0)], target=target)(
        np.array([[5, -2 ** 63, 7], [2 ** 63 - 1, 3, 4]], np.int64))
    assert got[0].tolist() == [-2 ** 63, 3] and got[1].tolist() == [2 ** 63 - 1, 3, 7]


def check_pow_gradients_at_zero(target):
    x = gc.input("x", (3,), "float64")
    gx = gc.function([x], gc.grad(gc.sum(x ** 0.0), x), target=target)(np.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(gx, [0, 0, 0])
    gy = gc.function([x], gc.grad(gc.sum(0.0 ** x), x), target=target)(np.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(gy, [0, 0, 0])  # torch: 0 where the base is 0 and the exponent >= 0
    b, e = gc.input("b", (2,), "float64"), gc.input("e", (2,), "float64")
    gb, ge = gc.function([b, e], gc.grad(gc.sum(b ** e), [b, e]), target=target)(np.array([0.0, 2.0]), np.array([2.0, 3.0]))
    np.testing.assert_allclose(gb, [0.0, 12.0]) and np.testing.assert_allclose(ge, [0.0, 8 * np.log(2)])


def check_infinities_kept(target):
    x = gc.input("x", (2,))
    out, g = gc.function([x], [1 / gc.sqrt(x), gc.grad(gc.sum(gc.sqrt(x)), x)], target=target)(np.array([0, 4], np.float32))
    assert out[0] == np.inf and out[1] == 0.5 and g[0] == np.inf and g[1] == 0.25


def check_nan_kept(target):
    a, b = gc.input("a", (2,)), gc.input("b", (2,))
    v = a * b
    out = gc.function([a, b], v + (-v), target=target)(np.array([0, 1], np.float32), np.array([np.inf, 2], np.float32))
    assert np.isnan(out[0]) and out[1] == 0 and not np.signbit(out[1])


def check_ties_split(target):
    a, b = gc.input("a", (3,), "float64"), gc.input("b", (3,), "float64")
    av, bv = np.array([1.0, 2.0, 2.0]), np.array([1.0, 1.0, 3.0])
    ga, gb = gc.function([a, b], gc.grad(gc.sum(gc.maximum(a, b)), [a, b]), target=target)(av, bv)
    np.testing.assert_array_equal(ga, [0.5, 1, 0]) and np.testing.assert_array_equal(gb, [0.5, 0, 1])
    ga, gb = gc.function([a, b], gc.grad(gc.sum(gc.minimum(a, b)), [a, b]), target=target)(av, bv)
    np.testing.assert_array_equal(ga, [0.5, 0, 1]) and np.testing.assert_array_equal(gb, [0.5, 1, 0])
    gm = gc.function([a], gc.grad(gc.max(a), a), target=target)(np.array([3.0, 1.0, 3.0]))
    np.testing.assert_array_equal(gm, [0.5, 0, 0.5])
    gr = gc.function([a], gc.grad(gc.sum(gc.relu(a)), a), target=target)(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(gr, [0, 0, 1])  # relu is not maximum(x, 0): torch's 0 at 0


CHECKS = [check_integer_min, check_pow_gradients_at_zero, check_infinities_kept, check_nan_kept, check_ties_split]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__[6:])
def test_fixed(check, target):
    check(target)


def test_float16_is_refused_where_it_cannot_compute():
    x = gc.input("x", (3,), "float16")
    with pytest.raises(gc.DTypeError, match="target='cpu' does not compute in float16.*float32"):
        gc.function([x], x * 2, target="cpu")
    out = gc.function([x], x * 2)(np.ones(3, np.float16))  # the numpy target computes float16
    assert out.dtype == np.float16 and out.tolist() == [2, 2, 2]
