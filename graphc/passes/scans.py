"""Passes over scan nodes: merge the scans a gradient adds (the forward loop stacking its residuals)
into the loop they extend, and drop what nobody reads: stacked outputs, carries that feed nothing
needed, and xs or closure values the remaining body does not use."""
from __future__ import annotations

from ..graph import toposort
from ..ir import OPS, Node, clone
from ..ops.scan import Body


def _rebuild(order: list[Node], roots: list[Node], new: dict) -> list[Node]:
    """``roots`` with each scan ``s`` in ``new`` (by id) replaced: ``new[s.id] = (make, index map)``,
    ``make(inputs)`` building the replacement over the rebuilt inputs; its scan_gets are remapped."""
    memo: dict[int, Node] = {}
    built: dict[int, Node] = {}
    for n in order:
        ins = tuple(memo[i.id] for i in n.inputs)
        if n.op.name == "scan" and n.id in new:
            make, _ = new[n.id]
            key = id(make)
            if key not in built:
                built[key] = make(ins, n)
            memo[n.id] = built[key]
        elif n.op.name == "scan_get" and n.inputs[0].id in new:
            index = new[n.inputs[0].id][1][n.attrs["index"]]
            m = Node(n.op, ins, {"index": index}, n.shape, n.dtype, name=n.name, site=n.site)
            m.origin, m.adjoint_of = n.origin, n.adjoint_of
            memo[n.id] = m
        else:
            memo[n.id] = clone(n, ins) if any(a is not b for a, b in zip(ins, n.inputs)) else n
    return [memo[r.id] for r in roots]


def _scan(body: Body, like: Node):
    def make(ins: tuple, first: Node) -> Node:
        m = Node(OPS["scan"], ins, {**like.attrs, "body": body}, (), like.dtype, site=like.site)
        m.origin = like.origin
        return m
    return make


def merge_scans(roots: list[Node]) -> tuple[list[Node], int]:
    """Scans of one body family over the same inputs become one scan with every output of each."""
    order = toposort(roots)
    groups: dict[tuple, list[Node]] = {}
    for n in order:
        if n.op.name == "scan":
            b = n.attrs["body"]
            key = (id(b.family), tuple(i.id for i in n.inputs), n.attrs["length"], n.attrs["reverse"],
                   tuple(p.id for p in b.args), tuple(o.id for o in b.carry_out))
            groups.setdefault(key, []).append(n)
    new = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        b0 = members[0].attrs["body"]
        ys: dict[int, Node] = {}
        for s in members:
            for y in s.attrs["body"].ys:
                ys.setdefault(y.id, y)
        pos = {yid: len(b0.carry_out) + k for k, yid in enumerate(ys)}
        merged = Body(b0.carry, b0.xs, b0.closure, b0.carry_out, tuple(ys.values()), b0.family)
        # the original (not a gradient's augmented copy) gives the merged scan its provenance
        like = next((s for s in members if s.origin is None), members[0])
        make = _scan(merged, like)
        for s in members:
            b = s.attrs["body"]
            new[s.id] = (make, list(range(len(b.carry_out))) + [pos[y.id] for y in b.ys])
    if not new:
        return roots, 0
    return _rebuild(order, roots, new), len(new)


def _deps(body: Body) -> dict[int, frozenset]:
    """For every output of the body (by id), the ids of the placeholders it depends on."""
    args = {p.id for p in body.args}
    dep: dict[int, frozenset] = {}
    for n in toposort(list(body.outputs)):
        dep[n.id] = frozenset({n.id}) if n.id in args else frozenset().union(*(dep[i.id] for i in n.inputs))
    return dep


def prune_scans(roots: list[Node]) -> tuple[list[Node], int]:
    """Drop the results nobody reads, the carries nothing read depends on, and unused inputs."""
    order = toposort(roots)
    used: dict[int, set] = {}
    for n in order:
        if n.op.name == "scan_get":
            used.setdefault(n.inputs[0].id, set()).add(n.attrs["index"])
    new = {}
    for n in order:
        if n.op.name != "scan":
            continue
        b: Body = n.attrs["body"]
        C = len(b.carry)
        dep = _deps(b)
        want_ys = sorted(k - C for k in used.get(n.id, ()) if k >= C)
        carries = {k for k in used.get(n.id, ()) if k < C}
        while True:  # a carry is needed if a needed output depends on it
            need = set().union(*(dep[b.ys[j].id] for j in want_ys), *(dep[b.carry_out[j].id] for j in carries))
            more = {j for j, p in enumerate(b.carry) if p.id in need} - carries
            if not more:
                break
            carries |= more
        keep_c = sorted(carries)
        need = set().union(*(dep[b.ys[j].id] for j in want_ys), *(dep[b.carry_out[j].id] for j in keep_c))
        keep_x = [j for j, p in enumerate(b.xs) if p.id in need]
        keep_k = [j for j, p in enumerate(b.closure) if p.id in need]
        if len(keep_c) == C and len(want_ys) == len(b.ys) and len(keep_x) == len(b.xs) and len(keep_k) == len(b.closure):
            continue
        body = Body(tuple(b.carry[j] for j in keep_c), tuple(b.xs[j] for j in keep_x),
                    tuple(b.closure[j] for j in keep_k), tuple(b.carry_out[j] for j in keep_c),
                    tuple(b.ys[j] for j in want_ys), b.family)
        X = len(b.xs)
        pick = keep_c + [C + j for j in keep_x] + [C + X + j for j in keep_k]
        index = {j: k for k, j in enumerate(keep_c)} | {C + j: len(keep_c) + k for k, j in enumerate(want_ys)}
        like = n

        def make(ins: tuple, first: Node, body=body, pick=pick, like=like) -> Node:
            m = Node(OPS["scan"], tuple(ins[j] for j in pick), {**like.attrs, "body": body}, (), like.dtype, site=like.site)
            m.origin = like.origin
            return m
        new[n.id] = (make, index)
    if not new:
        return roots, 0
    return _rebuild(order, roots, new), len(new)


def scans(roots: list[Node]) -> tuple[list[Node], int]:
    roots, merged = merge_scans(roots)
    roots, pruned = prune_scans(roots)
    return roots, merged + pruned
