"""Benchmark graphc against PyTorch eager, JAX jit and hand-written NumPy, in one process.

    python -m benchmarks.run [--workloads W1,W2,...] [--engines graphc,torch,jax,numpy] [--quick] [--load]
                             [--repeat N] [--threads N] [--out DIR]

Per workload: build every engine (cold compile = build + first call; for graphc also warm =
the same in a new process sharing the disk cache), warm up, then time rounds of step blocks,
engines round-robin, and report per-step medians. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .workloads import ENGINES, GRAPHC_TARGETS, WORKLOADS, Workload, get, to_float

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENGINES = ("graphc", "torch", "jax", "numpy")
BASELINE = "torch"  # the ratio column is BASELINE ms / engine ms
RTOL = 1e-3
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
            "NUMBA_NUM_THREADS", "XLA_FLAGS")
ENV_AT_START = {k: os.environ.get(k) for k in ENV_VARS}  # before any engine is imported
# Thread counts restored before each of an engine's blocks: Numba's OpenMP layer can share torch's
# libgomp, so graphc setting its threads (numba.set_num_threads) changes torch's too.
PINNED: dict[str, int] = {}


@dataclass
class Result:
    workload: str
    engine: str
    step_s: list[float] = field(default_factory=list)  # per-step seconds, one entry per round
    block: int = 0                                     # steps timed per round
    cold_s: float | None = None
    warm_s: float | None = None
    kernels: int | None = None
    losses: list[float] = field(default_factory=list)  # steps 1 and 2 from the initial params
    error: str | None = None
    warm_error: str | None = None
    warm_cache: str | None = None                      # "hit" or "miss" in the warm child
    cache_info: str | None = None                      # graphc's Function.cache_info after timing

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.step_s) * 1e3 if self.step_s else None

    @property
    def spread_pct(self) -> float | None:
        """Interquartile range of the rounds, as a percentage of the median."""
        if len(self.step_s) < 2:
            return None
        q = statistics.quantiles(self.step_s, n=4, method="inclusive")
        return (q[2] - q[0]) / statistics.median(self.step_s) * 100


# ---------------------------------------------------------------- environment


def import_engines(engines: list[str], threads: int | None) -> tuple[dict[str, str], dict[str, float]]:
    """Import each engine's library once, up front. Returns (missing engine -> reason, import seconds)."""
    if threads == 1 and "jax" in engines and "jax" not in sys.modules:  # XLA reads its flags at import
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    # Baselines first: graphc's OpenMP pool is passive, and torch's must not share its runtime (README: threads).
    mods = [m for m in ("numpy", "torch", "jax", "graphc") if any(_module(e) == m for e in engines)]
    missing, seconds = {}, {}
    for mod in mods:
        t0 = time.perf_counter()
        try:
            m = importlib.import_module(mod)
            if mod == "jax":
                m.devices()  # start the backend here, not inside the first cold compile
            if mod == "graphc":
                graphc_fingerprint()
        except Exception as e:  # any import failure means "engine not available"
            missing[mod] = f"{type(e).__name__}: {e}"
            continue
        seconds[mod] = time.perf_counter() - t0
    if threads:
        set_threads(threads)
    if "torch" in seconds:
        PINNED["torch"] = sys.modules["torch"].get_num_threads()
    return {e: missing[_module(e)] for e in engines if _module(e) in missing}, seconds


def _module(engine: str) -> str:
    return "graphc" if engine in GRAPHC_TARGETS else engine


