"""Compile latency of the examples' models: cold, warm in a new process, and a repeat model.

    python -m benchmarks.compile [--models mlp,cnn,tfm,rnn] [--repeat 3] [--run 200] [--no-jax] [--json FILE]
                                 [--layers 4] [--cell lstm] [--unroll 64]

Each measurement runs in a fresh interpreter, so nothing compiled earlier in this process helps:
- **cold**: an empty ``GRAPHC_CACHE_DIR``; ``gc.function`` of the training step plus the predict
  function, exactly as the example builds them (graph building and grad are timed apart).
- **warm**: a new process on the cache the cold run filled: everything after ``import graphc``
  (graph + grad, both ``gc.function`` calls, the first step), and ``import graphc`` itself.
- **repeat**: the MLP compiled on a cache that holds only the CNN (kernels shared across models).
- **jax**: ``jax.jit`` of the same models (``benchmarks/jax_models.py``), lowered and compiled.
With ``--run N`` the warm child also times N steps (median ms/step) on the examples' batch.
The models are the examples' defaults: "tfm" is 4 transformer blocks in one ``gc.nn.Stack`` (a scan
over stacked params), "rnn" an LSTM scanned over 64 characters; ``--layers 1 --cell rnn --unroll 16``
gives the earlier sizes (one block; a tanh RNN over 16).
Numba's cache of graphc's own runtime library (the package ``__pycache__``) is left as it is,
as in ``benchmarks.run``. Times are medians over ``--repeat`` rounds, run interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mlp", "cnn", "tfm", "rnn")
EXAMPLE = {"mlp": "mlp_digits", "cnn": "cnn_digits", "tfm": "tiny_transformer", "rnn": "char_rnn"}
BATCH = 64
SIZES = {"layers": 4, "cell": "lstm", "unroll": 64}  # the examples' defaults; flags change them


def build(name: str, layers: int = SIZES["layers"], cell: str = SIZES["cell"], unroll: int = SIZES["unroll"]):
    """The example's step and predict functions' graphs, as its main() builds them:
    [(label, inputs, outputs, updates)]. ``layers``: the transformer's blocks; ``cell``, ``unroll``:
    the char-level model's."""
    import numpy as np

    import graphc as gc
    ex = sys.modules[EXAMPLE[name]]
    if name in ("mlp", "cnn"):
        m = ex.build()
        opt = gc.optim.Adam(m.model, lr=gc.param("lr", np.float32(2e-3)) if name == "cnn" else 2e-3)
        return [("step", m.inputs, m.loss, opt.updates(m.loss)), ("predict", [m.x], m.logits, None)]
    vocab = len(_corpus(name)[1])
    if name == "tfm":
        m = ex.build(vocab, layers=layers, context=32)
        opt = gc.optim.AdamW(m.model, lr=gc.param("lr", np.float32(3e-3)), weight_decay=0.01)
        return [("step", m.inputs, m.loss, opt.updates(m.loss)), ("predict", [m.x], m.logits, None)]
    m = ex.build(vocab, 128, unroll, cell=cell)
    opt = gc.optim.Adam(m.params, lr=3e-3, clip_grad_norm=1.0)
    ups = [*opt.updates(m.loss), *m.state_updates]
    return [("step", m.inputs, m.loss, ups), ("predict", [m.char], m.sample_logits, m.sample_updates)]


_CORPUS: dict = {}


def _corpus(name: str):
    if name not in _CORPUS:
        _CORPUS[name] = sys.modules[EXAMPLE[name]].load_corpus()
    return _CORPUS[name]


def sample_args(name: str, fn) -> list:
    import numpy as np
    rng = np.random.default_rng(0)
    out = []
    for x in fn.inputs:
        shape = tuple(BATCH if isinstance(d, str) else d for d in x.shape)
        if x.dtype.kind in "iu":
            out.append(rng.integers(0, 10 if name in ("mlp", "cnn") else len(_corpus(name)[1]), shape).astype(x.dtype))
        else:
            out.append(rng.standard_normal(shape).astype(x.dtype))
    return out


def _counts(fns) -> dict:
    """Kernels compiled now vs taken from the library (graphc versions that report them)."""
    out: dict = {}
    for f in fns:
        stats = getattr(f._program, "library_stats", None)
        if stats:
            for k, v in stats.items():
                out[k] = out.get(k, 0) + v
    return out


