"""The Numba CPU backend against the NumPy reference: every op (as generated Python,
without the JIT), a representative set compiled with Numba, training steps, the param
arena, float32 discipline in the LLVM IR, the disk cache, and bad input."""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_ops_grad import CASES, _draw, _inputs

import graphc as gc

RNG = np.random.default_rng(0)
JIT_CASES = ["exp", "tanh", "sigmoid", "softplus", "where", "max_ax0", "max_tuple", "sum_tuple", "matmul",
             "matmul_batched", "take", "concat_ax0", "slice_step", "sce_int", "layernorm", "one_hot", "relu",
             "logsumexp_ax1_keep", "maximum_bcast"]


def step_graph(fn, args, dtype):
    vals = _draw(args)
    xs, feeds = _inputs(vals, dtype)
    loss = gc.sum(fn(gc, *xs) * 1.5) + 0.5
    return xs, feeds, [loss, *gc.grad(loss, [x for x in xs if x.dtype.kind == "f"])]


@pytest.mark.parametrize("fn, args", CASES)
def test_generated_code_matches_reference(fn, args):
    """Every op, forward and gradient, through the generated code run as plain Python."""
    xs, feeds, outs = step_graph(fn, args, "float64")
    want = gc.function(xs, outs)(*feeds)
    got = gc.function(xs, outs, target="cpu", debug=True)(*feeds)
    for a, b in zip(want, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn, args", [c for c in CASES if c.id in JIT_CASES])
def test_jitted_code_matches_reference(fn, args):
    xs, feeds, outs = step_graph(fn, args, "float32")
    want = gc.function(xs, outs)(*feeds)
    got = gc.function(xs, outs, target="cpu")(*feeds)
    for a, b in zip(want, got):
        assert b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)


def mlp(seed=0, hidden=16):
    rng = np.random.default_rng(seed)
    x = gc.input("x", ("batch", 8))
    y = gc.input("y", ("batch",), dtype="int64")
    W1 = gc.param("W1", rng.normal(0, 0.4, (8, hidden)).astype(np.float32))
    b1 = gc.param("b1", np.zeros(hidden, np.float32))
    W2 = gc.param("W2", rng.normal(0, 0.4, (hidden, 3)).astype(np.float32))
    b2 = gc.param("b2", np.zeros(3, np.float32))
    logits = gc.tanh(x @ W1 + b1) @ W2 + b2
    loss = gc.softmax_cross_entropy(logits, y)
    params = [W1, b1, W2, b2]
    updates = []
    for p, g in zip(params, gc.grad(loss, params)):
        v = gc.param("v_" + p.name, np.zeros(p.shape, np.float32))
        updates += [(v, 0.9 * v + g), (p, p - 0.1 * (0.9 * v + g))]
    return x, y, logits, loss, params, updates


