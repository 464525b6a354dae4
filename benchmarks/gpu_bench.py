"""W1, W2 and W4 on an NVIDIA GPU: graphc ``target="cuda"`` against PyTorch CUDA eager.

    python -m benchmarks.gpu_bench [--workloads W1,W2,W4] [--steps 100]

The workloads (params, data, graph) come from benchmarks/workloads.py. graphc is timed two ways:
``host`` feeds NumPy arrays (inputs copied to the device and the loss copied back every step,
the default use) and ``device`` feeds device arrays and keeps the loss on the device
(``device_arrays=True``), as PyTorch does with its tensors on the GPU. Ratios are PyTorch ms
/ graphc ms (above 1: graphc is faster). Each engine's first step (its compile) is reported
apart; timings are medians of 5 rounds, synchronised at the end of each round.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from . import workloads as W


def _time(step: Callable, sync: Callable, steps: int) -> tuple[float, float]:
    """(first step's seconds, compile included; median seconds per step afterwards)."""
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    for _ in range(3):
        step()
    sync()
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rounds.append((time.perf_counter() - t) / steps)
    return first, statistics.median(rounds)


def bench(name: str, steps: int, torch_ok: bool) -> dict:
    from numba import cuda

    import graphc as gc

    wl = W.WORKLOADS[name]
    params, data = wl.init_params(), wl.make_data()
    W.GRAPHC_TARGETS.setdefault("graphc-cuda", "cuda")
    host = wl.build("graphc-cuda", params, data)
    f = host.info["function"]
    res = {"workload": name, "title": wl.title, "kernels": len(f.kernels), "loss": W.to_float(host.step())}
    dev_f = gc.function(f.inputs, f.outputs[0], updates=f.updates, target="cuda", device_arrays=True)
    feeds = [cuda.to_device(data[x.name]) for x in f.inputs]
    res["host_first"], res["host"] = _time(host.step, lambda: None, steps)
    res["device_first"], res["device"] = _time(lambda: dev_f(*feeds), cuda.synchronize, steps)
    if torch_ok:
        import torch
        W.TORCH_DEVICE = "cuda"  # the workloads' torch code, on the GPU
        tr = wl.build("torch", params, data)
        res["torch_loss"] = W.to_float(tr.step())
        res["torch_first"], res["torch"] = _time(tr.step, torch.cuda.synchronize, steps)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="W1,W2,W4")
    ap.add_argument("--steps", type=int, default=100, help="steps per timed round")
    args = ap.parse_args(argv)
    from graphc.backends.cuda.program import device_api
    device_api()  # a clear error without a GPU
    try:
        import torch
        torch_ok = torch.cuda.is_available()
    except ImportError:
        torch_ok = False
    if not torch_ok:
        print("PyTorch with CUDA is not installed here: graphc timings only")
    print(f"{'':4} {'graphc host':>12} {'graphc dev':>11} {'torch':>9} {'torch/dev':>9} {'torch/host':>10}  "
          f"{'kernels':>7}  first step (compile) ms: host, dev, torch")
    ok = True
    for name in args.workloads.split(","):
        r = bench(name, args.steps, torch_ok)
        ms = lambda k: f"{r[k] * 1e3:.3f}" if k in r else "-"
        ratio = lambda k: f"{r['torch'] / r[k]:.2f}" if "torch" in r else "-"
        first = ", ".join(f"{r[k] * 1e3:.0f}" for k in ("host_first", "device_first", "torch_first") if k in r)
        print(f"{name:4} {ms('host'):>12} {ms('device'):>11} {ms('torch'):>9} {ratio('device'):>9} {ratio('host'):>10}  "
              f"{r['kernels']:>7}  {first}   ({r['title']})")
        if "torch_loss" in r and not np.isclose(r["loss"], r["torch_loss"], rtol=1e-3):
            print(f"  loss mismatch: graphc {r['loss']:.6f}, torch {r['torch_loss']:.6f}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
