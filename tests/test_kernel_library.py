"""The CPU kernel library and step cache: kernels compiled once per structure and shared by
step, predict and other models; warm starts that compile, optimize and import nothing; a
corrupt entry rebuilt; compiling in the background. Each case runs in fresh interpreters,
so nothing compiled by other tests helps."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

import graphc as gc

PRELUDE = """
import json, sys, time
import numpy as np
import graphc as gc

def mlp(hidden, seed=0):
    rng = np.random.default_rng(seed)
    x, y = gc.input("x", ("batch", 8)), gc.input("y", ("batch",), "int64")
    W1 = gc.param("W1", rng.normal(0, .4, (8, hidden)).astype(np.float32))
    b1 = gc.param("b1", np.zeros(hidden, np.float32))
    W2 = gc.param("W2", rng.normal(0, .4, (hidden, 3)).astype(np.float32))
    logits = gc.relu(x @ W1 + b1) @ W2
    loss = gc.softmax_cross_entropy(logits, y)
    params = [W1, b1, W2]
    ups = [(p, p - 0.1 * g) for p, g in zip(params, gc.grad(loss, params))]
    return x, y, logits, loss, ups

def run(fns, **extra):
    rng = np.random.default_rng(1)
    xv, yv = rng.standard_normal((5, 8)).astype(np.float32), rng.integers(0, 3, 5)
    step, predict = fns
    losses = [float(step(xv, yv)) for _ in range(3)]
    stats = {}
    for f in fns:
        for k, v in f._program.library_stats.items():
            stats[k] = stats.get(k, 0) + v
    keys = {c["key"] for f in fns for c in f._program.spec["calls"]}
    seen = {"modules": [m for m in ("numba", "scipy", "networkx") if m in sys.modules],
            "programs": [f._prog is not None for f in fns]}  # before report() builds the program
    print(json.dumps({"losses": losses, "pred": predict(xv).tolist(), "hit": [f._program.cache_hit for f in fns],
                      "distinct": len(keys), "report": fns[0].report().splitlines()[-2], **seen, **stats, **extra}))
"""


def child(cache, body: str, **env) -> dict:
    e = dict(os.environ, GRAPHC_CACHE_DIR=str(cache), **env)
    r = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], env=e, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


MLP = """
x, y, logits, loss, ups = mlp(16)
run([gc.function([x, y], loss, updates=ups, target="cpu"), gc.function([x], logits, target="cpu")])
"""


def test_step_and_predict_compile_each_kernel_structure_once(tmp_path):
    cold = child(tmp_path, MLP, GRAPHC_COMPILE_WORKERS="0")
    assert cold["compiled"] == cold["distinct"] and cold["hit"] == [False, False]
    assert cold["reused"] > 0  # predict's kernels are step's: taken from the library, not compiled again
    assert "compiled" in cold["report"] and "from the library" in cold["report"]


def test_warm_start_compiles_optimizes_and_imports_nothing(tmp_path):
    cold = child(tmp_path, MLP)
    assert cold["programs"] == [True, True] and "numba" in cold["modules"]
    warm = child(tmp_path, MLP)
    assert warm["hit"] == [True, True] and warm["compiled"] == 0
    assert warm["programs"] == [False, False]  # no passes, no fusion, no code generation
    assert warm["modules"] == []  # neither Numba nor SciPy nor networkx is imported
    assert warm["losses"] == cold["losses"] and warm["pred"] == cold["pred"]


def test_a_second_model_reuses_library_kernels(tmp_path):
    first = child(tmp_path, MLP)
    other = child(tmp_path, MLP.replace("mlp(16)", "mlp(32, seed=3)"))  # other sizes, same structure
    assert other["hit"] == [False, False]  # another graph: passes and codegen run...
    assert other["compiled"] == 0 and other["reused"] == first["compiled"] + first["reused"]  # ...but no kernel compiles


def test_corrupt_library_entry_is_compiled_again(tmp_path):
    cold = child(tmp_path, MLP)
    objs = sorted((tmp_path / "kernels").glob("k_*.o"))
    assert len(objs) == cold["compiled"]
    objs[0].write_bytes(objs[0].read_bytes()[:-40] + b"\0" * 40)  # damaged body: the checksum catches it
    objs[1].write_bytes(b"{not json\n")
    again = child(tmp_path, MLP)
    assert again["compiled"] == 2 and again["losses"] == cold["losses"] and again["pred"] == cold["pred"]
    again = child(tmp_path, MLP)
    assert again["compiled"] == 0


def test_compiling_in_a_forked_worker_gives_the_same_kernels(tmp_path):
    a = child(tmp_path / "a", MLP, GRAPHC_COMPILE_WORKERS="0")
    b = child(tmp_path / "b", "import graphc.backends.cpu.library as L; L.WORKER_MIN = 2; L._free_cores = lambda: 1\n" + MLP)
    assert b.get("workers", 0) >= 1 and a["losses"] == b["losses"] and a["pred"] == b["pred"]
    assert sorted(p.name for p in (tmp_path / "a" / "kernels").glob("*.o")) == \
        sorted(p.name for p in (tmp_path / "b" / "kernels").glob("*.o"))


def test_background_compile_switches_to_the_compiled_step(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    xv, yv = rng.standard_normal((6, 8)).astype(np.float32), rng.integers(0, 3, 6)
    trajectories = {}
    for mode in ("sync", "background"):
        W = gc.param("W", np.random.default_rng(1).normal(0, .4, (8, 3)).astype(np.float32))
        x, y = gc.input("x", ("batch", 8)), gc.input("y", ("batch",), "int64")
        loss = gc.softmax_cross_entropy(x @ W, y)
        f = gc.function([x, y], loss, updates=[(W, W - 0.5 * gc.grad(loss, W))], target="cpu", compile=mode)
        losses = [float(f(xv, yv)) for _ in range(2)]
        f.wait()
        assert type(f._program).__name__ == "CpuProgram"
        losses += [float(f(xv, yv)) for _ in range(3)]
        trajectories[mode] = losses, W.value.copy()
    # the same training, up to float32 rounding where the reference plan ran
    np.testing.assert_allclose(trajectories["background"][0], trajectories["sync"][0], rtol=1e-5)
    np.testing.assert_allclose(trajectories["background"][1], trajectories["sync"][1], rtol=1e-4, atol=1e-6)


def test_parallel_kernels_load_warm_without_compiling(tmp_path):
    """A parallel kernel's object code calls Numba's runtime; a warm start binds it, compiles nothing."""
    body = """
