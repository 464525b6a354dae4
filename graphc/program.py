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
    bodies: dict = field(default_factory=dict)  # scan node id -> the program of its body

    @property
    def has_checks(self) -> bool:
        return bool(self.checked) or any(b.has_checks for b in self.bodies.values())


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


def _body_program(s: Node, optimize_graph: bool) -> Program:
    """The program of scan ``s``'s body. Inputs that are broadcasts of one constant (the adjoint
    of a sum, fed to a backward loop) are given to the body as that constant, for its passes."""
    from .ir import constant
    from .ops.scan import SCALAR_VIEWS, substitute
    from .ops.shape import broadcast_to
    body = s.attrs["body"]
    known = {}
    for p, v in zip(body.xs + body.closure, s.inputs[len(body.carry):]):
        while v.op.name in SCALAR_VIEWS:
            v = v.inputs[0]
        if v.op.name == "constant" and v.attrs["value"].size == 1:
            c = constant(v.attrs["value"].reshape(()), p.dtype)
            known[p.id] = broadcast_to(c, p.shape) if p.shape else c
    outs = substitute(list(body.outputs), known) if known else list(body.outputs)
    return build_program(outs, [], optimize_graph)


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
    # every loop body is a program of its own: passes, fusion and a memory plan, inside the loop
    bodies = {k.nodes[0].id: _body_program(k.nodes[0], optimize_graph) for k in sched.kernels if k.kind == "scan"}
    # A bad index is found while the step runs, and the step stops there: no param may change
    # before the last kernel that checks an index, so only kernels after it update in place.
    last_check = max((k.index for k in sched.kernels if any(n.id in checked for n in k.nodes)
                      or (k.kind == "scan" and bodies[k.nodes[0].id].has_checks)), default=-1)
    mem = plan_memory(sched.kernels, roots, new_updates, inplace_after=last_check)
    return Program(roots, len(outputs), new_updates, sched.kernels, mem, sched.fused, sched.not_fused,
                   stats, before, len(toposort(roots)), checked, bodies)
