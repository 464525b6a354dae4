"""target="cuda" against the NumPy reference, on Numba's CUDA simulator (no GPU needed) or on a
GPU: every op forward and backward, an MLP training trajectory, params on the device and
``W.value``, device arrays in and out, bad input; and every kernel type-checked as real CUDA
(PTX for sm_90, no f64) where numba-cuda's compiler libraries are installed.

The simulator must be chosen before numba is imported, and a full test run imports numba early,
so when this process has neither the simulator nor a GPU, ``test_on_the_simulator`` runs this
file again in a child process with NUMBA_ENABLE_CUDASIM=1 (about a minute). Shapes stay tiny: the
simulator runs one OS thread per CUDA thread (~90 us each)."""
from __future__ import annotations

import ast

import numpy as np
import pytest
from cuda_sim import ACTIVE, needs_cuda, run_on_simulator
from numba import config
from test_ops_grad import CASES, _draw, _inputs
from test_ops_shape import CASES as SHAPE_CASES

import graphc as gc

RNG = np.random.default_rng(0)


def test_on_the_simulator(tmp_path):
    """This file's tests, in a child process with the simulator."""
    run_on_simulator(__file__, tmp_path)


def test_without_a_gpu_the_error_names_the_simulator():
    if ACTIVE:
        pytest.skip("this process can run CUDA kernels")
    x = gc.input("x", (3,))
    with pytest.raises(gc.GraphcError, match="NUMBA_ENABLE_CUDASIM=1"):
        gc.function([x], gc.exp(x), target="cuda")


# --- the op table -------------------------------------------------------------------------------
def step_graph(fn, args, dtype):
    xs, feeds = _inputs(_draw(args), dtype)
    loss = gc.sum(fn(gc, *xs) * 1.5) + 0.5
    return xs, feeds, [loss, *gc.grad(loss, [x for x in xs if x.dtype.kind == "f"])]


@needs_cuda
@pytest.mark.parametrize("fn, args", CASES)
def test_ops_forward_and_gradients_match_reference(fn, args):
    xs, feeds, outs = step_graph(fn, args, "float32")
    want = gc.function(xs, outs)(*feeds)
    got = gc.function(xs, outs, target="cuda")(*feeds)
    for a, b in zip(want, got):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)


@needs_cuda
@pytest.mark.parametrize("fn, ref, tfn, args", SHAPE_CASES)
def test_rearranging_and_indexing_ops_match_reference(fn, ref, tfn, args):
    """flip/roll/stack/tile/pad/take_along_axis/scatter_add/advanced indexing (test_ops_shape's table):
    the value and the gradient of sum(out * r), on the device against the reference."""
    xs, feeds = _inputs(_draw(args), "float32")
    out = fn(*xs)
    r = gc.constant(np.random.default_rng(1).standard_normal(out.shape).astype(np.float32))
    outs = [out * 2.0, *gc.grad(gc.sum(out * r), [x for x in xs if x.dtype.kind == "f"])]
    want = gc.function(xs, outs)(*feeds)
    got = gc.function(xs, outs, target="cuda")(*feeds)
    for a, b in zip(want, got):
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)


F64 = ["exp", "softplus", "pow_bcast", "max_tuple", "logsumexp_ax1_keep", "matmul_batched", "take_ax1", "sce_int",
       "layernorm", "slice_step", "concat_ax1_3"]


@needs_cuda
@pytest.mark.parametrize("fn, args", [c for c in CASES if c.id in F64])
def test_float64_graphs_stay_float64(fn, args):
    xs, feeds, outs = step_graph(fn, args, "float64")
    want = gc.function(xs, outs)(*feeds)
    got = gc.function(xs, outs, target="cuda")(*feeds)
    for a, b in zip(want, got):
        assert b.dtype == np.float64
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


@needs_cuda
def test_block_reductions_and_full_tiles():
    """Long rows reduce in a shared-memory tree (one block per row); a 17x10 product uses 16x16 tiles."""
    x, a, b = gc.input("x", (2, 70)), gc.input("a", (17, 18)), gc.input("b", (18, 10))
    outs = [gc.softmax(x), gc.logsumexp(x), gc.max(x), gc.tanh(a @ b) + 1.0]
    feeds = [RNG.standard_normal(s).astype(np.float32) for s in ((2, 70), (17, 18), (18, 10))]
    f = gc.function([x, a, b], outs, target="cuda")
    assert "rows(" in f.source and "16x16 tiles" in f.source
    for g, w in zip(f(*feeds), gc.function([x, a, b], outs)(*feeds)):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


