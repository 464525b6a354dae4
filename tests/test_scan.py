"""gc.scan: loops in the graph. Forward and gradients against PyTorch's RNN, GRU and LSTM with
copied weights (lengths 1, 2 and 37, a symbolic length), second-order gradient checks in float64
(reversed, nested carries, closures), the numpy and cpu targets against each other, structure
(one scan forward and one backward after the passes; the same compiled kernels for 8 and 256
steps; loop-invariant values outside the body), nn.Stack against the same layers unrolled, and
bad input with errors at the user's line."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.errors import DTypeError, GraphcError, ShapeError

RNG = np.random.default_rng(0)
TARGETS = ["numpy", "cpu"]


def rand(*shape):
    return RNG.standard_normal(shape)


# --- semantics and second-order gradients ------------------------------------------------------------
def test_values_match_a_python_loop():
    xs, h0 = rand(6, 2, 3), rand(2, 3)
    W = rand(3, 3)
    x, h = gc.input("xs", (6, 2, 3), "float64"), gc.input("h0", (2, 3), "float64")
    hT, ys = gc.scan(lambda c, xt: (gc.tanh(xt + c @ gc.constant(W)), c * 2.0), h, x)
    for target in TARGETS:
        got_h, got_y = gc.function([x, h], [hT, ys], target=target)(xs, h0)
        c, want = h0, []
        for t in range(6):
            want.append(c * 2)
            c = np.tanh(xs[t] + c @ W)
        np.testing.assert_allclose(got_h, c, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got_y, np.stack(want), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reverse", [False, True])
def test_second_order_nested_carries_and_closures(reverse):
    def fn(h0, xs, W, v):
        def step(c, x):
            h, s = c
            h = gc.tanh(x["a"] * v + h @ W)
            return (h, s + gc.sum(h * x["b"])), {"h": h, "g": gc.sigmoid(h)}
        (hT, sT), ys = gc.scan(step, (h0, gc.constant(0.0, "float64")), {"a": xs, "b": xs * xs}, reverse=reverse)
        return gc.sum(ys["h"] * ys["g"]) + gc.sum(hT * hT) + sT
    gc.check_grad(fn, [rand(2, 3), rand(4, 2, 3), rand(3, 3) * 0.5, rand(3)], order=2)


def test_second_order_through_a_scan_without_xs():
    def fn(h0, W):
        hT, hs = gc.scan(lambda h, _: (gc.tanh(h @ W), h), h0, length=5)
        return gc.sum(hs * hs) + gc.sum(hT)
    gc.check_grad(fn, [rand(2, 3), rand(3, 3) * 0.7], order=2)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("T", [0, 1, 2, 37])
def test_lengths_and_targets_agree(target, T):
    """The compiled target against the reference, forward and first and second order, reversed too."""
    W = gc.param("W", rand(3, 3) * 0.5)
    xs, h0 = gc.input("xs", ("T", 2, 3), "float64"), gc.input("h0", (2, 3), "float64")
    hT, hs = gc.scan(lambda h, x: (gc.tanh(x + h @ W), gc.exp(h) * x), h0, xs)
    rT, rs = gc.scan(lambda h, x: (gc.sin(h) * x + h, h), h0, xs, reverse=True)
    loss = gc.sum(hs * hs) + gc.sum(hT) + gc.sum(rs * rs) + gc.sum(rT * rT)
    gW, gx, gh = gc.grad(loss, [W, xs, h0])
    hv = gc.sum(gc.grad(gc.sum(gW * gW), h0) * 0.5)  # second order through both loops
    outs = [loss, hs, rs, gW, gx, gh, hv]
    args = (rand(T, 2, 3), rand(2, 3))
    got = gc.function([xs, h0], outs, target=target)(*args)
    want = gc.function([xs, h0], outs, target="numpy", optimize=False)(*args)
    for g, w in zip(got, want):
        assert g.dtype == np.float64 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-12)


# --- PyTorch's recurrent layers ------------------------------------------------------------------------
def _layer(cls, n_in, hidden):
    cell = cls(n_in, hidden, rng=1)
    for k in ("W", "U", "b", "bh"):
        if hasattr(cell, k):
            setattr(cell, k, gc.param(f"{cell.name}.{k}", RNG.standard_normal(getattr(cell, k).shape) * 0.5))
    return cell


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_recurrent_layers_match_torch(kind, target):
    """Copied weights, one compiled step for every length (T is symbolic), forward and gradients."""
    torch = pytest.importorskip("torch")
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    cell = _layer(getattr(nn, kind), 5, 4)
    x = gc.input("x", ("n", "T", 5), "float64")
    hs, last = cell.run(x)
    h_last = last[0] if kind == "LSTM" else last
    loss = gc.sum(hs * hs) + gc.sum(h_last * 3.0)
    f = gc.function([x], [hs, *gc.grad(loss, [x, cell.W, cell.U, cell.b])], target=target)
    ref = getattr(torch.nn, kind)(5, 4, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(t(cell.W.value.T)), ref.weight_hh_l0.copy_(t(cell.U.value.T))
        ref.bias_ih_l0.copy_(t(cell.b.value))
        bh = np.zeros(ref.bias_hh_l0.shape)
        if kind == "GRU":
            bh[8:] = cell.bh.value  # the new gate's hidden bias; the others add to b
        ref.bias_hh_l0.copy_(t(bh))
    for T in (1, 2, 37):
        xv = RNG.standard_normal((3, T, 5))
        got = f(xv)
        tx = t(xv).requires_grad_(True)
        ref.zero_grad()
        out, state = ref(tx)
        th = (state[0] if kind == "LSTM" else state)[0]
        ((out * out).sum() + (th * 3.0).sum()).backward()
        want = [out.detach().numpy(), tx.grad.numpy(), ref.weight_ih_l0.grad.numpy().T,
                ref.weight_hh_l0.grad.numpy().T, (ref.bias_ih_l0.grad.numpy())]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_recurrent_layers_second_order(kind):
    cell = _layer(getattr(nn, kind), 3, 2)

    def fn(x, W, U):
        cell.W, cell.U = W, U
        return gc.sum(cell(x) ** 2)
    gc.check_grad(fn, [rand(2, 4, 3), cell.W.value, cell.U.value], order=2)


def test_lstm_state_carries_between_chunks():
    """Truncated BPTT: the final (h, c) of one chunk starts the next; two chunks equal one sequence."""
    cell = _layer(nn.LSTM, 3, 4)
    x = gc.input("x", (2, "T", 3), "float64")
    h0, c0 = gc.input("h0", (2, 4), "float64"), gc.input("c0", (2, 4), "float64")
    hs, (h, c) = cell.run(x, (h0, c0))
    f = gc.function([x, h0, c0], [hs, h, c], target="cpu")
    xv, z = rand(2, 10, 3), np.zeros((2, 4))
    whole = f(xv, z, z)
    a = f(xv[:, :6], z, z)
    b = f(xv[:, 6:], a[1], a[2])
    np.testing.assert_allclose(np.concatenate([a[0], b[0]], 1), whole[0], rtol=1e-12)
    np.testing.assert_allclose(b[2], whole[2], rtol=1e-12)


# --- structure ------------------------------------------------------------------------------------------
def _rnn_step(target="cpu"):
    cell = nn.RNN(4, 8, rng=0)
    x, y = gc.input("x", ("n", "T", 4)), gc.input("y", ("n", "T", 8))
    loss = gc.mean((cell(x) - y) ** 2)
    return gc.function([x, y], loss, updates=gc.optim.Adam(cell, lr=1e-2).updates(loss), target=target)


def test_one_forward_and_one_backward_loop():
    """The gradient's forward scan (which stacks the residuals) is merged with the original."""
    f = _rnn_step("numpy")
    assert [k.kind for k in f.kernels].count("scan") == 2
    fwd, back = [k.nodes[0] for k in f.kernels if k.kind == "scan"]
    assert not fwd.attrs["reverse"] and back.attrs["reverse"]


