"""Checkpoints: exact resume in a fresh process (Adam, dropout), stable names, atomic writes,
and loads that check everything before changing anything."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphc as gc

ROOT = Path(__file__).resolve().parents[1]

TRAIN = """
import sys
import numpy as np
import graphc as gc

def build(target, shift=0):
    for _ in range(shift):  # unrelated layers first: automatic layer names differ, stable names do not
        gc.nn.Linear(3, 3)
    x = gc.input("x", ("batch", 10))
    y = gc.input("y", ("batch",), "int64")
    model = gc.nn.Sequential(gc.nn.Linear(10, 32, rng=1), gc.relu, gc.nn.Dropout(0.3, seed=5),
                             gc.nn.Linear(32, 4, rng=2))
    loss = gc.softmax_cross_entropy(model(x, train=True), y)
    opt = gc.optim.Adam(model, lr=0.01, weight_decay=1e-3)
    return gc.function([x, y], loss, updates=opt.updates(loss), target=target), model, opt

def batch(i):
    rng = np.random.default_rng(100 + i)
    return rng.normal(size=(16, 10)).astype(np.float32), rng.integers(0, 4, 16)

def train(f, first, last):
    return [float(f(*batch(i))) for i in range(first, last)]

mode, target, path = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "first":
    f, model, opt = build(target)
    losses = train(f, 0, 10)
    gc.save(path, {"model": model, "opt": opt}, metadata={"next_batch": "10"})
elif mode == "resume":
    f, model, opt = build(target, shift=3)
    meta = gc.load(path, {"model": model, "opt": opt})
    assert meta["step"] == "10" and meta["next_batch"] == "10", meta
    losses = train(f, int(meta["next_batch"]), 20)
else:
    f, model, opt = build(target)
    losses = train(f, 0, 20)[10:]
np.savez(path + "." + mode + ".npz", losses=np.array(losses), *[p.value for p in model.params() + model.state()],
         step=opt.step_count.value, *[s.value for s in opt.state_params()[1:]])
