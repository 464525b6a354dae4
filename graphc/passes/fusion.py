"""Fusion: group compute nodes into kernels, and say why groups were not merged.

A kernel is one of
- ``loop``: elementwise ops over one iteration domain, with broadcast operands;
- ``reduce``: a loop whose reductions run over axes ``raxes`` of the domain, with the
  elementwise ops that feed them and an epilogue on the reduced values;
- ``matmul``: one BLAS call and the elementwise epilogue on its result (bias, activation,
  backward masks, optimizer updates);
- a kernel of its own for every other op (gathers, scatters, copies); a ``scan`` kernel runs a
  loop over its body's own program and writes the scan's results (``scan_get``).
View ops (reshape, transpose, broadcast_to, slice) are never kernels: backends realize
them as views or as index arithmetic. networkx keeps merges free of cycles.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from math import prod

from ..errors import ShapeError
from ..graph import toposort
from ..ir import Node
from ..shapes import broadcast, fmt_shape, resolve

# A kernel's compile time grows with its body: longer chains are cut into kernels of this many ops
# (one pass over memory each), and kernels read or write at most MAX_KERNEL_BUFFERS buffers.
MAX_KERNEL_OPS = 128
MAX_KERNEL_BUFFERS = 64


def node_class(n: Node) -> str:
    if n.op.kind == "source" or n.op.name == "count":
        return "source"  # count is a scalar known from shapes at call time
    if n.op.view:
        return "view"
    if n.op.kind == "elementwise" or n.op.unaligned:  # (one_hot and pick fuse, reading some operands whole)
        return "loop"
    if n.op.kind in ("reduce", "matmul"):
        return n.op.kind
    return n.op.name


def base_of(n: Node) -> tuple[Node, bool]:
    """The buffer a value is a view of, and whether every view on the way keeps
    elementwise alignment (broadcasts and leading unit dims only)."""
    aligned = True
    while node_class(n) == "view":
        if n.op.name == "transpose" or n.op.name == "slice":
            aligned = False
        elif n.op.name == "reshape":
            strip = lambda s: tuple(s[next((i for i, d in enumerate(s) if d != 1), len(s)):])
            aligned = aligned and strip(n.shape) == strip(n.inputs[0].shape)
        n = n.inputs[0]
    return n, aligned or all(d == 1 for d in n.shape)  # a single value is the same at every index


def _fits(shape, domain) -> bool:
    try:
        return broadcast(shape, domain) == tuple(domain)
    except ShapeError:
        return False


@dataclass
class Kernel:
    """One step of the schedule."""
    index: int
    kind: str
    nodes: list[Node]               # compute nodes, in execution order
    domain: tuple                   # iteration shape (matmul: output shape)
    raxes: tuple = ()               # reduced axes of the domain
    inputs: list[Node] = field(default_factory=list)   # values read from outside (views included)
    outputs: list[Node] = field(default_factory=list)  # values needed after the kernel

    @property
    def ops(self) -> list[tuple[str, str, str]]:
        """(op, phase, source line) of every IR op covered, views included."""
        from ..errors import fmt_site
        return [(n.op.name, n.phase, fmt_site(n.site)) for n in self.nodes]

    def flops(self, env: dict) -> int:
        total = sum(prod(resolve(shape, env)) * w for shape, w in self.loop_work())
        for n in self.nodes:
            if n.op.kind == "matmul":
                a = resolve(n.inputs[0].shape, env)
                total += 2 * prod(resolve(n.shape, env)) * a[-1]
        return total

    def loop_work(self) -> list[tuple[tuple, int]]:
        """(shape, weight) of the work the kernel's own loops do (a matmul's is BLAS's):
        one per element of each op, ten for transcendental functions."""
        return [(n.inputs[0].shape, 1) if n.op.kind == "reduce" else (n.shape, n.op.cost)
                for n in self.nodes if n.op.kind != "matmul"]

    def after_reduce(self) -> set[int]:
        """Ids of the nodes that need a reduction's result: the epilogue."""
        inside, after = {n.id for n in self.nodes}, set()
        for n in self.nodes:
            for i in n.inputs:
                b = base_of(i)[0]
                if b.id in inside and (b.op.kind == "reduce" or b.id in after):
                    after.add(n.id)
        return after

    def needed_by(self, nodes: list[Node]) -> set[int]:
        """Ids of this kernel's nodes that ``nodes`` read, transitively, stopping at reductions
        (an accumulator holds what came before it): what an epilogue computes again."""
        inside, need, stack = {n.id for n in self.nodes}, set(), list(nodes)
        while stack:
            m = stack.pop()
            for i in m.inputs:
                b = base_of(i)[0]
                if b.id in inside and b.id not in need:
                    need.add(b.id)
                    if b.op.kind != "reduce":
                        stack.append(b)
        return need

    def bytes(self, env: dict) -> int:
        seen, total = set(), 0
        for b in [base_of(v)[0] for v in self.inputs] + self.outputs:
            if b.id not in seen:
                seen.add(b.id)
                total += prod(resolve(b.shape, env)) * b.dtype.itemsize
        return total


