"""gc.scan on target="cuda" against the NumPy reference: a host loop launching the body's kernels,
compiled once whatever the number of steps. Forward values and gradients of a tanh RNN, reversed
scans, nested carries and nested scans, a symbolic length, strided xs, swapped carries, no steps,
float64, index checks inside a body, and a training trajectory with an optimizer.

As in test_cuda_backend.py: when this process has neither the simulator nor a GPU,
``test_on_the_simulator`` runs this file again in a child process with NUMBA_ENABLE_CUDASIM=1.
Shapes stay tiny: the simulator runs one OS thread per CUDA thread."""
from __future__ import annotations

import ast

import numpy as np
import pytest
from cuda_sim import needs_cuda, run_on_simulator

import graphc as gc

RNG = np.random.default_rng(0)


def test_on_the_simulator(tmp_path):
    """This file's tests, in a child process with the simulator."""
    run_on_simulator(__file__, tmp_path)


def same(ins, outs, feeds, rtol=2e-5, atol=2e-6, **kw):
    """Compile ``outs`` for numpy and cuda; the cuda results equal the reference's."""
    want = gc.function(ins, outs, **kw)(*feeds)
    f = gc.function(ins, outs, target="cuda", **kw)
    got = f(*feeds)
    for w, g in zip(want, got):
        assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return f


def rnn(T, dtype="float32", reverse=False, seed=0):
    W = gc.param("W", np.random.default_rng(seed).standard_normal((3, 3)).astype(dtype) * 0.7)
    xs, h0 = gc.input("xs", (T, 2, 3), dtype), gc.input("h0", (2, 3), dtype)

    def step(h, x):
        h = gc.tanh(x + h @ W)
        return h, h * 2
    hT, hs = gc.scan(step, h0, xs, reverse=reverse)
    loss = gc.sum(hs * hs) + gc.sum(hT)
    return [xs, h0], [loss, hT, hs] + gc.grad(loss, [W, xs, h0])


def feeds(T, dtype="float32"):
    return [RNG.standard_normal((T, 2, 3)).astype(dtype), RNG.standard_normal((2, 3)).astype(dtype)]


# --- values and gradients -----------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("T", [1, 2, 7])
def test_tanh_rnn_forward_and_gradients(T):
    ins, outs = rnn(T)
    f = same(ins, outs, feeds(T))
    assert "for t0 in range(" in f.source and "# final carry 0" in f.source


@needs_cuda
@pytest.mark.parametrize("T", [1, 5])
def test_reversed(T):
    ins, outs = rnn(T, reverse=True)
    f = same(ins, outs, feeds(T))
    assert "the last first" in f.source


@needs_cuda
def test_no_steps():
    """length 0: the final carry is the initial one, the stacked ys are empty."""
    ins, outs = rnn(0)
    same(ins, outs, feeds(0))
    x0 = gc.input("x0", (2,))
    c, ys = gc.scan(lambda c, _: (c * 2.0, c), x0, length=0)
    same([x0], [c, ys], [np.array([1.0, 2.0], np.float32)])


@needs_cuda
def test_nested_tuple_carries_and_ys():
    xs, a0, b0 = gc.input("xs", (4, 3)), gc.input("a0", (3,)), gc.input("b0", (2, 3))
    V = gc.param("V", RNG.standard_normal((3, 3)).astype(np.float32))

    def step(carry, x):
        a, (b, n) = carry
        a = gc.sigmoid(a @ V + x)
        b = b * 0.5 + a
        return (a, (b, n + 1.0)), {"a": a, "pair": (b, gc.sum(b, axis=0))}
    (aT, (bT, nT)), ys = gc.scan(step, (a0, (b0, gc.constant(np.float32(0.0)))), xs)
    loss = gc.sum(ys["a"] ** 2) + gc.sum(ys["pair"][0] * bT) + gc.sum(ys["pair"][1]) + nT
    outs = [loss, aT, bT, nT, ys["a"], ys["pair"][0], ys["pair"][1]] + gc.grad(loss, [V, xs, a0, b0])
    same([xs, a0, b0], outs, [RNG.standard_normal(s).astype(np.float32) for s in ((4, 3), (3,), (2, 3))])


