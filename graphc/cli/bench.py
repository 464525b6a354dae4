"""``graphc bench``: runs benchmarks/run.py (the harness) in a child process, then measures
this machine's limits and shows how close each engine gets to them.

The limits are measured, not looked up: peak float32 matmul GFLOP/s (the best of NumPy's and
SciPy's BLAS on 2048x2048) and memory bandwidth (copying a 256 MB array, 128 MB with --quick,
on one thread and on all of them). A workload's roofline bound is the least time this machine
needs for one step: ``max(FLOPs / matmul peak, bytes / bandwidth)``, with the FLOPs and bytes
that graphc counts for the step's fused kernels. An engine's "% of bound" says how close it gets.

``graphc bench --ranks N`` instead runs benchmarks/distributed.py: graphc's step of a workload (W2 by
default) on 1 rank and on N MPI ranks (mpiexec), each rank on 1/N of the batch, and prints the ms per
step, the speedup and each rank's share of time in the gradient all-reduces.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..progress import Status
from .common import ROOT, CliError, results_dir


def _best(fn: Callable[[], Any], reps: int) -> float:
    fn()  # warm up: thread pools, page faults
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cpu_limits(n: int = 2048, copy_mb: int = 256, reps: int = 3) -> dict[str, Any]:
    """Measured peak float32 matmul GFLOP/s and memory GB/s of this machine's CPUs."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    flops = 2 * n ** 3
    mm = {"numpy": flops / _best(lambda: np.dot(a, b, out=c), reps)}
    try:
        from scipy.linalg.blas import sgemm
        mm["scipy"] = flops / _best(lambda: sgemm(1.0, b.T, a.T), reps)  # (ab)^T from F-ordered views: no copies
    except ImportError:  # scipy is a dependency, but the limits must not fail on it
        pass
    lib = max(mm, key=mm.get)
    src = np.ones(copy_mb * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    chunks = [slice(s[0], s[-1] + 1) for s in np.array_split(np.arange(src.size), threads)]
    bw = {1: 2 * src.nbytes / _best(lambda: np.copyto(dst, src), reps)}
    if threads > 1:  # NumPy releases the GIL while it copies
        with ThreadPoolExecutor(threads) as ex:
            bw[threads] = 2 * src.nbytes / _best(lambda: list(ex.map(lambda s: np.copyto(dst[s], src[s]), chunks)), reps)
    t = max(bw, key=bw.get)
    return {"device": "cpu", "matmul_gflops": mm[lib] / 1e9, "memory_gbs": bw[t] / 1e9,
            "matmul_how": f"float32 {n}x{n}, best of " + " and ".join(f"{k} {v / 1e9:.1f}" for k, v in mm.items()),
            "memory_how": f"copy of a {copy_mb} MB array, read + write, {t} thread{'s' if t > 1 else ''}"}


def gpu_limits() -> dict[str, Any]:
    """Peak float32 matmul and memory bandwidth of the first CUDA GPU, through PyTorch; or
    ``{"error": why}`` when that cannot be measured here."""
    try:
        import torch
        if not torch.cuda.is_available():
            return {"device": "cuda", "error": "PyTorch sees no CUDA GPU"}
        n = 8192
        a, b = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
        src = torch.empty(2 ** 28, device="cuda")  # 1 GiB
        dst = torch.empty_like(src)

        def timed(fn: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                fn()
                torch.cuda.synchronize()
            return run

        mm = 2 * n ** 3 / _best(timed(lambda: a @ b), 5)
        bw = 2 * src.numel() * 4 / _best(timed(lambda: dst.copy_(src)), 5)
        return {"device": "cuda", "matmul_gflops": mm / 1e9, "memory_gbs": bw / 1e9,
                "matmul_how": f"float32 {n}x{n} matmul, PyTorch on {torch.cuda.get_device_name()}",
                "memory_how": "device-to-device copy of 1 GiB, read + write"}
    except ImportError:
        return {"device": "cuda", "error": "measuring the GPU needs PyTorch with CUDA"}
    except Exception as e:  # a broken driver: say so, never fail the benchmark on it
        return {"device": "cuda", "error": f"{type(e).__name__}: {e}"}


def describe(limits: dict[str, Any]) -> str:
    if "error" in limits:
        return f"{limits['device']}: not measured ({limits['error']})"
    return (f"{limits['device']}: matmul {limits['matmul_gflops']:.1f} GFLOP/s ({limits['matmul_how']}); "
            f"memory {limits['memory_gbs']:.1f} GB/s ({limits['memory_how']})")


def step_cost(workloads: Any, name: str, quick: bool) -> tuple[int, int]:
    """(FLOPs, bytes) of one training step of benchmark workload ``name``, as graphc counts
    them for its fused kernels (transcendental functions count 10 FLOPs)."""
    wl = workloads.get(name, quick)
    data = wl.make_data()
    f = wl.build("graphc-numpy", wl.init_params(), data).info["function"]  # builds the program; runs nothing
    env = {d: s for x in f.inputs for d, s in zip(x.shape, data[x.name].shape) if isinstance(d, str)}
    return sum(k.flops(env) for k in f.kernels), sum(k.bytes(env) for k in f.kernels)


def bound_s(flops: float, nbytes: float, limits: dict[str, Any]) -> tuple[float, str] | None:
    """The roofline bound of a step on a device, and whether compute or memory sets it."""
    if "error" in limits:
        return None
    tc, tm = flops / (limits["matmul_gflops"] * 1e9), nbytes / (limits["memory_gbs"] * 1e9)
    return (tc, "compute") if tc >= tm else (tm, "memory")


COLUMNS = ["workload", "MFLOP/step", "MB/step", "bound ms", "bound by", "engine", "ms/step", "GFLOP/s", "% of bound"]


def rows(results: list[dict], costs: dict[str, tuple[int, int]], limits_of: Callable[[str], dict]) -> list[list[str]]:
    """Table rows: one per engine result; also sets ``result["pct_of_bound"]``."""
    out = []
    for r in results:
        flops, nbytes = costs.get(r["workload"], (0, 0))
        b = bound_s(flops, nbytes, limits_of(r["engine"])) if flops or nbytes else None
        ms = r.get("median_ms")
        pct = b[0] * 1e3 / ms * 100 if b and ms else None
        r["pct_of_bound"] = pct
        out.append([r["workload"], f"{flops / 1e6:.3g}", f"{nbytes / 1e6:.3g}", f"{b[0] * 1e3:.3g}" if b else "-",
                    b[1] if b else "-", r["engine"], f"{ms:.3f}" if ms else "FAILED",
                    f"{flops / (ms * 1e-3) / 1e9:.2f}" if ms else "-", f"{pct:.1f}%" if pct is not None else "-"])
    return out


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *table)]
    prev = None
    lines = ["  ".join(c.ljust(w) if i in (0, 4, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths)))]
    for r in table:
        shown = [""] * 5 + r[5:] if r[0] == prev else r  # one workload's numbers once
        prev = r[0]
        lines.append("  ".join(c.ljust(w) if i in (0, 4, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(shown, widths))))
    return "\n".join(lines)