def test_training_trajectory_matches_reference():
    xv, yv = RNG.standard_normal((12, 8)).astype(np.float32), RNG.integers(0, 3, 12)
    runs = {}
    for target in ("numpy", "cpu"):
        x, y, logits, loss, params, updates = mlp()
        step = gc.function([x, y], loss, updates=updates, target=target)
        losses = [float(step(xv[i:i + 4], yv[i:i + 4])) for i in (0, 4, 8, 0, 4)]
        runs[target] = losses, [p.value.copy() for p in params]
    np.testing.assert_allclose(runs["cpu"][0], runs["numpy"][0], rtol=1e-5)
    for a, b in zip(runs["cpu"][1], runs["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_params_are_shared_between_functions_and_with_the_user():
    x, y, logits, loss, params, updates = mlp()
    step = gc.function([x, y], loss, updates=updates, target="cpu")
    predict = gc.function([x], logits, target="cpu")
    predict_ref = gc.function([x], logits)
    xv, yv = RNG.standard_normal((6, 8)).astype(np.float32), RNG.integers(0, 3, 6)
    before = params[0].value.copy()
    step(xv, yv)
    assert not np.array_equal(params[0].value, before)  # W.value is the updated array
    np.testing.assert_allclose(predict(xv), predict_ref(xv), rtol=1e-5, atol=1e-6)
    params[1].value = np.full(params[1].shape, 0.5, np.float32)  # the user sets a param
    np.testing.assert_allclose(predict(xv), predict_ref(xv), rtol=1e-5, atol=1e-6)
    step(xv, yv)
    np.testing.assert_allclose(predict(xv), predict_ref(xv), rtol=1e-5, atol=1e-6)


def test_failed_call_leaves_params_intact():
    x, y, logits, loss, params, updates = mlp()
    step = gc.function([x, y], loss, updates=updates, target="cpu")
    before = [p.value.copy() for p in params]
    with pytest.raises(gc.InputError, match="input y: index 7 is out of range"):
        step(np.ones((2, 8), np.float32), np.array([0, 7]))
    with pytest.raises(gc.InputError, match="cannot be cast safely"):
        step(np.ones((2, 8)), np.array([0, 1]))
    with pytest.raises(gc.InputError, match="dim 'batch'"):
        step(np.ones((2, 8), np.float32), np.array([0, 1, 2]))
    with pytest.raises(gc.InputError, match="expected 2 arguments"):
        step(np.ones((2, 8), np.float32))
    with pytest.raises(gc.InputError, match="expected a numpy array, got list"):
        step([[0.0] * 8], np.array([0]))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.value, b)


def test_symbolic_batch_specializes_per_size():
    x, y, logits, loss, params, updates = mlp()
    f = gc.function([x], logits, target="cpu")
    ref = gc.function([x], logits)
    for n in (3, 5, 3, 1):
        xv = RNG.standard_normal((n, 8)).astype(np.float32)
        np.testing.assert_allclose(f(xv), ref(xv), rtol=1e-5, atol=1e-6)
    assert len(f._program._plans) == 3  # one plan and workspace per batch size


def test_nan_propagates():
    x, y, logits, loss, params, updates = mlp()
    f = gc.function([x], gc.softmax(logits), target="cpu")
    xv = RNG.standard_normal((2, 8)).astype(np.float32)
    xv[0, 3] = np.nan
    out = f(xv)
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


def test_source_is_readable_and_commented():
    x, y, logits, loss, params, updates = mlp()
    f = gc.function([x, y], loss, updates=updates, target="cpu")
    src = f.source
    assert "def step(" in src and "cblas_sgemm(" in src
    assert "(forward, test_cpu_backend.py:" in src and "(backward, test_cpu_backend.py:" in src
    calls = re.findall(r"^    (k_[0-9a-f]+)\(np.array", src, re.M)
    defined = re.findall(r"^def (k_[0-9a-f]+)\(A, B\):", src, re.M)
    assert sorted(defined) == sorted(set(calls))  # each kernel once, however often it is called
    assert len(set(calls)) < len(calls)  # identical kernels (the two layers' updates) share one function
    assert len(calls) >= len(f.kernels)
    compile(src, "generated", "exec")
    assert "cache: " in f.report()


def test_same_model_generates_the_same_module():
    """The cache key must not depend on what the process built before."""
    sources = []
    for junk in (0, 37):
        for _ in range(junk):
            gc.input("junk", (3,)) * 2
        x, y, logits, loss, params, updates = mlp()
        sources.append(gc.function([x, y], loss, updates=updates, target="cpu", debug=True).source)
    assert sources[0] == sources[1]


def test_float32_kernels_have_no_double_in_llvm_ir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))  # compiled here, so the IR is at hand
    from graphc.backends.cpu import library as library
    x = gc.input("x", ("n", 6))
    w = gc.param("w", RNG.standard_normal(6).astype(np.float32))
    z = gc.tanh(x * w + 0.5) * gc.sigmoid(x - w) + gc.softplus(x) + gc.exp(-x * x) + gc.log(x * x + 1) + 1.25
    loss = gc.mean(z) + gc.max(z)
    g = gc.grad(loss, w)
    f = gc.function([x], [loss], updates=[(w, w - 0.01 * g)], target="cpu")
    f(RNG.standard_normal((4, 6)).astype(np.float32))
    kernels = f._program.spec["kernels"]
    for key in {c["key"] for c in f._program.spec["calls"]}:
        ir = library.inspect_llvm(key, kernels[key])
        body = ir.split("define ")[1]  # the kernel itself, before its C wrapper
        assert " double" not in body and "fpext" not in body, f"kernel {key} promotes to float64"


