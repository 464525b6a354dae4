"""Composite graphs against PyTorch autograd in float64, like tinygrad's ``helper_test_op``:
forward value, and the gradient of ``sum(out * r)`` with respect to every float argument.
Skipped where torch is not installed."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch")
F = torch.nn.functional


def compare(gc_fn, torch_fn, args, rtol=1e-10, atol=1e-12, seed=0):
    rng = np.random.default_rng(seed)
    xs = [gc.input(f"a{i}", a.shape, a.dtype) for i, a in enumerate(args)]
    out = gc_fn(*xs)
    r = rng.standard_normal(out.shape)
    floats = [k for k, a in enumerate(args) if a.dtype.kind == "f"]
    grads = gc.grad(gc.sum(out * gc.constant(r)), [xs[k] for k in floats])
    got = gc.function(xs, [out, *grads])(*args)

    ts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in args]
    t_out = torch_fn(*ts)
    t_grads = torch.autograd.grad((t_out * torch.tensor(r)).sum(), [ts[k] for k in floats])
    np.testing.assert_allclose(got[0], t_out.detach().numpy(), rtol=rtol, atol=atol)
    for k, g, tg in zip(floats, got[1:], t_grads):
        assert g.shape == args[k].shape
        np.testing.assert_allclose(g, tg.numpy(), rtol=rtol, atol=atol, err_msg=f"gradient of argument {k}")


def _rand(*shape, seed=0):
    return np.random.default_rng(seed + len(shape) * 7 + sum(shape)).standard_normal(shape)


def test_mlp_relu_softmax_ce():
    x, W1, b1, W2, b2 = _rand(8, 5), _rand(5, 16), _rand(16), _rand(16, 4), _rand(4)
    y = np.random.default_rng(0).integers(0, 4, 8)
    compare(lambda x, W1, b1, W2, b2, y: gc.softmax_cross_entropy(gc.relu(x @ W1 + b1) @ W2 + b2, y),
            lambda x, W1, b1, W2, b2, y: F.cross_entropy(F.relu(x @ W1 + b1) @ W2 + b2, y),
            [x, W1, b1, W2, b2, y])


def test_softmax_ce_with_probability_targets():
    z, t = _rand(6, 5), _rand(6, 5, seed=1)
    compare(lambda z, t: gc.softmax_cross_entropy(z, gc.softmax(t)),
            lambda z, t: F.cross_entropy(z, torch.softmax(t, -1)), [z, t])


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2), -1])
def test_logsumexp(axis):
    x = _rand(3, 4, 5) * 3
    dim = tuple(range(3)) if axis is None else axis
    compare(lambda x: gc.logsumexp(x, axis), lambda x: torch.logsumexp(x, dim), [x])


def test_layer_norm_like():
    x, gamma, beta = _rand(4, 6), _rand(6, seed=1), _rand(6, seed=2)

    def ln(m_mean, m_sqrt):
        def f(x, gamma, beta):
            mu = m_mean(x)
            var = m_mean((x - mu) * (x - mu))
            return (x - mu) / m_sqrt(var + 1e-5) * gamma + beta
        return f

    compare(ln(lambda v: gc.mean(v, axis=-1, keepdims=True), gc.sqrt),
            ln(lambda v: v.mean(-1, keepdim=True), torch.sqrt), [x, gamma, beta])
    compare(lambda x, g, b: ln(lambda v: gc.mean(v, axis=-1, keepdims=True), gc.sqrt)(x, g, b),
            lambda x, g, b: F.layer_norm(x, (6,), g, b, eps=1e-5), [x, gamma, beta], rtol=1e-9)


@pytest.mark.parametrize("axis, dim", [(None, None), (0, 0), (1, 1), (-1, -1)])
def test_max_reduction(axis, dim):
    x = np.random.default_rng(3).permutation(60).reshape(3, 4, 5) * 0.1  # distinct: no ties
    if dim is None:
        compare(lambda x: gc.max(x) * gc.min(x), lambda x: x.max() * x.min(), [x])
    else:
        compare(lambda x: gc.max(x, axis) + gc.min(x, axis),
                lambda x: x.max(dim).values + x.min(dim).values, [x])


def test_attention_like():
    """Batched matmuls, a transposed operand, softmax over the last axis, a broadcast mask."""
    q, k, v = _rand(2, 3, 4), _rand(2, 5, 4, seed=1), _rand(2, 5, 6, seed=2)
    mask = np.random.default_rng(0).random((3, 5)) < 0.7
    mask[:, 0] = True

    def att(m_softmax, neg):
        def f(q, k, v, mask):
            s = q @ k.mT / 2.0
            return m_softmax(s * mask + (1 - mask * 1.0) * neg, -1) @ v
        return f

    compare(lambda q, k, v, m: att(gc.softmax, -1e4)(q, k, v, gc.cast(m, "float64")),
            lambda q, k, v, m: att(torch.softmax, -1e4)(q, k, v, m.double()), [q, k, v, mask])


def test_embedding_and_gather():
    E, idx = _rand(7, 3), np.array([[1, 6, 1], [0, 2, 2]])
    compare(lambda E, i: gc.tanh(gc.take(E, i)) * 2.0, lambda E, i: torch.tanh(E[i]) * 2.0, [E, idx])
    compare(lambda E: gc.sigmoid(E[:, [2, 0]]) + gc.softplus(E[1:5:2]).sum(), lambda E: torch.sigmoid(E[:, [2, 0]])
            + F.softplus(E[1:5:2]).sum(), [E])


def test_gradient_penalty_double_backward():
    """grad of sum(grad(L, x)**2): graphc's grad-of-grad against torch's create_graph=True."""
    x, W = _rand(4, 3), _rand(3, 2, seed=5)
    xs = [gc.input("x", x.shape, "float64"), gc.input("W", W.shape, "float64")]
    gx = gc.grad(gc.sum(gc.softplus(xs[0] @ xs[1]) * gc.tanh(xs[0] @ xs[1])), xs[0])
    pen = gc.sum(gx * gx)
    got = gc.function(xs, [pen, *gc.grad(pen, xs)])(x, W)

    tx, tW = torch.tensor(x, requires_grad=True), torch.tensor(W, requires_grad=True)
    h = tx @ tW
    (tgx,) = torch.autograd.grad((F.softplus(h) * torch.tanh(h)).sum(), tx, create_graph=True)
    tpen = (tgx * tgx).sum()
    want = [tpen.detach().numpy(), *(g.numpy() for g in torch.autograd.grad(tpen, [tx, tW]))]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