def child(name: str, phase: str, run: int, sizes: dict) -> dict:
    """One measurement in this (fresh) process."""
    sys.path.insert(0, str(ROOT / "examples"))
    t0 = time.perf_counter()
    if phase != "jax":
        import graphc as gc
    t_import = time.perf_counter() - t0
    __import__(EXAMPLE[name])  # sklearn, tqdm...: outside the timed region
    if name in ("tfm", "rnn"):
        _corpus(name)
    if phase == "jax":
        from . import jax_models
        return jax_models.compile_time(name, BATCH, **sizes)
    t = time.perf_counter()
    specs = build(name, **sizes)
    t_graph = time.perf_counter() - t
    t = time.perf_counter()
    fns = [gc.function(ins, outs, updates=ups, target="cpu") for _, ins, outs, ups in specs]
    t_compile = time.perf_counter() - t
    args = sample_args(name, fns[0])
    t = time.perf_counter()
    fns[0](*args)
    t_first = time.perf_counter() - t
    res = {"model": name, "phase": phase, "import_s": t_import, "graph_s": t_graph, "compile_s": t_compile,
           "first_call_s": t_first, "after_import_s": t_graph + t_compile + t_first, **_counts(fns)}
    if run:
        for _ in range(10):
            fns[0](*args)
        times = []
        for _ in range(run):
            t = time.perf_counter()
            fns[0](*args)
            times.append(time.perf_counter() - t)
        res["step_ms"] = statistics.median(times) * 1e3
    return res


def _spawn(name: str, phase: str, cache: str, run: int = 0, sizes: dict = SIZES) -> dict:
    env = dict(os.environ, GRAPHC_CACHE_DIR=cache)
    cmd = [sys.executable, "-m", "benchmarks.compile", "--child", name, "--phase", phase, "--run", str(run),
           *(a for k, v in sizes.items() for a in (f"--{k}", str(v)))]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return {"model": name, "phase": phase, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _jax_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("jax") is not None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--run", type=int, default=0, help="also time this many steps in the warm child")
    ap.add_argument("--no-jax", action="store_true")
    ap.add_argument("--no-repeat-model", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--layers", type=int, default=SIZES["layers"], help="tfm: transformer blocks (default %(default)s)")
    ap.add_argument("--cell", default=SIZES["cell"], choices=("lstm", "rnn"), help="rnn: the cell (default %(default)s)")
    ap.add_argument("--unroll", type=int, default=SIZES["unroll"], help="rnn: characters per step (default %(default)s)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = {"layers": args.layers, "cell": args.cell, "unroll": args.unroll}
    if args.child:
        print(json.dumps(child(args.child, args.phase, args.run, sizes)))
        return {}
    models = [m for m in args.models.split(",") if m]
    jax = not args.no_jax and _jax_available()
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="graphc-compile-") as tmp:
        for r in range(args.repeat):  # interleaved: round r of every model, then round r + 1
            for name in models:
                cache = os.path.join(tmp, f"{name}{r}")
                rows.setdefault(f"{name} cold", []).append(_spawn(name, "cold", cache, 0, sizes))
                rows.setdefault(f"{name} warm", []).append(_spawn(name, "warm", cache, args.run, sizes))
                if jax:
                    rows.setdefault(f"{name} jax", []).append(_spawn(name, "jax", cache, 0, sizes))
            if "mlp" in models and not args.no_repeat_model:
                cache = os.path.join(tmp, f"repeat{r}")
                _spawn("cnn", "cold", cache)
                rows.setdefault("mlp after cnn", []).append(_spawn("mlp", "repeat", cache))
    summary = {}
    if {"tfm", "rnn"} & set(models):
        print(f"tfm: {args.layers} transformer block(s) in one gc.nn.Stack (jax: lax.scan over stacked params); "
              f"rnn: {args.cell} over {args.unroll} characters by gc.scan (jax: lax.scan)")
    print(f"{'case':<16} {'compile s':>10} {'after import s':>15} {'import s':>9} {'first call s':>13} "
          f"{'compiled':>9} {'reused':>7} {'ms/step':>8}")
    for case, runs in rows.items():
        ok = [x for x in runs if "error" not in x]
        if not ok:
            print(f"{case:<16} FAILED: {runs[0]['error']}")
            summary[case] = runs
            continue
        med = {k: statistics.median(x[k] for x in ok if k in x) for k in ok[0] if isinstance(ok[0][k], (int, float))}
        summary[case] = {"median": med, "runs": runs}
        fmt = lambda k, f: (f % med[k]) if k in med else "-"
        print(f"{case:<16} {fmt('compile_s', '%10.2f'):>10} {fmt('after_import_s', '%15.3f'):>15} "
              f"{fmt('import_s', '%9.3f'):>9} {fmt('first_call_s', '%13.3f'):>13} {fmt('compiled', '%9d'):>9} "
              f"{fmt('reused', '%7d'):>7} {fmt('step_ms', '%8.3f'):>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
