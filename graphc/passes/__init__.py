"""Graph passes: the simplification pipeline, then fusion and the memory plan."""
from __future__ import annotations

from dataclasses import dataclass

from ..graph import toposort
from ..ir import Node
from .rewrite import cse, rewrite
from .scans import scans
from .simplify import algebraic, fold_constants, stability


@dataclass
class PassStat:
    name: str
    hits: int
    nodes_after: int


def _rules(*rules):
    def run(roots):
        return rewrite(roots, list(rules))
    return run


# Ordered; each entry maps roots to (roots, number of rewrites). Dead code is dropped
# by construction: a program is what its roots reach.
PIPELINE = [
    ("stability", _rules(stability)),
    ("algebraic", _rules(algebraic)),
    ("constant folding", _rules(fold_constants)),
    ("cse", cse),
    ("scans", scans),
]


def optimize(roots: list[Node], max_rounds: int = 8) -> tuple[list[Node], list[PassStat]]:
    """Run the pipeline to a fixed point. Returns the new roots and per-pass statistics."""
    stats: dict[str, PassStat] = {}
    for _ in range(max_rounds):
        total = 0
        for name, run in PIPELINE:
            roots, hits = run(roots)
            s = stats.setdefault(name, PassStat(name, 0, 0))
            s.hits += hits
            s.nodes_after = len(toposort(roots))
            total += hits
        if total == 0:
            break
    return roots, list(stats.values())
