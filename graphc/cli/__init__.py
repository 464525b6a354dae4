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
import json
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from .. import _bundled
from .common import ROOT, CliError, _one_line, _Parser, _quiet_numba, _size, load_module


def cmd_cache(args: argparse.Namespace) -> int:
    from ..backends.common import diskcache

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


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_model import cmd_inspect as run

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
        from ..errors import GraphcError
        msg = " ".join(str(e).split()) if isinstance(e, GraphcError) else _one_line(e)
        if len(msg) > 1000:
            msg = msg[:1000] + " ..."
        hint = "" if isinstance(e, GraphcError) or tb else " (run with --traceback for details)"
        print(f"graphc: error: {msg}{hint}", file=sys.stderr)
        return 1
