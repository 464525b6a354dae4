"""Whole-graph views: topological order, structural key, networkx export, text and DOT rendering."""
from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from graphlib import TopologicalSorter
from typing import TYPE_CHECKING

import numpy as np

from .errors import fmt_site
from .ir import Node, attrs_key

if TYPE_CHECKING:
    import networkx as nx


def _as_list(nodes) -> list[Node]:
    return [nodes] if isinstance(nodes, Node) else list(nodes)


def to_networkx(nodes: Node | Iterable[Node]) -> nx.DiGraph:
    """The DAG reachable from ``nodes``, keyed by node id. Node attributes:
    ``node`` (the Node), ``op``, ``shape``, ``dtype``, ``phase``, ``site``; edges carry ``shape``."""
    import networkx as nx  # imported when asked for: it costs ~80 ms

    G = nx.DiGraph()
    stack, seen = _as_list(nodes), set()
    while stack:
        n = stack.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        G.add_node(n.id, node=n, op=n.op.name, shape=n.shape, dtype=n.dtype.name, phase=n.phase,
                   site=fmt_site(n.site), label=n.name or f"%{n.id}")
        for i in n.inputs:
            G.add_edge(i.id, n.id, shape=i.shape)
            stack.append(i)
    return G


def toposort(nodes: Node | Iterable[Node]) -> list[Node]:
    """Every node reachable from ``nodes``, inputs before users; ties broken by creation order."""
    by_id: dict[int, Node] = {}
    stack = _as_list(nodes)
    while stack:
        n = stack.pop()
        if n.id not in by_id:
            by_id[n.id] = n
            stack.extend(n.inputs)
    ts = TopologicalSorter({i: [x.id for x in n.inputs] for i, n in by_id.items()})
    ts.prepare()
    ready: list[int] = []
    out = []
    while ts.is_active():
        for i in ts.get_ready():
            heapq.heappush(ready, i)
        i = heapq.heappop(ready)
        out.append(by_id[i])
        ts.done(i)
    return out


def structure_key(roots: list[Node], inputs: list[Node], params: list[Node], extra: str = "") -> str:
    """A hash of the graph's structure, the same in every process that builds the same graph:
    ops, attributes, shapes, dtypes, constants' values, inputs by position and name, params by
    position, and source lines (generated code cites them). Params' values and names do not count:
    layer names count the layers a process made before (linear3), and generated code shows none."""
    order = toposort(roots)
    pos = {n.id: k for k, n in enumerate(order)}
    where = {x.id: ("in", k) for k, x in enumerate(inputs)} | {p.id: ("param", k) for k, p in enumerate(params)}
    h = hashlib.sha256(extra.encode())
    for n in order:
        site = fmt_site(n.site)
        h.update(repr((n.op.name, [pos[i.id] for i in n.inputs], attrs_key(n.attrs), n.shape, n.dtype.str,
                       None if n.op.name == "param" else n.name,
                       where.get(n.id), site, n.origin is not None)).encode())
    h.update(repr([pos[r.id] for r in roots]).encode())
    return h.hexdigest()[:32]


def _short(dtype: np.dtype) -> str:
    return {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "bool": "bool"}.get(dtype.name, dtype.name)


def _type(n: Node) -> str:
    return f"{_short(n.dtype)}[{','.join(str(d) for d in n.shape)}]"


def _attrs(n: Node) -> str:
    parts = []
    for k, v in n.attrs.items():
        if k == "value" or k == "body":
            continue
        parts.append(f"{k}={v.name if isinstance(v, np.dtype) else v}")
    return (" {" + ", ".join(parts) + "}") if parts else ""


def namer(order: list[Node]):
    """Readable names: inputs and params by name, small constants inline, others %0, %1, ..."""
    names: dict[int, str] = {}
    k = 0
    for n in order:
        if n.name:
            names[n.id] = n.name
        elif n.op.name == "constant" and n.attrs["value"].size == 1:
            names[n.id] = repr(n.attrs["value"].item())
        else:
            names[n.id] = f"%{k}"
            k += 1
    return names


