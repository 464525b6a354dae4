"""A node's value from its inputs' with NumPy (each op's reference): what the reference backend
runs, and what the compiled backends use for outputs that need no kernel (a constant, a view of
an input)."""
from __future__ import annotations

import numpy as np

from ...errors import GraphcError, fmt_site
from ...ir import Node
from ...shapes import resolve, resolve_dim


def _resolve_attrs(op, attrs: dict, env: dict) -> dict:
    """Attributes with symbolic dims given their sizes: shape tuples, and the scalar dims an op
    names in ``dim_attrs`` (a string attribute is otherwise a mode, never a dim)."""
    out = {}
    dims = op.extra.get("dim_attrs", ())
    for k, v in attrs.items():
        if isinstance(v, tuple) and any(isinstance(d, str) for d in v):
            v = resolve(v, env)
        elif k in dims and isinstance(v, str):
            v = resolve_dim(v, env)
        out[k] = v
    return out


def evaluate(n: Node, values: dict[int, np.ndarray], env: dict) -> np.ndarray:
    """The value of ``n`` given the values of its inputs (views are computed on demand)."""
    if n.id in values:
        return values[n.id]
    if n.op.name == "constant":
        return n.attrs["value"]
    if n.op.kind == "source":
        raise AssertionError(f"no value fed for {n!r}")
    args = []
    for i in n.inputs:
        if i.id in values:
            args.append(values[i.id])
        elif i.op.kind in ("shape", "source", "meta") or i.op.name == "stop_gradient":
            args.append(evaluate(i, values, env))  # views and constants cost nothing
        else:
            raise AssertionError(f"schedule bug: {i!r} is needed by {n!r} but was not computed or was freed")
    try:
        if n.op.name == "scan_get":  # one of a scan's results (a tuple)
            return args[0][n.attrs["index"]]
        out = np.asarray(n.op.ref(*args, **_resolve_attrs(n.op, n.attrs, env)))
    except (IndexError, ValueError, FloatingPointError) as e:
        raise GraphcError(f"{n.op.name} ({fmt_site(n.site)}): {e}") from None
    if out.dtype != n.dtype:  # a broken rule, never the user's fault
        raise AssertionError(f"{n.op.name}: computed {out.dtype}, inferred {n.dtype}")
    return out


__all__ = ["evaluate"]
