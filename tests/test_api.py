"""The public API as documented: build, differentiate, compile, call, train, inspect."""
from __future__ import annotations

import inspect
import os
import re

import networkx as nx
import numpy as np
import pytest

import graphc as gc


def _separable(rng, n, d, k):
    """Random data whose labels a linear model can fit exactly."""
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = np.argmax(X @ rng.standard_normal((d, k)), axis=1)
    return X, y.astype(np.int64)


def _np_sce(logits, y):
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean()


def test_contract_snippet_trains():
    rng = np.random.default_rng(0)
    x = gc.input("x", ("batch", 784))              # dtype float32 default
    y = gc.input("y", ("batch",), dtype="int64")
    W = gc.param("W", np.zeros((784, 10), np.float32)); b = gc.param("b", np.zeros(10, np.float32))  # noqa: E702
    logits = x @ W + b
    loss = gc.softmax_cross_entropy(logits, y)
    gW, gb = gc.grad(loss, [W, b])
    f = gc.function([x, y], [loss, gW], updates=[(W, W - 0.1 * gW), (b, b - 0.1 * gb)], target="numpy")
    X, Y = _separable(rng, 128, 784, 10)
    losses = []
    for step in range(15):
        xb, yb = X[step % 2 * 64:][:64], Y[step % 2 * 64:][:64]
        loss_v, gW_v = f(xb, yb)
        assert loss_v.shape == () and loss_v.dtype == np.float32
        assert gW_v.shape == (784, 10) and gW_v.dtype == np.float32
        losses.append(float(loss_v))
    assert losses[0] == pytest.approx(np.log(10), rel=1e-5)  # zero weights: uniform prediction
    assert losses[-1] < 0.5 * losses[0]
    assert all(b_ < a_ for a_, b_ in zip(losses[:-2], losses[2:]))  # each batch's loss keeps falling
    assert W.value.dtype == np.float32 and b.value.dtype == np.float32
    acc = np.mean(np.argmax(X @ W.value + b.value, 1) == Y)
    assert acc > 0.9


def test_outputs_single_list_tuple():
    x = gc.input("x", (3,))
    xv = np.arange(3, dtype=np.float32)
    single = gc.function([x], x * 2)(xv)
    assert isinstance(single, np.ndarray)
    np.testing.assert_array_equal(single, xv * 2)
    out = gc.function([x], [x * 2, gc.sum(x)])(xv)
    assert isinstance(out, list) and len(out) == 2
    one = gc.function([x], [x * 2])(xv)
    assert isinstance(one, list) and len(one) == 1
    assert gc.function([x], [])(xv) == []
    assert isinstance(gc.function(x, gc.sum(x))(xv), np.ndarray)  # a lone input node is a list of one
    scalar = gc.function([x], gc.sum(x))(xv)
    assert isinstance(scalar, np.ndarray) and scalar.shape == () and scalar.dtype == np.float32


def test_updates_apply_after_outputs():
    """Outputs, gradients included, are computed with the params as they were before the step."""
    rng = np.random.default_rng(1)
    x = gc.input("x", ("batch", 3))
    W0 = rng.standard_normal((3, 2)).astype(np.float32)
    W = gc.param("W", W0)
    loss = gc.sum(gc.square(x @ W))
    gW = gc.grad(loss, W)
    f = gc.function([x], [loss, gW, W, W * 1], updates={W: W - 0.01 * gW})
    xv = rng.standard_normal((4, 3)).astype(np.float32)
    loss_v, gW_v, W_out, W_times_1 = f(xv)
    np.testing.assert_allclose(loss_v, np.sum((xv @ W0) ** 2), rtol=1e-5)
    np.testing.assert_allclose(gW_v, 2 * xv.T @ (xv @ W0), rtol=1e-5)
    np.testing.assert_array_equal(W_out, W0)
    np.testing.assert_array_equal(W_times_1, W0)
    np.testing.assert_allclose(W.value, W0 - 0.01 * gW_v, rtol=1e-6)
    W_out[...] = 123.0  # the returned param value is a copy
    assert not np.any(W.value == 123.0)