def markdown(table: list[list[str]], limits: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "|".join("---" if i in (0, 4, 5) else "---:" for i in range(len(COLUMNS)))
    return ("\n## Machine limits and roofline\n\n" + "".join(f"- {describe(lim)}\n" for lim in limits) + "\n"
            + head + "|\n" + "".join("| " + " | ".join(r) + " |\n" for r in table)
            + "\nbound = max(FLOPs / matmul peak, bytes / memory bandwidth), with graphc's count of one step's FLOPs "
              "and bytes; % of bound = bound / ms per step.\n")


# ---------------------------------------------------------------- the command


def _harness() -> tuple[Any, Any]:
    """benchmarks.run and benchmarks.workloads: the source checkout's, or the wheel's copies."""
    if ROOT is None:
        raise CliError("graphc bench needs the benchmark harness, which this installation lacks (neither a source "
                       "checkout nor graphc/_bundled/benchmarks): reinstall graphc")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("benchmarks.run"), importlib.import_module("benchmarks.workloads")
    except Exception as e:  # a broken checkout
        raise CliError(f"cannot import the benchmark harness from {ROOT / 'benchmarks'}: {type(e).__name__}: {e}") from e


def _names(given: str | None, known: Sequence[str], kind: str) -> list[str] | None:
    if given is None:
        return None
    names = [w.strip() for w in given.split(",") if w.strip()]
    if bad := [w for w in names if w not in known] or ([] if names else [repr(given)]):
        raise CliError(f"unknown {kind}{'s' if len(bad) > 1 else ''} {', '.join(bad)}; choose from {', '.join(known)}", 2)
    return names


def _relay(pipe: Any, stream: TextIO, status: Status, follow: bool) -> None:
    for line in iter(pipe.readline, ""):
        if follow and line.rstrip().endswith("..."):
            status.update(line.strip())
        status.echo(line, stream)


def run_harness(argv: list[str], status: Status, module: str = "benchmarks.run") -> int:
    """A benchmark module in a child process (its own interpreter, as `python -m benchmarks.run`),
    relaying its output line by line."""
    env = dict(os.environ) | {"PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8",
                               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, text=True, encoding="utf-8",
                            errors="replace", stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
    relays = [threading.Thread(target=_relay, args=(proc.stdout, status.streams[0], status, True)),
              threading.Thread(target=_relay, args=(proc.stderr, status.streams[1], status, False))]
    for t in relays:
        t.start()
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        raise
    for t in relays:
        t.join()
    return rc


def cmd_compile(args: argparse.Namespace) -> int:
    """``graphc bench --compile``: compile latency of the examples' models (benchmarks/compile.py)."""
    _harness()
    argv = ["--repeat", str(args.repeat or (1 if args.quick else 3))]
    if args.models:
        argv += ["--models", args.models]
    if args.quick:
        argv += ["--no-repeat-model"]
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        argv += ["--json", str(Path(args.out) / "compile.json")]
    with Status("compiling the examples' models in fresh processes") as status:
        return run_harness(argv, status, "benchmarks.compile")


def cmd_ranks(args: argparse.Namespace) -> int:
    """``graphc bench --ranks N``: graphc's step on 1 rank and on N MPI ranks (benchmarks/distributed.py)."""
    n = args.ranks
    if n < 2:
        raise CliError(f"--ranks {n}: give at least 2 ranks (the 1-rank run is always there to compare with)", 2)
    drop = [flag for flag, given in (("--compile", args.compile), ("--engines", args.engines), ("--load", args.load),
                                     ("--target cuda", args.target != "cpu")) if given]
    if drop:
        raise CliError(f"--ranks times graphc's CPU step only: drop {', '.join(drop)}", 2)
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads {args.threads}: give at least 1", 2)
    _, W = _harness()
    try:
        D = importlib.import_module("benchmarks.distributed")
    except Exception as e:  # a broken checkout
        raise CliError(f"cannot import benchmarks/distributed.py from {ROOT}: {type(e).__name__}: {e}") from e
    workloads = _names(args.workloads, list(W.WORKLOADS), "workload") or ["W2"]
    if flat := [w for w in workloads if not hasattr(W.WORKLOADS[w], "batch")]:
        batched = ", ".join(k for k, v in W.WORKLOADS.items() if hasattr(v, "batch"))
        raise CliError(f"{', '.join(flat)} ha{'ve' if len(flat) > 1 else 's'} no batch to split across ranks; "
                       f"choose from {batched}", 2)
    if uneven := [f"{w}'s batch of {b}" for w in workloads if (b := W.get(w, args.quick).batch) % n]:
        raise CliError(f"{', '.join(uneven)} does not split across {n} ranks: choose a number of ranks that divides it", 2)
    if why := D.mpi_problem():
        raise CliError(f"graphc bench --ranks {n} runs several MPI processes, but {why}")
    out = Path(args.out).resolve() if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    argv = ["--ranks", str(n), "--workloads", ",".join(workloads), "--no-model", "--no-reference",
            "--json", str(out / "ranks.json")] + (["--quick"] if args.quick else [])
    argv += [f"--{k}={v}" for k, v in (("repeat", args.repeat), ("threads", args.threads)) if v is not None]
    if args.cache_dir:
        os.environ["GRAPHC_CACHE_DIR"] = str(Path(args.cache_dir).resolve())  # the ranks' processes inherit it
    with Status(f"timing {', '.join(workloads)} on 1 rank and on {n} ranks") as status:
        rc = run_harness(argv, status, "benchmarks.distributed")
    if rc:
        raise CliError(f"the distributed benchmark stopped with exit status {rc}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .. import pictures

    if args.ranks is not None:
        return cmd_ranks(args)
    if args.compile:
        return cmd_compile(args)
    _, W = _harness()
    workloads = _names(args.workloads, list(W.WORKLOADS), "workload")
    engines = _names(args.engines, list(W.ENGINES), "engine")
    if args.target == "cuda":
        from ..backends.cuda.program import device_api
        device_api()  # a GraphcError that says what is missing
    out = Path(args.out).resolve() if args.out else results_dir()
    argv = ["--out", str(out), "--target", args.target] + (["--quick"] if args.quick else []) + (["--load"] if args.load else [])
    argv += [f"--{k}={v if isinstance(v, (int, str)) else ','.join(v)}" for k, v in
             (("workloads", workloads), ("engines", engines), ("repeat", args.repeat), ("threads", args.threads),
              ("cache-dir", args.cache_dir)) if v is not None]
    with Status("measuring this machine's limits"):
        limits = {"cpu": cpu_limits(2048, 128, 2) if args.quick else cpu_limits()}
        if args.target == "cuda":
            limits["cuda"] = gpu_limits()
    print("machine limits (measured now):\n" + "".join(f"  {describe(lim)}\n" for lim in limits.values()), flush=True)
    (out / "results.json").unlink(missing_ok=True)
    with Status("benchmarking") as status:
        rc = run_harness(argv, status)
    if not (out / "results.json").is_file():
        raise CliError(f"the benchmark harness stopped with exit status {rc} before writing its results")
    report = json.loads((out / "results.json").read_text())
    results, names = report["results"], list(report["workloads"])
    with Status("counting each workload's FLOPs and bytes per step"):
        costs = {}
        for w in names:
            try:
                costs[w] = step_cost(W, w, args.quick)
            except Exception as e:  # graphc failed on it: the harness has said so; no roofline for it
                print(f"no roofline for {w}: {type(e).__name__}: {e}", file=sys.stderr)
    limits_of = lambda eng: limits["cuda"] if args.target == "cuda" and eng == "graphc" else limits["cpu"]
    table = rows(results, costs, limits_of)
    print("\nroofline: the least time this machine needs for a step = max(FLOPs / matmul peak, bytes / memory "
          "bandwidth), with graphc's count of the step's FLOPs and bytes; % of bound = that time / ms per step "
          "(over 100%: faster than the BLAS the peak was measured with)")
    print(text_table(table))
    bounds = {w: b[0] * 1e3 for w in costs if (b := bound_s(*costs[w], limits_of("graphc")))}
    chart = pictures.bench_chart(results, out / "results.png", bounds,
                                 f"graphc bench ({args.target}): one training step, lower is better")
    report |= {"machine_limits": limits, "roofline": {w: {"flops": f, "bytes": b, "bound_ms": bounds.get(w)}
                                                       for w, (f, b) in costs.items()}}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    with open(out / "results.md", "a") as md:
        md.write(markdown(table, list(limits.values())) + ("\n![ms per step](results.png)\n" if chart else ""))
    if args.target == "cuda":
        print("\nnote: with --target cuda only graphc runs on the GPU; torch, jax and numpy run on the CPU "
              "(python -m benchmarks.gpu_bench compares graphc with PyTorch on the GPU)")
    if report.get("missing"):
        print(f"\nmissing engines (not importable, so not run): {', '.join(report['missing'])}")
    print(f"wrote {out / 'results.json'}, results.md" + (", results.png (bar chart)" if chart else
                                                           " (no bar chart: install matplotlib)"))
    failed = [f"{r['workload']} {r['engine']}" for r in results if r.get("error")]
    if failed:
        print(f"graphc: error: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or rc else 0
