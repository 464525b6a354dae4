"""On-disk cache of generated Numba modules.

``njit(cache=True)`` needs functions defined in a real file, so generated source
goes to ``<cache_dir>/_gen_<key>.py`` and is imported from there; Numba keeps
its compiled code in ``__pycache__`` next to it. The key covers the graphc,
numba and python versions (plus a caller's ``salt``) because a cached caller
keeps stale code when a helper in another module (the runtime library) changes.

Corrupt Numba cache files do not fail at import: Numba reads them at a
function's first call and raises (EOFError, pickle.UnpicklingError, ValueError,
TypeError...). ``load_module`` drops files that are not well-formed pickle
streams; ``call_with_cache_recovery`` handles the rest at the first call.
"""

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import pickletools
import stat
import sys
import tempfile
import threading
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import CacheError

_lock = threading.Lock()  # one import per key at a time within this process


def configured_dir() -> Path:
    """``$GRAPHC_CACHE_DIR``, else the platform's user cache dir."""
    if env := os.environ.get("GRAPHC_CACHE_DIR"):
        return Path(env).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData/Local") / "graphc"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "graphc"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graphc"


_checked: dict[str, Path] = {}  # configured dir -> the dir used (itself, or a private fallback)


def cache_dir() -> Path:
    """The cache directory, created private (0700) on demand. The cache holds code this process
    runs, so a directory another user owns or others can write is refused, as are one that is a
    file or cannot be written: graphc warns, says how to fix it, and uses a private temporary
    directory instead. ``CacheError`` only when no directory can be had at all."""
    want = configured_dir()
    got = _checked.get(str(want))
    if got is None or not got.is_dir():  # (removed since: check it again)
        problem = _unusable(want)
        if problem is None:
            got = want
        else:
            got = _fallback()
            warnings.warn(f"graphc cache {want} {problem}; using the private temporary cache {got} for this process "
                          "(set GRAPHC_CACHE_DIR to a directory of your own, or fix the one above)", RuntimeWarning,
                          stacklevel=2)
        _checked[str(want)] = got
    return got


def subdir(name: str) -> Path:
    """A private folder of the cache (kernels, steps), checked as the cache itself is."""
    base = cache_dir()
    d = base / name
    got = _checked.get(str(d))
    if got is None or not got.is_dir():
        problem = _unusable(d)
        if problem is not None:
            raise CacheError(f"graphc cache folder {d} {problem}; remove it (graphc cache clear) or set GRAPHC_CACHE_DIR")
        got = _checked[str(d)] = d
    return got


def _unusable(d: Path) -> str | None:
    """Why ``d`` cannot hold graphc's cache, or None."""
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        return "is a file, not a directory"
    except OSError as e:
        return f"cannot be created ({e.strerror})"
    if not d.is_dir():
        return "is not a directory"
    if hasattr(os, "getuid"):  # as git and ssh check their own files
        st = d.stat()
        if st.st_uid != os.getuid():
            return f"belongs to another user (uid {st.st_uid})"
        if st.st_mode & 0o022:
            return f"can be written by other users (mode {stat.filemode(st.st_mode)})"
    probe = d / f".graphc-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return f"cannot be written ({e.strerror})"
    return None


def _fallback() -> Path:
    if "fallback" not in _FALLBACK:
        try:
            _FALLBACK["fallback"] = Path(tempfile.mkdtemp(prefix="graphc-cache-"))  # created 0700
        except OSError as e:
            raise CacheError(f"no usable cache directory: {configured_dir()} is unusable and no temporary "
                             f"directory could be made ({e})") from None
    return _FALLBACK["fallback"]


_FALLBACK: dict[str, Path] = {}


@functools.cache
def _versions() -> str:
    try:  # graphc/__init__.py may be absent or broken while graphc is developed
        from ..._version import __version__ as gv
    except Exception:  # any failure means "no __version__ here"
        try:
            gv = importlib.metadata.version("graphc")
        except importlib.metadata.PackageNotFoundError:
            gv = "0.0.0"
    import numba  # the generated module imports it anyway

    return f"graphc={gv}\0numba={numba.__version__}\0python={sys.version}"


def _header(key: str, body: bytes) -> bytes:
    sha = hashlib.sha256(body).hexdigest()
    return f"# graphc generated module; key={key}; body_sha256={sha}".encode()


def _numba_dirs(py: Path) -> list[Path]:
    """Where Numba caches ``py``: ``__pycache__`` or, if set, $NUMBA_CACHE_DIR."""
    dirs = [py.parent / "__pycache__"]
    cfg = getattr(sys.modules.get("numba"), "config", None)
    if custom := getattr(cfg, "CACHE_DIR", "") or os.environ.get("NUMBA_CACHE_DIR"):
        parent = os.path.dirname(os.path.abspath(py))  # as numba's locator does
        sub = f"{os.path.basename(parent)}_{hashlib.sha1(parent.encode()).hexdigest()}"
        dirs.append(Path(custom) / sub)
    return dirs


def _cache_files(py: Path, pattern: str = "*") -> list[Path]:
    # Numba: "<stem>.<qualname>-<line>.pyXY[.N].nb[ic]"; Python: "<stem>.cpython-XY.pyc".
    return [f for d in _numba_dirs(py) for f in d.glob(f"{py.stem}.{pattern}")]


def numba_cache_present(path: str | os.PathLike[str]) -> bool:
    """True if Numba has an index (``.nbi``) for at least one function of the file."""
    return bool(_cache_files(Path(path), "*.nbi"))


def purge_numba_cache(path: str | os.PathLike[str]) -> int:
    """Delete the Numba and Python cache files of a generated file; return count.

    Safe at any time: Numba recompiles what is missing and rewrites the cache.
    """
    files = _cache_files(Path(path))
    for f in files:
        f.unlink(missing_ok=True)  # a concurrent purge may get there first
    return len(files)