def set_threads(n: int) -> None:
    """Limit torch, numba (graphc) and BLAS/OpenMP pools to ``n`` threads (jax: see import_engines)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "numba" in sys.modules:
        sys.modules["numba"].set_num_threads(min(n, sys.modules["numba"].config.NUMBA_NUM_THREADS))
    with contextlib.suppress(ImportError):
        import threadpoolctl

        threadpoolctl.threadpool_limits(n)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("model name")), None)
    threads: dict[str, int] = {}
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    if "numba" in sys.modules:
        threads["numba"] = sys.modules["numba"].get_num_threads()
    try:
        git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout
    except OSError:  # no git
        git = ""
    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu, "platform": platform.platform(), "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("numpy", "numba", "torch", "jax", "jaxlib", "graphc")},
        "env": {k: os.environ.get(k) for k in ENV_VARS}, "env_at_start": ENV_AT_START,
        "openblas_coretype_set": "OPENBLAS_CORETYPE" in os.environ,
        "threads": threads, "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "git": git.strip() or None,
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _spin(parent: int) -> None:
    """Keep one core busy until the parent goes away (checked now and then, so no orphan survives it)."""
    n = 0
    while True:
        n += 1
        if n % 5_000_000 == 0 and os.getppid() != parent:
            return


@contextlib.contextmanager
def busy_neighbour(enabled: bool) -> Iterator[None]:
    """With ``enabled``, a background process spinning on one core for the duration of the block."""
    if not enabled:
        yield
        return
    proc = mp.get_context("spawn").Process(target=_spin, args=(os.getpid(),), daemon=True, name="busy-neighbour")
    proc.start()
    try:
        yield
    finally:
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


# ---------------------------------------------------------------- measuring


@functools.cache
def graphc_fingerprint() -> str:
    """A hash of graphc's sources when first asked (at import), to tell a warm-cache miss caused by graphc changing mid-run."""
    import graphc

    h = hashlib.sha256()
    for f in sorted(Path(graphc.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def warm_compile(name: str, engine: str, quick: bool, threads: int | None) -> tuple[float, str | None]:
    """graphc build + first call in a fresh interpreter sharing $GRAPHC_CACHE_DIR: (seconds, "hit"/"miss")."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "benchmarks.run", "--warm-child", f"{name}:{engine}", f"--target={GRAPHC_TARGETS['graphc']}"]
    cmd += (["--quick"] if quick else []) + ([f"--threads={threads}"] if threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if out.returncode:
        raise RuntimeError(f"warm child failed: {' '.join(out.stderr.strip().splitlines()[-1:])}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    changed = got["fingerprint"] != graphc_fingerprint()
    return got["build_first_s"], f"{got['cache']} (graphc sources changed)" if changed else got["cache"]


def warm_child(spec: str, quick: bool, threads: int | None) -> None:
    name, engine = spec.split(":")
    wl = get(name, quick)
    params, data = wl.init_params(), wl.make_data()
    fingerprint = graphc_fingerprint()
    t0 = time.perf_counter()
    runner = wl.build(engine, params, data, threads)
    runner.step()
    dt = time.perf_counter() - t0
    info = runner.info["function"].cache_info or ""
    print(json.dumps({"build_first_s": dt, "cache": info.split()[0] if info else None, "fingerprint": fingerprint}))


def _pin(engine: str) -> None:
    if engine == "torch" and "torch" in PINNED:
        sys.modules["torch"].set_num_threads(PINNED["torch"])


def _timed(fn, n: int, engine: str = "") -> float:
    _pin(engine)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def bench_workload(wl: Workload, engines: list[str], args: argparse.Namespace, out: Path) -> list[Result]:
    params, data = wl.init_params(), wl.make_data()
    results, steps, runners = {}, {}, {}
    for eng in engines:
        r = results[eng] = Result(wl.name, eng)
        try:
            _pin(eng)
            t0 = time.perf_counter()
            runner = wl.build(eng, params, data, args.threads)
            r.losses.append(to_float(runner.step()))
            r.cold_s = time.perf_counter() - t0
            r.losses.append(to_float(runner.step()))
            if "function" in runner.info:
                f = runner.info["function"]
                r.kernels, r.cache_info = len(f.kernels), f.cache_info
                with contextlib.suppress(Exception):  # the report is a by-product; never fail the run on it
                    (out / f"{eng}-{wl.name}-report.txt").write_text(f.report())
            steps[eng], runners[eng] = runner.step, runner.info
        except Exception as e:  # a broken engine is reported, the others still run
            _fail(r, e)
            continue
        if eng == "graphc":
            try:
                r.warm_s, r.warm_cache = warm_compile(wl.name, eng, args.quick, args.threads)
            except Exception as e:  # the step itself works: note it, keep timing
                r.warm_error = f"{type(e).__name__}: {e}"

    warm_s, block_s = (0.05, 0.05) if args.quick else (0.3, 0.25)
    for eng in list(steps):  # warm-up, then size each engine's block to about block_s
        try:
            est = _timed(steps[eng], 1, eng)
            est = _timed(steps[eng], max(1, min(200, int(warm_s / max(est, 1e-7)))), eng)
            results[eng].block = max(1, min(10_000, round(block_s / max(est, 1e-7))))
        except Exception as e:
            _fail(results[eng], e)
            del steps[eng]
    for k in range(args.repeat):  # round-robin, rotating who goes first
        live = list(steps)
        if not live:
            break
        for eng in live[k % len(live):] + live[:k % len(live)]:
            try:
                results[eng].step_s.append(_timed(steps[eng], results[eng].block, eng))
            except Exception as e:
                _fail(results[eng], e)
                del steps[eng]
    for eng, r in results.items():
        if "function" in runners.get(eng, {}):
            r.cache_info = runners[eng]["function"].cache_info  # includes the thread governor's state
    return [results[e] for e in engines]


def _fail(r: Result, e: Exception) -> None:
    r.error, r.step_s = f"{type(e).__name__}: {e}", []
    print(f"  {r.workload} {r.engine}: FAILED {r.error}", flush=True)


def check_losses(results: list[Result]) -> list[str]:
    """Warnings for engines whose first two losses (fresh params, same data) disagree with the reference."""
    ok = [r for r in results if r.error is None and len(r.losses) == 2]
    ref = next((r for name in ("numpy", "torch", "jax") for r in ok if r.engine == name), ok[0] if ok else None)
    warnings = []
    for r in ok:
        for step, (a, b) in enumerate(zip(r.losses, ref.losses), 1):
            if not abs(a - b) <= RTOL * max(abs(b), 1e-30):  # also catches NaN
                warnings.append(f"WARNING: {r.workload} {r.engine} loss at step {step} is {a:.7g}, "
                                f"{ref.engine} gives {b:.7g} (rel {abs(a - b) / max(abs(b), 1e-30):.1e} > {RTOL})")
    return warnings


# ---------------------------------------------------------------- reporting

COLUMNS = ["workload", "engine", "ms/step", "±IQR %", f"vs {BASELINE}", "cold s", "warm s", "kernels"]


def table_rows(results: list[Result]) -> list[list[str]]:
    base = {r.workload: r.median_ms for r in results if r.engine == BASELINE}
    rows = []
    for r in results:
        if r.error:
            rows.append([r.workload, r.engine, "FAILED", "", "", _fmt(r.cold_s, ".2f"), "", ""])
            continue
        ratio = base[r.workload] / r.median_ms if base.get(r.workload) and r.median_ms else None
        rows.append([r.workload, r.engine, _fmt(r.median_ms, ".3f"), _fmt(r.spread_pct, ".0f"), _fmt(ratio, ".2f"),
                     _fmt(r.cold_s, ".2f"), _fmt(r.warm_s, ".2f") + (" miss" if (r.warm_cache or "").startswith("miss") else ""),
                     _fmt(r.kernels, "d")])
    return rows


def _fmt(v: float | int | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown(rows: list[list[str]], header: dict[str, Any], notes: list[str]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|\n"
    body = "".join("| " + " | ".join(r) + " |\n" for r in rows)
    meta = ", ".join(f"{k}={v}" for k, v in header.items())
    return f"# graphc benchmark\n\n{meta}\n\n{head}{body}" + "".join(f"\n- {n}" for n in notes) + "\n"


# ---------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default=None,
                    help="comma-separated, from " + ",".join(WORKLOADS) + " (default: all; W3 is left out under --quick)")
    ap.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help="comma-separated, from " + ",".join(ENGINES))
    ap.add_argument("--quick", action="store_true",
                    help="short warm-up and blocks, 3 rounds; W3 skipped unless named (then shrunk: 1024^4, batch 128)")
    ap.add_argument("--load", action="store_true", help="keep one core busy with a background process")
    ap.add_argument("--repeat", type=int, default=None, help="timed rounds per engine (default 3 with --quick, else 10)")
    ap.add_argument("--threads", type=int, default=None, help="limit torch/numba/BLAS threads (jax: only 1 is honoured)")
    ap.add_argument("--cache-dir", default=None, help="GRAPHC_CACHE_DIR to use (default: a fresh temporary one, so cold is cold)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="where results.json/results.md go")
    ap.add_argument("--target", choices=("cpu", "cuda"), default="cpu", help="target of the graphc engine (default cpu)")
    ap.add_argument("--warm-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.workloads is None:
        args.workloads = ",".join(w for w in WORKLOADS if not (args.quick and w == "W3"))
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for kind, given, known in (("workload", args.workloads, WORKLOADS), ("engine", args.engines, ENGINES)):
        if bad := [x for x in given if x not in known]:
            ap.error(f"unknown {kind}(s) {', '.join(bad)}; choose from {', '.join(known)}")
    if args.repeat is None:
        args.repeat = 3 if args.quick else 10
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what is written to results.json."""
    args = parse_args(argv)
    GRAPHC_TARGETS["graphc"] = args.target
    if args.warm_child:
        warm_child(args.warm_child, args.quick, args.threads)
        return {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    old_cache = os.environ.get("GRAPHC_CACHE_DIR")
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="graphc-bench-cache-"))
    os.environ["GRAPHC_CACHE_DIR"] = str(cache)
    t_start = time.perf_counter()
    try:
        with busy_neighbour(args.load):
            missing, import_s = import_engines(args.engines, args.threads)
            engines = [e for e in args.engines if e not in missing]
            info = machine_info()
            header = {"target": args.target, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
                      "OMP_WAIT_POLICY": ENV_AT_START["OMP_WAIT_POLICY"], "cpus": info["affinity"], "load": args.load,
                      "quick": args.quick, "repeat": args.repeat, "threads": info["threads"],
                      "loadavg": "/".join(f"{x:.2f}" for x in info["loadavg"] or ())}
            print("graphc benchmark: " + ", ".join(f"{k}={v}" for k, v in header.items()), flush=True)
            for eng, why in missing.items():
                print(f"engine {eng} unavailable: {why}", flush=True)
            results: list[Result] = []
            for name in args.workloads:
                wl = get(name, args.quick)
                print(f"{name}: {wl.title} ...", flush=True)
                results += bench_workload(wl, engines, args, out)
    finally:
        if old_cache is None:
            os.environ.pop("GRAPHC_CACHE_DIR", None)
        else:
            os.environ["GRAPHC_CACHE_DIR"] = old_cache
        if not args.cache_dir:
            shutil.rmtree(cache, ignore_errors=True)

    rows = table_rows(results)
    warnings = [w for name in args.workloads for w in check_losses([r for r in results if r.workload == name])]
    notes = [f"engine {e} missing: {why}" for e, why in missing.items()]
    notes += [f"{r.workload} {r.engine} failed: {r.error}" for r in results if r.error]
    notes += [f"{r.workload} {r.engine} warm compile failed: {r.warm_error}" for r in results if r.warm_error]
    notes += [f"{r.workload} {r.engine}: the warm process missed graphc's disk cache: {r.warm_cache}"
              for r in results if (r.warm_cache or "").startswith("miss")]
    notes += warnings
    if BASELINE not in engines:
        notes.append(f"no {BASELINE} results, so no ratio column")
    print("\n" + text_table(rows))
    print(f"({BASELINE} ms / engine ms: >1 is faster than {BASELINE}; cold = build + first call in this process, "
          "warm = the same in a new process sharing the graphc disk cache)")
    for n in notes:
        print(n)
    report = {
        "header": header, "machine": info, "args": {k: v for k, v in vars(args).items() if k != "warm_child"},
        "import_s": import_s, "missing": missing, "warnings": warnings, "total_s": time.perf_counter() - t_start,
        "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "workloads": {name: get(name, args.quick).title for name in args.workloads},
        "results": [asdict(r) | {"median_ms": r.median_ms, "spread_pct": r.spread_pct} for r in results],
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text(markdown(rows, header, notes))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {report['total_s']:.0f} s total")
    return report


if __name__ == "__main__":
    main()