"""


@pytest.mark.parametrize("target", ["cpu", "numpy"])
def test_resume_is_exact_in_a_fresh_process(tmp_path, target):
    """10 steps, save, load into a new process (whose layers are named differently), 10 more:
    bit for bit the params, moments, step count, dropout key and losses of 20 steps in one go."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    path = str(tmp_path / "ckpt.safetensors")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for mode in ("first", "resume", "straight"):
        res = subprocess.run([sys.executable, str(script), mode, target, path], capture_output=True, text=True,
                             timeout=300, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    resumed, straight = np.load(path + ".resume.npz"), np.load(path + ".straight.npz")
    assert sorted(resumed.files) == sorted(straight.files) and len(resumed.files) > 8
    for k in resumed.files:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
    assert int(straight["step"]) == 20


def _mlp(hidden=8, seed=0):
    return gc.nn.Sequential(gc.nn.Linear(4, hidden, rng=seed), gc.tanh, gc.nn.Dropout(0.1),
                            gc.nn.Linear(hidden, 2, rng=seed + 1))


def test_stable_names_and_metadata(tmp_path):
    model = _mlp()
    opt = gc.optim.SGD(model, lr=0.1, momentum=0.9)
    x = gc.input("x", (3, 4))
    loss = gc.sum(model(x, train=True))
    f = gc.function([x], loss, updates=opt.updates(loss))
    f(np.ones((3, 4), np.float32))
    names = gc.checkpoint.named_params({"model": model, "opt": opt})
    assert list(names) == ["model/layers.0.W", "model/layers.0.b", "model/layers.2.key", "model/layers.3.W",
                           "model/layers.3.b", "opt/step", "opt/momentum.0", "opt/momentum.1", "opt/momentum.2",
                           "opt/momentum.3"]
    gc.save(tmp_path / "a.safetensors", {"model": model, "opt": opt}, metadata={"epoch": 3})
    arrays, meta = gc.checkpoint.read(tmp_path / "a.safetensors")
    assert meta["step"] == "1" and meta["epoch"] == "3" and meta["graphc"] == gc.__version__
    np.testing.assert_array_equal(arrays["model/layers.0.W"], model.layers[0].W.value)
    # a compiled Function: every param its step touches, by position
    gc.save(tmp_path / "f.safetensors", f)
    assert sorted(gc.checkpoint.read(tmp_path / "f.safetensors")[0]) == sorted(f"param.{k}" for k in range(len(f.all_params)))
    before = [np.array(p.value) for p in f.all_params]
    f(np.ones((3, 4), np.float32))
    gc.load(tmp_path / "f.safetensors", f)
    for p, v in zip(f.all_params, before):
        np.testing.assert_array_equal(p.value, v)


def test_load_lists_every_mismatch_and_changes_nothing(tmp_path):
    model = _mlp(hidden=8)
    gc.save(tmp_path / "m.safetensors", model)
    other = gc.nn.Sequential(gc.nn.Linear(4, 6, rng=3), gc.tanh, gc.nn.Linear(6, 2, rng=4), gc.nn.Linear(2, 2))
    before = [np.array(p.value) for p in other.params()]
    with pytest.raises(gc.GraphcError) as e:
        gc.load(tmp_path / "m.safetensors", other)
    msg = str(e.value)
    assert "nothing was loaded" in msg
    assert "layers.0.W: shape [4, 8] in the file, [4, 6] here" in msg
    assert "layers.3.W: shape [8, 2] in the file, [2, 2] here" in msg
    assert "missing from the file: layers.2.W" in msg  # the file's layers.2 is a dropout, here a Linear
    assert "not in what is loaded: layers.2.key" in msg
    assert "(6 problems" in msg
    for p, v in zip(other.params(), before):
        np.testing.assert_array_equal(p.value, v)
    # dtype mismatch, and strict=False
    w64 = gc.param("w", np.zeros((4, 8)))
    gc.save(tmp_path / "l.safetensors", {"w": w64})
    w32 = gc.param("w", np.ones((4, 8), np.float32))
    with pytest.raises(gc.GraphcError, match="w: dtype float64 in the file, float32 here"):
        gc.load(tmp_path / "l.safetensors", {"w": w32})
    assert (w32.value == 1).all()
    small = gc.nn.Sequential(gc.nn.Linear(4, 8, rng=9))
    gc.load(tmp_path / "m.safetensors", small, strict=False)
    np.testing.assert_array_equal(small.layers[0].W.value, model.layers[0].W.value)


def test_a_crash_mid_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _mlp()
    path = tmp_path / "c.safetensors"
    gc.save(path, model)
    good = path.read_bytes()
    model.layers[0].W.value = model.layers[0].W.value + 1

    def crash(fd):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        gc.save(path, model)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left behind


def test_damaged_or_missing_files(tmp_path):
    model = _mlp()
    path = tmp_path / "d.safetensors"
    gc.save(path, model)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(gc.GraphcError, match="damaged or not a safetensors file"):
        gc.load(path, model)
    with pytest.raises(gc.GraphcError, match="does not exist"):
        gc.load(tmp_path / "nope.safetensors", model)
    with pytest.raises(gc.GraphcError, match="cannot checkpoint"):
        gc.save(path, 3)


def test_cuda_params_round_trip(tmp_path):
    """A param trained on the device is saved as its current value (reading .value syncs)."""
    code = textwrap.dedent(f"""
        import numpy as np, graphc as gc
        m = gc.nn.Linear(3, 2, rng=0)
        x = gc.input("x", (4, 3))
        loss = gc.sum(gc.square(m(x)))
        f = gc.function([x], loss, updates=gc.optim.SGD(m, lr=0.1).updates(loss), target="cuda")
        f(np.ones((4, 3), np.float32))
        gc.save({str(tmp_path / 'g.safetensors')!r}, m)
        a, _ = gc.checkpoint.read({str(tmp_path / 'g.safetensors')!r})
        assert np.array_equal(a["W"], m.W.value)
        print("ok")
    """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
