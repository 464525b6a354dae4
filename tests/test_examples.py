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


def test_cnn_digits(tmp_path):
    out = run("cnn_digits", tmp_path, "--target", "numpy")
    assert number(r"final held-out test accuracy: ([\d.]+)", out) > 0.5


def test_vanishing_gradients(tmp_path):
    out = run("vanishing_gradients", tmp_path, "--target", "numpy")
    ratios = dict(re.findall(r"^(\w+): layer 1 / layer \d+ gradient norm ([\d.e+-]+)", out, re.M))
    assert float(ratios["sigmoid"]) < 0.05 < 0.2 < float(ratios["residual"])  # vanishing vs not


@pytest.mark.parametrize("name", ["char_rnn", "tiny_transformer"])
def test_text_models(name, tmp_path):
    out = run(name, tmp_path, "--target", "numpy")
    loss, base = number(r"final validation loss ([\d.]+)", out), number(r"vs unigram baseline ([\d.]+)", out)
    assert 0 < loss < 5 and 2 < base < 4
    assert "sample:\n" in out


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "vanishing_gradients", "char_rnn", "tiny_transformer"])
def test_build_returns_a_loss_and_its_inputs(name):
    """What `graphc inspect examples/X.py:build` reads."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.build()
    assert m.loss.shape == () and m.loss.dtype == np.float32
    needed = {n.id for n in gc.toposort([m.loss]) if n.op.name == "input"}
    assert needed == {x.id for x in m.inputs}
