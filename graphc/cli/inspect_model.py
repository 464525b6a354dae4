"""What ``graphc inspect`` shows of a graph a user function returned: the forward graph, the
gradient graph of its scalar loss, the report of a compiled SGD step, the generated source,
and (``--out``) DOT files and pictures with the fused kernels as clusters."""
from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..autodiff import grad
from ..errors import GraphcError
from ..function import Function, function
from ..graph import _type, format, namer, toposort
from ..ir import Node
from ..progress import Status
from .common import CliError, _one_line, _quiet_numba, find_function, load_module

# Built from code of its own so the update ops' source line reads "<sgd update>:1" in reports.
_SGD = compile("updates = [(p, p - lr * g) for p, g in zip(params, grads)]", "<sgd update>", "exec")


class NoGraph(GraphcError):
    """The function returned no graph."""


def collect(value: Any) -> tuple[list[tuple[str | None, Node]], list[Function]]:
    """The nodes and Functions in a returned value, in order: in lists and tuples, and in dicts,
    SimpleNamespaces and dataclasses (their keys name the nodes)."""
    nodes: list[tuple[str | None, Node]] = []
    fns: list[Function] = []
    seen: set[int] = set()

    def walk(v: Any, key: str | None, depth: int) -> None:
        if isinstance(v, Node):
            if v.id not in seen:
                seen.add(v.id)
                nodes.append((key, v))
        elif isinstance(v, Function):
            fns.append(v)
        elif depth < 4 and isinstance(v, (dict, SimpleNamespace)) or is_dataclass(v) and not isinstance(v, type):
            for k, x in (v if isinstance(v, dict) else vars(v)).items():
                walk(x, str(k), depth + 1)
        elif depth < 4 and isinstance(v, (list, tuple)):
            for x in v:
                walk(x, None, depth + 1)

    walk(value, None, 0)
    return nodes, fns


def parse_dims(given: list[str] | None) -> dict[str, int]:

    dims = {}
    for item in ",".join(given or []).split(","):
        if not item.strip():
            continue
        name, sep, size = item.partition("=")
        if not sep or not name.strip() or not size.strip().isdigit():
            raise CliError(f"--dims takes NAME=SIZE, e.g. batch=64, got {item!r}", 2)
        dims[name.strip()] = int(size)
    return dims


def _is_loss(n: Node) -> bool:
    return n.shape == () and n.dtype.kind == "f" and n.op.kind != "source"


def _heading(text: str) -> None:
    print(f"\n== {text} ==")


@dataclass
class Plan:
    forward: list[Node]             # forward outputs to print
    loss: Node | None
    grads: list[Node]               # gradient (or update) nodes to print
    grad_title: str
    how: str                        # how the step is built, in words
    build: Callable[[], Function]


def plan(value: Any, spec: str, target: str | None, lr: float) -> Plan:
    """What to show of ``value``, and how to compile its step."""
    nodes, fns = collect(value)
    if fns:
        fn = fns[0]
        outs = list(fn.outputs)
        fwd = [n for n in outs if n.phase == "forward"] or outs
        loss = next((n for n in fwd if _is_loss(n)), None)
        grads = [e for _, e in fn.updates] + [n for n in outs if n.phase == "backward"]
        title = f"update graph: new values of {', '.join(p.name for p, _ in fn.updates)}" if fn.updates else "gradient graph"
        if target is None or target == fn.target:
            return Plan(fwd, loss, grads, title, f"the gc.Function {spec} returned (target={fn.target!r})", lambda: fn)
        again = lambda: function(fn.inputs, fn.outputs[0] if fn.single else fn.outputs, fn.updates, target=target)
        return Plan(fwd, loss, grads, title, f"the gc.Function {spec} returned, again for target={target!r}", again)
    if not nodes:
        raise NoGraph(f"{spec} returned {type(value).__name__}, not a graph: return a gc node, a list/tuple/dict "
                      "(or a SimpleNamespace/dataclass) of nodes, or a gc.Function")
    outs = [n for _, n in nodes if n.op.kind != "source"]
    if not outs:
        raise NoGraph(f"{spec} returned only inputs and params ({', '.join(n.name or '?' for _, n in nodes)}): "
                      "return the values computed from them too")
    keyed = {k: n for k, n in nodes if k}
    scalars = [n for n in outs if _is_loss(n)]
    loss = keyed["loss"] if "loss" in keyed and _is_loss(keyed["loss"]) else (scalars[-1] if scalars else None)
    fwd = [n for n in outs if n.phase == "forward"] or outs
    inputs = [n for _, n in nodes if n.op.name == "input"]
    given = {n.id for n in inputs}
    inputs += [n for n in toposort(outs) if n.op.name == "input" and n.id not in given]
    target = target or "numpy"
    if loss is None:
        how = f"gc.function(inputs, outputs, target={target!r}): no scalar float loss, so no gradient"
        return Plan(fwd, None, [n for n in outs if n.phase == "backward"], "gradient graph", how,
                    lambda: function(inputs, fwd, target=target))
    params = [n for n in toposort(loss) if n.op.name == "param" and n.dtype.kind == "f"]
    grads = list(grad(loss, params)) if params else []
    ns = {"params": params, "grads": grads, "lr": lr}
    exec(_SGD, ns)  # our own constant code
    names = ", ".join(p.name for p in params)
    how = (f"gc.function([{', '.join(x.name for x in inputs)}], loss, updates=[(p, p - {lr:g} * ∂loss/∂p) for p in "
           f"[{names}]], target={target!r})")
    return Plan(fwd, loss, grads, f"gradient graph: ∂loss/∂({names}), derived symbolically by gc.grad", how,
                lambda: function(inputs, loss, updates=ns["updates"], target=target))