def describe(n: Node, names: dict) -> str:
    """Where a node came from: the user's line, and for gradient nodes the forward op."""
    site = fmt_site(n.site)
    if n.origin is None:
        return site
    o = n.origin
    what = f"∂ of {o.op.name}" + (f" {names[o.id]}" if o.id in names else "")
    if n.adjoint_of is not None and n.adjoint_of.id in names:
        what = f"∂L/∂{names[n.adjoint_of.id]}; " + what
    return f"{what} ({site})"


def format(nodes: Node | Iterable[Node]) -> str:  # noqa: A001 - the public name
    """The graph as text, one op per line with shapes, dtypes and sources (like a jaxpr).

    >>> print(gc.format(loss))
    """
    return "\n".join(_format(_as_list(nodes), ""))


def _format(outs: list[Node], indent: str, args: tuple = ()) -> list[str]:
    """Lines of ``format``; a scan's body follows its line, indented, with its placeholders
    (``carry0``, ``x0``, ``closure0``) as the body's arguments."""
    order = toposort(outs)
    names = namer(order)
    arg_ids = {a.id for a in args}
    srcs = list(args) + [n for n in order if n.op.kind == "source" and n.id not in arg_ids
                         and not (n.op.name == "constant" and n.attrs["value"].size == 1)]
    names.update({a.id: a.name for a in args})
    lines = [indent + "{ " + " ".join(f"{names[n.id]}:{_type(n)}" + (" (param)" if n.op.name == "param" else "")
                                      for n in srcs) + " ."]
    body = []
    for n in order:
        if n.op.kind == "source":
            continue
        args_ = " ".join(names[i.id] for i in n.inputs)
        body.append((f"{indent}  {names[n.id]}:{_type(n)} = {n.op.name} {args_}{_attrs(n)}", describe(n, names), n))
    width = max((len(a) for a, _, _ in body), default=0)
    for a, b, n in body:
        lines.append(f"{a.ljust(width)}  # {b}")
        if n.op.name == "scan":
            inner = n.attrs["body"]
            lines += _format(list(inner.outputs), indent + "    ", inner.args)
    lines.append(indent + "  in (" + ", ".join(names[n.id] for n in outs) + ") }")
    return lines


def to_dot(nodes: Node | Iterable[Node], clusters: dict[int, str] | None = None) -> str:
    """Graphviz DOT text. Gradient nodes are orange, params green, inputs blue; edges
    carry shapes. ``clusters`` maps node ids to a cluster name (fused kernels)."""
    order = toposort(nodes)
    names = namer(order)
    out = ["digraph graphc {", "  rankdir=TB; node [shape=box, style=filled, fontname=Helvetica, fontsize=10];"]

    def decl(n: Node) -> str:
        color = {"input": "#cfe2ff", "param": "#d1e7dd", "constant": "#eeeeee"}.get(
            n.op.name, "#ffe5cc" if n.phase == "backward" else "#ffffff")
        label = f"{names[n.id]} = {n.op.name}\\n{_type(n)}" if n.op.kind != "source" else f"{names[n.id]}\\n{_type(n)}"
        return f'    n{n.id} [label="{label}", fillcolor="{color}", tooltip="{fmt_site(n.site)}"];'

    groups: dict[str, list[Node]] = {}
    for n in order:
        groups.setdefault((clusters or {}).get(n.id, ""), []).append(n)
    for g, members in groups.items():
        if g:
            out.append(f'  subgraph "cluster_{g}" {{ label="{g}"; style=dashed;')
        out += [decl(n) for n in members]
        if g:
            out.append("  }")
    for n in order:
        for i in n.inputs:
            out.append(f'  n{i.id} -> n{n.id} [label="{",".join(map(str, i.shape))}", fontsize=8];')
    out.append("}")
    return "\n".join(out)
