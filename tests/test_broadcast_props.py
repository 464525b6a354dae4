"""Property tests: random broadcastable shapes through every elementwise binary op, and
random reshapes/transposes. Forward values equal NumPy; the gradient of
``sum(op(a, b) * r)`` has each operand's shape and equals the NumPy adjoint summed
back over the broadcast axes.

Each property runs on every target against the same NumPy oracle: the reference ("numpy"),
the CPU code generator without the JIT (``target="cpu", debug=True``: plain Python over the
generated kernels, cheap), and the CUDA code generator on Numba's CUDA simulator. The simulator
must be chosen before numba is imported, so ``test_cuda_on_the_simulator`` runs this file again
in a child process (``GRAPHC_PROPS_TARGET=cuda``) with fewer examples (about 10 s)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import graphc as gc

CUDA = os.environ.get("GRAPHC_PROPS_TARGET") == "cuda"  # this process is the simulator child
TARGETS = ["cuda"] if CUDA else ["numpy", "cpu-debug"]
MAX_SIDE, MAX_DIMS = 4, 4  # at most 256 elements: the simulator runs one OS thread per element


def examples(n: int) -> int:
    return 20 if CUDA else n


def compile_for(target: str, ins, outs):
    if target == "cpu-debug":
        return gc.function(ins, outs, target="cpu", debug=True)
    return gc.function(ins, outs, target=target)


def test_cuda_on_the_simulator(tmp_path):
    """This file's properties through the CUDA code generator, in a simulator child process."""
    if CUDA:
        pytest.skip("this process is the simulator child")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", GRAPHC_PROPS_TARGET="cuda", GRAPHC_CACHE_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))]
    res = subprocess.run(cmd, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert " passed" in res.stdout.splitlines()[-1]


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` back to ``shape``: the adjoint of NumPy broadcasting, written independently of graphc."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, d in enumerate(shape) if d == 1), keepdims=True).reshape(shape)


# name -> (graphc op, numpy op, numpy adjoints (r, a, b) -> (da, db), operand domain)
BINARY = {
    "add": (lambda a, b: a + b, np.add, lambda r, a, b: (r, r), "any"),
    "sub": (lambda a, b: a - b, np.subtract, lambda r, a, b: (r, -r), "any"),
    "mul": (lambda a, b: a * b, np.multiply, lambda r, a, b: (r * b, r * a), "any"),
    "div": (lambda a, b: a / b, np.divide, lambda r, a, b: (r / b, -r * a / b ** 2), "pos"),
    "pow": (lambda a, b: a ** b, np.power, lambda r, a, b: (r * b * a ** (b - 1), r * a ** b * np.log(a)), "pos"),
    "maximum": (gc.maximum, np.maximum, lambda r, a, b: (r * (a > b), r * (a <= b)), "any"),
    "minimum": (gc.minimum, np.minimum, lambda r, a, b: (r * (a < b), r * (a >= b)), "any"),
}


def _draw(rng, shape, domain):
    return rng.uniform(0.5, 2.0, shape) if domain == "pos" else rng.standard_normal(shape)


shape_pairs = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=MAX_DIMS, min_side=1, max_side=MAX_SIDE)
shape_triples = mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=MAX_DIMS, min_side=1, max_side=MAX_SIDE)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(BINARY))
@settings(max_examples=examples(30), deadline=None)
@given(shapes=shape_pairs, seed=st.integers(0, 2 ** 16), dtype=st.sampled_from(["float32", "float64"]))
def test_binary_broadcast(target, name, shapes, seed, dtype):
    gop, nop, adjoint, domain = BINARY[name]
    (sa, sb), out_shape = shapes
    rng = np.random.default_rng(seed)
    av, bv, rv = _draw(rng, sa, domain), _draw(rng, sb, domain), rng.standard_normal(out_shape)
    a, b = gc.input("a", sa, "float64"), gc.input("b", sb, "float64")
    out = gop(a, b)
    assert out.shape == out_shape
    ga, gb = gc.grad(gc.sum(out * gc.constant(rv)), [a, b])
    assert ga.shape == sa and gb.shape == sb
    vo, va, vb = compile_for(target, [a, b], [out, ga, gb])(av, bv)
    np.testing.assert_allclose(vo, nop(av, bv), rtol=1e-13)
    wa, wb = adjoint(rv, av, bv)
    np.testing.assert_allclose(va, unbroadcast(np.broadcast_to(wa, out_shape), sa), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(vb, unbroadcast(np.broadcast_to(wb, out_shape), sb), rtol=1e-11, atol=1e-13)
    # the same graph in the other dtype: same values to its precision, and no promotion
    a32, b32 = gc.input("a", sa, dtype), gc.input("b", sb, dtype)
    o32 = gop(a32, b32)
    v32 = compile_for(target, [a32, b32], [o32])(av.astype(dtype), bv.astype(dtype))[0]
    assert o32.dtype == v32.dtype == np.dtype(dtype)
    np.testing.assert_allclose(v32, nop(av.astype(dtype), bv.astype(dtype)), rtol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=examples(40), deadline=None)
@given(shapes=shape_triples, seed=st.integers(0, 2 ** 16))
def test_where_broadcast_triples(target, shapes, seed):
    (sc, sa, sb), out_shape = shapes
    rng = np.random.default_rng(seed)
    cv, av, bv, rv = rng.random(sc) < 0.5, rng.standard_normal(sa), rng.standard_normal(sb), rng.standard_normal(out_shape)
    c, a, b = gc.input("c", sc, "bool"), gc.input("a", sa, "float64"), gc.input("b", sb, "float64")
    out = gc.where(c, a, b)
    ga, gb = gc.grad(gc.sum(out * gc.constant(rv)), [a, b])
    assert (out.shape, ga.shape, gb.shape) == (out_shape, sa, sb)
    vo, va, vb = compile_for(target, [c, a, b], [out, ga, gb])(cv, av, bv)
    np.testing.assert_array_equal(vo, np.where(cv, av, bv))
    cb = np.broadcast_to(cv, out_shape)
    np.testing.assert_allclose(va, unbroadcast(np.where(cb, rv, 0.0), sa), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(vb, unbroadcast(np.where(cb, 0.0, rv), sb), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=examples(40), deadline=None)
@given(shapes=shape_triples, seed=st.integers(0, 2 ** 16))
def test_three_operand_expression(target, shapes, seed):
    """a * b + c / (1 + b*b) - a: an operand used twice, and three broadcasts meeting."""
    (sa, sb, sc), out_shape = shapes
    rng = np.random.default_rng(seed)
    av, bv, cv, rv = (rng.standard_normal(s) for s in (sa, sb, sc, out_shape))
    a, b, c = (gc.input(n, s, "float64") for n, s in zip("abc", (sa, sb, sc)))
    out = a * b + c / (1 + b * b) - a
    grads = gc.grad(gc.sum(out * gc.constant(rv)), [a, b, c])
    vals = compile_for(target, [a, b, c], [out, *grads])(av, bv, cv)
    np.testing.assert_allclose(vals[0], av * bv + cv / (1 + bv * bv) - av, rtol=1e-12)
    want = (rv * bv - rv, rv * av - rv * cv * 2 * bv / (1 + bv * bv) ** 2, rv / (1 + bv * bv))
    for got, w, s in zip(vals[1:], want, (sa, sb, sc)):
        np.testing.assert_allclose(got, unbroadcast(np.broadcast_to(w, out_shape), s), rtol=1e-10, atol=1e-12)


@st.composite
def reshapes(draw):
    """A shape, a permutation of it, and a reshape target built by regrouping its dims."""
    shape = tuple(draw(st.lists(st.integers(1, MAX_SIDE), min_size=0, max_size=MAX_DIMS)))
    perm = tuple(draw(st.permutations(range(len(shape)))))
    dims = list(draw(st.permutations(shape)))
    target = []
    for d in dims:  # merge some neighbours, sprinkle in 1s
        if target and draw(st.booleans()):
            target[-1] *= d
        else:
            target.append(d)
        if draw(st.integers(0, 4)) == 0:
            target.append(1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return shape, perm, tuple(target)


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=examples(50), deadline=None)
@given(case=reshapes(), seed=st.integers(0, 2 ** 16))
def test_reshape_transpose(target, case, seed):
    shape, perm, target_shape = case
    rng = np.random.default_rng(seed)
    xv = rng.standard_normal(shape)
    want = xv.transpose(perm).reshape(target_shape)
    rv = rng.standard_normal(want.shape)
    x = gc.input("x", shape, "float64")
    y = gc.reshape(gc.transpose(x, perm), target_shape)
    assert y.shape == want.shape
    g = gc.grad(gc.sum(y * gc.constant(rv)), x)
    vy, vg = compile_for(target, [x], [y, g])(xv)
    np.testing.assert_array_equal(vy, want)
    np.testing.assert_array_equal(vg, rv.reshape(xv.transpose(perm).shape).transpose(np.argsort(perm)))


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=examples(30), deadline=None)
@given(case=reshapes(), batch=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_symbolic_batch_reshape(target, case, batch, seed):
    """A symbolic leading dim carries through reshapes that keep it as a factor."""
    shape, _, target_shape = case
    target_shape = tuple(d for d in target_shape if d != -1) or (1,)
    x = gc.input("x", ("batch",) + shape, "float64")
    y = gc.reshape(x, ("batch", -1))
    z = gc.reshape(y, ("batch",) + target_shape) if np.prod(target_shape) == np.prod(shape, dtype=int) else y
    g = gc.grad(gc.sum(z * z), x)
    xv = np.random.default_rng(seed).standard_normal((batch,) + shape)
    vz, vg = compile_for(target, [x], [z, g])(xv)
    np.testing.assert_array_equal(vz.ravel(), xv.ravel())
    assert vz.shape[0] == batch
    np.testing.assert_array_equal(vg, 2 * xv)
