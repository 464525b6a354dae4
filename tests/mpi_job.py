"""For the MPI tests: whether mpiexec and mpi4py are here, and a script run on N ranks."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_MPI = shutil.which("mpiexec") is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py or mpiexec missing: pip install 'graphc[mpi]'")


def mpirun(tmp_path: Path, code: str, n: int = 2, timeout: int = 240, **env_extra: str) -> subprocess.CompletedProcess:
    """``code`` (dedented) as a script on ``n`` ranks of ``mpiexec``, in ``tmp_path``."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GRAPHC_CACHE_DIR=os.environ.get("GRAPHC_CACHE_DIR", str(tmp_path / "cache")), **env_extra)
    cmd = [shutil.which("mpiexec"), "-n", str(n)] + (["--oversubscribe"] if n > 2 else []) + [sys.executable, str(script)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
