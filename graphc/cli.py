"""The ``graphc`` command: benchmark against eager engines, inspect a model's graphs, manage the cache.

    graphc bench [--workloads W1,W2] [--engines graphc,torch,jax,numpy] [--target cpu|cuda] [--quick]
    graphc bench --compile [--models mlp,cnn] [--quick]
    graphc bench --ranks 2 [--workloads W2] [--quick]
    graphc inspect examples/mlp_digits.py:build [--target cpu] [--out DIR]
    graphc cache info|clear
    graphc demo [--target cpu] [--quick]

A mistake on the command line gets a one-line error and exit status 2; a failure while running
(an import error, a graph error, a failed engine) one line and status 1. ``--traceback`` shows
the whole traceback instead.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import inspect as pyinspect
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _bundled
from .progress import Status

ROOT = _bundled.root()  # the folder holding benchmarks/ and examples/: a source checkout, or the wheel's copies


def results_dir() -> Path:
    """Where `graphc bench` writes by default: benchmarks/results in a checkout, else ./graphc-results."""
    return ROOT / "benchmarks" / "results" if ROOT is not None and _bundled.is_checkout(ROOT) else Path.cwd() / "graphc-results"
PKG = str(Path(__file__).resolve().parent)


class CliError(Exception):
    """A one-line error for the user; ``code`` 2 for a usage mistake, 1 for a failure."""

    def __init__(self, msg: str, code: int = 1):
        super().__init__(msg)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, no usage dump
        raise CliError(f"{message} (see {self.prog} --help)", 2)


# ---------------------------------------------------------------- inspect


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
    from .errors import GraphcError

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


def cmd_inspect(args: argparse.Namespace) -> int:
    from . import inspecting

    mod_spec, sep, fn_name = args.function.rpartition(":")
    if not sep or not mod_spec or not fn_name:
        raise CliError(f"expected MODULE:FUNCTION, e.g. examples/mlp_digits.py:build, got {args.function!r}", 2)
    dims = inspecting.parse_dims(args.dims)
    with Status(f"importing {mod_spec}"):
        fn = find_function(load_module(mod_spec), mod_spec, fn_name)
    with Status(f"calling {fn_name}()"):
        try:
            value = fn()
        except Exception as e:  # the user's code: one line, where
            raise CliError(f"{args.function} raised {_one_line(e)}") from e
        except SystemExit as e:  # e.g. a main() that parses the command line
            raise CliError(f"{args.function} exited (status {e.code}) instead of returning a graph") from e
    with warnings.catch_warnings():
        _quiet_numba()
        inspecting.show(value, args.function, args.target, args.lr, dims, args.out, args.format, args.renderer, Status)
    return 0


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


def cmd_cache(args: argparse.Namespace) -> int:
    from .backends import diskcache

    info = diskcache.info()
    if args.action == "clear":
        n = diskcache.clear()
        print(f"removed {n} cache entr{'y' if n == 1 else 'ies'} ({_size(info['bytes'])}) from {info['dir']}")
        return 0
    if args.json:
        print(json.dumps(info))
        return 0
    how = "$GRAPHC_CACHE_DIR" if os.environ.get("GRAPHC_CACHE_DIR") else "the user cache dir; set GRAPHC_CACHE_DIR to move it"
    plural = lambda n, w: f"{n} {w}{'' if n == 1 else 's'}"
    print(f"graphc cache: {info['dir']}  ({how}), {_size(info['bytes'])}\n"
          f"  cpu: {plural(info['steps'], 'compiled step')}, {plural(info['kernels'], 'library kernel')} "
          "(compiled once per kernel structure, shared by every model)\n"
          f"  cuda: {plural(info['modules'], 'generated step module')} with Numba's compiled code\n"
          "  a hit skips code generation and compilation.\n"
          "  `graphc cache clear` empties it; steps then compile again on their first call.")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if ROOT is None:
        raise CliError("graphc demo needs the examples, which this installation lacks (neither a source checkout nor "
                       "graphc/_bundled/examples): reinstall graphc")
    path = ROOT / "examples" / "mlp_digits.py"
    try:
        mod = load_module(str(path))
    except CliError as e:
        if "sklearn" in str(e):
            raise CliError("graphc demo needs scikit-learn: pip install -e '.[examples]'") from e
        raise
    argv = [f"--{k}={v}" for k, v in (("target", args.target), ("epochs", args.epochs), ("batch", args.batch),
                                       ("lr", args.lr)) if v is not None] + (["--quick"] if args.quick else [])
    if not _bundled.is_checkout(ROOT):  # the plot goes here, not into the installed package
        argv.append(f"--out={Path.cwd() / 'graphc-demo'}")
    with warnings.catch_warnings():  # the example shows its own progress
        _quiet_numba()
        mod.main(argv)
    return 0


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="graphc", formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="graphc compiles training steps (forward, symbolic gradient, update) into one call. "
                 "This command benchmarks them, shows their graphs, and manages their cache.",
                 epilog="examples:\n"
                 "  graphc bench --quick                           # every workload and engine, under a minute\n"
                 "  graphc bench --compile                         # compile latency of the examples vs JAX\n"
                 "  graphc bench --ranks 2                         # W2 on 1 rank and on 2 MPI ranks: speedup\n"
                 "  graphc inspect examples/mlp_digits.py:build    # graphs, fusion and memory report\n"
                 "  graphc inspect examples/mlp_digits.py:build --target cpu --out graphs/   # + source, pictures\n"
                 "  graphc cache info\n"
                 "  graphc demo --quick                            # train an MLP on handwritten digits\n\n"
                 "Run `graphc COMMAND --help` for a command's options.")
    ap.add_argument("--traceback", action="store_true", help="on an error, show the whole traceback")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("bench", help="time training steps against PyTorch, JAX and NumPy; tables, JSON, markdown, chart",
                       description="Time one SGD training step of each workload in every engine, in one process, "
                       "interleaved; print medians, ratios, cold/warm compile times and this machine's roofline. "
                       "See benchmarks/README.md.")
    b.add_argument("--workloads", help="comma-separated, e.g. W1,W5 (default: all; W3 is left out under --quick)")
    b.add_argument("--engines", help="comma-separated, from graphc, torch, jax, numpy, graphc-numpy "
                   "(default: graphc,torch,jax,numpy; missing ones are reported and skipped)")
    b.add_argument("--target", choices=("cpu", "cuda"), default="cpu", help="graphc's target (default cpu)")
    b.add_argument("--quick", action="store_true", help="short blocks, 3 rounds: under a minute")
    b.add_argument("--repeat", type=int, help="timed rounds per engine (default 3 with --quick, else 10)")
    b.add_argument("--threads", type=int, help="limit every engine to N threads")
    b.add_argument("--load", action="store_true", help="keep one core busy with a background process")
    b.add_argument("--cache-dir", help="GRAPHC_CACHE_DIR for the run (default: a fresh one, so cold is cold)")
    b.add_argument("--out", help="where results.json, results.md and results.png go (default: benchmarks/results)")
    b.add_argument("--compile", action="store_true", help="instead: compile latency of the examples' models (cold, "
                   "warm in a new process, a repeat model) against JAX jit; see benchmarks/compile.py")
    b.add_argument("--models", help="with --compile: comma-separated, from mlp, cnn, tfm, rnn (default: all)")
    b.add_argument("--ranks", type=int, metavar="N", help="instead: data-parallel training over MPI: graphc's step "
                   "(default W2, target cpu) on 1 rank and on N ranks started by mpiexec, each rank on 1/N of the "
                   "batch; ms/step, speedup, time in communication (needs mpi4py and mpiexec); see "
                   "benchmarks/distributed.py")
    i = sub.add_parser("inspect", help="show a model's forward and gradient graphs, fusion and memory report, source",
                       description="Call FUNCTION (no arguments); it returns a graph: a node, a list/tuple/dict of "
                       "nodes, or a gc.Function. Shows the forward graph, the gradient graph of its scalar loss, "
                       "the report of a compiled SGD step and its generated source.")
    i.add_argument("function", metavar="MODULE:FUNCTION", help="e.g. examples/mlp_digits.py:build or mypkg.model:build")
    i.add_argument("--target", choices=("numpy", "cpu", "cuda"), help="compile for this target (default numpy; "
                   "the generated source needs cpu or cuda)")
    i.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the compiled step (default 0.01)")
    i.add_argument("--dims", action="append", help="bind symbolic dims for the report's costs, e.g. batch=64")
    i.add_argument("--out", help="write DOT files and pictures of the graphs here")
    i.add_argument("--format", choices=("svg", "png"), help="picture format (default svg with Graphviz, else png)")
    i.add_argument("--renderer", choices=("auto", "dot", "matplotlib"), default="auto",
                   help="auto: Graphviz's dot when on PATH, else networkx + matplotlib")
    c = sub.add_parser("cache", help="where compiled steps are cached, and how much; clear it",
                       description="graphc caches compiled steps and kernels on disk.")
    c.add_argument("action", choices=("info", "clear"))
    c.add_argument("--json", action="store_true", help="info as JSON")
    d = sub.add_parser("demo", help="train an MLP on scikit-learn's digits (examples/mlp_digits.py)",
                       description="Train a 64-128-10 MLP on scikit-learn's handwritten digits; the whole step "
                       "(forward, backward, optimizer update) is one compiled call.")
    d.add_argument("--target", choices=("numpy", "cpu", "cuda"), help="default: the example's (cpu)")
    d.add_argument("--epochs", type=int, help="default: the example's (30)")
    d.add_argument("--batch", type=int, help="default: the example's (64)")
    d.add_argument("--lr", type=float, help="default: the example's")
    d.add_argument("--quick", action="store_true", help="3 epochs")
    return ap


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import cmd_bench as run

    return run(args)


COMMANDS = {"bench": cmd_bench, "inspect": cmd_inspect, "cache": cmd_cache, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the graphc command line; returns the exit status."""
    ap = build_parser()
    tb = "--traceback" in (sys.argv[1:] if argv is None else argv)
    try:
        args = ap.parse_args(argv)
        if not args.command:
            ap.print_help(sys.stderr)
            return 2
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("graphc: interrupted", file=sys.stderr)
        return 130
    except CliError as e:
        if tb:
            traceback.print_exc()
        print(f"graphc: error: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:  # `graphc inspect ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:  # graphc's own errors name the op and the user's line already
        if tb:
            traceback.print_exc()
        from .errors import GraphcError
        msg = " ".join(str(e).split()) if isinstance(e, GraphcError) else _one_line(e)
        if len(msg) > 1000:
            msg = msg[:1000] + " ..."
        hint = "" if isinstance(e, GraphcError) or tb else " (run with --traceback for details)"
        print(f"graphc: error: {msg}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python -m graphc.cli: run graphc.cli itself, whose classes the other modules import
    from graphc.cli import main as _main

    sys.exit(_main())
