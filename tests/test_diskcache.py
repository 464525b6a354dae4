"""Tests for graphc.backends.common.diskcache (generated-module disk cache)."""

import json
import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from graphc.backends.common import diskcache as diskcache

ROOT = Path(diskcache.__file__).resolve().parents[2]

SRC = """\
# tag {tag}
from numba import njit


@njit(cache=True)
def f(x):
    return x * 2.0 + 1.0


@njit(cache=True)
def g(x):
    return f(x) + 1.0


@njit(cache=True)
def boom(x):
    raise ValueError("boom")
"""

# Runs in a fresh interpreter: load the source in argv[1], first call via the
# recovery protocol, report timings. With argv[2] == "warmup", Numba's one-off
# per-process start-up (paid by any jitted function) is timed apart, with a
# trivial uncached function, so "first_call" is this module's own cost; a
# number in argv[2] is a start time, to make several children load at once.
CHILD = """\
import json, sys, time
t0 = time.perf_counter()
import numba
t1 = time.perf_counter()
arg = sys.argv[2] if len(sys.argv) > 2 else ""
if arg == "warmup":
    numba.njit(lambda: 0)()
t2 = time.perf_counter()
from graphc.backends.common import diskcache as diskcache
src = open(sys.argv[1]).read()
if arg and arg != "warmup":
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
t3 = time.perf_counter()
m, hit = diskcache.load_module(src)
t4 = time.perf_counter()
r = diskcache.call_with_cache_recovery(m.g, 3.0)
t5 = time.perf_counter()
print(json.dumps({"hit": hit, "r": r, "import_numba": t1 - t0, "numba_init": t2 - t1,
                  "load": t4 - t3, "first_call": t5 - t4, "file": m.__file__,
                  "cache_hits": sum(m.g.stats.cache_hits.values())}))
"""


@pytest.fixture
def cdir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(d))
    return d


def new_src() -> str:
    return SRC.format(tag=uuid.uuid4().hex)


def child(src: str, cdir: Path, arg: str = "") -> subprocess.Popen:
    srcfile = cdir.parent / f"src_{uuid.uuid4().hex}.py"
    srcfile.write_text(src)
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cdir))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    args = [sys.executable, "-c", CHILD, str(srcfile)] + ([arg] if arg else [])
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def run_child(src: str, cdir: Path, arg: str = "") -> dict:
    return finish(child(src, cdir, arg))


def nb_files(py: Path, pattern: str) -> list[Path]:
    """Numba/Python cache files of a generated file (also under $NUMBA_CACHE_DIR)."""
    return sorted(f for d in diskcache._numba_dirs(py) for f in d.glob(f"{py.stem}.{pattern}"))


