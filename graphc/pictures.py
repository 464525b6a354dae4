"""Pictures of graphs and benchmark results.

A compiled step is drawn from its optimized graph (``fn.program.roots``), with every fused
kernel as a dashed cluster, gradient nodes orange apart from forward ones (white), inputs
blue, params green, and each edge labelled with the shape it carries. ``graphc.to_dot`` writes
the DOT text; Graphviz's ``dot`` renders it to SVG or PNG when it is on PATH (Debian package
``graphviz``), otherwise networkx lays the graph out in layers and matplotlib draws it.

>>> paths = write_step_pictures(step, "out/")   # forward.dot, forward.svg, gradient.dot, ...
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from .graph import _type, namer, to_dot, toposort
from .ir import Node

RENDERERS = ("auto", "dot", "matplotlib")
# Same colours as graphc.to_dot.
COLORS = {"input": "#cfe2ff", "param": "#d1e7dd", "constant": "#eeeeee", "forward": "#ffffff", "backward": "#ffe5cc"}


def kernel_clusters(kernels: Iterable[Any]) -> dict[int, str]:
    """``{node id: cluster name}`` for ``graphc.to_dot``: one cluster per fused kernel."""
    return {n.id: f"kernel {k.index} ({k.kind})" for k in kernels for n in k.nodes}


def step_graphs(fn: Any) -> dict[str, list[Node]]:
    """The graphs worth drawing for a compiled step, as compiled (after passes): ``forward``
    (what its outputs need) and, when it has gradient nodes or updates, ``gradient`` (the
    whole step: forward, gradient and update nodes)."""
    prog = fn.program
    graphs = {"forward": list(prog.roots[:prog.n_outputs])}
    if prog.updates or any(n.phase == "backward" for n in toposort(prog.roots)):
        graphs["gradient"] = list(prog.roots)
    return graphs


def dot_available() -> bool:
    return shutil.which("dot") is not None


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_dot(dot_path: Path, out: Path, timeout: float = 120) -> str | None:
    """Render a DOT file with Graphviz (format from ``out``'s suffix); the error, or None."""
    try:
        r = subprocess.run(["dot", f"-T{out.suffix[1:]}", "-o", str(out), str(dot_path)], capture_output=True,
                           text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    return (r.stderr.strip().splitlines() or [f"dot exited with {r.returncode}"])[-1] if r.returncode else None


def write_graph(nodes: Sequence[Node], stem: str | Path, clusters: dict[int, str] | None = None, title: str = "",
                fmt: str | None = None, renderer: str = "auto") -> tuple[Path, Path | None, str]:
    """Write ``<stem>.dot`` and a picture of it. ``renderer``: ``dot`` (Graphviz), ``matplotlib``,
    or ``auto`` (dot when on PATH). ``fmt``: ``svg`` or ``png`` (default: svg with dot, png
    with matplotlib). Returns (dot path, picture path or None, how it was drawn or why not)."""
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {', '.join(RENDERERS)}, got {renderer!r}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    dot = to_dot(list(nodes), clusters)
    if title:
        dot = dot.replace("{", '{\n  label="' + title.replace('"', "'") + '"; labelloc=t; fontname=Helvetica;', 1)
    dot_path = stem.with_suffix(".dot")
    dot_path.write_text(dot + "\n")
    why = ""
    if renderer in ("auto", "dot"):
        if dot_available():
            pic = stem.with_suffix("." + (fmt or "svg"))
            err = render_dot(dot_path, pic)
            if err is None:
                return dot_path, pic, "Graphviz dot"
            why = f"Graphviz dot failed ({err}); "
        elif renderer == "dot":
            why = "Graphviz's dot is not on PATH (apt-get install graphviz); "
    if matplotlib_available():
        pic = stem.with_suffix("." + (fmt or "png"))
        draw_graph(nodes, pic, clusters, title)
        return dot_path, pic, why + "networkx + matplotlib"
    return dot_path, None, why + "no picture: install Graphviz (dot) or matplotlib"


def write_step_pictures(fn: Any, out_dir: str | Path, fmt: str | None = None,
                        renderer: str = "auto") -> list[tuple[Path, Path | None, str]]:
    """DOT and a picture of each of ``step_graphs(fn)`` in ``out_dir``, kernels as clusters."""
    clusters = kernel_clusters(fn.kernels)
    titles = {"forward": "forward graph (as compiled)", "gradient": "training step: forward, gradient (orange) and updates"}
    return [write_graph(nodes, Path(out_dir) / name, clusters, titles[name], fmt, renderer)
            for name, nodes in step_graphs(fn).items()]


# ---------------------------------------------------------------- matplotlib fallback


def _kind(n: Node) -> str:
    return n.op.name if n.op.name in ("input", "param", "constant") else n.phase


def layered_layout(G: nx.DiGraph, clusters: dict[int, str] | None = None) -> dict[int, tuple[float, float]]:
    """Top-to-bottom layers: a compute node one below its deepest operand, a source one above
    its first user; within a layer, nodes sit under the mean position of their operands, and
    members of one cluster side by side."""
    order = list(nx.lexicographical_topological_sort(G))
    clusters = clusters or {}
    layer: dict[int, int] = {}
    for v in order:
        layer[v] = 1 + max((layer[u] for u in G.predecessors(v)), default=-1)
    for v in order:  # sources: just above their first user
        if G.in_degree(v) == 0 and G.out_degree(v):
            layer[v] = min(layer[w] for w in G.successors(v)) - 1
    rows: dict[int, list[int]] = {}
    for v in order:
        rows.setdefault(layer[v], []).append(v)
    x: dict[int, float] = {}

    def place(row: list[int], near) -> None:
        want = {v: near(v) for v in row}
        group = {}  # a cluster sits at its members' mean
        for v in row:
            group.setdefault(clusters.get(v, v), []).append(want[v])
        row.sort(key=lambda v: (statistics.fmean(group[clusters.get(v, v)]), str(clusters.get(v, "")), want[v]))
        for i, v in enumerate(row):
            x[v] = i - (len(row) - 1) / 2

    for depth in sorted(rows):  # down: under the operands' mean
        place(rows[depth], lambda v: statistics.fmean([x[u] for u in G.predecessors(v) if u in x] or [0.0]))
    for depth in sorted(rows, reverse=True)[1:]:  # up: over the users' mean
        place(rows[depth], lambda v: statistics.fmean([x[w] for w in G.successors(v)] or [x[v]]))
    return {v: (x[v] * 1.9, -layer[v] * 0.95) for v in G}


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull, counter-clockwise (monotone chain)."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts
    cross = lambda o, a, b: (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    lower: list = []
    upper: list = []
    for seq, out in ((pts, lower), (pts[::-1], upper)):
        for p in seq:
            while len(out) >= 2 and cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
    return lower[:-1] + upper[:-1]


CLUSTER_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
                  "#64b5cd"]


def draw_graph(nodes: Sequence[Node], path: str | Path, clusters: dict[int, str] | None = None, title: str = "") -> Path:
    """Draw the graph of ``nodes`` with matplotlib (Agg; PNG or SVG by suffix): networkx's
    DAG, layered top to bottom, kernels as dashed hulls, edges labelled with shapes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Polygon

    from .graph import to_networkx

    G = to_networkx(list(nodes))
    names = namer(toposort(list(nodes)))
    pos = layered_layout(G, clusters)
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    pad, top = 1.3, 0.9  # inches; one data unit is one inch
    w, h = max(max(xs) - min(xs) + 2 * pad, 7.0), max(ys) - min(ys) + 2 * pad + top
    fig = Figure(figsize=(w, h), dpi=min(100.0, 30000 / max(w, h)))  # Agg draws at most 2^16 pixels a side
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    cx = (max(xs) + min(xs)) / 2
    ax.set_xlim(cx - w / 2, cx + w / 2)
    ax.set_ylim(min(ys) - pad, max(ys) + pad + top)
    ax.axis("off")
    members: dict[str, list[int]] = {}
    for v in G:
        if clusters and v in clusters:
            members.setdefault(clusters[v], []).append(v)
    for k, (name, vs) in enumerate(sorted(members.items(), key=lambda kv: min(pos[v][1] for v in kv[1]) * -1)):
        color = CLUSTER_COLORS[k % len(CLUSTER_COLORS)]
        corners = [(pos[v][0] + dx, pos[v][1] + dy) for v in vs for dx in (-0.8, 0.8) for dy in (-0.3, 0.3)]
        ax.add_patch(Polygon(_hull(corners), closed=True, linestyle="--", linewidth=1, facecolor=color + "18",
                             edgecolor=color, zorder=0))
        top_v = max(vs, key=lambda v: (pos[v][1], -pos[v][0]))
        ax.text(pos[top_v][0] - 0.78, pos[top_v][1] + 0.32, name, fontsize=6, color=color, va="bottom", zorder=1)
    for u, v, data in G.edges(data=True):
        (x1, y1), (x2, y2) = pos[u], pos[v]
        ax.annotate("", xy=(x2, y2), xytext=(x1, y1), zorder=2,
                    arrowprops={"arrowstyle": "-|>", "color": "#777777", "lw": 0.6, "shrinkA": 11, "shrinkB": 11})
        ax.text((x1 + x2) / 2, (y1 + y2) / 2, ",".join(map(str, data["shape"])) or "()", fontsize=5, color="#555555",
                ha="center", va="center", zorder=3, bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none"})
    for v, (x, y) in pos.items():
        n = G.nodes[v]["node"]
        label = f"{names[v]} = {n.op.name}\n{_type(n)}" if n.op.kind != "source" else f"{names[v]}\n{_type(n)}"
        ax.text(x, y, label, fontsize=6.5, ha="center", va="center", zorder=4,
                bbox={"boxstyle": "round,pad=0.3", "fc": COLORS[_kind(n)], "ec": "#444444", "lw": 0.6})
    kinds = {_kind(G.nodes[v]["node"]) for v in G}
    legend = {"forward": "forward op", "backward": "gradient op"}
    handles = [Patch(facecolor=COLORS[k], edgecolor="#444444", label=legend.get(k, k)) for k in COLORS if k in kinds]
    if members:
        handles.append(Patch(facecolor="#4c72b018", edgecolor="#4c72b0", linestyle="--", label="fused kernel"))
    fig.text(0.1 / w, 1 - 0.1 / h, title, fontsize=9, va="top", ha="left")
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.1 / w, 1 - 0.35 / h), fontsize=7, frameon=False,
               ncols=min(len(handles), max(1, int(w // 1.4))))
    fig.savefig(str(path))
    return Path(path)


# ---------------------------------------------------------------- benchmark chart


def bench_chart(results: Sequence[dict], path: str | Path, bounds_ms: dict[str, float] | None = None,
                title: str = "") -> Path | None:
    """Bar chart of a benchmark run (the ``results`` of benchmarks/run.py's JSON): one panel
    per workload, ms per step for each engine with its interquartile range, and the roofline
    bound as a dashed line. None when matplotlib is missing."""
    if not matplotlib_available():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = list(dict.fromkeys(r["workload"] for r in results))
    engines = list(dict.fromkeys(r["engine"] for r in results))
    palette = {e: c for e, c in zip(engines, ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"] * 3)}
    ncols = 2 if len(workloads) == 4 else min(len(workloads), 3) or 1
    nrows = -(-len(workloads) // ncols) or 1
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, wl in zip(axes, workloads):
        rows = [r for r in results if r["workload"] == wl]
        for i, r in enumerate(rows):
            ms = r.get("median_ms")
            if ms is None:
                ax.text(i, 0, "FAILED", rotation=90, ha="center", va="bottom", fontsize=8, color="#c44e52")
                continue
            steps = sorted(s * 1e3 for s in r.get("step_s") or [])
            lo, hi = (statistics.quantiles(steps, n=4, method="inclusive")[::2] if len(steps) > 1 else (ms, ms))
            ax.bar(i, ms, color=palette[r["engine"]], yerr=[[ms - lo], [hi - ms]], capsize=3)
            ax.text(i, hi, f"{ms:.3g}", ha="center", va="bottom", fontsize=7)
        if bounds_ms and bounds_ms.get(wl):
            ax.axhline(bounds_ms[wl], color="#333333", linestyle="--", linewidth=1, label="roofline bound")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(range(len(rows)), [r["engine"] for r in rows], fontsize=8)
        ax.set_title(wl, fontsize=9)
        ax.set_ylabel("ms per step (median, IQR)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes[len(workloads):]:
        ax.axis("off")
    fig.suptitle(title or "graphc bench: one training step, lower is better", fontsize=10)
    fig.savefig(str(path))
    return Path(path)
