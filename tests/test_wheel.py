"""The `graphc` command works from a wheel: build it, install it (not editable) into a fresh
virtual environment, and run `graphc demo --quick` and `graphc bench --quick --workloads W5`
from a folder outside the source tree.

The fresh environment gets the wheel alone (``--no-deps``); its dependencies (numpy, Numba,
scikit-learn, ...) are borrowed from the running environment's site-packages by a ``.pth`` line,
which adds that folder to ``sys.path`` without running its ``.pth`` files: the editable graphc
installed there stays invisible, so `import graphc` finds the wheel's copy only."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy of the tracked files: a build/ folder left in the checkout would leak stale modules
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True)
    src = ROOT
    if tracked.returncode == 0 and tracked.stdout:
        src = tmp / "src"
        for name in tracked.stdout.split("\0"):
            if name and (ROOT / name).is_file():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600)
    if built.returncode and "No matching distribution found for setuptools" in built.stderr:
        pytest.skip("pip cannot fetch setuptools for an isolated build here")
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp / "dist").glob("graphc-*.whl"))
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_graphc_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return env_dir, wheel


def _run(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PATH": str(env_dir / "bin") + os.pathsep + env.get("PATH", ""), "MPLBACKEND": "Agg",
            "GRAPHC_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def test_the_wheel_carries_what_the_command_needs(installed):
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("graphc/_bundled/benchmarks/run.py", "graphc/_bundled/benchmarks/workloads.py",
              "graphc/_bundled/examples/mlp_digits.py", "graphc/onnx/export.py", "graphc/backends/cpu/native.py"):
        assert f in names, f
    packages = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "graphc").rglob("__init__.py")}
    assert {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("__init__.py")} >= packages


def test_graphc_demo_and_bench_from_the_wheel(installed, tmp_path):
    env_dir, _ = installed
    where = _run(env_dir, str(env_dir / "bin" / "python"), "-c", "import graphc; print(graphc.__file__)", cwd=tmp_path)
    assert where.returncode == 0 and str(env_dir) in where.stdout, where.stdout + where.stderr
    demo = _run(env_dir, "graphc", "demo", "--quick", cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "final held-out test accuracy" in demo.stdout
    assert (tmp_path / "graphc-demo" / "mlp_digits.png").is_file()
    bench = _run(env_dir, "graphc", "bench", "--quick", "--workloads", "W5", cwd=tmp_path)
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    assert "W5        graphc" in bench.stdout
    assert (tmp_path / "graphc-results" / "results.json").is_file()  # not inside the installed package
