"""Build time of deep models: how graphc's own work scales with graph size.

    python -m benchmarks.build [--layers 100,200,400] [--width 32] [--no-compile]

An MLP of L layers (Linear + tanh, SGD updates of every weight and bias), float32. Each phase
is timed apart, in a fresh process per size with an empty GRAPHC_CACHE_DIR:
graph + grad, passes (simplification, CSE), fusion, memory plan, CPU code generation (the step
spec), and compiling the kernels (Numba; most are shared between layers, so few compile).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(layers: int, width: int, compile_: bool) -> dict:
    import numpy as np

    import graphc as gc
    from graphc.passes import optimize
    from graphc.passes.fusion import schedule
    from graphc.passes.memory import plan_memory
    from graphc.program import Program

    out = {"layers": layers}
    t = time.perf_counter()
    x, y = gc.input("x", ("batch", width)), gc.input("y", ("batch", width))
    rng = np.random.default_rng(0)
    h, params = x, []
    for k in range(layers):
        W = gc.param(f"W{k}", rng.normal(0, width ** -0.5, (width, width)).astype(np.float32))
        b = gc.param(f"b{k}", np.zeros(width, np.float32))
        h = gc.tanh(h @ W + b)
        params += [W, b]
    loss = gc.mean(gc.square(h - y))
    updates = [(p, p - 0.01 * g) for p, g in zip(params, gc.grad(loss, params))]
    out["graph_s"] = time.perf_counter() - t
    roots = [loss] + [e for _, e in updates]
    t = time.perf_counter()
    opt_roots, stats = optimize(roots)
    out["passes_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sched = schedule(opt_roots)
    out["fusion_s"] = time.perf_counter() - t
    out["kernels"] = len(sched.kernels)
    t = time.perf_counter()
    new_updates = [(p, e) for (p, _), e in zip(updates, opt_roots[1:])]
    mem = plan_memory(sched.kernels, opt_roots, new_updates)
    out["memory_s"] = time.perf_counter() - t
    prog = Program(opt_roots, 1, new_updates, sched.kernels, mem, sched.fused, sched.not_fused, stats, 0, 0)
    from graphc.backends.cpu.step import StepBuilder
    t = time.perf_counter()
    spec = StepBuilder(prog, [x, y], params).build()
    out["codegen_s"] = time.perf_counter() - t
    out["distinct_kernels"] = len({c["key"] for c in spec["calls"]})
    if compile_:
        t = time.perf_counter()
        f = gc.function([x, y], loss, updates=updates, target="cpu")
        out["function_s"] = time.perf_counter() - t  # passes again, then kernels from the library or compiled
        out["compiled"] = f._program.library_stats.get("compiled", 0)
        xv = rng.standard_normal((16, width)).astype(np.float32)
        f(xv, xv)
    return out


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="100,200,400")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.width, not args.no_compile)))
        return []
    rows = []
    print(f"{'layers':>6} {'graph s':>8} {'passes s':>9} {'fusion s':>9} {'memory s':>9} {'codegen s':>10} "
          f"{'kernels':>8} {'distinct':>9} {'gc.function s':>14} {'compiled':>9}")
    for n in (int(v) for v in args.layers.split(",")):
        with tempfile.TemporaryDirectory() as cache:
            cmd = [sys.executable, "-m", "benchmarks.build", "--child", str(n), "--width", str(args.width)]
            cmd += ["--no-compile"] if args.no_compile else []
            r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, GRAPHC_CACHE_DIR=cache), capture_output=True,
                               text=True, timeout=3600)
        if r.returncode:
            print(f"{n:>6} FAILED: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(d)
        g = lambda k, f="%.2f": (f % d[k]) if k in d else "-"
        print(f"{n:>6} {g('graph_s'):>8} {g('passes_s'):>9} {g('fusion_s'):>9} {g('memory_s'):>9} {g('codegen_s'):>10} "
              f"{g('kernels', '%d'):>8} {g('distinct_kernels', '%d'):>9} {g('function_s'):>14} {g('compiled', '%d'):>9}")
    return rows


if __name__ == "__main__":
    main()
