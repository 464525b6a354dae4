"""A program: the optimized graph of a step, its kernel schedule and its memory plan.
Every backend executes the same program."""
from __future__ import annotations

from dataclasses import dataclass, field

from .graph import toposort
from .ir import Node
from .passes import PassStat, optimize
from .passes.fusion import Kernel, schedule
from .passes.memory import MemoryPlan, plan_memory


@dataclass
class Program:
    roots: list[Node]            # outputs, then update values (optimized)
    n_outputs: int
    updates: list[tuple[Node, Node]]   # (param, optimized update value)
    kernels: list[Kernel]
    memory: MemoryPlan
    fused: list[str]
    not_fused: list[str]
    passes: list[PassStat]
    nodes_before: int
    nodes_after: int
    checked: set = field(default_factory=set)  # index ops whose kernel checks the index's range


def index_checks(kernels: list, validated: dict) -> set[int]:
    """Ids of the gathers, scatters, picks and one-hots whose index is computed in the graph (or
    is an input checked against another bound): compiled code must check them itself."""
    out = set()
    for k in kernels:
        for n in k.nodes:
            bound = n.op.extra.get("index_bound")
            if bound is not None and bound(n) not in validated.get(n.inputs[n.op.extra["index_arg"]].id, ()):
                out.add(n.id)
    return out


def build_program(outputs: list[Node], updates: list[tuple[Node, Node]], optimize_graph: bool = True,
                  validated: dict | None = None) -> Program:
    """``validated``: input id -> the index bounds its values are checked against before a call."""
    roots = outputs + [e for _, e in updates]
    before = len(toposort(roots))
    stats: list[PassStat] = []
    if optimize_graph:
        roots, stats = optimize(roots)
    sched = schedule(roots, fuse=optimize_graph)
    new_updates = [(p, e) for (p, _), e in zip(updates, roots[len(outputs):])]
    checked = index_checks(sched.kernels, validated or {})
    # A bad index is found while the step runs, and the step stops there: no param may change
    # before the last kernel that checks an index, so only kernels after it update in place.
    last_check = max((k.index for k in sched.kernels if any(n.id in checked for n in k.nodes)), default=-1)
    mem = plan_memory(sched.kernels, roots, new_updates, inplace_after=last_check)
    return Program(roots, len(outputs), new_updates, sched.kernels, mem, sched.fused, sched.not_fused,
                   stats, before, len(toposort(roots)), checked)