# --- training -------------------------------------------------------------------------------------
def mlp(seed=0, hidden=6):  # hidden <= 8: 8x8 matmul tiles, cheap in the simulator
    rng = np.random.default_rng(seed)
    x, y = gc.input("x", ("batch", 8)), gc.input("y", ("batch",), dtype="int64")
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


XV, YV = RNG.standard_normal((12, 8)).astype(np.float32), RNG.integers(0, 3, 12)


@needs_cuda
def test_training_trajectory_matches_reference():
    runs = {}
    for target in ("numpy", "cuda"):
        x, y, logits, loss, params, updates = mlp()
        step = gc.function([x, y], loss, updates=updates, target=target)
        losses = [float(step(XV[i:i + 4], YV[i:i + 4])) for i in (0, 4, 8, 0, 4)]
        runs[target] = losses, [p.value.copy() for p in params]
    np.testing.assert_allclose(runs["cuda"][0], runs["numpy"][0], rtol=1e-5)
    for a, b in zip(runs["cuda"][1], runs["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@needs_cuda
def test_params_stay_on_the_device_and_value_syncs_on_read():
    x, y, logits, loss, params, updates = mlp()
    W1 = params[0]
    step = gc.function([x, y], loss, updates=updates, target="cuda")
    predict, predict_cpu = gc.function([x], logits, target="cuda"), gc.function([x], logits, target="cpu")
    predict_ref = gc.function([x], logits)
    st = W1._param
    before = W1.value.copy()
    step(XV[:4], YV[:4])
    assert st._host_stale  # the step changed the device copy only
    assert not np.array_equal(W1.value, before)  # reading downloads it
    assert not st._host_stale
    for f in (predict, predict_cpu):  # both see the updated weights
        np.testing.assert_allclose(f(XV), predict_ref(XV), rtol=1e-5, atol=1e-6)
    params[1].value = np.full(params[1].shape, 0.5, np.float32)  # set by the user: uploaded before the next step
    np.testing.assert_allclose(predict(XV), predict_ref(XV), rtol=1e-5, atol=1e-6)
    W1.value[0, :] = 0.0  # written through the array .value handed out, as with the CPU target
    np.testing.assert_allclose(predict(XV), predict_ref(XV), rtol=1e-5, atol=1e-6)
    step(XV[:4], YV[:4])
    predict_cpu(XV)  # the CPU target reads the value, and writes its own updates in place
    gc.function([x, y], loss, updates=updates, target="cpu")(XV[4:8], YV[4:8])
    np.testing.assert_allclose(predict(XV), predict_ref(XV), rtol=1e-5, atol=1e-6)


@needs_cuda
def test_params_are_slices_of_one_arena_that_move_between_functions():
    """A program lays its params out as the CPU does (common/layout.py): one device array per dtype,
    each param a slice of it. Two steps that update different params (so different layouts) take
    turns; each moves the params it shares with the other into its own arena, on the device."""
    res = {}
    for target in ("numpy", "cuda"):
        x, y, logits, loss, params, updates = mlp()
        both = gc.function([x, y], loss, updates=updates, target=target)
        last = gc.function([x, y], loss, updates=[(p, p - 0.05 * g) for p, g in zip(params[2:], gc.grad(loss, params[2:]))],
                           target=target)
        for j in range(4):
            (both if j % 2 == 0 else last)(XV[4 * j:4 * j + 4], YV[4 * j:4 * j + 4])
        res[target] = [p.value.copy() for p in params]
        if target == "cuda":
            prog = both._program
            assert len(prog.arenas) == 1 and prog.arenas[0].size == sum(p.value.size for p in prog.params)
            assert "P_float32[0:48]  # param 0: float32(8, 6)" in both.source
    for a, b in zip(res["cuda"], res["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_cuda
def test_update_read_by_every_thread_is_not_written_in_place():
    """A step counter read by every element's update: written in place it would race (t += 1 per thread)."""
    res = {}
    for target in ("numpy", "cuda"):
        x, w = gc.input("x", (4, 40)), gc.param("w", np.ones((4, 40), np.float32))
        t = gc.param("t", np.float32(0.0))
        loss = gc.sum(w * x)
        t1 = t + 1.0
        f = gc.function([x], loss, updates=[(t, t1), (w, w - 0.1 * gc.grad(loss, w) * t1)], target=target)
        for _ in range(3):
            f(XV[:4, :5].repeat(8, axis=1))
        res[target] = t.value.copy(), w.value.copy()
    assert res["cuda"][0] == 3.0
    np.testing.assert_allclose(res["cuda"][1], res["numpy"][1], rtol=1e-5)


@needs_cuda
def test_updates_that_swap_params_read_the_old_values():
    x = gc.input("x", (3,))
    a, b = gc.param("a", np.arange(3, dtype=np.float32)), gc.param("b", np.arange(3, dtype=np.float32) + 10)
    gc.function([x], gc.sum(a * x), updates=[(a, b), (b, a)], target="cuda")(np.ones(3, np.float32))
    np.testing.assert_array_equal(a.value, [10, 11, 12])
    np.testing.assert_array_equal(b.value, [0, 1, 2])


@needs_cuda
def test_failed_call_leaves_params_intact():
    x, y, logits, loss, params, updates = mlp()
    step = gc.function([x, y], loss, updates=updates, target="cuda")
    step(XV[:4], YV[:4])
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


@needs_cuda
def test_device_arrays_in_and_out():
    from numba import cuda
    x, y, logits, loss, params, updates = mlp()
    ref = gc.function([x, y], [loss, logits])(XV[:4], YV[:4])
    f = gc.function([x, y], [loss, logits], target="cuda", device_arrays=True)
    dx, dy = cuda.to_device(XV[:4]), cuda.to_device(YV[:4])
    out = f(dx, dy)
    assert all(hasattr(o, "copy_to_host") and not isinstance(o, np.ndarray) for o in out)
    assert out[1].shape == (4, 3)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o.copy_to_host(), r, rtol=1e-5, atol=1e-6)
    again = f(dx, dy)  # results are fresh arrays, not views of the workspace
    np.testing.assert_array_equal(out[1].copy_to_host(), again[1].copy_to_host())
    assert out[1] is not again[1]
    with pytest.raises(gc.InputError, match="device array of dtype float64"):
        f(cuda.to_device(XV[:4].astype(np.float64)), dy)
    with pytest.raises(gc.InputError, match="index 5 is out of range"):  # checked on a host copy of the indices
        f(dx, cuda.to_device(np.array([0, 1, 2, 5])))
    mixed = gc.function([x, y], logits, target="cuda")(dx, YV[:4])  # device and host inputs together
    np.testing.assert_allclose(mixed, ref[1], rtol=1e-5, atol=1e-6)


@needs_cuda
def test_symbolic_batch_specializes_per_size():
    x, y, logits, loss, params, updates = mlp()
    f, ref = gc.function([x], logits, target="cuda"), gc.function([x], logits)
    for n in (3, 5, 3, 1):
        np.testing.assert_allclose(f(XV[:n]), ref(XV[:n]), rtol=1e-5, atol=1e-6)
    assert len(f._program._workspaces) == 3


@needs_cuda
def test_nan_propagates_and_outputs_of_every_kind():
    x, y, logits, loss, params, updates = mlp()
    xv = XV[:2].copy()
    xv[0, 3] = np.nan
    out = gc.function([x], gc.softmax(logits), target="cuda")(xv)
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
    # a param, an input, a transposed buffer and a constant as outputs; the param is returned before its update
    W2 = params[2]
    outs = [W2, x, logits.T, gc.constant(np.arange(3.0, dtype=np.float32))]
    upd = [(W2, W2 * 2.0)]
    want = [W2.value.copy(), XV[:2], gc.function([x], logits)(XV[:2]).T, np.arange(3.0)]
    got = gc.function([x], outs, updates=upd, target="cuda")(XV[:2])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(W2.value, 2 * want[0])


def _views_of_inputs(variant):
    """Outputs that are views of sources: the gradient of ``a`` is ``b`` broadcast (the reported
    case), an input itself, a transposed input, a broadcast of a param that the step updates."""
    a, b = gc.input("a", (5, 2, 3), "float64"), gc.input("b", (3,), "float64")
    loss = gc.sum((a - b) * b)
    ga, gb = gc.grad(loss, [a, b])
    if variant == "grads":
        return [a, b], [loss, ga, gb], None
    if variant == "input":
        return [a, b], [a, loss, b, ga], None
    if variant == "transposed":
        return [a, b], [gc.transpose(a, (2, 0, 1)), a.T, ga.T, gb], None
    w = gc.param("w", np.linspace(-1, 1, 3))
    lw = gc.sum((a - w) * w)
    gw = gc.grad(lw, w)  # the output is w before the update, broadcast
    return [a], [gc.broadcast_to(w, (5, 2, 3)), gc.broadcast_to(gc.expand_dims(w, 0), (4, 3)).T, lw], [(w, w - 0.1 * gw)]


@needs_cuda
@pytest.mark.parametrize("variant", ["grads", "input", "transposed", "param"])
def test_outputs_that_are_views_of_inputs_and_params(variant):
    rng = np.random.default_rng(3)
    feeds = [rng.standard_normal((5, 2, 3)), rng.standard_normal(3)]
    res = {}
    for target in ("numpy", "cuda"):
        ins, outs, upd = _views_of_inputs(variant)
        f = gc.function(ins, outs, updates=upd, target=target)
        res[target] = [f(*feeds[:len(ins)]) for _ in range(2)]  # twice: the second call sees the update
    for want, got in zip(res["numpy"], res["cuda"]):
        for w, g in zip(want, got):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


@needs_cuda
def test_source_is_readable_and_commented():
    x, y, logits, loss, params, updates = mlp()
    f = gc.function([x, y], loss, updates=updates, target="cuda")
    src = f.source
    assert "def step(" in src and "cuda.syncthreads()" in src and "cuda.shared.array((" in src
    assert "(forward, test_cuda_backend.py:" in src and "(backward, test_cuda_backend.py:" in src
    assert src.count("@cuda.jit(cache=CACHE)") == len(f.kernels) + 2  # + fill0 and copy
    for fn in ast.parse(src).body:  # kernels hold only what real CUDA compiles
        if isinstance(fn, ast.FunctionDef) and fn.decorator_list:
            for node in ast.walk(fn):
                assert not isinstance(node, (ast.Dict, ast.Set, ast.List, ast.ListComp, ast.DictComp, ast.SetComp,
                                             ast.GeneratorExp, ast.Try, ast.Lambda, ast.With)), ast.unparse(node)
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "cuda.shared.array":
                    shape = node.args[0]
                    sizes = [e.value for e in (shape.elts if isinstance(shape, ast.Tuple) else [shape])]
                    assert all(isinstance(v, int) for v in sizes) and np.prod(sizes) * 8 * 2 <= 48 * 1024
    compile(src, "generated", "exec")
    assert "cache: " in f.report() and "kernels for" in f.report()
    assert len(f.profile(XV[:4], YV[:4], repeat=1)) == len(f.kernels)


# --- PTX: what real CUDA accepts ---------------------------------------------------------------------
PTX_CASES = ["scalar_consts", "pow_bcast", "where_cmp", "sum_tuple", "max_ax1_keep", "logsumexp_all", "matmul_batched",
             "matmul_bcast_2d_3d", "transpose_perm", "concat_ax1_3", "slice_step", "gather_getitem_node", "take_ax1",
             "one_hot", "softmax", "sce_int_3d", "layernorm", "softplus", "abs_op"]


def _ptx_ready() -> bool:
    if config.ENABLE_CUDASIM:
        return False
    try:
        from numba import cuda
        cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(9, 0))
        return True
    except Exception:  # no numba-cuda, or no NVVM (pip install "numba-cuda[cu13]")
        return False


def test_every_kernel_compiles_to_ptx_without_f64(tmp_path, monkeypatch):
    if not _ptx_ready():
        pytest.skip('needs numba-cuda[cu13] (NVVM) outside the simulator: pip install "numba-cuda[cu13]"')
    from graphc.backends.cuda.program import kernel_ptx
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    graphs = [(xs, outs, None) for xs, _, outs in (step_graph(*c.values, "float32") for c in CASES if c.id in PTX_CASES)]
    x, y, logits, loss, params, updates = mlp(hidden=32)  # 16x16 tiles, a grid reduction over the batch
    graphs.append(([x, y], [loss], updates))
    x2, a, b = gc.input("x", (2, 70)), gc.input("a", (17, 18)), gc.input("b", (18, 10))  # block reductions
    graphs.append(([x2, a, b], [gc.softmax(x2), gc.logsumexp(x2), gc.max(x2), gc.tanh(a @ b) + 1.0], None))
    v, w, t = gc.input("v", (4, 40)), gc.param("w", np.ones((4, 40), np.float32)), gc.param("t", np.float32(0))
    loss = gc.sum(w * v)  # a staged in-place update, swapped params
    graphs.append(([v], [loss], [(t, t + 1.0), (w, w - gc.grad(loss, w) * (t + 1.0)), (params[1], params[3][:1])]))
    checked = 0
    for xs, outs, upd in graphs:
        f = gc.function(xs, outs, updates=upd)  # the reference's program: no GPU needed
        for name, ptx in kernel_ptx(f.program, f.inputs, cc=(9, 0)).items():
            assert ".f64" not in ptx, f"{name} computes in float64"
            checked += 1
    assert checked > 40


@needs_cuda
@pytest.mark.parametrize("name, dim", [('x"""\nimport os; os._exit(3)\n"""', "class"), ("x y", "in_x"), ("W\nb", "p0"),
                                       ("\u2028#", "W_float32")])
def test_user_names_never_become_code(name, dim):
    """Names only in escaped comments; identifiers from positions (inputs) and prefixes (dims)."""
    from test_names import run
    want = run("numpy", name, name, dim)
    for a, b in zip(run("cuda", name, name, dim), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("case", ["pick of y - 1", "take of y + 3", "one_hot of 2y"])
def test_computed_index_out_of_range_raises_and_commits_nothing(case):
    from test_index_checks import CASES
    build, good, bad, value, ops = CASES[case]
    f, param, call = build("cuda", {})
    call(good)
    before = param.value.copy()
    with pytest.raises(gc.GraphcError, match=rf"^({ops}) \(test_index_checks.py:\d+\): index {value} is out of range"):
        call(bad)
    np.testing.assert_array_equal(param.value, before)
    call(good)


@needs_cuda
def test_value_is_one_array_updated_in_place_and_scalars_weakly_typed():
    from test_atomic import test_python_scalars_for_0d_inputs_are_weakly_typed, test_value_is_one_array_updated_in_place
    test_value_is_one_array_updated_in_place("cuda")
    test_python_scalars_for_0d_inputs_are_weakly_typed("cuda")


@needs_cuda
def test_concurrent_calls_give_serial_results():
    import threading
    x = gc.input("x", ("b", 3))
    W = gc.param("W", np.arange(6, dtype=np.float32).reshape(3, 2))
    f = gc.function([x], gc.tanh(x @ W), target="cuda")
    xs = [np.full((2, 3), k, np.float32) for k in range(3)]
    want, bad = [f(v) for v in xs], []

    def work(k):
        for _ in range(4):
            if not np.array_equal(f(xs[k]), want[k]):
                bad.append(k)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


@needs_cuda
@pytest.mark.parametrize("check", ["integer_min", "pow_gradients_at_zero", "infinities_kept", "nan_kept", "ties_split"])
def test_issue_12_bugs_fixed(check):
    import test_op_bugs
    getattr(test_op_bugs, f"check_{check}")("cuda")


@needs_cuda
def test_output_that_is_a_broadcast_view_of_an_input():
    """The gradient of a broadcast operand is copied into its output (issue 16's NameError: X0)."""
    a = gc.input("a", (5, 2, 3), "float64")
    b = gc.input("b", (3,), "float64")
    loss = gc.sum((a - b) * b)
    outs = [loss, *gc.grad(loss, [a, b])]
    av, bv = np.random.default_rng(0).random((5, 2, 3)), np.random.default_rng(1).random(3)
    for got, want in zip(gc.function([a, b], outs, target="cuda")(av, bv), gc.function([a, b], outs)(av, bv)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@needs_cuda
def test_views_are_the_layouts_strides():
    """Kernels read a view as ``offset + sum(index * stride)`` from the shared layout (strides in the
    symbolic dims); a reshape strides cannot express goes through a row-major index of its input."""
    x, u = gc.input("x", ("batch", 3, 4)), gc.input("u", (3, "batch"))
    outs = [gc.reshape(gc.transpose(x, (0, 2, 1)), ("batch", 12)) * 2.0, x[:, ::2, 1:3] + 1.0, u.T * 3.0]
    f, ref = gc.function([x, u], outs, target="cuda"), gc.function([x, u], outs)
    for b in (2, 5):
        args = (RNG.standard_normal((b, 3, 4)).astype(np.float32), RNG.standard_normal((3, b)).astype(np.float32))
        for got, want in zip(f(*args), ref(*args)):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    assert "[1 + i0 * 12 + i1 * 8 + i2]" in f.source and "[i0 + i1 * d_batch]" in f.source