def test_cache_dir_honours_env(cdir):
    assert not cdir.exists()
    assert diskcache.cache_dir() == cdir
    assert cdir.is_dir()


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG is Linux-only")
def test_cache_dir_xdg_default(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert diskcache.cache_dir() == tmp_path / "xdg" / "graphc"


def test_cold_then_hit(cdir):
    src = new_src()
    mod, hit = diskcache.load_module(src)
    assert not hit
    py = Path(mod.__file__)
    assert py.parent == cdir and py.name.startswith("_gen_") and py.suffix == ".py"
    first = py.read_text().splitlines()[0]
    assert first.startswith("# graphc generated module; key=")
    assert mod.__name__ == f"graphc_gen_{py.stem[5:]}" and sys.modules[mod.__name__] is mod
    assert mod.g(3.0) == 8.0
    assert diskcache.numba_cache_present(py)
    mod2, hit2 = diskcache.load_module(src)
    assert hit2 and mod2 is mod
    # a different salt or source is a different module, loadable side by side
    mod3, hit3 = diskcache.load_module(src, salt="runtime-v2")
    assert not hit3 and mod3 is not mod and mod3.__file__ != mod.__file__
    assert mod3.g(1.0) == 4.0 and mod.g(1.0) == 4.0


def test_warm_start_in_new_process(cdir):
    src = new_src()
    cold = run_child(src, cdir, "warmup")
    warm = run_child(src, cdir, "warmup")
    for name, t in (("cold", cold), ("warm", warm)):
        print(
            f"\n{name}: import numba {t['import_numba'] * 1e3:.0f} ms, numba init "
            f"{t['numba_init'] * 1e3:.0f} ms, load_module {t['load'] * 1e3:.1f} ms, "
            f"first call {t['first_call'] * 1e3:.1f} ms"
        )
    assert not cold["hit"] and cold["cache_hits"] == 0
    assert warm["hit"] and warm["cache_hits"] >= 1
    assert cold["r"] == warm["r"] == 8.0
    assert warm["load"] + warm["first_call"] < 2.0  # loose: shared, noisy machine


@pytest.mark.parametrize("damage", ["truncate", "garbage", "edit_body", "empty"])
def test_corrupt_py_is_rebuilt(cdir, damage):
    src = new_src()
    mod, _ = diskcache.load_module(src)
    py = Path(mod.__file__)
    good = py.read_bytes()
    bad = {
        "truncate": good[: len(good) // 2],
        "garbage": b"\x00\xff garbage (((\n" * 10,
        "edit_body": good.replace(b"x * 2.0", b"x * 3.0"),
        "empty": b"",
    }[damage]
    py.write_bytes(bad)
    del sys.modules[mod.__name__]  # force a real re-import from disk
    mod2, hit = diskcache.load_module(src)
    assert not hit and py.read_bytes() == good
    assert mod2.g(3.0) == 8.0


def test_corrupt_pyc_import_error_is_retried(cdir, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # PYTHONDONTWRITEBYTECODE
    src = new_src()
    mod, _ = diskcache.load_module(src)
    py = Path(mod.__file__)
    (pyc,) = nb_files(py, "cpython-*.pyc")
    pyc.write_bytes(pyc.read_bytes()[:16] + b"\xffnot marshal data")  # header still valid
    del sys.modules[mod.__name__]
    mod2, hit = diskcache.load_module(src)
    assert not hit and mod2.g(3.0) == 8.0


def compiled_elsewhere(cdir: Path) -> tuple[str, Path]:
    """A new module whose Numba cache was written by another process."""
    src = new_src()
    return src, Path(run_child(src, cdir)["file"])


def test_garbage_numba_cache_files_are_dropped_on_load(cdir):
    src, py = compiled_elsewhere(cdir)
    nbi, nbc = nb_files(py, "g-*.nbi"), nb_files(py, "g-*.nbc")
    assert nbi and nbc
    nbi[0].write_bytes(b"garbage\n")
    nbc[0].write_bytes(nbc[0].read_bytes()[:100])  # truncated
    for f in nb_files(py, "f-*.nb[ic]"):
        f.write_bytes(os.urandom(64))
    mod, hit = diskcache.load_module(src)
    assert not nb_files(py, "*.nb[ic]")  # all dropped before any call
    assert mod.g(3.0) == 8.0  # a plain call recompiles and rewrites the cache
    assert diskcache.numba_cache_present(py)


def test_wrong_content_index_recovered_at_first_call(cdir):
    import numba

    src, py = compiled_elsewhere(cdir)
    (nbi,) = nb_files(py, "g-*.nbi")
    # well-formed pickles get past load_module's check; numba raises at first call
    nbi.write_bytes(pickle.dumps(numba.__version__) + pickle.dumps("not a tuple"))
    mod, hit = diskcache.load_module(src)
    with pytest.raises(ValueError):
        mod.g(3.0)
    assert diskcache.call_with_cache_recovery(mod.g, 3.0) == 8.0
    assert mod.g(1.0) == 4.0


def test_wrong_content_data_recovered_at_first_call(cdir):
    src, py = compiled_elsewhere(cdir)
    for f in nb_files(py, "*.nbc"):
        f.write_bytes(pickle.dumps(42))
    mod, hit = diskcache.load_module(src)
    assert hit
    assert diskcache.call_with_cache_recovery(mod.g, 3.0) == 8.0
    assert run_child(src, cdir)["cache_hits"] >= 1


def test_recovery_does_not_swallow_other_errors(cdir):
    mod, _ = diskcache.load_module(new_src())
    with pytest.raises(ValueError, match="boom"):
        diskcache.call_with_cache_recovery(mod.boom, 1.0)


def test_concurrent_processes_same_new_key(cdir):
    src = new_src()
    start = time.time() + 1.5  # children import numba first, then start together
    procs = [child(src, cdir, repr(start)) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert all(r["r"] == 8.0 for r in results)
    (file,) = {r["file"] for r in results}
    assert not list(cdir.glob(".tmp*"))  # no temp files left behind
    mod, hit = diskcache.load_module(src)
    assert hit and mod.__file__ == file and mod.g(3.0) == 8.0
    assert sum(mod.g.stats.cache_hits.values()) >= 1


def test_info_and_clear(cdir):
    for _ in range(2):
        mod, _ = diskcache.load_module(new_src())
        mod.g(1.0)
    info = diskcache.info()
    assert info["dir"] == str(cdir) and info["modules"] == 2 and info["bytes"] > 0
    assert diskcache.clear() == 2
    assert diskcache.info()["modules"] == 0
    assert not list(cdir.glob("_gen_*")) and not list(cdir.glob("__pycache__/_gen_*"))


# --- a cache that trusts nothing it did not check ----------------------------------------------
def _fresh(monkeypatch, path):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(path))
    monkeypatch.setattr(diskcache, "_checked", {})
    monkeypatch.setattr(diskcache, "_FALLBACK", {})


def test_cache_dir_is_created_private(tmp_path, monkeypatch):
    _fresh(monkeypatch, tmp_path / "new" / "cache")
    d = diskcache.cache_dir()
    assert d == tmp_path / "new" / "cache" and (d.stat().st_mode & 0o777) == 0o700
    assert (diskcache.subdir("kernels").stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("how", ["a file", "writable by others", "another user's"])
def test_unsafe_or_unusable_cache_dir_falls_back_with_a_warning(tmp_path, monkeypatch, how):
    d = tmp_path / "cache"
    if how == "a file":
        d.write_text("not a directory")
    else:
        d.mkdir()
        if how == "writable by others":
            d.chmod(0o777)
        else:
            if os.getuid() != 0:
                pytest.skip("only root can give a directory to another user")
            os.chown(d, 65534, 65534)
    _fresh(monkeypatch, d)
    with pytest.warns(RuntimeWarning, match="private temporary cache"):
        got = diskcache.cache_dir()
    assert got != d and (got.stat().st_mode & 0o777) == 0o700
    import graphc as gc  # and compiling works
    x = gc.input("x", (3,))
    np.testing.assert_allclose(gc.function([x], gc.exp(x), target="cpu")(np.zeros(3, np.float32)), 1.0)
    assert not any(got.samefile(p) for p in d.parent.iterdir() if p.name == "cache")


def test_planted_code_in_a_cached_module_is_not_run(tmp_path, monkeypatch):
    """Code appended to a cached module, with its header's checksum recomputed, is a miss: the file
    is compared byte for byte with the module graphc generates, and written again."""
    _fresh(monkeypatch, tmp_path)
    src = new_src()
    mod, _ = diskcache.load_module(src)
    py = Path(mod.__file__)
    flag = tmp_path / "planted"
    body = py.read_bytes().partition(b"\n")[2] + f"\nopen({str(flag)!r}, 'w').close()\n".encode()
    key = py.read_bytes().split(b"key=")[1].split(b";")[0].decode()
    py.write_bytes(diskcache._header(key, body) + b"\n" + body)
    sys.modules.pop(mod.__name__, None)
    mod2, hit = diskcache.load_module(src)
    assert not hit and not flag.exists()
    assert b"planted" not in py.read_bytes()
