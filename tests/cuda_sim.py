"""For the CUDA test files: whether this process can run CUDA kernels (the simulator, chosen
before numba is imported, or a GPU), and the rerun of a test file in a simulator child."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from numba import config

ROOT = Path(__file__).resolve().parents[1]


def _gpu() -> bool:
    try:
        from numba import cuda
        return not config.ENABLE_CUDASIM and cuda.is_available()
    except Exception:  # no numba.cuda at all
        return False


ACTIVE = bool(config.ENABLE_CUDASIM) or _gpu()  # can this process run CUDA kernels?
needs_cuda = pytest.mark.skipif(not ACTIVE, reason="runs in the simulator child (test_on_the_simulator) or on a GPU")


def run_on_simulator(test_file: str, tmp_path: Path) -> None:
    """``test_file``'s tests, in a child process with the simulator (skipped where this process
    runs them itself)."""
    if ACTIVE:
        pytest.skip("this process runs the CUDA tests itself")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", GRAPHC_CACHE_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(test_file))]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert " passed" in res.stdout.splitlines()[-1]