class _Group:
    def __init__(self, gid: int, n: Node):
        self.id, self.nodes = gid, [n]
        self.kind = node_class(n)
        if self.kind == "reduce":
            self.domain, self.raxes = n.inputs[0].shape, n.attrs["axes"]
        else:
            self.domain, self.raxes = n.shape, ()


def _combine(a: _Group, b: _Group) -> tuple[str, tuple, tuple] | str:
    """Kind, domain and reduced axes of a merge, or why it cannot be."""
    if len(a.nodes) + len(b.nodes) > MAX_KERNEL_OPS:
        return f"a kernel holds at most {MAX_KERNEL_OPS} ops (compile time grows with its body)"
    kinds = {a.kind, b.kind}
    if not kinds <= {"loop", "reduce", "matmul"}:
        other = (kinds - {"loop", "reduce", "matmul"}).pop()
        return f"{other} is a kernel of its own"
    if kinds == {"matmul"}:
        return "two matmuls are two BLAS calls"
    if "matmul" in kinds and "reduce" in kinds:
        return "a matmul epilogue holds no reduction"
    if a.raxes and b.raxes and (a.domain != b.domain or a.raxes != b.raxes):
        return f"reductions over different domains {fmt_shape(a.domain)}/{a.raxes} and {fmt_shape(b.domain)}/{b.raxes}"
    big, small = (a, b) if len(a.domain) >= len(b.domain) else (b, a)
    if "matmul" in kinds:
        big = a if a.kind == "matmul" else b
        small = b if big is a else a
    if not _fits(small.domain, big.domain):
        if big.kind == "matmul":
            return f"epilogue domain {fmt_shape(small.domain)} is not the matmul output {fmt_shape(big.domain)}"
        return f"domains {fmt_shape(a.domain)} and {fmt_shape(b.domain)} differ"
    if small.raxes and small.domain != big.domain:
        return f"reduction over {fmt_shape(small.domain)} inside a loop over {fmt_shape(big.domain)}"
    kind = "matmul" if "matmul" in kinds else "reduce" if "reduce" in kinds else "loop"
    return kind, big.domain, a.raxes or b.raxes


def _check_members(nodes: list[Node], kind: str, domain: tuple, raxes: tuple, where: dict) -> str | None:
    """Every in-group read must be aligned, and nothing may need a reduction's result at
    full resolution (that would take a second pass over the domain)."""
    inside = {n.id for n in nodes}
    reduced = tuple(1 if i in raxes else d for i, d in enumerate(domain))
    after_reduce: set[int] = set()
    for n in sorted(nodes, key=lambda n: n.id):
        for k, i in enumerate(n.inputs):
            b, aligned = base_of(i)
            if b.id not in inside:
                continue
            if k in n.op.unaligned or not aligned:
                return f"{n.op.name} reads {b.op.name} at other indices than its own"
            if n.op.kind == "matmul":
                return "matmul operands are read from memory by BLAS"
            if b.id in after_reduce or b.op.kind == "reduce":
                if n.op.kind == "reduce":
                    return f"reduction over axes {raxes} feeds another reduction (needs a second pass)"
                after_reduce.add(n.id)
        if n.op.kind == "reduce" and (n.inputs[0].shape != tuple(domain) or n.attrs["axes"] != tuple(raxes)):
            return f"reduction of {fmt_shape(n.inputs[0].shape)} over {n.attrs['axes']} does not match the loop"
        if n.id in after_reduce and not _fits(n.shape, reduced):
            return (f"reduction over axis {', '.join(map(str, raxes))} feeds {n.op.name} over "
                    f"{fmt_shape(n.shape)} (needs a second pass)")
        if not _fits(n.shape if n.op.kind != "reduce" else n.inputs[0].shape, domain):
            return f"{n.op.name} over {fmt_shape(n.shape)} does not fit the domain {fmt_shape(domain)}"
    if kind == "matmul":
        mm = [n for n in nodes if n.op.kind == "matmul"][0]
        if any(n is not mm and not _depends(n, mm, inside) for n in nodes):
            return "only ops on the matmul's result join its epilogue"
    return None