def test_compiled_once_whatever_the_length(tmp_path, monkeypatch):
    """T=8 and T=256 run the same compiled kernels: the plan repeats calls, nothing is compiled."""
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    f = _rnn_step()
    before = dict(f._program.library_stats)
    for T in (8, 256):
        f(RNG.standard_normal((2, T, 4)).astype(np.float32), RNG.standard_normal((2, T, 8)).astype(np.float32))
    assert f._program.library_stats == before
    src8 = f.source
    assert "for t0 in range(d_T):" in src8 and src8.count("def k_") == f.source.count("def k_")
    g = _rnn_step()  # a second function over the same structure: every kernel from the library
    assert g._program.library_stats.get("compiled", 0) == 0


def test_invariants_are_computed_outside_the_body():
    W = gc.param("W", np.ones((3, 3)))
    xs, h0 = gc.input("xs", (5, 2, 3), "float64"), gc.input("h0", (2, 3), "float64")
    hT, _ = gc.scan(lambda h, x: (gc.tanh(h @ W.T + gc.exp(W[0])), None), h0, xs)
    body = hT.inputs[0].attrs["body"]
    inside = {n.op.name for n in gc.toposort(list(body.outputs))}
    assert "transpose" not in inside and "exp" not in inside  # W.T and exp(W[0]) are closure values
    assert len(body.closure) == 2


