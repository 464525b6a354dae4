"""The `graphc` command line, run as a user runs it: in a subprocess (`python -m graphc.cli`, or
the installed console script), checking exit codes, output and the files written."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = '''
import numpy as np
import graphc as gc


def _parts():
    x = gc.input("x", ("batch", 3))
    y = gc.input("y", ("batch",), dtype="int64")
    W = gc.param("W", np.ones((3, 2), np.float32))
    b = gc.param("b", np.zeros(2, np.float32))
    return x, y, W, b


def tuple_graph():
    x, y, W, b = _parts()
    logits = x @ W + b
    return x, y, logits, gc.softmax_cross_entropy(logits, y), [W, b]


def dict_graph():
    x, y, W, b = _parts()
    logits = gc.tanh(x @ W + b)
    return {"logits": logits, "loss": gc.softmax_cross_entropy(logits, y)}


def compiled():
    x, y, W, b = _parts()
    loss = gc.softmax_cross_entropy(x @ W + b, y)
    gW, gb = gc.grad(loss, [W, b])
    return gc.function([x, y], loss, updates=[(W, W - 0.1 * gW), (b, b - 0.1 * gb)])


def no_loss():
    x, y, W, b = _parts()
    return gc.relu(x @ W)


def bad_shapes():
    x = gc.input("x", (4, 3))
    W = gc.param("W", np.ones((5, 2), np.float32))
    return x @ W


def raises():
    raise ValueError("boom")


def not_a_graph():
    return 42


def only_sources():
    x, y, W, b = _parts()
    return [x, W]


def needs_args(n):
    return n


value = 3
'''
RAISE_LINE = MODELS.splitlines().index('    raise ValueError("boom")') + 1


def graphc(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphc.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, **(env or {})})


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphc: error: "), r.stderr
    return lines[0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def check_dot(path: Path) -> None:
    """The DOT parses: with pydot through networkx when installed, else a structural check."""
    text = path.read_text()
    try:
        import pydot  # noqa: F401
    except ImportError:
        pass
    else:
        import networkx as nx
        assert nx.nx_pydot.read_dot(str(path)).number_of_nodes() > 0
    assert text.lstrip().startswith("digraph")
    unquoted = re.sub(r'"(\\.|[^"\\])*"', '""', text)  # braces inside labels do not count
    depth = 0
    for ch in unquoted:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    declared = set(re.findall(r"^\s*(n\d+) \[label=", text, re.M))
    edges = re.findall(r"^\s*(n\d+) -> (n\d+) \[label=\"[^\"]*\"", text, re.M)
    assert declared and edges
    assert {a for e in edges for a in e} <= declared
    assert 'subgraph "cluster_kernel' in text  # fused kernels are clusters


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    (d / "models.py").write_text(MODELS)
    (d / "broken.py").write_text("def build(:\n")
    (d / "needs_pkg.py").write_text("import no_such_package_xyz\n\ndef build():\n    return 1\n")
    return d


@pytest.fixture
def cache(tmp_path) -> dict:
    return {"GRAPHC_CACHE_DIR": str(tmp_path / "cache")}


# ---------------------------------------------------------------- usage and errors


def test_help_lists_the_commands():
    r = graphc("--help")
    assert r.returncode == 0
    for cmd in ("bench", "inspect", "cache", "demo"):
        assert cmd in r.stdout
    assert graphc().returncode == 2  # no command: the help, on stderr


@pytest.mark.parametrize("args, says", [
    (["frobnicate"], "invalid choice"),
    (["bench", "--workloads", "W9"], "unknown workload W9; choose from W1"),
    (["bench", "--engines", "graphc,tensorflow"], "unknown engine tensorflow"),
    (["bench", "--target", "tpu"], "invalid choice: 'tpu'"),
    (["bench", "--repeat", "x"], "invalid int value"),
    (["cache"], "required: action"),
    (["cache", "purge"], "invalid choice"),
    (["inspect", "examples/mlp_digits.py"], "expected MODULE:FUNCTION"),
    (["inspect", "{m}/models.py:nope"], "has no function 'nope'"),
    (["inspect", "{m}/models.py:tuple_grap"], "did you mean tuple_graph"),
    (["inspect", "{m}/models.py:value"], "not a function"),
    (["inspect", "{m}/models.py:needs_args"], "needs arguments (n)"),
    (["inspect", "{m}/models.py:tuple_graph", "--dims", "batch"], "--dims takes NAME=SIZE"),
    (["inspect", "{m}/models.py:tuple_graph", "--dims", "seq=4"], "no dim seq"),
])
def test_usage_mistakes_exit_2_with_one_line(models, args, says):
    r = graphc(*[a.format(m=models) for a in args])
    assert r.returncode == 2
    assert says in one_line_error(r)
    assert r.stdout == ""


@pytest.mark.parametrize("spec, says", [
    ("no_such_module_xyz:build", "no module named 'no_such_module_xyz'"),
    ("{m}/missing.py:build", "no such file"),
    ("{m}/broken.py:build", "SyntaxError"),
    ("{m}/needs_pkg.py:build", "No module named 'no_such_package_xyz'"),
    ("{m}/models.py:raises", f"ValueError: boom (models.py:{RAISE_LINE})"),
    ("{m}/models.py:bad_shapes", "matmul: (4, 3) @ (5, 2)"),
    ("{m}/models.py:not_a_graph", "returned int, not a graph"),
    ("{m}/models.py:only_sources", "returned only inputs and params"),
])
def test_failures_exit_1_with_one_line(models, spec, says):
    r = graphc("inspect", spec.format(m=models))
    assert r.returncode == 1
    assert says in one_line_error(r)


def test_traceback_flag_shows_the_traceback(models):
    r = graphc("--traceback", "inspect", f"{models}/models.py:raises")
    assert r.returncode == 1 and "Traceback" in r.stderr and "ValueError: boom" in r.stderr


# ---------------------------------------------------------------- inspect


def test_inspect_tuple_graph(models, cache):
    r = graphc("inspect", f"{models}/models.py:tuple_graph", env=cache)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # quiet when piped: no progress
    out = r.stdout
    assert "== forward graph: 2 outputs" in out and "(the loss)" in out
    assert "== gradient graph: ∂loss/∂(W, b)" in out and "∂ of matmul" in out
    assert "== compiled step: gc.function([x, y], loss, updates=[(p, p - 0.01 * ∂loss/∂p)" in out
    assert "kernels:" in out and "memory:" in out and "<sgd update>:1" in out
    assert "none: target='numpy'" in out  # no source without a compiled target


def test_inspect_dict_and_dims(models, cache):
    r = graphc("inspect", f"{models}/models.py:dict_graph", "--dims", "batch=32", env=cache)
    assert r.returncode == 0, r.stderr
    assert "loss = %" in r.stdout and "logits = %" in r.stdout and "batch=32" in r.stdout


def test_inspect_function_and_no_loss(models, cache):
    r = graphc("inspect", f"{models}/models.py:compiled", env=cache)
    assert r.returncode == 0, r.stderr
    assert "update graph: new values of W, b" in r.stdout and "the gc.Function" in r.stdout
    r = graphc("inspect", f"{models}/models.py:no_loss", env=cache)
    assert r.returncode == 0, r.stderr
    assert "no scalar float loss" in r.stdout and "kernels:" in r.stdout


def test_inspect_cpu_source_and_pictures(models, cache, tmp_path):
    out = tmp_path / "pics"
    r = graphc("inspect", f"{models}/models.py:tuple_graph", "--target", "cpu", "--out", str(out),
               "--renderer", "matplotlib", env=cache)
    assert r.returncode == 0, r.stderr
    assert "== generated source (target='cpu')" in r.stdout and "def k_" in r.stdout and "def step(" in r.stdout
    for name in ("forward", "gradient"):
        check_dot(out / f"{name}.dot")
        w, h = png_size(out / f"{name}.png")
        assert w > 0 and h > 0
    assert "networkx + matplotlib" in r.stdout
    assert "#ffe5cc" in (out / "gradient.dot").read_text()  # gradient nodes coloured apart
    assert "#ffe5cc" not in (out / "forward.dot").read_text()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_inspect_pictures_with_graphviz(models, cache, tmp_path):
    r = graphc("inspect", f"{models}/models.py:tuple_graph", "--out", str(tmp_path), "--renderer", "dot", env=cache)
    assert r.returncode == 0, r.stderr
    assert "Graphviz dot" in r.stdout and "<svg" in (tmp_path / "gradient.svg").read_text()
    r = graphc("inspect", f"{models}/models.py:tuple_graph", "--out", str(tmp_path), "--format", "png", env=cache)
    assert r.returncode == 0, r.stderr
    assert min(png_size(tmp_path / "gradient.png")) > 0


def test_pictures_degrade_without_renderers(monkeypatch, tmp_path):
    import numpy as np

    import graphc as gc
    from graphc import pictures

    x = gc.input("x", ("batch", 3))
    W = gc.param("W", np.ones((3, 2), np.float32))
    loss = gc.mean(gc.square(x @ W))
    f = gc.function([x], loss, updates=[(W, W - 0.1 * gc.grad(loss, W))])
    monkeypatch.setattr(pictures, "dot_available", lambda: False)
    monkeypatch.setattr(pictures, "matplotlib_available", lambda: False)
    (dot, pic, why), _ = pictures.write_step_pictures(f, tmp_path)
    assert pic is None and "no picture" in why
    check_dot(dot)


def test_inspect_the_example(cache, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    r = graphc("inspect", "examples/mlp_digits.py:build", "--out", str(tmp_path), env=cache)
    assert r.returncode == 0, r.stderr
    for section in ("forward graph", "gradient graph", "compiled step", "generated source", "pictures in"):
        assert f"== {section}" in r.stdout
    assert (tmp_path / "gradient.dot").is_file()


def test_progress_on_a_terminal_only(models, cache):
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    got = bytearray()

    def drain():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            got.extend(chunk)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    p = subprocess.run([sys.executable, "-m", "graphc.cli", "inspect", f"{models}/models.py:tuple_graph"],
                       stdout=subprocess.PIPE, stderr=slave, cwd=ROOT, env={**os.environ, **cache, "TERM": "xterm"},
                       timeout=300)
    os.close(slave)
    t.join(5)
    os.close(master)
    assert p.returncode == 0
    assert b"compiling the step" in got and b"\r\x1b[K" in got  # the status line, then cleared
    assert b"\x1b" not in p.stdout  # the output itself stays clean


# ---------------------------------------------------------------- cache


def test_cache_info_and_clear(cache):
    d = Path(cache["GRAPHC_CACHE_DIR"])
    r = graphc("cache", "info", env=cache)
    assert r.returncode == 0 and str(d) in r.stdout and "0 generated step modules" in r.stdout
    assert "cpu: 0 compiled steps, 0 library kernels" in r.stdout
    (d / "_gen_0123456789abcdef01234567.py").write_text("# graphc generated module\n")
    for sub, name in (("kernels", "k_0123.o"), ("steps", "0123.json")):
        (d / sub).mkdir(exist_ok=True)
        (d / sub / name).write_bytes(b"entry")
    info = json.loads(graphc("cache", "info", "--json", env=cache).stdout)
    assert (info["modules"], info["kernels"], info["steps"]) == (1, 1, 1) and info["dir"] == str(d) and info["bytes"] > 0
    r = graphc("cache", "clear", env=cache)
    assert r.returncode == 0 and "removed 3 cache entries" in r.stdout
    info = json.loads(graphc("cache", "info", "--json", env=cache).stdout)
    assert (info["modules"], info["kernels"], info["steps"]) == (0, 0, 0)


# ---------------------------------------------------------------- bench


def fake_missing_torch(tmp_path: Path) -> dict:
    """An environment in which `import torch` fails, whether or not torch is installed."""
    (tmp_path / "fake" / "torch").mkdir(parents=True)
    (tmp_path / "fake" / "torch" / "__init__.py").write_text("raise ImportError('torch is hidden for this test')\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "fake"), os.environ.get("PYTHONPATH")]))}


def test_bench_quick_one_workload(tmp_path):
    out = tmp_path / "results"
    t0 = time.perf_counter()
    r = graphc("bench", "--workloads", "W5", "--quick", "--engines", "graphc,numpy,torch", "--out", str(out),
               env=fake_missing_torch(tmp_path))
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert elapsed < 120, f"bench --quick of one workload took {elapsed:.0f} s"
    text = r.stdout
    assert re.search(r"cpu: matmul [\d.]+ GFLOP/s .*memory [\d.]+ GB/s", text)  # measured machine limits
    assert re.search(r"^W5\s+graphc\s+[\d.]+", text, re.M) and re.search(r"^W5\s+numpy\s+[\d.]+", text, re.M)
    assert "cold s" in text and "warm s" in text  # cold and warm compile times
    assert "% of bound" in text and "missing engines (not importable, so not run): torch" in text
    report = json.loads((out / "results.json").read_text())
    assert {r["engine"] for r in report["results"]} == {"graphc", "numpy"} and "torch" in report["missing"]
    assert report["machine_limits"]["cpu"]["matmul_gflops"] > 0 and report["roofline"]["W5"]["flops"] > 0
    assert all(r["pct_of_bound"] > 0 for r in report["results"])
    assert "## Machine limits and roofline" in (out / "results.md").read_text()
    assert min(png_size(out / "results.png")) > 0


def test_bench_quick_default(tmp_path):
    """`graphc bench --quick` as a newcomer runs it (engines that are not installed are skipped)."""
    out = tmp_path / "results"
    r = graphc("bench", "--quick", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "results.json").read_text())
    assert set(report["workloads"]) == {"W1", "W2", "W4", "W5"}
    assert {"graphc", "numpy"} <= {r["engine"] for r in report["results"]}
    assert min(png_size(out / "results.png")) > 0


# ---------------------------------------------------------------- demo, console script


def test_demo_quick():
    for mod in ("sklearn", "tqdm", "matplotlib"):
        pytest.importorskip(mod)
    r = graphc("demo", "--quick", "--target", "numpy")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "final held-out test accuracy" in r.stdout


@pytest.mark.skipif(shutil.which("graphc") is None, reason="the console script is not installed")
def test_console_script():
    r = subprocess.run(["graphc", "cache", "info", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "modules" in json.loads(r.stdout)



def test_bench_compile_quick_mlp(tmp_path):
    """Compile latency: cold, warm in a new process (a disk-cache hit: nothing compiles), and JAX if installed."""
    out = tmp_path / "results"
    r = graphc("bench", "--compile", "--models", "mlp", "--quick", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"^mlp cold\s+[\d.]+", r.stdout, re.M) and re.search(r"^mlp warm\s+[\d.]+", r.stdout, re.M)
    report = json.loads((out / "compile.json").read_text())
    cold, warm = report["mlp cold"]["median"], report["mlp warm"]["median"]
    assert cold["compiled"] > 0 and warm["compiled"] == 0 and warm["reused"] == cold["compiled"] + cold["reused"]
