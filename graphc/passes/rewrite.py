"""The rewrite driver: rebuild a graph bottom-up, letting rules replace nodes."""
from __future__ import annotations

from collections.abc import Callable

from ..graph import toposort
from ..ir import Node, clone, replacing

Rule = Callable[[Node], "Node | None"]


def rewrite(roots: list[Node], rules: list[Rule]) -> tuple[list[Node], int]:
    """Apply ``rules`` to every node, inputs first; a rule returns a replacement or None.

    Replacements must keep shape and dtype. Returns the new roots and the number of
    replacements made."""
    memo: dict[int, Node] = {}
    hits = 0
    for n in toposort(roots):
        ins = tuple(memo[i.id] for i in n.inputs)
        m = clone(n, ins) if any(a is not b for a, b in zip(ins, n.inputs)) else n
        for rule in rules:
            with replacing(n):
                r = rule(m)
            if r is not None and r is not m:
                assert r.shape == m.shape and r.dtype == m.dtype, f"{rule.__name__} changed {m!r} into {r!r}"
                m, hits = r, hits + 1
        memo[n.id] = m
    return [memo[r.id] for r in roots], hits


def cse(roots: list[Node]) -> tuple[list[Node], int]:
    """Common-subexpression elimination: one node per (op, inputs, attrs)."""
    table: dict[tuple, Node] = {}

    def merge(n: Node) -> Node | None:
        if n.op.kind == "source" and n.op.name != "constant":
            return None  # two inputs or params of one shape are still different
        return table.setdefault(n.key(), n)

    return rewrite(roots, [merge])
