"""graphc.optim: trajectories against torch.optim, state in the param arena, clipping,
penalties, per-layer gradient norms, and a compiler bug the optimizers work around."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 5)).astype(np.float32)
Y = RNG.standard_normal((16, 3)).astype(np.float32)
W0 = RNG.standard_normal((5, 3)).astype(np.float32)
B0 = RNG.standard_normal(3).astype(np.float32)
TARGETS = [pytest.param("numpy", False, id="numpy"), pytest.param("cpu", True, id="cpu-debug")]

# name: (graphc optimizer, torch optimizer, clip norm); lr may be a param (a schedule)
CASES = {
    "sgd": (lambda p: gc.optim.SGD(p, 0.1), lambda p, opt: opt.SGD(p, 0.1), None),
    "sgd_momentum": (lambda p: gc.optim.SGD(p, 0.1, momentum=0.9), lambda p, opt: opt.SGD(p, 0.1, momentum=0.9), None),
    "sgd_nesterov_wd": (lambda p: gc.optim.SGD(p, 0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
                        lambda p, opt: opt.SGD(p, 0.05, momentum=0.8, nesterov=True, weight_decay=0.1), None),
    "sgd_dampening": (lambda p: gc.optim.SGD(p, 0.1, momentum=0.9, dampening=0.5),
                      lambda p, opt: opt.SGD(p, 0.1, momentum=0.9, dampening=0.5), None),
    "adam": (lambda p: gc.optim.Adam(p, 0.01), lambda p, opt: opt.Adam(p, 0.01), None),
    "adam_wd_betas": (lambda p: gc.optim.Adam(p, 0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                      lambda p, opt: opt.Adam(p, 0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), None),
    "adamw": (lambda p: gc.optim.AdamW(p, 0.01), lambda p, opt: opt.AdamW(p, 0.01), None),
    "adamw_lr_param": (lambda p: gc.optim.AdamW(p, gc.param("lr", np.float32(0.01)), weight_decay=0.1),
                       lambda p, opt: opt.AdamW(p, 0.01, weight_decay=0.1), None),
    "sgd_clip": (lambda p: gc.optim.SGD(p, 0.1, momentum=0.9, clip_grad_norm=0.5),
                 lambda p, opt: opt.SGD(p, 0.1, momentum=0.9), 0.5),
    "adam_clip": (lambda p: gc.optim.Adam(p, 0.05, clip_grad_norm=0.3), lambda p, opt: opt.Adam(p, 0.05), 0.3),
}


def _graphc_run(make_opt, target, debug, steps):
    x, y = gc.input("x", (16, 5)), gc.input("y", (16, 3))
    W, b = gc.param("W", W0), gc.param("b", B0)
    loss = gc.mse(gc.tanh(x @ W + b), y)
    opt = make_opt([W, b])
    f = gc.function([x, y], loss, updates=opt.updates(loss), target=target, debug=debug)
    out = []
    for i in range(steps):
        f(X * (1 + 0.1 * i), Y)
        out.append((W.value.copy(), b.value.copy()))
    return out, opt


@pytest.mark.parametrize("target, debug", TARGETS)
@pytest.mark.parametrize("name", list(CASES))
def test_same_trajectory_as_torch(name, target, debug):
    torch = pytest.importorskip("torch")
    make_gc, make_torch, clip = CASES[name]
    steps = 6
    got, opt = _graphc_run(make_gc, target, debug, steps)
    Wt, bt = torch.tensor(W0, requires_grad=True), torch.tensor(B0, requires_grad=True)
    topt = make_torch([Wt, bt], torch.optim)
    for i in range(steps):
        topt.zero_grad()
        torch.nn.functional.mse_loss(torch.tanh(torch.tensor(X * (1 + 0.1 * i)) @ Wt + bt), torch.tensor(Y)).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_([Wt, bt], clip)
        topt.step()
        np.testing.assert_allclose(got[i][0], Wt.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=f"W after step {i + 1}")
        np.testing.assert_allclose(got[i][1], bt.detach().numpy(), rtol=2e-5, atol=2e-6, err_msg=f"b after step {i + 1}")
    assert int(opt.step_count.value) == steps


def test_lr_param_schedule_takes_effect_without_recompiling():
    lr = gc.param("lr", np.float32(0.5))
    w = gc.param("w", np.float32(1.0))
    loss = w * 2.0  # gradient 2
    f = gc.function([], loss, updates=gc.optim.SGD([w], lr).updates(loss))
    f()
    lr.value = np.float32(0.25)
    f()
    np.testing.assert_allclose(w.value, 1.0 - 0.5 * 2 - 0.25 * 2)


def test_state_lives_in_the_param_arena():
    x, y = gc.input("x", ("batch", 5)), gc.input("y", ("batch", 3))
    W, b = gc.param("W", W0), gc.param("b", B0)
    loss = gc.mse(x @ W + b, y)
    opt = gc.optim.Adam([W, b], 0.01)
    f = gc.function([x, y], loss, updates=opt.updates(loss), target="cpu", debug=True)
    state = opt.state_params()
    assert [s.name for s in state] == [f"{opt.name}.step", f"{opt.name}.exp_avg.W", f"{opt.name}.exp_avg_sq.W",
                                       f"{opt.name}.exp_avg.b", f"{opt.name}.exp_avg_sq.b"]
    arenas = f._program.arenas
    for p in [W, b, *state]:
        assert any(np.shares_memory(p.value, a) for a in arenas), p.name
    f(X, Y)
    assert int(opt.step_count.value) == 1 and np.abs(state[1].value).max() > 0
    assert opt.updates(loss)[1][0] is state[1]  # state is made once: a second step shares it


def test_clip_by_global_norm_and_grad_norms_match_numpy():
    x = gc.input("x", (4, 3), "float64")
    W1, W2 = gc.param("W1", RNG.standard_normal((3, 5))), gc.param("W2", RNG.standard_normal((5, 2)))
    loss = gc.sum(gc.square(gc.tanh(x @ W1) @ W2))
    norms = gc.optim.grad_norms(loss, {"first": [W1], "second": [W2], "both": [W1, W2]})
    grads = gc.grad(loss, [W1, W2])
    clipped = gc.optim.clip_by_global_norm(grads, 0.5)
    xv = RNG.standard_normal((4, 3))
    n1, n2, nb, g1, g2, c1, c2 = gc.function([x], [*norms.values(), *grads, *clipped])(xv)
    np.testing.assert_allclose([n1, n2, nb], [np.linalg.norm(g1), np.linalg.norm(g2), np.hypot(np.linalg.norm(g1),
                                                                                                  np.linalg.norm(g2))])
    scale = min(1.0, 0.5 / (nb + 1e-6))
    np.testing.assert_allclose(c1, g1 * scale)
    np.testing.assert_allclose(c2, g2 * scale)


def test_grad_norms_share_the_optimizers_gradients():
    """Diagnostics add reductions, not a second backward pass: CSE merges the gradients."""
    x, y = gc.input("x", ("batch", 8)), gc.input("y", ("batch",), "int64")
    model = gc.nn.Sequential(gc.nn.Linear(8, 16, rng=0), gc.relu, gc.nn.Linear(16, 4, rng=1))
    loss = gc.softmax_cross_entropy(model(x), y)
    ups = gc.optim.SGD(model, 0.1).updates(loss)
    plain = gc.function([x, y], loss, updates=ups)
    norms = gc.optim.grad_norms(loss, {"l0": model.layers[0], "l2": model.layers[2]})
    diag = gc.function([x, y], [loss, *norms.values()], updates=ups)
    matmuls = lambda f: sum(k.kind == "matmul" for k in f.kernels)
    assert matmuls(diag) == matmuls(plain)


def test_penalties():
    w = gc.param("w", np.array([-2.0, 0.5, 3.0]))
    l1, l2 = gc.optim.l1_penalty([w], 0.1), gc.optim.l2_penalty([w], 0.1)
    vals = gc.function([], [l1, l2, *gc.grad(l1 + l2, [w])])()
    np.testing.assert_allclose(vals[0], 0.1 * 5.5)
    np.testing.assert_allclose(vals[1], 0.05 * (4 + 0.25 + 9))
    np.testing.assert_allclose(vals[2], 0.1 * np.sign(w.value) + 0.1 * w.value)


def test_optimizer_advances_dropout_keys():
    x = gc.input("x", ("batch", 4))
    drop, lin = gc.nn.Dropout(0.5, seed=3), gc.nn.Linear(4, 2, rng=0)
    loss = gc.sum(lin(drop(x, train=True)))
    opt = gc.optim.SGD(lin, 0.1)
    ups = opt.updates(loss)
    assert drop.key.id in [p.id for p, _ in ups] and [k.id for k in drop.state()] == [drop.key.id]
    f = gc.function([x], loss, updates=ups)
    f(np.ones((2, 4), np.float32))
    assert int(drop.key.value) == 4


def test_errors():
    w, k = gc.param("w", np.ones(3, np.float32)), gc.param("k", np.int64(0))
    with pytest.raises(gc.GraphcError, match="float params"):
        gc.optim.SGD([w, k], 0.1)
    with pytest.raises(gc.GraphcError, match="twice"):
        gc.optim.Adam([w, w])
    with pytest.raises(gc.GraphcError, match="Nesterov"):
        gc.optim.SGD([w], 0.1, nesterov=True)
    with pytest.raises(gc.GraphcError, match="0-d float"):
        gc.optim.SGD([w], gc.param("lr", np.ones(2, np.float32)))


def test_updates_of_different_shapes_sharing_a_scalar():
    """The optimizers' shape: a scalar (a bias correction, a clip coefficient) read by the updates
    of W (5, 3) and b (3,) fuses both into one loop over (5, 3); b must be updated once."""
    s = gc.param("s", np.float32(1.0))
    W, b = gc.param("W", np.zeros((5, 3), np.float32)), gc.param("b", np.zeros(3, np.float32))
    c = gc.exp(s)
    f = gc.function([], [], updates=[(W, W + c), (b, b + c)], target="cpu", debug=True)
    f()
    np.testing.assert_allclose(b.value, np.full(3, np.e), rtol=1e-6)