def test_format_shows_the_body_once_indented():
    xs, h0 = gc.input("xs", ("T", 3)), gc.input("h0", (3,))
    hT, hs = gc.scan(lambda h, x: (gc.tanh(h + x), h), h0, xs)
    text = gc.format(gc.grad(gc.sum(hs) + gc.sum(hT), xs))
    assert text.count("= scan ") == 2 and "\n    { carry0:f32[3] x0:f32[3]" in text
    assert "reverse=True" in text


def test_report_counts_residuals_per_step():
    f = _rnn_step()
    f(RNG.standard_normal((2, 5, 4)).astype(np.float32), RNG.standard_normal((2, 5, 8)).astype(np.float32))
    text = f.report()
    assert "body (compiled once)" in text and "a loop's per-step values: T × (n, 8)" in text


def test_debug_mode_runs_the_rendered_loop():
    W = gc.param("W", rand(3, 3) * 0.5)
    xs, h0 = gc.input("xs", ("T", 2, 3), "float64"), gc.input("h0", (2, 3), "float64")
    hT, hs = gc.scan(lambda h, x: (gc.tanh(x + h @ W), h), h0, xs, reverse=True)
    outs = [hT, hs, *gc.grad(gc.sum(hs * hs) + gc.sum(hT), [W, xs])]
    args = (rand(4, 2, 3), rand(2, 3))
    got = gc.function([xs, h0], outs, target="cpu", debug=True)(*args)
    want = gc.function([xs, h0], outs)(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
def test_swapped_carries_and_views(target):
    """New carries that read other carries (a swap, a transpose of the old one) see the old values."""
    xs, a, b = gc.input("xs", (5, 3, 3), "float64"), gc.input("a", (3, 3), "float64"), gc.input("b", (3, 3), "float64")
    (aT, bT), ys = gc.scan(lambda c, x: ((c[1], c[0].T + x), c[0][0]), (a, b), xs)
    f = gc.function([xs, a, b], [aT, bT, ys, *gc.grad(gc.sum(ys * ys) + gc.sum(aT * bT), [xs, a])], target=target)
    args = (rand(5, 3, 3), rand(3, 3), rand(3, 3))
    for g, w in zip(f(*args), gc.function([xs, a, b], [aT, bT, ys, *gc.grad(gc.sum(ys * ys) + gc.sum(aT * bT),
                                                                           [xs, a])], optimize=False)(*args)):
        np.testing.assert_allclose(g, w, rtol=1e-12)


# --- nn.Stack ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_stack_matches_the_same_layers_in_sequence(target):
    blocks = [nn.TransformerBlock(8, 2, hidden=16, rng=i, name=f"blk{i}") for i in range(3)]
    stack, seq = nn.Stack(lambda i: blocks[i], 3), nn.Sequential(*blocks)
    assert len(stack.params()) == len(blocks[0].params()) and stack.params()[0].shape[0] == 3
    x = gc.input("x", ("n", 5, 8))
    ys, yq = stack(x), seq(x)
    gs, gq = gc.grad(gc.sum(ys * ys), stack.params()), gc.grad(gc.sum(yq * yq), seq.params())
    xv = RNG.standard_normal((2, 5, 8)).astype(np.float32)
    a = gc.function([x], [ys, *gs], target=target)(xv)
    b = gc.function([x], [yq, *gq], target=target)(xv)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    n = len(gs)
    for j in range(n):
        np.testing.assert_allclose(a[1 + j], np.stack([b[1 + i * n + j] for i in range(3)]), rtol=2e-4, atol=2e-5)


def test_stack_of_copies_trains_and_advances_dropout_keys():
    stack = nn.Stack(nn.Sequential(nn.Linear(6, 6, rng=0), gc.tanh, nn.Dropout(0.5, seed=3)), 4)
    x = gc.input("x", ("n", 6))
    loss = gc.mean(stack(x, train=True) ** 2)
    ups = gc.optim.SGD(stack, lr=0.1).updates(loss)
    keys = [p for p, _ in ups if p.dtype.kind == "i" and p.shape == ()]
    assert any("drop" in p.name for p in keys)  # found inside the loop body
    f = gc.function([x], loss, updates=ups, target="cpu")
    xv = RNG.standard_normal((5, 6)).astype(np.float32)
    w0 = stack.params()[0].value.copy()
    assert np.all(w0[0] == w0[1])  # copies of one block
    losses = [float(f(xv)) for _ in range(3)]
    assert len(set(losses)) == 3 and not np.all(stack.params()[0].value[0] == stack.params()[0].value[1])


# --- bad input ---------------------------------------------------------------------------------------------
def _line() -> str:
    import inspect
    return f"test_scan.py:{inspect.currentframe().f_back.f_lineno + 2}"


def test_carry_that_changes_shape_or_dtype_is_refused_at_the_users_line():
    h0, xs = gc.input("h0", (2, 3)), gc.input("xs", (4, 2, 3))
    where = _line()
    with pytest.raises(ShapeError, match=f"carry 0: body returned \\(2, 1\\).*keeps its shape.*{where}"):
        gc.scan(lambda h, x: (gc.sum(h, 1, keepdims=True), None), h0, xs)
    where = _line()
    with pytest.raises(DTypeError, match=f"carry 0: body returned float64.*{where}"):
        gc.scan(lambda h, x: (h.astype("float64"), None), h0, xs)
    with pytest.raises(ShapeError, match="structure"):
        gc.scan(lambda h, x: ((h, h), None), h0, xs)
    with pytest.raises(GraphcError, match=r"must return \(carry, y\)"):
        gc.scan(lambda h, x: h, h0, xs)


def test_xs_that_disagree_on_the_length_are_refused():
    h0 = gc.input("h0", (3,))
    where = _line()
    with pytest.raises(ShapeError, match=f"xs disagree on the number of steps.*{where}"):
        gc.scan(lambda h, x: (h, None), h0, (gc.input("a", (4, 3)), gc.input("b", (5, 3))))
    with pytest.raises(ShapeError, match="length=6"):
        gc.scan(lambda h, x: (h, None), h0, gc.input("c", (4, 3)), length=6)
    with pytest.raises(GraphcError, match="give xs or length"):
        gc.scan(lambda h, x: (h, None), h0)
    with pytest.raises(ShapeError, match="scalar"):
        gc.scan(lambda h, x: (h, None), h0, gc.input("d", ()))


@pytest.mark.parametrize("target", TARGETS)
def test_bad_index_inside_a_body_raises_and_leaves_params(target):
    E = gc.param("E", np.arange(12.0).reshape(4, 3))
    ids = gc.input("ids", (5, 2), "int64")
    hT, _ = gc.scan(lambda h, i: (h + gc.take(E, i * 2), None), gc.constant(np.zeros((2, 3))), ids)
    loss = gc.sum(hT * hT)
    f = gc.function([ids], loss, updates=[(E, E - 0.1 * gc.grad(loss, E))], target=target)
    f(np.array([[0, 1]] * 5))
    before = E.value.copy()
    with pytest.raises(GraphcError, match="index 6 is out of range"):
        f(np.array([[0, 1], [1, 3], [0, 0], [0, 0], [0, 0]]))
    np.testing.assert_array_equal(E.value, before)


def test_gate_adjoints_are_one_concatenation():
    """The adjoints of an LSTM's four gate slices sum to a concatenation (no zero-filled arrays)."""
    cell = nn.LSTM(3, 4, rng=0)
    x = gc.input("x", (2, 5, 3))
    f = gc.function([x], gc.grad(gc.sum(cell(x) ** 2), cell.U), target="numpy")
    back = [b for b in f.program.bodies.values() if any(k.kind == "matmul" for k in b.kernels)][-1]
    kinds = [k.kind for k in back.kernels]
    assert "unslice" not in kinds and "concatenate" in kinds


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_recurrent_second_order_matches_torch(kind, target):
    """A Hessian-vector product: d/dx of <dL/dU, V>, against torch's double backward."""
    torch = pytest.importorskip("torch")
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    cell = _layer(getattr(nn, kind), 3, 2)
    x = gc.input("x", (2, "T", 3), "float64")
    V = RNG.standard_normal(cell.U.shape)
    gU = gc.grad(gc.sum(cell(x) ** 2), cell.U)
    hvp = gc.grad(gc.sum(gU * gc.constant(V)), x)
    f = gc.function([x], hvp, target=target)
    ref = getattr(torch.nn, kind)(3, 2, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(t(cell.W.value.T)), ref.weight_hh_l0.copy_(t(cell.U.value.T))
        ref.bias_ih_l0.copy_(t(cell.b.value))
        bh = np.zeros(ref.bias_hh_l0.shape)
        if kind == "GRU":
            bh[4:] = cell.bh.value
        ref.bias_hh_l0.copy_(t(bh))
    xv = RNG.standard_normal((2, 6, 3))
    tx = t(xv).requires_grad_(True)
    (gW,) = torch.autograd.grad((ref(tx)[0] ** 2).sum(), ref.weight_hh_l0, create_graph=True)
    (want,) = torch.autograd.grad((gW.T * t(V)).sum(), tx)
    np.testing.assert_allclose(f(xv), want.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("target", TARGETS)
def test_unit_axes_of_index_values(target):
    """iota and one_hot over an axis of one entry (a Stack of one layer scans over arange(1))."""
    x = gc.input("x", (4, 1))
    outs = [x + gc.arange(1).astype("float32"), gc.one_hot(gc.constant(np.zeros(4, np.int64)), 1) + x]
    got = gc.function([x], outs, target=target)(np.ones((4, 1), np.float32))
    np.testing.assert_array_equal(got[0], np.ones((4, 1))) and np.testing.assert_array_equal(got[1], 2 * np.ones((4, 1)))
    one = nn.Stack(nn.Linear(3, 3, rng=0), 1)
    xi = gc.input("xi", (2, 3))
    lin = one._template
    want = np.ones((2, 3), np.float32) @ lin.W.value + lin.b.value
    np.testing.assert_allclose(gc.function([xi], one(xi), target=target)(np.ones((2, 3), np.float32)), want, rtol=1e-6)
