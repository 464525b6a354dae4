"""Loops: compile time and ms/step of recurrent and stacked models, ``gc.scan`` against the same
model unrolled in Python, and PyTorch eager, side by side in one run.

Models (the examples' sizes): "rnn" and "lstm": an embedding of 96 symbols, the cell (hidden 128)
over 64 steps, a linear head, cross-entropy, Adam with clipping, 32 streams; "tfm": 4 pre-norm
transformer blocks (dim 64, 4 heads, context 32, dropout 0.1), AdamW, batch 32. Each graphc case
runs in a fresh interpreter with an empty cache (cold compile); steps are timed after 5 warm-up
steps (median of 30).

    python -m benchmarks.loops                          # every model, scan and unrolled, torch eager
    python -m benchmarks.loops --models lstm --repeat 3
    python -m benchmarks.loops --graphc /path/to/other/checkout   # graphc from another tree

"unrolled" builds the graph with a Python loop over ``cell.step`` (or the blocks in a
``Sequential``); "scan" is the layer itself (``gc.scan`` over time) or ``gc.nn.Stack``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

V, H, B, T = 96, 128, 32, 64
D, CONTEXT, LAYERS = 64, 32, 4


def graphc_case(model: str, mode: str) -> dict:
    import time
    t0 = time.perf_counter()
    import numpy as np

    import graphc as gc
    from graphc import nn
    rng = np.random.default_rng(0)
    if model in ("rnn", "lstm"):
        cell = (nn.RNN if model == "rnn" else nn.LSTM)(None, H, rng=0)
        emb, head = nn.Embedding(V, cell.gates * H, std=0.1, rng=1), nn.Linear(H, V, rng=2)
        x, y = gc.input("x", (B, T), "int64"), gc.input("y", (B, T), "int64")
        if mode == "unrolled":
            xp, state, hs = emb(x), None, []
            for t in range(T):
                state = cell.step(xp[:, t], state)
                hs.append(state[0] if model == "lstm" else state)
            hs = gc.concatenate([gc.expand_dims(h, 1) for h in hs], 1)
        else:
            hs = cell(emb(x))
        loss = gc.softmax_cross_entropy(head(hs), y)
        opt = gc.optim.Adam([*cell.params(), *emb.params(), *head.params()], lr=3e-3, clip_grad_norm=1.0)
        args = (rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T)))
    else:
        emb, pos = nn.Embedding(V, D, std=0.1, rng=0), nn.Embedding(CONTEXT, D, std=0.1, rng=1, name="position")
        block = lambda i: nn.TransformerBlock(D, 4, dropout=0.1, rng=10 + i, name=f"block{i}")
        blocks = nn.Stack(block, LAYERS) if mode == "scan" else nn.Sequential(*[block(i) for i in range(LAYERS)])
        ln, head = nn.LayerNorm(D), nn.Linear(D, V, rng=2)
        x, y = gc.input("x", ("batch", CONTEXT), "int64"), gc.input("y", ("batch", CONTEXT), "int64")
        loss = gc.softmax_cross_entropy(head(ln(blocks(emb(x) + pos.E, train=True))), y)
        opt = gc.optim.AdamW(nn.Sequential(emb, pos, blocks, ln, head), lr=3e-3, weight_decay=0.01)
        args = (rng.integers(0, V, (B, CONTEXT)), rng.integers(0, V, (B, CONTEXT)))
    t1 = time.perf_counter()
    f = gc.function([x, y], loss, updates=opt.updates(loss), target="cpu")
    t2 = time.perf_counter()
    for _ in range(5):
        f(*args)
    ts = []
    for _ in range(30):
        s = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - s)
    return {"graph_s": t1 - t0, "compile_s": t2 - t1, "ms": 1000 * statistics.median(ts), "kernels": len(f.kernels)}


def torch_case(model: str) -> dict:
    import time

    import numpy as np
    import torch
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    emb, head = torch.nn.Embedding(V, H), torch.nn.Linear(H, V)
    cell = (torch.nn.RNN if model == "rnn" else torch.nn.LSTM)(H, H, batch_first=True)
    ps = [*emb.parameters(), *cell.parameters(), *head.parameters()]
    opt = torch.optim.Adam(ps, lr=3e-3)
    x, y = torch.tensor(rng.integers(0, V, (B, T))), torch.tensor(rng.integers(0, V, (B, T)))

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(cell(emb(x))[0]).reshape(-1, V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ps, 1.0)
        opt.step()
    for _ in range(5):
        step()
    ts = []
    for _ in range(30):
        s = time.perf_counter()
        step()
        ts.append(time.perf_counter() - s)
    return {"ms": 1000 * statistics.median(ts), "threads": torch.get_num_threads()}


def _child(kind: str, model: str, mode: str, graphc_path: str | None) -> dict:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        env["GRAPHC_CACHE_DIR"] = cache
        if graphc_path:
            env["PYTHONPATH"] = graphc_path + os.pathsep + env.get("PYTHONPATH", "")
        # graphc from PYTHONPATH (--graphc) or the installed one; this file loaded by its path
        code = ("import importlib.util, json, sys; "
                f"spec = importlib.util.spec_from_file_location('loops_bench', {os.path.abspath(__file__)!r}); "
                "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
                "import graphc; print(graphc.__file__, file=sys.stderr); "
                f"print(json.dumps(m.{kind}_case({model!r}{', ' + repr(mode) if kind == 'graphc' else ''})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800,
                             cwd=cache)  # not this checkout: its graphc would shadow --graphc's
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="rnn,lstm,tfm")
    ap.add_argument("--repeat", type=int, default=2, help="rounds, run interleaved (medians are reported)")
    ap.add_argument("--graphc", default=None, help="run graphc from this checkout instead")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    has_torch = not args.no_torch and __import__("importlib.util").util.find_spec("torch") is not None
    cases = []
    for m in args.models.split(","):
        cases += [("graphc", m, "scan"), ("graphc", m, "unrolled")]
        if has_torch and m in ("rnn", "lstm"):
            cases.append(("torch", m, "eager"))
    runs: dict = {c: [] for c in cases}
    for _ in range(args.repeat):
        for c in cases:
            runs[c].append(_child(*c, args.graphc))
    print(f"{'model':<6} {'engine':<8} {'mode':<9} {'compile s':>10} {'ms/step':>9} {'kernels':>8}   (median of {args.repeat})")
    table = {}
    for (kind, m, mode), rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            print(f"{m:<6} {kind:<8} {mode:<9} {rs[0]['error'][:60]}")
            continue
        med = lambda k: statistics.median(r[k] for r in ok) if k in ok[0] else None
        row = {k: med(k) for k in ("compile_s", "ms", "kernels")}
        table[f"{m}/{kind}/{mode}"] = row
        comp = f"{row['compile_s']:10.2f}" if row["compile_s"] is not None else f"{'-':>10}"
        kern = f"{row['kernels']:8.0f}" if row["kernels"] is not None else f"{'-':>8}"
        print(f"{m:<6} {kind:<8} {mode:<9} {comp} {row['ms']:9.2f} {kern}")
    for m in args.models.split(","):
        a, t = table.get(f"{m}/graphc/scan"), table.get(f"{m}/torch/eager")
        if a and t:
            print(f"{m}: graphc scan is {t['ms'] / a['ms']:.2f}x torch eager's speed per step")
    return table


if __name__ == "__main__":
    main()