@needs_cuda
def test_symbolic_length_one_module_for_every_length():
    ins, outs = rnn("T")
    ref = gc.function(ins, outs)
    f = gc.function(ins, outs, target="cuda")
    source = f.source
    for T in (3, 6, 3, 1):
        a = feeds(T)
        for w, g in zip(ref(*a), f(*a)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
    assert f.source == source and "range(d_T)" in source


@needs_cuda
def test_xs_a_transposed_view_and_a_closure_a_transposed_param():
    seq = gc.input("seq", (2, 5, 3))  # batch first: the scan runs over axis 1
    W = gc.param("W", RNG.standard_normal((3, 3)).astype(np.float32))

    def step(h, x):
        h = gc.tanh(x + h @ W.T)
        return h, h
    hT, hs = gc.scan(step, gc.sum(seq, axis=1) * 0.1, gc.transpose(seq, (1, 0, 2)))
    loss = gc.sum(hs * hs)
    f = same([seq], [loss, hT, hs, *gc.grad(loss, [W, seq])], [RNG.standard_normal((2, 5, 3)).astype(np.float32)])
    assert "xs 0, copied contiguous for the loop" in f.source


@needs_cuda
def test_a_body_that_swaps_two_carries():
    xs, a0, b0 = gc.input("xs", (5, 2)), gc.input("a0", (2,)), gc.input("b0", (2,))

    def step(c, x):
        a, b = c
        return (b, a + x), a * b
    (aT, bT), ys = gc.scan(step, (a0, b0), xs)
    loss = gc.sum(ys) + gc.sum(aT * 3.0) + gc.sum(bT)
    outs = [aT, bT, ys, *gc.grad(loss, [xs, a0, b0])]
    same([xs, a0, b0], outs, [RNG.standard_normal(s).astype(np.float32) for s in ((5, 2), (2,), (2,))])
    # a carry passed on unchanged, and a carry that is the step's x
    (p, q), ys = gc.scan(lambda c, x: ((c[0], x), c[0] + c[1]), (a0, b0), xs)
    same([xs, a0, b0], [p, q, ys], [RNG.standard_normal(s).astype(np.float32) for s in ((5, 2), (2,), (2,))])


@needs_cuda
def test_integer_and_boolean_carries():
    xs = gc.input("xs", ("T", 3))

    def step(c, x):
        k, seen, total = c
        seen = gc.logical_or(seen, x > 0.5)
        return (k + 1, seen, total + gc.where(seen, x, 0.0)), k * 2
    init = (gc.constant(np.int64(0)), gc.constant(np.zeros(3, bool)), gc.constant(np.zeros(3, np.float32)))
    (k, seen, total), ks = gc.scan(step, init, xs)
    same([xs], [k, seen, total, ks], [RNG.random((4, 3)).astype(np.float32)])


@needs_cuda
def test_float64_stays_float64():
    ins, outs = rnn(4, dtype="float64")
    f = same(ins, outs, feeds(4, "float64"), rtol=1e-12, atol=1e-13)
    assert "float32" not in f.source.split("def k", 1)[1]


def nested():
    xs, h0 = gc.input("xs", (3, 4, 2)), gc.input("h0", (2,))
    U = gc.param("U", RNG.standard_normal((2, 2)).astype(np.float32) * 0.5)

    def outer(h, row):
        def inner(g, x):
            g = gc.tanh(g @ U + x)
            return g, g * g
        g, gs = gc.scan(inner, h, row)
        return g + 0.5 * h, gc.sum(gs, axis=0)
    hT, ys = gc.scan(outer, h0, xs)
    loss = gc.sum(ys) + gc.sum(hT * hT)
    return [xs, h0], [loss, hT, ys, *gc.grad(loss, [U, xs, h0])]


@needs_cuda
def test_nested_scans():
    """A body with a scan of its own: a loop inside the loop, its kernels generated once too."""
    ins, outs = nested()
    f = same(ins, outs, [RNG.standard_normal((3, 4, 2)).astype(np.float32), RNG.standard_normal(2).astype(np.float32)])
    assert "for t0_0 in range(4):" in f.source  # the inner loop is nested in the outer one


@needs_cuda
def test_length_without_xs_and_a_mean_over_a_symbolic_dim():
    x = gc.input("x", ("b", 3))

    def step(c, _):
        c = c - gc.mean(c, axis=0) * 0.5 + 1.0
        return c, gc.mean(c)
    cT, ys = gc.scan(step, x, length=4)
    same([x], [cT, ys, *gc.grad(gc.sum(ys) + gc.sum(cT * cT), [x])], [RNG.standard_normal((5, 3)).astype(np.float32)])


@needs_cuda
@pytest.mark.parametrize("layer", ["GRU", "LSTM"])
def test_recurrent_layers(layer):
    """gc.nn's GRU and LSTM (each a scan over time, input projection hoisted), symbolic T."""
    x = gc.input("x", (2, "T", 3))
    cell = getattr(gc.nn, layer)(3, 4, rng=0)
    hs = cell(x)
    loss = gc.sum(hs * hs)
    same([x], [loss, hs, *gc.grad(loss, [x, *cell.params()])], [RNG.standard_normal((2, 3, 3)).astype(np.float32)])


# --- training -----------------------------------------------------------------------------------
def train(target, opt):
    rng = np.random.default_rng(3)
    Wx = gc.param("Wx", rng.normal(0, 0.5, (3, 4)).astype(np.float32))
    Wh = gc.param("Wh", rng.normal(0, 0.5, (4, 4)).astype(np.float32))
    Wo = gc.param("Wo", rng.normal(0, 0.5, (4, 2)).astype(np.float32))
    xs, y = gc.input("xs", ("T", 2, 3)), gc.input("y", (2,), "int64")

    def step(h, x):
        h = gc.tanh(x @ Wx + h @ Wh)
        return h, gc.sum(h)
    hT, s = gc.scan(step, gc.constant(np.zeros((2, 4), np.float32)), xs)
    loss = gc.softmax_cross_entropy(hT @ Wo, y) + 0.01 * gc.mean(s * s)
    params = [Wx, Wh, Wo]
    optim = gc.optim.Adam(params, lr=0.05) if opt == "adam" else gc.optim.SGD(params, lr=0.1, momentum=0.9)
    f = gc.function([xs, y], loss, updates=optim.updates(loss), target=target)
    data = np.random.default_rng(4)
    losses = [float(f(data.standard_normal((T, 2, 3)).astype(np.float32), np.array([0, 1]))) for T in (3, 3, 5, 2)]
    return losses, [p.value.copy() for p in params]


@needs_cuda
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_trajectory_matches_reference(opt):
    (lr, pr), (lc, pc) = train("numpy", opt), train("cuda", opt)
    np.testing.assert_allclose(lc, lr, rtol=1e-5)
    for a, b in zip(pc, pr):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def body_take(target):
    E = gc.param("E", np.arange(12, dtype=np.float32).reshape(4, 3))
    idx = gc.input("idx", ("T", 2), "int64")

    def step(c, i):
        v = gc.take(E, i + 1)  # computed in the body: range-checked in the kernel
        return c + gc.sum(v, axis=0), v
    cT, vs = gc.scan(step, gc.constant(np.zeros(3, np.float32)), idx)
    loss = gc.sum(cT) + gc.sum(vs * vs)
    f = gc.function([idx], loss, updates=[(E, E - 0.01 * gc.grad(loss, E))], target=target)
    return f, E, lambda i: f(np.array(i))


@needs_cuda
@pytest.mark.parametrize("case", ["in a loop body", "take of y + 3"])
def test_a_failed_index_check_changes_no_param_on_the_device(case):
    """The step stops right after the last kernel that checks an index, before a later kernel
    writes a param in place: a failed call leaves the device copy as it was (the next call
    continues from the same params as the reference's)."""
    from test_index_checks import CASES
    build, good, bad, value, ops = (body_take, [[0, 1], [2, 1]], [[0, 1], [3, 0]], 4, "take") \
        if case == "in a loop body" else CASES[case]
    runs = {}
    for target in ("numpy", "cuda"):
        f, param, call = build(target) if case == "in a loop body" else build(target, {})
        out = [np.asarray(call(good))]
        with pytest.raises(gc.GraphcError, match=rf"^({ops}) \(test_\w+.py:\d+\): index {value} is out of range"):
            call(bad)
        # (not reading param.value here: handing it out would upload the host copy before the next call)
        out.append(np.asarray(call(good)))
        runs[target] = out, param.value.copy()
    for a, b in zip(runs["cuda"][0], runs["numpy"][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(runs["cuda"][1], runs["numpy"][1], rtol=1e-5)


# --- the generated module ------------------------------------------------------------------------
def _structure(source: str) -> tuple:
    tree = ast.parse(source)
    kernels = [fn.name for fn in tree.body if isinstance(fn, ast.FunctionDef) and fn.decorator_list]
    step = next(fn for fn in tree.body if isinstance(fn, ast.FunctionDef) and fn.name == "step")
    return len(source.splitlines()), kernels, len(list(ast.walk(step)))


@needs_cuda
def test_module_does_not_grow_with_the_number_of_steps():
    structures = []
    for T in (3, 9):
        ins, outs = rnn(T)
        f = gc.function(ins, outs, target="cuda")
        structures.append(_structure(f.source))
        a = feeds(T)
        for w, g in zip(gc.function(ins, outs)(*a), f(*a)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
    assert structures[0] == structures[1]
    lines, kernels, _ = structures[0]
    assert any(k.startswith("k0_") for k in kernels)  # the body's kernels, once


@needs_cuda
def test_source_is_readable_and_profile_times_the_loop():
    ins, outs = rnn(3)
    f = gc.function(ins, outs, target="cuda")
    src = f.source
    compile(src, "generated", "exec")
    assert "(forward, test_cuda_scan.py:" in src and "(backward, test_cuda_scan.py:" in src
    assert "# kernel 0: scan over 3 steps (scan (forward, test_cuda_scan.py:" in src
    assert "the next carries become the current ones" in src
    for fn in ast.parse(src).body:  # kernels hold only what real CUDA compiles
        if isinstance(fn, ast.FunctionDef) and fn.decorator_list:
            for node in ast.walk(fn):
                assert not isinstance(node, (ast.Dict, ast.Set, ast.List, ast.ListComp, ast.Try, ast.Lambda)), \
                    ast.unparse(node)
    times = f.profile(*feeds(3), repeat=1)
    assert len(times) == len(f.kernels) and times[0] > 0  # kernel 0, the scan: its body's launches


@needs_cuda
def test_user_names_stay_in_comments():
    name = 'x"""\nimport os; os._exit(3)\n"""'
    xs = gc.input(name, (3, 2))
    W = gc.param(name + "W", np.eye(2, dtype=np.float32))
    hT, hs = gc.scan(lambda h, x: (h @ W + x, h), gc.constant(np.zeros(2, np.float32)), xs)
    same([xs], [hT, hs], [RNG.standard_normal((3, 2)).astype(np.float32)])


# --- PTX: what real CUDA accepts ----------------------------------------------------------------------
def test_loop_body_kernels_compile_to_ptx(tmp_path, monkeypatch):
    from test_cuda_backend import _ptx_ready
    if not _ptx_ready():
        pytest.skip('needs numba-cuda[cu13] (NVVM) outside the simulator: pip install "numba-cuda[cu13]"')
    from graphc.backends.cuda.program import kernel_ptx
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    checked = 0
    for ins, outs in (rnn("T"), nested(), rnn(3, dtype="float32", reverse=True)):
        f = gc.function(ins, outs)  # the reference's program: no GPU needed
        ptx = kernel_ptx(f.program, f.inputs, cc=(9, 0))
        assert any(name.startswith("k0_") for name in ptx)
        for name, text in ptx.items():
            assert ".f64" not in text, f"{name} computes in float64"
            checked += 1
    f = body_take("numpy")[0]  # a body kernel that range-checks an index (takes E)
    assert all(".f64" not in text for text in kernel_ptx(f.program, f.inputs, cc=(9, 0)).values())
    assert checked > 15
