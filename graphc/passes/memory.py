"""The memory plan: liveness of every buffer across the step, reuse of dead buffers,
in-place param updates, and the activations kept for the backward pass."""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from ..ir import Node
from ..shapes import resolve, size
from .fusion import Kernel, base_of


@dataclass
class Buffer:
    node: Node
    first: int        # kernel that writes it
    last: int         # last kernel that reads it (len(kernels) for step results)
    slot: int = -1    # workspace slot; -1 when written into a param in place

    def nbytes(self, env: dict) -> int:
        return prod(resolve(self.node.shape, env)) * self.node.dtype.itemsize


@dataclass
class MemoryPlan:
    buffers: dict[int, Buffer]                 # by node id
    slots: list[tuple] = field(default_factory=list)   # (size, dtype) of each workspace slot
    inplace: dict[int, Node] = field(default_factory=dict)  # update node id -> param it overwrites
    saved: list[Node] = field(default_factory=list)    # forward values read by backward kernels
    frees: dict[int, list[int]] = field(default_factory=dict)  # kernel -> node ids dead after it

    def slot_bytes(self, env: dict) -> list[int]:
        return [prod(resolve((s,), env)) * dt.itemsize for s, dt in self.slots]

    def peak(self, env: dict) -> int:
        """Largest sum of live buffers at any kernel."""
        last = max((b.last for b in self.buffers.values()), default=0)
        return max((sum(b.nbytes(env) for b in self.buffers.values() if b.slot >= 0 and b.first <= k <= b.last)
                    for k in range(last + 1)), default=0)


def _same_index(k: Kernel, p: Node, e: Node) -> bool:
    """Whether the kernel that writes ``e`` into ``p`` reads ``p`` only where it writes it:
    ``p`` spans the whole domain, or is one value read before the loops (hoisted), or the
    write is an epilogue after the loops of a reduction that starts at the first axis."""
    if p.ndim == 0 or (1,) * (len(k.domain) - p.ndim) + tuple(p.shape) == tuple(k.domain):
        return True
    return bool(k.raxes) and min(k.raxes) == 0 and (e.op.kind == "reduce" or e.id in k.after_reduce())


def plan_memory(kernels: list[Kernel], roots: list[Node], updates: list[tuple[Node, Node]],
                inplace_after: int = -1) -> MemoryPlan:
    """``inplace_after``: only kernels after this one may overwrite a param in place (earlier
    ones may yet be followed by a failed index check that must leave params unchanged)."""
    end = len(kernels)
    root_ids = {base_of(r)[0].id for r in roots}
    buffers: dict[int, Buffer] = {}
    for k in kernels:
        for o in k.outputs:
            buffers[o.id] = Buffer(o, k.index, end if o.id in root_ids else k.index)
    # (kernel, read at the reader's own index?) for every buffer read from outside a kernel
    reads: dict[int, list[tuple[int, bool]]] = {}
    for k in kernels:
        inside = {n.id for n in k.nodes}
        for n in k.nodes:
            for pos, v in enumerate(n.inputs):
                b, aligned = base_of(v)
                if b.id in inside:
                    continue
                aligned = aligned and n.op.kind == "elementwise" and pos not in n.op.unaligned
                reads.setdefault(b.id, []).append((k.index, aligned))
                if b.id in buffers:
                    buffers[b.id].last = max(buffers[b.id].last, k.index)
    # A collective runs on while the kernels after it do, until the first kernel that reads
    # its result waits for it: what it reads stays live (and unchanged) until then.
    for k in kernels:
        if k.kind == "allreduce":
            first = min((j for j, _ in reads.get(k.outputs[0].id, [])), default=end)
            for v in k.inputs:
                b = base_of(v)[0]
                reads.setdefault(b.id, []).append((first - 1, False))
                if b.id in buffers:
                    buffers[b.id].last = max(buffers[b.id].last, first - 1)
    plan = MemoryPlan(buffers)
    # A param is overwritten in place when nothing reads it after its update is computed,
    # and the updating kernel itself reads it only at the index it writes. Outputs and
    # update values that are the param itself read it at the end of the step.
    read_at_end = {base_of(r)[0].id for r in roots[:len(roots) - len(updates)]}
    read_at_end |= {base_of(e)[0].id for _, e in updates if base_of(e)[0].op.kind == "source"}
    for p, e in updates:
        if e.id not in buffers or p.id in read_at_end or buffers[e.id].first <= inplace_after:
            continue
        k = buffers[e.id].first
        if all(j < k or (j == k and aligned and _same_index(kernels[k], p, e)) for j, aligned in reads.get(p.id, [])) \
                and sum(1 for _, e2 in updates if e2.id == e.id) == 1:
            plan.inplace[e.id] = p
    # Greedy reuse: a dead buffer's slot serves the next buffer of the same size and dtype.
    free: dict[tuple, list[int]] = {}
    for k in kernels:
        for o in k.outputs:
            b = buffers[o.id]
            if o.id in plan.inplace:
                continue
            key = (size(o.shape), o.dtype)
            if free.get(key):
                b.slot = free[key].pop()
            else:
                b.slot = len(plan.slots)
                plan.slots.append(key)
        dead = [b for b in buffers.values() if b.last == k.index and b.slot >= 0]
        plan.frees[k.index] = [b.node.id for b in buffers.values() if b.last == k.index]
        for b in dead:
            free.setdefault((size(b.node.shape), b.node.dtype), []).append(b.slot)
    # a loop's stacked residuals are forward values too (its gradient asked for them)
    phase = lambda n: n.inputs[0].phase if n.op.name == "scan_get" else n.phase
    backward = {k.index for k in kernels if any(phase(n) == "backward" for n in k.nodes)}
    plan.saved = [b.node for b in buffers.values() if phase(b.node) == "forward"
                  and any(j in backward for j, _ in reads.get(b.node.id, []))]
    return plan
