"""A program: the optimized graph of a step, its kernel schedule and its memory plan.
Every backend executes the same program."""
from __future__ import annotations

from dataclasses import dataclass

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


def build_program(outputs: list[Node], updates: list[tuple[Node, Node]], optimize_graph: bool = True) -> Program:
    roots = outputs + [e for _, e in updates]
    before = len(toposort(roots))
    stats: list[PassStat] = []
    if optimize_graph:
        roots, stats = optimize(roots)
    sched = schedule(roots, fuse=optimize_graph)
    new_updates = [(p, e) for (p, _), e in zip(updates, roots[len(outputs):])]
    mem = plan_memory(sched.kernels, roots, new_updates)
    return Program(roots, len(outputs), new_updates, sched.kernels, mem, sched.fused, sched.not_fused,
                   stats, before, len(toposort(roots)))
