"""graphc.nn layers and graphc.init: gradients to second order (float64), forward against
PyTorch's layers where installed, the CPU backend's generated code against the reference on
training steps, dropout's reproducibility, and two compiler bugs the layers work around."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc import nn

RNG = np.random.default_rng(0)


def float_params(layer) -> list[tuple[object, str, gc.Node]]:
    """(owner, attribute, param) of every float param in a layer and its sub-layers."""
    out = []
    for name, v in vars(layer).items():
        items = v if isinstance(v, (list, tuple)) else [v]
        for item in items:
            if isinstance(item, nn.Module):
                out += float_params(item)
            elif isinstance(item, gc.Node) and item.op.name == "param" and item.dtype.kind == "f":
                out.append((layer, name, item))
    return out


def check_layer(layer, *xs, order=2, call=None, **kw):
    """check_grad of ``layer`` with respect to its inputs and all its params, in float64: the
    params are swapped for graph inputs while the check runs."""
    slots = float_params(layer)
    values = [p.value.astype(np.float64) for _, _, p in slots]
    call = call or (lambda layer, *a: layer(*a))

    def fn(*args):
        for (owner, name, _), a in zip(slots, args[len(xs):]):
            setattr(owner, name, a)
        return call(layer, *args[:len(xs)])
    try:
        gc.check_grad(fn, [*xs, *values], order=order, **kw)
    finally:
        for owner, name, p in slots:
            setattr(owner, name, p)


def seq(n=2, t=4, d=6):
    return RNG.standard_normal((n, t, d))


# --- gradients ------------------------------------------------------------------------------
@pytest.mark.parametrize("make, xs, call", [
    pytest.param(lambda: nn.Linear(5, 3, rng=0), lambda: [RNG.standard_normal((4, 5))], None, id="linear"),
    pytest.param(lambda: nn.Linear(5, 3, bias=False, rng=0), lambda: [seq(2, 3, 5)], None, id="linear_3d"),
    pytest.param(lambda: nn.Conv2D(2, 3, 3, stride=2, padding=1, rng=0), lambda: [RNG.standard_normal((2, 2, 5, 5))], None,
                 id="conv2d"),
    pytest.param(lambda: nn.LayerNorm(6), lambda: [seq()], None, id="layernorm"),
    pytest.param(lambda: nn.Sequential(nn.Linear(6, 6, rng=0), gc.tanh, nn.LayerNorm(6)), lambda: [seq()], None, id="sequential"),
    pytest.param(lambda: nn.Residual(nn.Sequential(nn.Linear(6, 6, rng=0), gc.tanh)), lambda: [seq()], None, id="residual"),
    pytest.param(lambda: nn.RNN(6, 5, rng=0), lambda: [seq()], None, id="rnn"),
    pytest.param(lambda: nn.GRU(6, 5, rng=0), lambda: [seq(2, 3, 6)], None, id="gru"),
    pytest.param(lambda: nn.GRU(6, 4, rng=0), lambda: [seq(2, 3, 6), RNG.standard_normal((2, 4))],
                 lambda m, x, h: m(x, h0=h), id="gru_h0"),
    pytest.param(lambda: nn.RNN(None, 5, rng=0), lambda: [RNG.standard_normal((2, 5)), RNG.standard_normal((2, 5))],
                 lambda m, a, b: m([a, b]), id="rnn_projected_list"),
    pytest.param(lambda: nn.MultiHeadAttention(8, 2, rng=0), lambda: [seq(2, 4, 8)], None, id="attention_causal"),
    pytest.param(lambda: nn.MultiHeadAttention(6, 3, causal=False, rng=0), lambda: [seq(1, 3, 6)], None, id="attention"),
    pytest.param(lambda: nn.TransformerBlock(4, 2, hidden=8, rng=0), lambda: [seq(1, 3, 4)], None, id="transformer_block"),
])
def test_layer_gradients(make, xs, call):
    check_layer(make(), *xs(), call=call)


def test_pool_and_flatten_layers():
    x = RNG.permutation(2 * 2 * 4 * 4).reshape(2, 2, 4, 4) * 0.1
    check_layer(nn.Sequential(nn.MaxPool2D(2), nn.Flatten()), x)
    check_layer(nn.Sequential(nn.AvgPool2D(3, 1), nn.Flatten()), x)


def test_embedding_gradient():
    emb = nn.Embedding(5, 3, rng=0)
    ids = np.array([[1, 4, 1], [0, 2, 2]])
    check_layer(emb, ids)  # ids are integers: held fixed, the table is differentiated


def test_dropout_gradient_in_training():
    drop = nn.Dropout(0.4, seed=1)
    gc.check_grad(lambda x: drop(x, train=True) * x, [RNG.standard_normal((3, 5))], order=2)


# --- forward against PyTorch ----------------------------------------------------------------
def test_layers_match_torch():
    torch = pytest.importorskip("torch")
    tnn, t = torch.nn, lambda a: torch.tensor(np.asarray(a, np.float64))
    x = seq(2, 5, 8)
    xi = gc.input("x", ("n", 5, 8), "float64")

    def run(layer, *a):
        for owner, name, p in float_params(layer):
            setattr(owner, name, gc.param(p.name, p.value.astype(np.float64)))
        return gc.function([xi], layer(xi, *a))(x)

    lin = nn.Linear(8, 3, rng=0)
    want = tnn.functional.linear(t(x), t(lin.W.value.T), t(lin.b.value))
    np.testing.assert_allclose(run(lin), want.numpy(), rtol=1e-10)

    ln = nn.LayerNorm(8)
    ln.gamma.value, ln.beta.value = RNG.standard_normal(8), RNG.standard_normal(8)
    want = tnn.functional.layer_norm(t(x), (8,), t(ln.gamma.value), t(ln.beta.value), eps=1e-5)
    np.testing.assert_allclose(run(ln), want.numpy(), rtol=1e-5)

    for cls, tcls in ((nn.GRU, tnn.GRU), (nn.RNN, tnn.RNN)):
        cell = cls(8, 4, rng=1)
        cell.b.value = RNG.standard_normal(cell.b.shape).astype(np.float32)
        ref = tcls(8, 4, batch_first=True).double()
        with torch.no_grad():  # torch keeps (gates*H, in) matrices and a second (hidden) bias, zero here
            ref.weight_ih_l0.copy_(t(cell.W.value.T)), ref.weight_hh_l0.copy_(t(cell.U.value.T))
            ref.bias_ih_l0.copy_(t(cell.b.value)), ref.bias_hh_l0.zero_()
        np.testing.assert_allclose(run(cell), ref(t(x))[0].detach().numpy(), rtol=1e-5, atol=1e-6)

    att = nn.MultiHeadAttention(8, 2, rng=2)
    ref = tnn.MultiheadAttention(8, 2, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(t(att.qkv.W.value.T)), ref.in_proj_bias.copy_(t(att.qkv.b.value))
        ref.out_proj.weight.copy_(t(att.out.W.value.T)), ref.out_proj.bias.copy_(t(att.out.b.value))
    mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)  # True: may not attend
    want = ref(t(x), t(x), t(x), attn_mask=mask, need_weights=False)[0]
    np.testing.assert_allclose(run(att), want.detach().numpy(), rtol=1e-5, atol=1e-6)

    conv = nn.Conv2D(2, 3, 3, stride=2, padding=1, rng=3)
    img = RNG.standard_normal((2, 2, 6, 6))
    want = tnn.functional.conv2d(t(img), t(conv.W.value), t(conv.b.value), stride=2, padding=1)
    ii = gc.input("img", (2, 2, 6, 6), "float32")
    np.testing.assert_allclose(gc.function([ii], conv(ii))(img.astype(np.float32)), want.numpy(), rtol=1e-4, atol=1e-5)


# --- the CPU backend against the reference, on training steps ---------------------------------
def _mlp():
    x, y = gc.input("x", ("batch", 6)), gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Linear(6, 8, rng=0), gc.relu, nn.Dropout(0.3, seed=1, name="drop"), nn.LayerNorm(8),
                          nn.Residual(nn.Sequential(nn.Linear(8, 8, rng=1), gc.tanh)), nn.Linear(8, 3, rng=2))
    return [x, y], gc.softmax_cross_entropy(model(x, train=True), y), model, \
        lambda r: (r.standard_normal((5, 6)).astype(np.float32), r.integers(0, 3, 5))


def _cnn():
    x, y = gc.input("x", ("batch", 1, 6, 6)), gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Conv2D(1, 3, 3, padding=1, rng=0), gc.relu, nn.MaxPool2D(2), nn.AvgPool2D(3),
                          nn.Flatten(), nn.Linear(3, 2, rng=1))
    return [x, y], gc.softmax_cross_entropy(model(x, train=True), y), model, \
        lambda r: (r.standard_normal((4, 1, 6, 6)).astype(np.float32), r.integers(0, 2, 4))


def _rnn():
    x, y = gc.input("x", ("batch", 3), "int64"), gc.input("y", ("batch", 3), "int64")
    emb, rnn, gru, head = nn.Embedding(7, 3, rng=0), nn.RNN(None, 3, rng=1), nn.GRU(3, 4, rng=2), nn.Linear(4, 7, rng=3)
    logits = head(gru(rnn([emb(x[:, t]) for t in range(3)])))
    model = nn.Sequential(emb, rnn, gru, head)
    return [x, y], gc.softmax_cross_entropy(logits, y), model, lambda r: (r.integers(0, 7, (2, 3)), r.integers(0, 7, (2, 3)))


def _transformer():
    x, y = gc.input("x", ("batch", 4), "int64"), gc.input("y", ("batch", 4), "int64")
    block = nn.TransformerBlock(8, 2, dropout=0.2, rng=1, name="blk")
    model = nn.Sequential(nn.Embedding(5, 8, rng=0), block, nn.Linear(8, 5, rng=2))
    return [x, y], gc.softmax_cross_entropy(model(x, train=True), y), model, \
        lambda r: (r.integers(0, 5, (3, 4)), r.integers(0, 5, (3, 4)))


@pytest.mark.parametrize("build", [_mlp, _cnn, _rnn, _transformer], ids=["mlp", "cnn", "rnn", "transformer"])
def test_cpu_training_steps_match_reference(build):
    results = {}
    for target in ("numpy", "cpu"):
        inputs, loss, model, draw = build()
        # SGD, not Adam: Adam scales gradients that are rounding noise (the key bias's) to full steps
        opt = gc.optim.SGD(model, 0.1, momentum=0.9, clip_grad_norm=1.0)
        f = gc.function(inputs, loss, updates=opt.updates(loss), target=target, debug=True)
        rng = np.random.default_rng(5)
        results[target] = ([float(f(*draw(rng))) for _ in range(3)], [p.value.copy() for p in model.params()])
    np.testing.assert_allclose(results["cpu"][0], results["numpy"][0], rtol=1e-4)
    for a, b in zip(results["cpu"][1], results["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- dropout --------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_dropout_is_seeded_reproducible_and_identity_in_eval(target):
    x = gc.input("x", ("batch", 200))
    drop = nn.Dropout(0.25, seed=7)
    out = drop(x, train=True)
    f = gc.function([x], out, updates=nn.state_updates(out), target=target, debug=target == "cpu")
    ones = np.ones((50, 200), np.float32)
    a, b = f(ones), f(ones)
    assert not np.array_equal(a, b)                        # the key advanced: a new mask
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.02 and abs(a.mean() - 1) < 0.03
    drop.key.value = np.int64(7)
    np.testing.assert_array_equal(f(ones), a)              # the same seed, the same mask
    assert drop(x) is x and drop(x, train=False) is x      # evaluation: the identity
    ev = gc.function([x], nn.Sequential(drop, gc.relu)(x), target=target, debug=target == "cpu")
    np.testing.assert_array_equal(ev(ones), ones)


def test_dropout_masks_are_the_same_on_every_backend_and_differ_between_layers():
    x = gc.input("x", (4, 64))
    d1, d2 = nn.Dropout(0.5, seed=3), nn.Dropout(0.5, seed=3)
    outs = [d1(x, train=True), d2(x, train=True), d1(x, train=True)]  # a layer called twice draws twice
    ones = np.ones((4, 64), np.float32)
    ref = gc.function([x], outs)(ones)
    cpu = gc.function([x], outs, target="cpu", debug=True)(ones)
    for a, b in zip(ref, cpu):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ref[0], ref[1]) and not np.array_equal(ref[0], ref[2])
    assert len(nn.state_updates(outs)) == 2
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


# --- modules and init -----------------------------------------------------------------------
def test_module_params_state_and_names():
    block = nn.TransformerBlock(8, 2, dropout=0.1, rng=0, name="blk")
    names = [p.name for p in block.params()]
    assert names[:2] == ["blk.ln1.gamma", "blk.ln1.beta"] and "blk.attn.qkv.W" in names and "blk.fc2.b" in names
    assert len(names) == len(set(names)) == 12
    block(gc.input("x", (1, 3, 8)), train=True)
    assert sorted(p.name for p in block.state()) == ["blk.attn.mask3", "blk.drop.key"]
    assert nn.Linear(2, 2).W.name != nn.Linear(2, 2).W.name  # automatic names are unique


def test_init_functions():
    for fn in (gc.init.glorot_uniform, gc.init.glorot_normal, gc.init.he_uniform, gc.init.he_normal):
        a, b = fn((300, 200), rng=1), fn((300, 200), rng=np.random.default_rng(1))
        assert a.dtype == np.float32 and a.shape == (300, 200)
        np.testing.assert_array_equal(a, b)  # seeded
    np.testing.assert_allclose(gc.init.glorot_uniform((300, 200), rng=0).std(), np.sqrt(2 / 500), rtol=0.03)
    np.testing.assert_allclose(gc.init.glorot_normal((300, 200), rng=0).std(), np.sqrt(2 / 500), rtol=0.03)
    np.testing.assert_allclose(gc.init.he_uniform((300, 200), rng=0).std(), np.sqrt(2 / 300), rtol=0.03)
    np.testing.assert_allclose(gc.init.he_normal((64, 16, 3, 3), rng=0).std(), np.sqrt(2 / 144), rtol=0.03)
    assert gc.init.fans((64, 16, 3, 3)) == (144, 576) and gc.init.fans((5, 7)) == (5, 7)
    assert gc.init.kaiming_uniform is gc.init.he_uniform and gc.init.xavier_normal is gc.init.glorot_normal
    assert gc.init.zeros(3).dtype == np.float32 and gc.init.ones((2, 2), "float64").sum() == 4


# --- compiler bugs found while writing the layers (fixed) ----------------------------------------
@pytest.mark.parametrize("debug", [True, False])
def test_matmul_of_a_broadcast_constant(debug):
    x = gc.input("x", ("b", 4))
    U = gc.param("U", np.ones((4, 3), np.float32))
    h0 = gc.broadcast_to(gc.constant(np.float32(0.5)), ("b", 4))
    out = h0 @ U + x @ U
    np.testing.assert_array_equal(gc.function([x], out, target="cpu", debug=debug)(np.ones((2, 4), np.float32)),
                                  np.full((2, 3), 6.0))


def test_array_constant_compiles_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    x = gc.input("x", ("b", 4))
    f = gc.function([x], x * np.arange(4, dtype=np.float32) + 0.25, target="cpu")
    np.testing.assert_allclose(f(np.ones((2, 4), np.float32)), np.tile(np.arange(4) + 0.25, (2, 1)))
    spec = f._program.spec
    assert len(spec["consts"]) == 1  # the array is a base the kernel reads, not code
    stats = f._program.library_stats  # each kernel compiled at most once (or found compiled)
    assert stats["compiled"] + stats["reused"] == len({c["key"] for c in spec["calls"]})


# --- target="cuda", on Numba's CUDA simulator ---------------------------------------------------
SIMULATED = '''
import numpy as np
import graphc as gc
from graphc import nn

def build():
    x, y = gc.input("x", ("batch", 1, 6, 6)), gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Conv2D(1, 2, 3, padding=1, rng=0), gc.relu, nn.MaxPool2D(2), nn.AvgPool2D(3, 1),
                          nn.Flatten(), nn.Dropout(0.2, seed=1, name="d"), nn.LayerNorm(2), nn.Linear(2, 2, rng=1))
    return [x, y], gc.softmax_cross_entropy(model(x, train=True), y), model

res = {}
for target in ("numpy", "cuda"):
    inputs, loss, model = build()
    f = gc.function(inputs, loss, updates=gc.optim.Adam(model, 0.01, clip_grad_norm=1.0).updates(loss), target=target)
    rng = np.random.default_rng(0)
    losses = [float(f(rng.standard_normal((2, 1, 6, 6)).astype(np.float32), rng.integers(0, 2, 2))) for _ in range(2)]
    res[target] = losses, [p.value.copy() for p in model.params()]
np.testing.assert_allclose(res["cuda"][0], res["numpy"][0], rtol=1e-5)
for a, b in zip(res["cuda"][1], res["numpy"][1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
x = gc.input("x", (1, 3, 4))
att, gru = nn.MultiHeadAttention(4, 2, rng=0), nn.GRU(4, 3, rng=1)
out = gc.sum(gru(att(x)))
vals = [gc.function([x], [out, *gc.grad(out, att.params() + gru.params())], target=t)(np.ones((1, 3, 4), np.float32))
        for t in ("numpy", "cuda")]
for a, b in zip(*vals):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print("ok")
'''


def test_cuda_simulator_matches_reference(tmp_path):
    """A conv/pool/dropout/layer-norm training step with Adam and clipping, and attention + GRU
    gradients, on target="cuda" under Numba's CUDA simulator (a child process: the simulator
    must be chosen before numba is imported)."""
    pytest.importorskip("numba.cuda")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", GRAPHC_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", SIMULATED], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-3000:] + res.stderr[-3000:]
