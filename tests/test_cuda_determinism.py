"""target="cuda" generates the same module for the same model, whatever the process built before:
identifiers come from positions in the program, never from node ids or the counters behind layer
and optimizer names (linear3, adam1), which appear nowhere in the source. The disk cache is keyed
by the source, so a second process compiling the model loads the first one's module.

As in test_cuda_backend.py: when this process has neither the simulator nor a GPU,
``test_on_the_simulator`` runs this file again in a child process with NUMBA_ENABLE_CUDASIM=1.
The cache test starts simulator processes of its own, so it runs anywhere."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cuda_sim import needs_cuda, run_on_simulator

import graphc as gc
from graphc import nn, optim

ROOT = Path(__file__).parents[1]


def test_on_the_simulator(tmp_path):
    """This file's tests, in a child process with the simulator."""
    run_on_simulator(__file__, tmp_path)


def mlp_adam():
    """An MLP trained by Adam: layer and optimizer state names come from process-wide counters."""
    x, y = gc.input("x", ("batch", 8)), gc.input("y", ("batch",), "int64")
    net = nn.Sequential(nn.Linear(8, 6, rng=0), nn.Tanh(), nn.Linear(6, 3, rng=1))
    loss = gc.softmax_cross_entropy(net(x), y)
    return [x, y], [loss], optim.Adam(net, lr=0.01).updates(loss)


def rnn_embedding_sgd():
    """A gather, a scan (a loop body with buffers of its own) and a full reduction."""
    ids, y = gc.input("ids", (2, 4), "int64"), gc.input("y", (2, 4, 3))
    emb, rnn = nn.Embedding(5, 3, rng=0), nn.RNN(3, 3, rng=1)
    loss = gc.mean((rnn(emb(ids)) - y) ** 2)
    return [ids, y], [loss], optim.SGD([*emb.params(), *rnn.params()], lr=0.1, momentum=0.9).updates(loss)


def unrelated_work():
    """What a process may build before: nodes, layers and optimizers that are never compiled."""
    for _ in range(40):
        gc.input("junk", (3,)) * 2
    optim.Adam(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), lr=0.1)
    nn.RNN(2, 2)
    nn.Embedding(3, 2)


@needs_cuda
@pytest.mark.parametrize("model", [mlp_adam, rnn_embedding_sgd])
def test_same_model_generates_the_same_module(model):
    sources = []
    for _ in range(2):
        ins, outs, updates = model()
        sources.append(gc.function(ins, outs, updates=updates, target="cuda").source)
        unrelated_work()
    assert sources[0] == sources[1]
    src = sources[0]
    for name in ("linear", "adam", "sgd", "rnn", "embedding"):  # counter-based names: not even in comments
        assert name not in src.lower(), name
    # every op is named once, on the line that computes it: kernel headers do not list them again
    heads = re.findall(r"^def (k\w+)\(.*?\):\n    (?:\".*\"|'.*')\n((?:    #.*\n)*)", src, re.M)
    assert len(heads) == src.count("\ndef k")
    assert all(listed == "" for _, listed in heads), heads


CHILD = textwrap.dedent('''
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import graphc as gc
    from test_cuda_determinism import mlp_adam, unrelated_work
    for _ in range(int(sys.argv[1])):  # node ids and layer counters differ from the other process
        unrelated_work()
    ins, outs, updates = mlp_adam()
    f = gc.function(ins, outs, updates=updates, target="cuda")
    rng = np.random.default_rng(0)
    loss = f(rng.standard_normal((4, 8)).astype(np.float32), rng.integers(0, 3, 4))[0]
    p = f._program
    print(json.dumps({{"hit": p.cache_hit, "module": p.module.__file__, "source": f.source, "loss": float(loss)}}))
''')


def test_second_process_hits_the_disk_cache(tmp_path):
    """The second process finds the first one's module on disk, intact, and imports it as it is.
    (``cache_hit`` also asks for Numba's index of compiled kernels, which the simulator never
    writes, so here the module file itself is the evidence: one file, never rewritten.)"""
    cache = tmp_path / "cache"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # this checkout's graphc
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", GRAPHC_CACHE_DIR=str(cache), PYTHONPATH=path)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(ROOT / "tests")))
    runs, stats = [], []
    for junk in (0, 2):
        res = subprocess.run([sys.executable, str(script), str(junk)], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(json.loads(res.stdout.splitlines()[-1]))
        st = os.stat(runs[-1]["module"])
        stats.append((st.st_ino, st.st_mtime_ns))
    first, second = runs
    assert not first["hit"]
    assert second["module"] == first["module"] and stats[1] == stats[0]  # the same file, not written again
    assert [p.name for p in cache.glob("_gen_*.py")] == [Path(first["module"]).name]
    assert second["source"] == first["source"]
    np.testing.assert_allclose(second["loss"], first["loss"], rtol=1e-6)
