"""The examples run as a user runs them (a subprocess, ``--quick``) and write their plot.

The main job, mlp_digits.py, runs on its default target, cpu. The others run on the numpy
reference: a cold compile of their training steps for the CPU takes 25-90 s each, and the
CPU code of every layer they use is checked against the reference in test_nn.py."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str, tmp_path: Path, *args: str) -> str:
    env = dict(os.environ, MPLBACKEND="Agg")
    cmd = [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--out", str(tmp_path), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    png = tmp_path / f"{name}.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return res.stdout


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in output:\n{text}"
    return float(m.group(1))


def test_mlp_digits_main_job(tmp_path):
    out = run("mlp_digits", tmp_path)
    assert "graphc target=cpu: compiled in" in out
    assert len(re.findall(r"^epoch +\d+  loss [\d.]+  train acc [\d.]+  test acc [\d.]+  \(\d+ ms\)$", out, re.M)) == 3
    assert number(r"final held-out test accuracy: ([\d.]+)", out) > 0.85


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or not __import__("shutil").which("mpiexec"),
                    reason="mpi4py or mpiexec missing: pip install 'graphc[mpi]'")
def test_mlp_digits_distributed(tmp_path):
    """README's distributed command: 2 ranks, half of each batch each, and the accuracy of one."""
    env = dict(os.environ, MPLBACKEND="Agg", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = ["mpiexec", "-n", "2", sys.executable, str(EXAMPLES / "mlp_digits.py"), "--distributed", "--epochs", "8",
           "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "2 ranks, 32 of each batch of 64 per rank" in out
    assert len(re.findall(r"^epoch +\d+  loss", out, re.M)) == 8  # rank 0 reports, once per epoch
    assert number(r"final held-out test accuracy: ([\d.]+)", out) > 0.93
    assert (tmp_path / "mlp_digits_distributed.png").exists()


def test_mlp_digits_save_and_resume(tmp_path):
    """--save after 2 epochs, --resume for 2 more: the same epochs 3 and 4, to the printed digit,
    as 4 epochs in one run (params, Adam's state, the dropout key and the shuffle all resume)."""
    def train(*args: str) -> list[str]:
        cmd = [sys.executable, str(EXAMPLES / "mlp_digits.py"), "--out", str(tmp_path), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, MPLBACKEND="Agg"),
                             cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return [re.sub(r"\(\d+ ms\)", "", line) for line in res.stdout.splitlines() if line.startswith("epoch")]
    ck = str(tmp_path / "ck.safetensors")
    assert len(train("--epochs", "2", "--save", ck)) == 2
    resumed = train("--epochs", "4", "--resume", ck)
    straight = train("--epochs", "4")
    assert resumed == straight[2:] and len(resumed) == 2


def test_cnn_digits(tmp_path):
    out = run("cnn_digits", tmp_path, "--target", "numpy")
    assert number(r"final held-out test accuracy: ([\d.]+)", out) > 0.5


def test_vanishing_gradients(tmp_path):
    out = run("vanishing_gradients", tmp_path, "--target", "numpy")
    ratios = dict(re.findall(r"^(\w+): layer 1 / layer \d+ gradient norm ([\d.e+-]+)", out, re.M))
    assert float(ratios["sigmoid"]) < 0.05 < 0.2 < float(ratios["residual"])  # vanishing vs not
    # through time (gc.grad through the scan): the tanh RNN's gradient at the first of 32 steps vanishes, the LSTM's not
    steps = dict(re.findall(r"^(\w+): step 1 / step 32 gradient norm ([\d.e+-]+)", out, re.M))
    assert float(steps["rnn"]) < 0.01 < 0.1 < float(steps["lstm"])


@pytest.mark.parametrize("name, args", [("char_rnn", ()), ("char_rnn", ("--cell", "gru")), ("tiny_transformer", ())])
def test_text_models(name, args, tmp_path):
    out = run(name, tmp_path, "--target", "numpy", *args)
    loss, base = number(r"final validation loss ([\d.]+)", out), number(r"vs unigram baseline ([\d.]+)", out)
    assert 0 < loss < 5 and 2 < base < 4
    assert "sample:\n" in out


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "vanishing_gradients", "char_rnn", "tiny_transformer"])
def test_build_returns_a_loss_and_its_inputs(name):
    """What `graphc inspect examples/X.py:build` reads."""
    m = _example(name).build()
    assert m.loss.shape == () and m.loss.dtype == np.float32
    needed = {n.id for n in gc.toposort([m.loss]) if n.op.name == "input"}
    assert needed == {x.id for x in m.inputs}


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scans(roots) -> list:
    return [n for n in gc.toposort(roots if isinstance(roots, list) else [roots]) if n.op.name == "scan"]


def test_char_rnn_defaults_to_an_lstm_over_64_steps_with_carried_h_and_c():
    m = _example("char_rnn").build()
    assert m.inputs[0].shape == (32, 64)
    (s,) = _scans(m.loss)  # the cell runs as one scan over the 64 characters
    assert s.attrs["length"] == 64 and len(s.attrs["body"].carry) == 2  # (h, c)
    assert [p.name for p, _ in m.state_updates] == ["state_h", "state_c"]
    assert [v.shape for _, v in m.state_updates] == [(32, 128)] * 2
    assert [p.name for p, _ in m.sample_updates] == ["sample_h", "sample_c"] and m.sample_logits.shape == (1, 96)
    g = _example("char_rnn").build(cell="gru", unroll=16)
    assert [p.name for p, _ in g.state_updates] == ["state_h"] and _scans(g.loss)[0].attrs["length"] == 16


def test_tiny_transformer_defaults_to_four_stacked_blocks():
    mod = _example("tiny_transformer")
    m = mod.build()
    (s,) = _scans(m.logits)  # four blocks, one scan over their stacked params
    assert s.attrs["length"] == 4
    stacked = [p for p in m.model.params() if p.name.startswith("blocks.")]
    assert stacked and all(p.shape[0] == 4 for p in stacked)
    assert _scans(mod.build(layers=2).logits)[0].attrs["length"] == 2


def test_vanishing_gradients_recurrent_models_return_per_step_norms():
    mod = _example("vanishing_gradients")
    for kind in ("rnn", "lstm"):
        m = mod.build_recurrent(kind, digits=3)
        assert m.x.shape == ("batch", 24, 8) and m.step_norms.shape == (24,)
        assert _scans(m.step_norms)  # the gradient through time is a scan too
