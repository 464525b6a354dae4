"""The architecture as the imports show it: no import cycles among graphc's modules (counting
the imports inside functions too: a lazy import only hides a cycle), and data flows one way,
IR -> autodiff -> passes -> backends, with the command line on top."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PKG = Path(__file__).resolve().parents[1] / "graphc"


def _module(p: Path) -> str:
    parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str) -> bool:
    path = PKG.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> nx.DiGraph:
    """module -> the graphc modules it imports (anywhere in its body). ``from .x import y``
    counts as an import of ``x.y`` when that is a module, else of ``x``."""
    g = nx.DiGraph()
    for p in PKG.rglob("*.py"):
        if "_bundled" in p.parts:  # benchmarks and examples, shipped with the wheel
            continue
        m = _module(p)
        g.add_node(m)
        package = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - (n.level - 1)] if n.level else []
                target = ".".join(base + ([n.module] if n.module else [])) if n.level else (n.module or "")
                if not target.startswith("graphc"):
                    continue
                subs = [f"{target}.{a.name}" for a in n.names if _exists(f"{target}.{a.name}")]
                for t in subs or [target]:
                    g.add_edge(m, t)
            elif isinstance(n, ast.Import):
                for a in n.names:
                    if a.name.startswith("graphc"):
                        g.add_edge(m, a.name)
    # a package's own __init__ importing its modules is how a package is made, not a cycle
    g.remove_edges_from([(u, v) for u, v in list(g.edges) if u.startswith(v + ".") or u == v])
    return g


def test_no_import_cycles():
    cycles = sorted(nx.simple_cycles(import_graph()), key=len)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:10])


# A loop is a higher-order op: its gradient rule runs the differentiation driver on its body (as
# JAX's scan transpose calls backward_pass), so it sits above autodiff (which does not import it).
HIGHER_ORDER = {("graphc.ops.scan", "graphc.autodiff")}


@pytest.mark.parametrize("lower, upper", [
    ("graphc.ir", "graphc.ops"), ("graphc.ops", "graphc.autodiff"), ("graphc.ops", "graphc.passes"),
    ("graphc.autodiff", "graphc.passes"), ("graphc.passes", "graphc.backends"), ("graphc.backends", "graphc.function"),
    ("graphc.backends", "graphc.nn"), ("graphc.backends", "graphc.optim"), ("graphc.backends", "graphc.distributed"),
    ("graphc.backends", "graphc.cli"), ("graphc.ops", "graphc.nn"), ("graphc.passes", "graphc.nn"),
    # each backend stands alone on common/: neither borrows from the other or from the reference
    ("graphc.backends.cuda", "graphc.backends.cpu"), ("graphc.backends.cpu", "graphc.backends.cuda"),
    ("graphc.backends.cuda", "graphc.backends.reference"), ("graphc.backends.cpu", "graphc.backends.reference"),
    ("graphc.backends.common", "graphc.backends.cpu"), ("graphc.backends.common", "graphc.backends.cuda"),
])
def test_data_flows_one_way(lower, upper):
    """Nothing in ``lower`` imports ``upper``: a lower layer never reaches back into a higher one."""
    g = import_graph()
    inside = lambda m, pkg: m == pkg or m.startswith(pkg + ".")
    back = sorted((u, v) for u, v in g.edges if inside(u, lower) and inside(v, upper) and (u, v) not in HIGHER_ORDER)
    assert not back, f"{lower} reaches back into {upper}: {back}"


def test_one_version():
    """graphc/_version.py is the one place the version lives (the build reads it too)."""
    from graphc import __version__
    from graphc._version import __version__ as v
    assert __version__ == v
    text = (PKG.parent / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "graphc._version.__version__" in text
    for p in PKG.rglob("*.py"):
        src = p.read_text()
        assert "import __version__" not in src or "_version import __version__" in src, p