def _depends(n: Node, target: Node, inside: set) -> bool:
    stack = [n]
    while stack:
        m = stack.pop()
        if m is target:
            return True
        stack += [base_of(i)[0] for i in m.inputs if base_of(i)[0].id in inside]
    return False


@dataclass
class Schedule:
    kernels: list[Kernel]
    fused: list[str]       # what each merge did
    not_fused: list[str]   # what was refused, and why


def schedule(roots: list[Node], fuse: bool = True) -> Schedule:
    """Group the compute nodes reachable from ``roots`` into kernels, in execution order
    (one kernel per op when ``fuse`` is False)."""
    import networkx as nx  # here, not at import: a warm start never fuses
    order = toposort(roots)
    groups: dict[int, _Group] = {}
    owner: dict[int, int] = {}
    for n in order:
        if n.op.name == "scan_get":  # a scan's results are written by the scan's own kernel
            gid = owner[n.inputs[0].id]
            groups[gid].nodes.append(n)
            owner[n.id] = gid
        elif node_class(n) not in ("source", "view"):
            g = _Group(len(groups), n)
            groups[g.id], owner[n.id] = g, g.id
    G = nx.DiGraph()
    G.add_nodes_from(groups)
    for n in order:
        if n.id in owner:
            for i in n.inputs:
                b = base_of(i)[0]
                if b.id in owner and owner[b.id] != owner[n.id]:
                    G.add_edge(owner[b.id], owner[n.id])
    fused, refused = [], {}
    # A topological order of the groups, kept valid through merges: a merge is checked for cycles
    # and the order repaired by one search bounded by the two groups' ranks (near-linear overall).
    ranked = sorted(groups)
    rank = {g: k for k, g in enumerate(ranked)}
    reads = {gid: {base_of(i)[0].id for n in g.nodes for i in n.inputs} for gid, g in groups.items()}
    # buffers worth sharing in one pass: not single values (a learning rate read by every update)
    big = {bid for ins in reads.values() for bid in ins} - {n.id for n in order if all(d == 1 for d in n.shape)}

    def reach(a: int, b: int) -> set | None:
        """Groups ranked between a and b that a reaches; None if a reaches b other than directly."""
        seen, stack, limit = set(), [c for c in G.successors(a) if c != b], rank[b]
        while stack:
            c = stack.pop()
            if c == b:
                return None
            if c in seen or rank[c] > limit:
                continue
            seen.add(c)
            stack.extend(G.successors(c))
        return seen

    def try_merge(a: int, b: int, why: str) -> bool:
        ga, gb = groups[a], groups[b]
        res = _combine(ga, gb)
        if isinstance(res, tuple):
            res2 = _check_members(ga.nodes + gb.nodes, *res, where=owner)
            res = res2 if res2 else res
        if isinstance(res, tuple) and sum(1 for bid in (reads[a] | reads[b]) & big
                                          if owner.get(bid) not in (a, b)) > MAX_KERNEL_BUFFERS:
            res = f"a kernel reads at most {MAX_KERNEL_BUFFERS} buffers"
        first, last = (a, b) if rank[a] < rank[b] else (b, a)
        after = reach(first, last) if isinstance(res, tuple) else set()
        if after is None:
            res = "merging would create a cycle through another kernel"
        if isinstance(res, str):
            refused.setdefault((ga.nodes[-1].op.name, gb.nodes[0].op.name, res), (ga, gb))
            return False
        # the merged group goes between what first reaches and the rest; first's place stays empty
        lo, hi = rank[first], rank[last]
        middle = ranked[lo + 1:hi]
        ranked[lo:hi + 1] = [-1] + [g for g in middle if g not in after] + [a] + [g for g in middle if g in after]
        del rank[b]
        for k in range(lo + 1, hi + 1):
            rank[ranked[k]] = k
        ga.kind, ga.domain, ga.raxes = res
        ga.nodes += gb.nodes
        for n in gb.nodes:
            owner[n.id] = a
        nx.contracted_nodes(G, a, b, self_loops=False, copy=False)
        del groups[b]
        reads[a] |= reads.pop(b)
        fused.append(f"{why}: {' '.join(sorted({n.op.name for n in ga.nodes}))} over {fmt_shape(ga.domain)}")
        return True

    # Producers into consumers, in program order.
    for n in order if fuse else ():
        if n.id not in owner:
            continue
        for i in n.inputs:
            b = base_of(i)[0]
            if b.id in owner and owner[b.id] != owner[n.id]:
                try_merge(owner[b.id], owner[n.id], "producer into consumer")
    # Siblings: loops over one domain that share an input become one pass. For each group in
    # order, the groups after it that read one of its inputs are tried in order (an index from
    # buffers to readers, not every pair).
    changed = fuse
    while changed:
        changed = False
        readers: dict[int, set] = {}
        for gid, ins in reads.items():
            for bid in ins & big:
                readers.setdefault(bid, set()).add(gid)
        for x in sorted(groups):
            if x not in groups or groups[x].kind == "matmul":
                continue
            heap = sorted({y for bid in reads[x] & big for y in readers[bid] if y > x})
            done: set = set()
            while heap:
                y = heapq.heappop(heap)
                if y in done or y not in groups or y not in rank:
                    continue
                done.add(y)
                gx, gy = groups[x], groups[y]
                if gy.kind != "matmul" and gx.domain == gy.domain:
                    new = reads[y] & big
                    if try_merge(x, y, "siblings sharing inputs"):
                        changed = True
                        for bid in new:
                            readers[bid].add(x)
                            for z in readers[bid]:
                                if z > y and z not in done:
                                    heapq.heappush(heap, z)
    kernels = []
    root_ids = {base_of(r)[0].id for r in roots}  # a root that is a view keeps its buffer
    # Collectives start as soon as their input is ready (and so do the copies that only feed
    # them: a gradient bucket), so that they overlap the kernels that do not need them.
    eager = {g for g in groups if groups[g].kind == "allreduce"}
    eager |= {g for g in groups if G.out_degree(g) and all(c in eager for c in G.successors(g))}
    order_key = lambda g: (g not in eager, min(n.id for n in groups[g].nodes))
    for k, gid in enumerate(nx.lexicographical_topological_sort(G, key=order_key)):
        g = groups[gid]
        nodes = sorted(g.nodes, key=lambda n: n.id)
        inside = {n.id for n in nodes}
        ins, outs = {}, {}
        for n in nodes:
            for i in n.inputs:
                if base_of(i)[0].id not in inside:
                    ins[i.id] = i
        kernels.append(Kernel(k, g.kind, nodes, g.domain, g.raxes, list(ins.values()), []))
        for n in nodes:
            if n.id in root_ids or n.op.kind == "matmul":  # BLAS writes its result to memory
                outs[n.id] = n
        kernels[-1].outputs = list(outs.values())
    # Values read by later kernels are outputs too.
    by_node = {n.id: kern for kern in kernels for n in kern.nodes}
    for kern in kernels:
        for v in kern.inputs:
            b = base_of(v)[0]
            if b.id in by_node and all(o.id != b.id for o in by_node[b.id].outputs):
                by_node[b.id].outputs.append(b)
    not_fused = [f"{p} -> {c}: {why}" for (p, c, why) in refused]
    return Schedule(kernels, fused, not_fused)


