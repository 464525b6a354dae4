"""A step is atomic and thread-safe: concurrent calls give serial results, Ctrl-C arrives as
KeyboardInterrupt with params all before or all after the step, re-entry is refused, a failed
allocation commits nothing, and .value is one array per param that every target updates in place."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import graphc as gc

TARGETS = ["numpy", "cpu"]
RNG = np.random.default_rng(0)


def mlp(seed=0):
    rng = np.random.default_rng(seed)
    x, y = gc.input("x", ("batch", 8)), gc.input("y", ("batch",), "int64")
    W1 = gc.param("W1", rng.normal(0, .5, (8, 32)).astype(np.float32))
    W2 = gc.param("W2", rng.normal(0, .5, (32, 3)).astype(np.float32))
    logits = gc.tanh(x @ W1) @ W2
    loss = gc.softmax_cross_entropy(logits, y)
    ups = [(p, p - 0.05 * g) for p, g in zip([W1, W2], gc.grad(loss, [W1, W2]))]
    return x, y, logits, loss, ups, [W1, W2]


@pytest.mark.parametrize("target", TARGETS)
def test_concurrent_calls_give_serial_results(target):
    x, y, logits, loss, ups, params = mlp()
    predict = gc.function([x], logits, target=target)
    batches = [RNG.standard_normal((64, 8)).astype(np.float32) for _ in range(4)]
    want = [predict(b) for b in batches]
    got: dict = {}

    def work(k):
        for _ in range(50):
            out = predict(batches[k])
            if not np.array_equal(out, want[k]):
                got[k] = out
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not got, "a concurrent call saw another call's workspace"


@pytest.mark.parametrize("target", TARGETS)
def test_concurrent_training_steps_are_serialized_whole(target):
    xv, yv = RNG.standard_normal((16, 8)).astype(np.float32), RNG.integers(0, 3, 16)
    finals = []
    for threaded in (False, True):
        x, y, logits, loss, ups, params = mlp()
        step = gc.function([x, y], loss, updates=ups, target=target)
        predict = gc.function([x], logits, target=target)  # shares the params: same lock
        if threaded:
            def train():
                for _ in range(20):
                    step(xv, yv)
            threads = [threading.Thread(target=train) for _ in range(4)] + \
                [threading.Thread(target=lambda: [predict(xv) for _ in range(20)])]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for _ in range(80):
                step(xv, yv)
        finals.append([p.value.copy() for p in params])
    for a, b in zip(*finals):  # the same batch every step: 80 whole steps in any order
        np.testing.assert_array_equal(a, b)


CTRL_C = """
import os, signal, threading, time
import numpy as np, graphc as gc
a, b = gc.param("a", np.zeros(4096, np.float32)), gc.param("b", np.zeros(4096, np.float32))
x = gc.input("x", (4096,))
h = x
for _ in range(30):
    h = gc.tanh(h) + 0.1
f = gc.function([x], gc.sum(h * a), updates=[(a, a + 1), (b, b + 1)], target="{target}", optimize=False)
xv = np.ones(4096, np.float32)
f(xv)
stop = False
def killer():
    while not stop:
        time.sleep(0.0007)
        os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=killer, daemon=True).start()
interrupts = calls = 0
t0 = time.time()
while True:
    try:
        if time.time() - t0 > 4:
            break
        f(xv)
        calls += 1
    except KeyboardInterrupt:
        interrupts += 1