import graphc.backends.cpu.program as C
C.PARALLEL_MIN = 1  # every kernel with a parallel variant uses it
n = 5000
x = gc.input("x", (n,))
w = gc.param("w", np.linspace(-1, 1, n, dtype=np.float32))
loss = gc.sum(gc.tanh(x * w) * gc.sigmoid(x - w)) / n
f = gc.function([x], loss, updates=[(w, w - 0.1 * gc.grad(loss, w))], target="cpu")
out = [float(f(np.ones(n, np.float32))) for _ in range(3)]
print(json.dumps({"out": out, "parallel": "prange(" in f.source, **f._program.library_stats}))
"""
    cold, warm = child(tmp_path, body), child(tmp_path, body)
    assert cold["parallel"] and warm["parallel"] and cold["compiled"] > 0 and warm["compiled"] == 0
    assert warm["out"] == cold["out"]


def test_the_same_model_after_unrelated_layers_is_the_same_step(tmp_path, monkeypatch):
    """Generated code and the step's cache key come from the program's structure: building the
    model again after other layers and optimizers (whose counters rename its params, e.g.
    linear7.W, adam2.exp_avg...) gives the same source and a cache hit."""
    import graphc as gc
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))

    def build():
        x, y = gc.input("x", ("b", 6)), gc.input("y", ("b",), "int64")
        model = gc.nn.Sequential(gc.nn.Linear(6, 8, rng=1), gc.relu, gc.nn.Linear(8, 3, rng=2))
        loss = gc.softmax_cross_entropy(model(x), y)
        return gc.function([x, y], loss, updates=gc.optim.Adam(model, lr=1e-2).updates(loss), target="cpu")

    args = (np.ones((4, 6), np.float32), np.array([0, 1, 2, 0]))
    first = build()
    first(*args)
    for _ in range(3):
        gc.nn.Linear(2, 2)
        gc.optim.SGD([gc.param("unrelated", np.zeros(2, np.float32))], lr=0.1)
    again = build()
    again(*args)
    assert again._program.cache_hit and again._program.key == first._program.key
    assert again.source == first.source
    assert "linear" not in first.source and "adam" not in first.source