def _pickles_ok(path: Path, count: int) -> bool:
    # Walk the opcode stream without executing it: catches truncation and
    # garbage with no imports or side effects (~0.2 ms per file).
    try:
        with open(path, "rb") as f:
            for _ in range(count):
                for _op in pickletools.genops(f):
                    pass
            return f.read(1) == b""
    except FileNotFoundError:
        return True
    except Exception:  # whatever fails to parse is corrupt
        return False


def _drop_corrupt_numba_files(py: Path) -> None:
    for f in _cache_files(py, "*.nb[ic]"):
        # .nbi = pickle(numba version) + pickle((stamp, index)); .nbc = one pickle
        if not _pickles_ok(f, 2 if f.suffix == ".nbi" else 1):
            f.unlink(missing_ok=True)


def _file_ok(py: Path, key: str, source: str) -> bool:
    """The file holds exactly the module graphc generates now: byte for byte, not just a header
    that matches its own body (anyone could recompute that checksum for code they append)."""
    body = source.encode()
    try:
        return py.read_bytes() == _header(key, body) + b"\n" + body
    except OSError:
        return False


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename: readers see the old file or
    the new one, never a part (concurrent writers of one cache key write equal bytes)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp" + path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        if not (path.exists() and path.read_bytes() == data):  # e.g. Windows refuses to replace an open file
            raise


def _write_atomic(py: Path, key: str, source: str) -> None:
    body = source.encode()
    write_atomic(py, _header(key, body) + b"\n" + body)


def _import(name: str, py: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, py)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    # Numba rebuilds a cached function's environment via import_module(__name__).
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def load_module(source: str, *, salt: str = "") -> tuple[types.ModuleType, bool]:
    """Import ``source`` through the disk cache; return ``(module, hit)``.

    ``salt`` must change whenever anything the source calls into changes (e.g.
    the runtime library's hash). ``hit``: the file was on disk and intact and
    Numba has an index for it, so a warm start is likely. A corrupt or stale
    file is rewritten; a failing import is retried once from a fresh file.
    Make the first call through :func:`call_with_cache_recovery`.
    """
    key = hashlib.sha256(f"{source}\0{salt}\0{_versions()}".encode()).hexdigest()
    name = f"graphc_gen_{key[:24]}"
    py = cache_dir() / f"_gen_{key[:24]}.py"
    with _lock:
        hit = _file_ok(py, key, source)
        if not hit:
            if py.exists():  # corrupt: drop what was compiled from other bytes
                purge_numba_cache(py)
            _write_atomic(py, key, source)
        hit = hit and numba_cache_present(py)
        mod = sys.modules.get(name)
        if mod is not None and mod.__file__ == str(py):  # cache_dir() may have moved
            return mod, hit
        _drop_corrupt_numba_files(py)
        try:
            return _import(name, py), hit
        except Exception:  # retried once; a real bug raises again
            purge_numba_cache(py)  # e.g. a corrupt .pyc that passes its header check
            _write_atomic(py, key, source)
            return _import(name, py), False


def _failed_indexes(exc: BaseException | None) -> list[str]:
    """Index files of the Numba caches whose loading or saving raised ``exc``."""
    found = []
    while exc is not None:
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_filename.replace("\\", "/").endswith("numba/core/caching.py"):
                cache_file = getattr(frame.f_locals.get("self"), "_cache_file", None)
                if cache_file is not None:  # a Cache: load_overload/save_overload
                    found.append(cache_file._index_path)
            tb = tb.tb_next
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return found


def call_with_cache_recovery(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; while Numba's cache code raises, drop the bad cache and retry.

    Use it for the first call of a freshly loaded module's entry point; later
    calls can call ``fn`` directly. Deleting the failing function's index is
    enough: Numba recompiles it and overwrites its data files. Each retry may
    reveal one more bad callee, also in other modules (the runtime library).
    Other errors, or a retry without progress, propagate unchanged.
    """
    removed: set[str] = set()
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            bad = _failed_indexes(e)
            if not bad or removed.issuperset(bad):
                raise
        for f in bad:
            Path(f).unlink(missing_ok=True)
        removed.update(bad)


def _library_files(d: Path) -> list[Path]:
    """The CPU backend's kernel library and step specs (see backends/library.py)."""
    return [f for sub in ("kernels", "steps") if (d / sub).is_dir() for f in (d / sub).iterdir() if f.is_file()]


def clear() -> int:
    """Remove every generated module, library kernel and step spec; return how many entries
    (modules + kernels + steps)."""
    d = cache_dir()
    mods = list(d.glob("_gen_*.py"))
    for py in mods:
        purge_numba_cache(py)
        py.unlink(missing_ok=True)
    for tmp in d.glob(".tmp_gen_*.tmp"):  # left by killed writers
        tmp.unlink(missing_ok=True)
    lib = _library_files(d)
    for f in lib:
        f.unlink(missing_ok=True)
    return len(mods) + sum(1 for f in lib if f.suffix in (".o", ".json"))


def info() -> dict[str, Any]:
    """``{"dir", "modules", "kernels", "steps", "bytes"}``: CUDA modules (bytes include Numba's
    cache files), CPU library kernels and CPU step specs."""
    d = cache_dir()
    mods = list(d.glob("_gen_*.py"))
    lib = _library_files(d)
    files = mods + [f for py in mods for f in _cache_files(py)] + lib
    size = sum(f.stat().st_size for f in files if f.exists())
    return {"dir": str(d), "modules": len(mods), "kernels": sum(1 for f in lib if f.suffix == ".o"),
            "steps": sum(1 for f in lib if f.suffix == ".json"), "bytes": size}
