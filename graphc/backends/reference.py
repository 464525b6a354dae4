"""The NumPy reference backend: an interpreter over the program's ops, the oracle every
compiled backend is checked against."""
from __future__ import annotations

import numpy as np

from ..errors import GraphcError, fmt_site
from ..graph import toposort
from ..ir import Node
from ..shapes import resolve


def _resolve_attrs(attrs: dict, env: dict) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, tuple) and any(isinstance(d, str) for d in v):
            v = resolve(v, env)
        out[k] = v
    return out


def evaluate(order: list[Node], values: dict[int, np.ndarray], env: dict) -> dict[int, np.ndarray]:
    """Run ``order`` (topologically sorted) given source values; returns every value."""
    with np.errstate(all="ignore"):  # NaN and inf propagate, as in NumPy
        for n in order:
            if n.id in values:
                continue
            if n.op.name == "constant":
                values[n.id] = n.attrs["value"]
                continue
            args = [values[i.id] for i in n.inputs]
            try:
                out = n.op.ref(*args, **_resolve_attrs(n.attrs, env))
            except (IndexError, ValueError, FloatingPointError) as e:
                raise GraphcError(f"{n.op.name} ({fmt_site(n.site)}): {e}") from None
            out = np.asarray(out)
            if out.dtype != n.dtype:  # a broken rule, never the user's fault
                raise AssertionError(f"{n.op.name}: computed {out.dtype}, inferred {n.dtype}")
            values[n.id] = out
    return values


class ReferenceProgram:
    """Evaluates ``roots`` given the feeds of ``sources`` (inputs and params)."""

    def __init__(self, roots: list[Node]):
        self.order = toposort(roots)
        self.roots = roots

    def run(self, feeds: dict[int, np.ndarray], env: dict) -> list[np.ndarray]:
        values = evaluate(self.order, dict(feeds), env)
        return [values[r.id] for r in self.roots]
