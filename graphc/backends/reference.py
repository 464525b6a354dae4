"""The NumPy reference backend: runs the program's kernels in order, each op with its
NumPy reference, keeping only kernel outputs and dropping them when the memory plan
says they are dead. It is the oracle every compiled backend is checked against, and
checks the schedule and the memory plan as it goes."""
from __future__ import annotations

import numpy as np

from ..atomic import held_signals
from ..ir import Node
from ..passes.fusion import base_of
from ..program import Program
from ..shapes import resolve, resolve_dim
from .common.evaluate import evaluate


def execute(prog: Program, values: dict, env: dict) -> list[np.ndarray]:
    """Run ``prog``'s kernels in order over ``values`` (its sources' arrays); the roots' values."""
    values = dict(values)
    for k in prog.kernels:
        local = dict(values)
        for n in k.nodes:
            if n.op.name == "scan":
                local[n.id] = run_scan(n, [evaluate(i, local, env) for i in n.inputs], prog.bodies[n.id], env)
            else:
                local[n.id] = evaluate(n, local, env)
        for o in k.outputs:
            values[o.id] = local[o.id]
        for dead in prog.memory.frees.get(k.index, ()):
            values.pop(dead, None)
    return [evaluate(r, values, env) for r in prog.roots]


def run_scan(n: Node, args: list[np.ndarray], body_prog: Program, env: dict) -> tuple:
    """A scan, step by step: its body's program runs once per step on the carry, the step's slice
    of each xs and the closure values; the results are the last carry and the stacked ys."""
    body = n.attrs["body"]
    T = resolve_dim(n.attrs["length"], env)
    C, X = len(body.carry), len(body.xs)
    carry, xs, fixed = args[:C], args[C:C + X], {p.id: v for p, v in zip(body.closure, args[C + X:])}
    ys = [np.empty((T,) + resolve(y.shape, env), y.dtype) for y in body.ys]
    for step in range(T):
        t = T - 1 - step if n.attrs["reverse"] else step
        vals = fixed | {p.id: v for p, v in zip(body.carry, carry)} | {p.id: x[t] for p, x in zip(body.xs, xs)}
        out = execute(body_prog, vals, env)
        carry = out[:C]
        for y, v in zip(ys, out[C:]):
            y[t] = v
    return tuple(np.array(c, copy=True) for c in carry) + tuple(ys)


class ReferenceProgram:
    def __init__(self, program: Program, inputs: list[Node]):
        self.program, self.inputs = program, inputs

    def run(self, arrays: list[np.ndarray], env: dict) -> list[np.ndarray]:
        """Outputs of one step; param updates are committed after everything succeeded."""
        prog = self.program
        values = {x.id: a for x, a in zip(self.inputs, arrays)}  # sources and kernel outputs only
        for p in _params(prog):
            values[p.id] = p._param.value
        with np.errstate(all="ignore"):  # NaN and inf propagate, as in NumPy
            results = execute(prog, values, env)
        # an output or update value that is a param or input, or a view of one, must not alias it
        own = lambda r, v, dt=None: np.array(v, dtype=dt, copy=True) if base_of(r)[0].op.kind == "source" \
            else np.asarray(v, dtype=dt)
        outs = [own(r, v) for r, v in zip(prog.roots, results[:prog.n_outputs])]
        news = [own(e, v, p.dtype) for (p, e), v in zip(prog.updates, results[prog.n_outputs:])]
        # Everything is computed and allocated: commit every update or none. Each param's array is
        # written in place, so a .value handed out before the step sees it (as on every target).
        with held_signals():
            for (p, _), v in zip(prog.updates, news):
                cur = p._param.value
                if type(cur) is np.ndarray and cur.flags.writeable and cur.shape == v.shape and cur.dtype == v.dtype:
                    np.copyto(cur, v)
                else:
                    p._param.value = np.array(v, order="C", copy=True)
        return outs


def _params(prog: Program) -> list[Node]:
    from ..graph import toposort
    return [n for n in toposort(prog.roots) if n.op.name == "param"]