def test_elementwise_step_in_parallel_matches_reference():
    n = 300_000  # above the parallel threshold
    xv = RNG.standard_normal(n).astype(np.float32)
    res = {}
    for target in ("numpy", "cpu"):
        x = gc.input("x", (n,))
        w = gc.param("w", np.linspace(-1, 1, n, dtype=np.float32))
        b = gc.param("b", np.float32(0.1))
        loss = gc.sum(gc.tanh(x * w + b) * gc.sigmoid(x - w) + 0.5 * w * w) / n
        gw, gb = gc.grad(loss, [w, b])
        f = gc.function([x], loss, updates=[(w, w - 0.1 * gw), (b, b - 0.1 * gb)], target=target)
        res[target] = [float(f(xv)) for _ in range(3)], w.value.copy(), b.value.copy()
        if target == "cpu":
            assert len(f.kernels) == 1 and "prange" in f.source
    np.testing.assert_allclose(res["cpu"][0], res["numpy"][0], rtol=1e-5)
    np.testing.assert_allclose(res["cpu"][1], res["numpy"][1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res["cpu"][2], res["numpy"][2], rtol=1e-5)


def test_debug_mode_tracebacks_point_at_generated_code():
    x = gc.input("x", (3,))
    f = gc.function([x], gc.exp(x), target="cpu", debug=True)
    assert f.cache_info.startswith("debug mode")
    np.testing.assert_allclose(f(np.zeros(3, np.float32)), 1.0)


# --- the disk cache -------------------------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import numpy as np, graphc as gc, time
    t = time.perf_counter()
    x = gc.input("x", ("batch", 4)); W = gc.param("W", np.ones((4, 3), np.float32))
    loss = gc.mean(gc.tanh(x @ W))
    f = gc.function([x], loss, updates=[(W, W - 0.1 * gc.grad(loss, W))], target="cpu")
    v = f(np.ones((2, 4), np.float32))
    print(f._program.cache_hit, round(float(v), 5), round(time.perf_counter() - t, 3))
""")


def run_script(cache_dir):
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)


def test_cache_cold_then_warm_in_a_new_process(tmp_path):
    cold = run_script(tmp_path)
    assert cold.returncode == 0, cold.stderr
    warm = run_script(tmp_path)
    assert warm.returncode == 0, warm.stderr
    c, w = cold.stdout.split(), warm.stdout.split()
    assert c[0] == "False" and w[0] == "True" and c[1] == w[1]
    assert float(w[2]) < float(c[2])


def test_corrupted_cache_is_rebuilt(tmp_path):
    assert run_script(tmp_path).returncode == 0
    files = [f for f in tmp_path.rglob("*") if f.is_file() and f.suffix in (".py", ".o", ".json")]
    assert {f.suffix for f in files} == {".py", ".o", ".json"}  # kernel sources, objects, step specs
    for f in files:
        f.write_bytes(b"garbage\x00" * 3)
    again = run_script(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[0] == "False"


def test_two_processes_compile_the_same_step_at_once(tmp_path):
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0].split()[1] == outs[1][0].split()[1]


def test_sgd_on_a_weight_is_one_gemm_in_place():
    """W - lr * (x.T @ g) runs as sgemm with alpha=-lr, beta=1 into W: no temporary, no pass."""
    xv, yv = RNG.standard_normal((12, 8)).astype(np.float32), RNG.integers(0, 3, 12)
    res = {}
    for target in ("numpy", "cpu"):
        rng = np.random.default_rng(1)
        x = gc.input("x", ("batch", 8))
        y = gc.input("y", ("batch",), dtype="int64")
        W = gc.param("W", rng.normal(0, 0.4, (8, 3)).astype(np.float32))
        loss = gc.softmax_cross_entropy(x @ W, y)
        f = gc.function([x, y], loss, updates=[(W, W - 0.5 * gc.grad(loss, W))], target=target)
        res[target] = [float(f(xv, yv)) for _ in range(3)], W.value.copy()
        if target == "cpu":  # the kernel: gemm(alpha=c0, ..., beta=1) into W; the call: c0 = -0.5
            src = f.source
            assert re.search(r"cblas_sgemm\(ROW_MAJOR, TRANS, NO_TRANS, n0, n1, s0, c0, a0, .*, np.float32\(1.0\), o0, .*"
                             r"# sub in place", src)
            assert "bits(-0.5, np.float32)" in src
    np.testing.assert_allclose(res["cpu"][0], res["numpy"][0], rtol=1e-5)
    np.testing.assert_allclose(res["cpu"][1], res["numpy"][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_updates_are_simultaneous_swaps_and_outputs_see_old_params(target):
    a = gc.param("a", np.array([1.0, 2.0, 3.0], np.float32))
    b = gc.param("b", np.array([10.0, 11.0, 12.0], np.float32))
    x = gc.input("x", (3,))
    f = gc.function([x], [a.T * 1, b + x], updates=[(a, b), (b, a)], target=target)
    out_a, out_b = f(np.zeros(3, np.float32))
    np.testing.assert_array_equal(a.value, [10, 11, 12])
    np.testing.assert_array_equal(b.value, [1, 2, 3])
    np.testing.assert_array_equal(out_a, [1, 2, 3])
    np.testing.assert_array_equal(out_b, [10, 11, 12])


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_param_read_at_other_indices_is_not_overwritten_in_place(target):
    """p (shape (4,)) is read by every row of a (3, 4) loop that also updates it."""
    p = gc.param("p", np.arange(4, dtype=np.float32))
    x = gc.input("x", (3, 4))
    y = x * p
    f = gc.function([x], y, updates=[(p, p * 2 + 1)], target=target)
    out = f(np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(out, np.tile(np.arange(4, dtype=np.float32), (3, 1)))
    np.testing.assert_array_equal(p.value, np.arange(4) * 2 + 1)


# --- views as strides: matmul operands, copies, profile -----------------------------------------
LAYOUTS = {
    "plain": lambda a, b: a @ b,
    "a transposed": lambda a, b: gc.transpose(gc.transpose(a) * 1.0) @ b,
    "a.T @ b.T": lambda a, b: gc.transpose(a[:5, :]) @ gc.transpose(b[:, :5]),
    "strided slices": lambda a, b: a[:, ::2] @ b[::2, :],
    "broadcast row": lambda a, b: gc.broadcast_to(a[:1, :], (6, 8)) @ b,
    "broadcast column": lambda a, b: a @ gc.broadcast_to(b[:, :1], (8, 3)),
    "batched, broadcast batch": lambda a, b: gc.reshape(a, (2, 3, 8)) @ b,
    "batched transposed": lambda a, b: gc.swapaxes(gc.reshape(a, (2, 3, 8)), -1, -2) @ gc.reshape(a, (2, 3, 8)),
    "reshape of a transpose (copied)": lambda a, b: gc.reshape(gc.transpose(a), (12, 4)) @ gc.reshape(b, (4, 10)),
    "vector": lambda a, b: a[0] @ b,
}


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_matmul_operand_layouts_and_their_gradients(name, dt):
    """BLAS reads row-major and transposed operands in place; broadcasts and strided merges are
    copied first. Values and gradients against the reference."""
    av, bv = RNG.standard_normal((6, 8)).astype(dt), RNG.standard_normal((8, 5)).astype(dt)
    outs = {}
    for target in ("numpy", "cpu"):
        a, b = gc.input("a", (6, 8), dt), gc.input("b", (8, 5), dt)
        y = LAYOUTS[name](a, b)
        loss = gc.sum(y * y)
        outs[target] = gc.function([a, b], [y, *gc.grad(loss, [a, b])], target=target)(av, bv)
    tol = 1e-4 if dt == "float32" else 1e-10
    for got, want in zip(outs["cpu"], outs["numpy"]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_profile_times_every_kernel():
    x, y, logits, loss, params, updates = mlp()
    f = gc.function([x, y], loss, updates=updates, target="cpu")
    before = [p.value.copy() for p in params]
    times = f.profile(RNG.standard_normal((4, 8)).astype(np.float32), RNG.integers(0, 3, 4), repeat=3)
    assert len(times) == len(f.kernels) and all(t > 0 for t in times)
    assert any(not np.array_equal(p.value, b) for p, b in zip(params, before))  # it ran the steps


def test_outputs_and_updates_that_need_a_contiguous_copy():
    """A reshape strides cannot express, returned as is or committed as an update, is copied first."""
    x = gc.input("x", (2, 2, 6, 6, 3))
    p = gc.param("p", np.zeros((6, 2), np.float32))
    merged = gc.reshape(gc.transpose(x, (1, 0, 4, 2, 3)), (2, 6, 6, 6))
    swap = gc.reshape(gc.transpose(gc.reshape(p + 1, (2, 2, 3)), (2, 1, 0)), (6, 2))
    xv = RNG.standard_normal((2, 2, 6, 6, 3)).astype(np.float32)
    got = gc.function([x], merged, updates=[(p, swap)], target="cpu")(xv), p.value.copy()
    p.value = np.zeros((6, 2), np.float32)
    want = gc.function([x], merged, updates=[(p, swap)])(xv), p.value.copy()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
