"""In-graph random numbers: reproducible, uniform, the same on every backend."""
import numpy as np
import pytest

import graphc as gc


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_random_uniform_is_reproducible_and_advances_with_the_key(target):
    key = gc.param("key", np.int64(11))
    x = gc.input("x", ("b", 64))
    u = gc.random_uniform(key, ("b", 64), salt=2)
    f = gc.function([x], u, updates=[(key, key + 1)], target=target)
    xs = np.zeros((50, 64), np.float32)
    a, b = f(xs), f(xs)
    key.value = np.int64(11)
    np.testing.assert_array_equal(f(xs), a)  # same key, same numbers
    assert not np.array_equal(a, b)          # the next key, new numbers
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() < 1
    assert abs(a.mean() - 0.5) < 0.02 and abs(a.var() - 1 / 12) < 0.01
    hist = np.histogram(a, bins=10, range=(0, 1))[0]
    assert hist.min() > 0.8 * a.size / 10


def test_backends_and_salts():
    key = gc.input("key", (), dtype="int64")
    u1, u2 = gc.random_uniform(key, (4, 5), salt=1), gc.random_uniform(key, (4, 5), salt=2)
    ref = gc.function([key], [u1, u2])(np.int64(3))
    cpu = gc.function([key], [u1, u2], target="cpu")(np.int64(3))
    for a, b in zip(ref, cpu):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ref[0], ref[1])


def test_random_has_no_gradient_and_rejects_float_keys():
    key = gc.input("key", (), dtype="int64")
    w = gc.param("w", np.ones(3, np.float32))
    loss = gc.sum(w * gc.random_uniform(key, (3,)))
    g = gc.grad(loss, w)
    u = gc.function([key], [gc.random_uniform(key, (3,)), g])(np.int64(0))
    np.testing.assert_allclose(u[1], u[0])
    with pytest.raises(gc.DTypeError):
        gc.random_uniform(gc.input("f", ()), (3,))