stop = True
signal.signal(signal.SIGINT, signal.SIG_IGN)
time.sleep(0.05)
# every step added 1 to both params, or to neither: a torn step leaves them different for good
bad = int(not (np.array_equal(a.value, b.value) and a.value.min() == a.value.max()))
print(interrupts, bad, calls)
"""


@pytest.mark.parametrize("target", TARGETS)
def test_ctrl_c_arrives_as_keyboard_interrupt_with_params_whole(target, tmp_path):
    r = subprocess.run([sys.executable, "-c", CTRL_C.format(target=target)], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, GRAPHC_CACHE_DIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr[-2000:]
    interrupts, bad, calls = map(int, r.stdout.split()[-3:])
    assert interrupts > 20 and calls > 0, r.stdout
    assert bad == 0, f"{bad} interrupts left params from different steps"


@pytest.mark.parametrize("target", TARGETS)
def test_a_step_called_from_inside_a_step_is_refused(target):
    p = gc.param("p", np.zeros(3, np.float32))
    x = gc.input("x", (3,))
    f = gc.function([x], gc.sum(x * p), updates=[(p, p + 1)], target=target)
    from graphc.atomic import running

    with running(f._guard):  # as a signal handler calling f during f would be
        with pytest.raises(gc.GraphcError, match="cannot be re-entered"):
            f(np.ones(3, np.float32))
    f(np.ones(3, np.float32))
    np.testing.assert_array_equal(p.value, [1, 1, 1])


@pytest.mark.parametrize("target", TARGETS)
def test_a_failed_allocation_commits_nothing(target):
    x, y, logits, loss, ups, params = mlp()
    step = gc.function([x, y], [loss, gc.broadcast_to(gc.reshape(loss, (1, 1)), ("batch", 10 ** 6)) * 2.0], updates=ups,
                       target=target)
    step(RNG.standard_normal((2, 8)).astype(np.float32), np.array([0, 1]))
    before = [p.value.copy() for p in params]
    huge = 10 ** 6  # the second output needs 4 TB
    with pytest.raises(MemoryError):
        step(np.zeros((huge, 8), np.float32), np.zeros(huge, np.int64))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.value, b)


@pytest.mark.parametrize("target", TARGETS)
def test_value_is_one_array_updated_in_place(target):
    """Each param has one array: W.value returns it, current as of the last step (reading .value
    brings it up to date on the GPU), and a step reads whatever was written into it. The same on
    every target."""
    W = gc.param("W", np.ones(3, np.float32))
    x = gc.input("x", (3,))
    f = gc.function([x], gc.sum(x * W), updates=[(W, W * 2)], target=target)
    v = W.value
    f(np.ones(3, np.float32))
    assert W.value is v
    np.testing.assert_array_equal(v, [2, 2, 2])
    v[0] = 10
    assert float(f(np.ones(3, np.float32))) == 14.0
    np.testing.assert_array_equal(W.value, [20, 4, 4])


# --- smaller ones ------------------------------------------------------------------------------
def test_nodes_and_functions_refuse_pickling_with_a_pointer_to_what_works():
    import pickle
    W = gc.param("W", np.ones(3, np.float32))
    x = gc.input("x", (3,))
    with pytest.raises(TypeError, match="np.save"):
        pickle.dumps(W)
    with pytest.raises(TypeError, match="np.save"):
        pickle.dumps(x * W)
    with pytest.raises(TypeError, match="gc.function"):
        pickle.dumps(gc.function([x], x * W))


@pytest.mark.parametrize("target", TARGETS)
def test_python_scalars_for_0d_inputs_are_weakly_typed(target):
    s, k = gc.input("s", ()), gc.input("k", (), "int32")
    f = gc.function([s, k], s * gc.cast(k, "float32"), target=target)
    out = f(0.5, 3)
    assert out.dtype == np.float32 and float(out) == 1.5
    assert float(f(True, 2)) == 2.0
    with pytest.raises(gc.InputError, match="a Python float for a int32 input"):
        f(0.5, 2.5)
    with pytest.raises(gc.InputError, match="does not fit in int32"):
        f(0.5, 2 ** 40)


def test_numba_disable_jit_runs_the_generated_code_as_python(tmp_path):
    code = ("import numpy as np, graphc as gc\nx = gc.input('x', (3,)); W = gc.param('W', np.ones(3, np.float32))\n"
            "f = gc.function([x], gc.sum(gc.exp(x) * W), updates=[(W, W * 2)], target='cpu')\n"
            "print(float(f(np.zeros(3, np.float32))), W.value.tolist(), f.cache_info.split(':')[0])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, NUMBA_DISABLE_JIT="1", GRAPHC_CACHE_DIR=str(tmp_path)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["3.0", "[2.0,", "2.0,", "2.0]", "debug", "mode"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_runs_a_parallel_step_serially():
    import graphc.backends.cpu.program as C
    old, C.PARALLEL_MIN = C.PARALLEL_MIN, 1
    try:
        n = 20000
        x = gc.input("x", (n,))
        w = gc.param("w", np.linspace(0, 1, n, dtype=np.float32))
        f = gc.function([x], gc.sum(gc.tanh(x * w)), updates=[(w, w * 0.5)], target="cpu")
        xv = np.ones(n, np.float32)
        f(xv)
        assert "prange(" in f.source  # the parent runs the parallel kernel
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: GNU OpenMP would kill it if it ran the parallel kernel
            try:
                os.write(wfd, repr(float(f(xv))).encode())
            finally:
                os._exit(0)
        os.close(wfd)
        got = os.read(r, 100).decode()
        _, status = os.waitpid(pid, 0)
        assert status == 0 and got, f"the child died (status {status})"
        np.testing.assert_allclose(float(got), float(gc.function([x], gc.sum(gc.tanh(x * w)))(xv)), rtol=1e-5)
    finally:
        C.PARALLEL_MIN = old
