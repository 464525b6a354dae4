"""What the command's parts share: where the benchmarks and examples are, the one-line error,
loading the user's module."""
from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import inspect as pyinspect
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import _bundled

ROOT = _bundled.root()  # the folder holding benchmarks/ and examples/: a source checkout, or the wheel's copies


def results_dir() -> Path:
    """Where `graphc bench` writes by default: benchmarks/results in a checkout, else ./graphc-results."""
    return ROOT / "benchmarks" / "results" if ROOT is not None and _bundled.is_checkout(ROOT) else Path.cwd() / "graphc-results"
PKG = str(Path(__file__).resolve().parents[1])  # graphc itself: frames inside it are not the user's


class CliError(Exception):
    """A one-line error for the user; ``code`` 2 for a usage mistake, 1 for a failure."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, no usage dump
        raise CliError(f"{message} (see {self.prog} --help)", 2)


def load_module(spec: str) -> Any:
    """A module from a dotted name (importable from the current directory) or a .py path."""
    if spec.endswith(".py") or "/" in spec or os.sep in spec:
        path = Path(spec)
        if not path.is_file():
            raise CliError(f"no such file: {spec}")
        name = path.stem if path.stem not in sys.modules else f"_graphc_inspect_{path.stem}"
        sys.path.insert(0, str(path.resolve().parent))  # its sibling modules import as when run as a script
        mspec = importlib.util.spec_from_file_location(name, path)
        if mspec is None or mspec.loader is None:
            raise CliError(f"cannot load {spec} as a Python module")
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[name] = mod
        _importing(spec, lambda: mspec.loader.exec_module(mod))  # type: ignore[union-attr]
        return mod
    sys.path.insert(0, os.getcwd())
    try:
        return _importing(spec, lambda: importlib.import_module(spec))
    except ModuleNotFoundError as e:
        if e.name and (spec == e.name or spec.startswith(e.name + ".")):
            raise CliError(f"no module named {spec!r}: give a module importable from here, or a path like "
                           "examples/mlp_digits.py") from None
        raise


def _importing(what: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except ModuleNotFoundError as e:
        if e.name and (what == e.name or what.startswith(e.name + ".")):
            raise
        raise CliError(f"cannot import {what}: {e}") from e
    except CliError:
        raise
    except Exception as e:  # the user's module failed at import: one line, where
        raise CliError(f"importing {what} raised {_one_line(e)}") from e
    except SystemExit as e:
        raise CliError(f"importing {what} exited (status {e.code})") from e


def _one_line(e: BaseException) -> str:
    """``Type: message (file.py:line)``, the line being the innermost frame outside graphc."""
    from ..errors import GraphcError

    where = ""
    for fs in reversed(traceback.extract_tb(e.__traceback__)):
        if isinstance(e, (GraphcError, SyntaxError)):  # their message says where
            break
        if not fs.filename.startswith((PKG, "<frozen")):
            where = f" ({os.path.basename(fs.filename)}:{fs.lineno})"
            break
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}{where}" if msg else f"{type(e).__name__}{where}"


def find_function(mod: Any, spec: str, name: str) -> Callable[[], Any]:
    obj: Any = mod
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            here = [k for k, v in vars(mod).items() if callable(v) and getattr(v, "__module__", None) == mod.__name__]
            close = difflib.get_close_matches(name, here, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; it has {', '.join(here)}" if here else ""
            raise CliError(f"{spec} has no function {name!r}{hint}", 2)
    if not callable(obj):
        raise CliError(f"{spec}:{name} is a {type(obj).__name__}, not a function", 2)
    try:
        sig = pyinspect.signature(obj)
    except (TypeError, ValueError):
        return obj
    need = [p.name for p in sig.parameters.values() if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if need:
        raise CliError(f"{spec}:{name} needs arguments ({', '.join(need)}); graphc inspect calls it with none", 2)
    return obj


def _quiet_numba() -> None:
    """Numba's notes on loops it did not parallelize say nothing to a graphc user."""
    try:
        from numba.core.errors import NumbaPerformanceWarning
    except ImportError:
        return
    warnings.simplefilter("ignore", NumbaPerformanceWarning)


# ---------------------------------------------------------------- cache, demo


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""