def test_updates_see_old_values_of_each_other():
    """Simultaneous updates: b's update reads W before W's update (swap-style)."""
    a = gc.param("a", np.float32(1.0))
    b = gc.param("b", np.float32(2.0))
    f = gc.function([], [], updates=[(a, b), (b, a)])
    f()
    assert (a.value, b.value) == (2.0, 1.0)
    f()
    assert (a.value, b.value) == (1.0, 2.0)


@pytest.mark.parametrize("optimize", [True, False])
def test_outputs_do_not_alias_params(optimize):
    """Writing into a returned array never reaches a param, whatever view or identity produced it."""
    W = gc.param("W", np.arange(6, dtype=np.float32).reshape(2, 3))
    x = gc.input("x", (2, 3))
    before = W.value.copy()
    outs = [W, W.T, W[0], gc.reshape(W, (6,)), W * 1, W + 0, gc.broadcast_to(W, (2, 2, 3)), gc.cast(W, "float32"), x + W]
    for o in gc.function([x], outs, optimize=optimize)(np.ones((2, 3), np.float32)):
        try:
            o[...] = -1.0
        except ValueError:  # a read-only result is fine too
            pass
    np.testing.assert_array_equal(W.value, before)


@pytest.mark.parametrize("optimize", [True, False])
def test_stop_gradient_output_does_not_alias_param(optimize):
    W = gc.param("W", np.arange(6, dtype=np.float32).reshape(2, 3))
    out = gc.function([], gc.stop_gradient(W), optimize=optimize)()
    out[...] = -1.0
    np.testing.assert_array_equal(W.value, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_scalar_params():
    s = gc.param("s", 2.0)  # a Python float: a float32 0-d param
    assert s.shape == () and s.dtype == np.float32
    t = gc.param("t", np.float64(0.5))
    assert t.shape == () and t.dtype == np.float64
    x = gc.input("x", ("n",))
    loss = gc.mean(gc.square(s * x - 3.0))
    gs = gc.grad(loss, s)
    assert gs.shape == () and gs.dtype == np.float32
    f = gc.function([x], [loss, gs], updates=[(s, s - 0.1 * gs)])
    xv = np.ones(5, np.float32)
    losses = [float(f(xv)[0]) for _ in range(30)]
    assert losses[-1] < 1e-3 < losses[0]
    assert s.value.shape == () and float(s.value) == pytest.approx(3.0, abs=0.05)
    gt = gc.function([], gc.grad(t * t * 3.0, t))()
    assert gt.dtype == np.float64 and float(gt) == pytest.approx(3.0)


def test_symbolic_batch_sizes():
    x = gc.input("x", ("batch", 3))
    y = gc.input("y", ("batch",), dtype="int64")
    W = gc.param("W", np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    logits = x @ W
    loss = gc.softmax_cross_entropy(logits, y)
    gW = gc.grad(loss, W)
    f = gc.function([x, y], [loss, gW, gc.mean(x, axis=0), gc.reshape(logits, (-1,))])
    rng = np.random.default_rng(0)
    for n in (1, 5, 7, 2, 0):
        xv, yv = rng.standard_normal((n, 3)).astype(np.float32), rng.integers(0, 4, n)
        with np.errstate(all="ignore"):
            loss_v, gW_v, m, flat = f(xv, yv)
        assert gW_v.shape == (3, 4) and m.shape == (3,) and flat.shape == (4 * n,)
        if n == 0:
            continue
        np.testing.assert_allclose(loss_v, _np_sce(xv @ W.value, yv), rtol=1e-5)  # the mean divides by this batch
        np.testing.assert_allclose(m, xv.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(flat, (xv @ W.value).ravel(), rtol=1e-5, atol=1e-6)


def test_format_shows_shapes_and_adjoints():
    x = gc.input("x", ("batch", 784))
    W = gc.param("W", np.zeros((784, 10), np.float32))
    b = gc.param("b", np.zeros(10, np.float32))
    loss = gc.mean(gc.square(x @ W + b))
    gW, gb = gc.grad(loss, [W, b])
    text = gc.format([loss, gW, gb])
    assert "x:f32[batch,784]" in text and "W:f32[784,10] (param)" in text
    assert "f32[batch,10]" in text and "matmul x W" in text
    assert "∂L/∂W" in text and "∂L/∂b" in text
    assert "test_api.py:" in text
    assert text.startswith("{") and text.rstrip().endswith("}")
    assert gc.format(loss).count("\n") < text.count("\n")


def test_to_dot_parses():
    x = gc.input("x", ("batch", 4))
    W = gc.param("W", np.zeros((4, 2), np.float32))
    loss = gc.sum(gc.tanh(x @ W))
    gW = gc.grad(loss, W)
    dot = gc.to_dot([loss, gW])
    assert dot.startswith("digraph")
    depth = 0
    for ch in dot:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    ids = {int(m) for m in re.findall(r"^\s*n(\d+) \[", dot, re.M)}
    assert ids == {n.id for n in gc.toposort([loss, gW])}
    for a, b_ in re.findall(r"n(\d+) -> n(\d+)", dot):
        assert int(a) in ids and int(b_) in ids
    try:
        import pydot
    except ImportError:
        return
    (graph,) = pydot.graph_from_dot_data(dot)
    assert len(graph.get_edges()) == sum(len(n.inputs) for n in gc.toposort([loss, gW]))


def test_to_networkx_matches_toposort():
    x = gc.input("x", (3, 4))
    W = gc.param("W", np.ones((4, 2), np.float32))
    h = gc.relu(x @ W)
    loss = gc.sum(h * h)
    gW = gc.grad(loss, W)
    G = gc.to_networkx([loss, gW])
    order = gc.toposort([loss, gW])
    assert isinstance(G, nx.DiGraph) and nx.is_directed_acyclic_graph(G)
    assert G.number_of_nodes() == len(order) == len({n.id for n in order})
    assert set(G.nodes) == {n.id for n in order}
    pos = {n.id: k for k, n in enumerate(order)}
    for a, b_ in G.edges:
        assert pos[a] < pos[b_]  # inputs before users
    assert G.nodes[W.id]["op"] == "param" and G.nodes[gW.id]["phase"] == "backward"
    assert G.nodes[loss.id]["shape"] == () and G.nodes[h.id]["dtype"] == "float32"


def test_nodes_record_user_line_and_phase():
    here = os.path.abspath(__file__)
    line = inspect.currentframe().f_lineno + 1
    x = gc.input("x", (3,))
    w = gc.param("w", np.ones(3, np.float32))
    y = gc.tanh(x * w)
    loss = gc.sum(y)
    g = gc.grad(loss, w)
    assert x.site == (here, line) and w.site == (here, line + 1)
    assert y.site == (here, line + 2) and loss.site == (here, line + 3)
    assert [n.phase for n in (x, w, y, loss)] == ["forward"] * 4
    assert g.phase == "backward"
    backward = [n for n in gc.toposort(g) if n.phase == "backward"]
    assert backward and all(n.site[0] == here for n in backward)
    # a gradient node points at the forward op it differentiates
    assert {n.site[1] for n in backward} <= {line + 2, line + 3}
    assert any(n.origin is y for n in backward)


def test_check_grad_catches_a_wrong_gradient():
    """check_grad itself must fail on a wrong derivative (stop_gradient hides half of x*x)."""
    xv = np.random.default_rng(0).standard_normal((3, 4))
    gc.check_grad(lambda x: x * x, [xv])
    with pytest.raises(AssertionError, match="order-1"):
        gc.check_grad(lambda x: x * gc.stop_gradient(x), [xv])
    # right first derivative, wrong second: only order=2 sees it
    wrong2 = lambda x: gc.stop_gradient(x * x) + 2 * gc.stop_gradient(x) * (x - gc.stop_gradient(x))  # noqa: E731
    gc.check_grad(wrong2, [xv], order=1)
    with pytest.raises(AssertionError, match="order-2"):
        gc.check_grad(wrong2, [xv], order=2)


def test_grad_returns_single_or_list():
    x = gc.input("x", (3,))
    loss = gc.sum(x * x)
    assert isinstance(gc.grad(loss, x), gc.Node)
    gs = gc.grad(loss, [x])
    assert isinstance(gs, list) and len(gs) == 1
    gx, gx2 = gc.grad(loss, [x, x])
    np.testing.assert_array_equal(*gc.function([x], [gx, gx2])(np.ones(3, np.float32)))


def test_grad_wrt_intermediate_node():
    x = gc.input("x", (3, 4))
    W = gc.param("W", np.ones((4, 2), np.float32))
    h = x @ W
    loss = gc.sum(h * h)
    gh, gW = gc.grad(loss, [h, W])
    xv = np.arange(12, dtype=np.float32).reshape(3, 4)
    vh, vW = gc.function([x], [gh, gW])(xv)
    np.testing.assert_allclose(vh, 2 * xv @ np.ones((4, 2)))
    np.testing.assert_allclose(vW, xv.T @ vh)


def test_higher_order_grad_values():
    """d/dx, d2/dx2 and d3/dx3 of sum(x**3) at known points."""
    x = gc.input("x", (3,), "float64")
    g1 = gc.grad(gc.sum(x ** 3), x)
    g2 = gc.grad(gc.sum(g1), x)
    g3 = gc.grad(gc.sum(g2), x)
    xv = np.array([1.0, -2.0, 0.5])
    v1, v2, v3 = gc.function([x], [g1, g2, g3])(xv)
    np.testing.assert_allclose(v1, 3 * xv ** 2)
    np.testing.assert_allclose(v2, 6 * xv)
    np.testing.assert_allclose(v3, [6.0, 6.0, 6.0])


def test_param_value_roundtrip():
    W = gc.param("W", np.zeros((2, 2), np.float32))
    W.value = np.ones((2, 2), np.float64)  # same-kind cast on assignment
    assert W.value.dtype == np.float32
    f = gc.function([], W * 2)
    np.testing.assert_array_equal(f(), np.full((2, 2), 2.0, np.float32))
    src = np.zeros((2, 2), np.float32)
    V = gc.param("V", src)
    src[...] = 7  # the param took a copy
    assert not V.value.any()


def test_mlp_example_end_to_end():
    """A two-layer MLP with relu: the documented training loop reaches high accuracy."""
    rng = np.random.default_rng(0)
    X, Y = _separable(rng, 200, 8, 3)
    x = gc.input("x", ("batch", 8))
    y = gc.input("y", ("batch",), dtype="int64")
    W1 = gc.param("W1", (rng.standard_normal((8, 16)) * 0.3).astype(np.float32))
    b1 = gc.param("b1", np.zeros(16, np.float32))
    W2 = gc.param("W2", (rng.standard_normal((16, 3)) * 0.3).astype(np.float32))
    b2 = gc.param("b2", np.zeros(3, np.float32))
    logits = gc.relu(x @ W1 + b1) @ W2 + b2
    loss = gc.softmax_cross_entropy(logits, y)
    params = [W1, b1, W2, b2]
    grads = gc.grad(loss, params)
    step = gc.function([x, y], loss, updates=[(p, p - 0.5 * g) for p, g in zip(params, grads)])
    predict = gc.function([x], logits)
    first = float(step(X, Y))
    for _ in range(60):
        last = float(step(X, Y))
    assert last < 0.3 * first
    assert np.mean(np.argmax(predict(X), 1) == Y) > 0.9