def show(value: Any, spec: str, target: str | None, lr: float, dims: dict[str, int], out: str | None,
         fmt: str | None, renderer: str, status: Callable[[str], AbstractContextManager]) -> None:
    """Print the forward and gradient graphs, the step's report and source; write pictures."""
    p = plan(value, spec, target, lr)
    syms = {d for n in toposort(p.forward + p.grads) if n.op.name == "input" for d in n.shape if isinstance(d, str)}
    if bad := sorted(set(dims) - syms):
        known = ", ".join(sorted(syms)) or "none"
        raise CliError(f"--dims: the graph has no dim {', '.join(bad)}; its symbolic dims: {known}", 2)
    names = namer(toposort(p.forward))
    print(f"graphc inspect {spec}")
    keys = {n.id: k for k, n in collect(value)[0] if k}
    desc = ", ".join((f"{keys[n.id]} = " if n.id in keys else "") + f"{names[n.id]} {_type(n)}"
                     + (" (the loss)" if n is p.loss else "") for n in p.forward)
    _heading(f"forward graph: {len(p.forward)} output{'s' if len(p.forward) > 1 else ''}: {desc}")
    print(format(p.forward))
    _heading(p.grad_title)
    if p.grads:
        print(format(p.grads))
        print("(a gradient node's comment names the forward op it differentiates; ∂L/∂v marks the whole gradient of v)")
    else:
        print("none: " + ("the function returned no scalar float loss to differentiate" if p.loss is None
                          else "the loss depends on no float param"))
    with status("compiling the step"):
        fn = p.build()
    env = {d: 1 for x in fn.inputs for d in x.shape if isinstance(d, str)}
    _heading(f"compiled step: {p.how}")
    print(fn.report({**env, **dims} if dims else None))
    if dims and len(dims) < len(env):
        print(f"(dims not given are 1: {', '.join(sorted(set(env) - set(dims)))})")
    _heading(f"generated source (target={fn.target!r})")
    if fn.source:
        print(fn.source.rstrip())
    else:
        print(f"none: target={fn.target!r} runs each kernel op by op with NumPy; run with --target cpu to see "
              "the generated Numba module")
    if out:
        from ..pictures import write_step_pictures
        _heading(f"pictures in {out}")
        with status("drawing the graphs"):
            written = write_step_pictures(fn, out, fmt, renderer)
        for dot, pic, how_drawn in written:
            shown = f" and {_rel(pic)} ({how_drawn})" if pic else f" ({how_drawn})"
            print(f"{dot.stem}: {_rel(dot)}{shown}")
        print("(the graphs as compiled: each dashed cluster is one fused kernel; gradient nodes are orange, "
              "inputs blue, params green; edges carry shapes)")


def _rel(p: Path) -> str:
    try:
        rel = os.path.relpath(p)
    except ValueError:  # another drive (Windows)
        return str(p)
    return str(p) if rel.startswith("..") else rel


def cmd_inspect(args: argparse.Namespace) -> int:
    mod_spec, sep, fn_name = args.function.rpartition(":")
    if not sep or not mod_spec or not fn_name:
        raise CliError(f"expected MODULE:FUNCTION, e.g. examples/mlp_digits.py:build, got {args.function!r}", 2)
    dims = parse_dims(args.dims)
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
        show(value, args.function, args.target, args.lr, dims, args.out, args.format, args.renderer, Status)
    return 0
