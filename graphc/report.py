"""``Function.report()``: a readable account of what the compiler did to a step."""
from __future__ import annotations

from collections import Counter
from math import prod

from .errors import fmt_site
from .shapes import fmt_shape, resolve


def _si(x: float, unit: str) -> str:
    for p, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= p:
            return f"{x / p:.2f} {s}{unit}"
    return f"{x:.0f} {unit}"


def _dims(shape) -> str:
    return "·".join(str(d) for d in shape) or "1"


def _env_for(fn, env):
    """Bind symbolic dims; without a call yet, show costs per unit of each dim."""
    if env:
        return env, ""
    names = {d for x in fn.inputs for d in x.shape if isinstance(d, str)}
    return {d: 1 for d in names}, (" (per unit of " + ", ".join(sorted(names)) + ")") if names else ""


def _flops(k, prog, env: dict) -> int:
    """A kernel's FLOPs; a scan's are its body's, once per step."""
    if k.kind != "scan":
        return k.flops(env)
    s = k.nodes[0]
    body = prog.bodies[s.id]
    steps = resolve((s.attrs["length"],), env)[0]
    return steps * sum(_flops(kb, body, env) for kb in body.kernels)


def report(fn, env: dict | None = None) -> str:
    prog = fn.program
    env, per = _env_for(fn, env)
    lines = [f"graphc step: target={fn.target}, optimize={fn.optimize}, "
             f"{len(fn.inputs)} inputs, {len(fn.params)} params, {len(prog.updates)} updates"]
    if env and not per:
        lines.append("shapes bound at the last call: " + ", ".join(f"{k}={v}" for k, v in sorted(env.items())))
    lines.append(f"graph: {prog.nodes_before} nodes -> {prog.nodes_after} after passes")
    for s in prog.passes:
        lines.append(f"  pass {s.name:<17} {s.hits:4d} rewrites")
    kinds = Counter(k.kind for k in prog.kernels)
    lines.append("")
    lines.append(f"kernels: {len(prog.kernels)} ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")
    tot_f = tot_b = 0
    for k in prog.kernels:
        f, b = _flops(k, prog, env), k.bytes(env)
        tot_f, tot_b = tot_f + f, tot_b + b
        phases = sorted({n.phase for n in k.nodes})
        dom = fmt_shape(k.domain) + (f" reduce axes {k.raxes}" if k.raxes else "")
        if k.kind == "scan":
            s = k.nodes[0]
            dom = f"{s.attrs['length']} steps" + (", reversed" if s.attrs["reverse"] else "")
        lines.append(f"  [{k.index:2d}] {k.kind:<7} {dom:<28} {'+'.join(phases):<17} {_si(f, 'FLOP'):>11} {_si(b, 'B'):>10}")
        if k.kind == "scan":
            body = prog.bodies[k.nodes[0].id]
            kinds_b = Counter(kb.kind for kb in body.kernels)
            lines.append(f"       body (compiled once): {len(body.kernels)} kernels "
                         f"({', '.join(f'{v} {kk}' for kk, v in sorted(kinds_b.items()))}), "
                         f"{_si(sum(body.memory.slot_bytes(env)), 'B')} of workspace")
        if k.kind == "matmul":
            mm = next(n for n in k.nodes if n.op.kind == "matmul")
            a, bb = mm.inputs
            lines.append(f"       {fmt_shape(a.shape)} @ {fmt_shape(bb.shape)}: O({_dims(mm.shape)}·{a.shape[-1]}) "
                         f"multiply-adds")
        ops = Counter((n.op.name, n.phase[0], fmt_site(n.site)) for n in k.nodes)
        lines.append("       ops: " + ", ".join(f"{name}{'×' + str(c) if c > 1 else ''} ({ph}, {site})"
                                              for (name, ph, site), c in ops.items()))
    lines.append(f"  total per step: {_si(tot_f, 'FLOP')}, {_si(tot_b, 'B')} moved (estimated){per}")
    lines.append("")
    lines.append(f"fused: {len(prog.fused)} merges of ops into the kernels above")
    lines.append(f"not fused: {len(prog.not_fused)}")
    for s in prog.not_fused:
        lines.append(f"  {s}")
    mem = prog.memory
    lines.append("")
    all_bytes = sum(b.nbytes(env) for b in mem.buffers.values() if b.slot >= 0)
    lines.append(f"memory: {len(mem.buffers)} buffers in {len(mem.slots)} workspace slots "
                 f"({_si(sum(mem.slot_bytes(env)), 'B')} after reuse, {_si(all_bytes, 'B')} without); "
                 f"peak live {_si(mem.peak(env), 'B')}{per}")
    for e_id, p in mem.inplace.items():
        lines.append(f"  in place: {p.name} updated in kernel {mem.buffers[e_id].first}")
    not_inplace = [p.name for p, e in prog.updates if e.id not in mem.inplace]
    if not_inplace:
        lines.append(f"  updated through a copy (read after their update): {', '.join(not_inplace)}")
    saved = sum(prod(resolve(n.shape, env)) * n.dtype.itemsize for n in mem.saved)
    lines.append(f"  saved for the backward pass: {len(mem.saved)} activations, {_si(saved, 'B')}")
    for n in mem.saved:
        what = f"{n.op.name} {fmt_shape(n.shape)}"
        if n.op.name == "scan_get" and n.attrs["index"] >= len(n.inputs[0].attrs["body"].carry_out):
            step = prod(resolve(n.shape[1:], env)) * n.dtype.itemsize
            what = f"a loop's per-step values: {n.shape[0]} × {fmt_shape(n.shape[1:])} = {n.shape[0]} × {_si(step, 'B')}"
        lines.append(f"    {what} ({fmt_site(n.site)})")
    lines += _collectives(prog, env)
    cache = getattr(fn, "cache_info", None)
    if cache:
        lines.append("")
        lines.append(f"cache: {cache}")
    return "\n".join(lines)


def _collectives(prog, env: dict) -> list[str]:
    """All-reduces: their bytes, and the kernels that run while each is in flight (from its
    start, as soon as its input is ready, to the first kernel that reads its result)."""
    ars = [k for k in prog.kernels if k.kind == "allreduce"]
    if not ars:
        return []
    total = sum(prod(resolve(k.nodes[0].shape, env)) * k.nodes[0].dtype.itemsize for k in ars)
    lines = ["", f"collectives: {len(ars)} all-reduces, {_si(total, 'B')} per step per rank (one message each)"]
    for k in ars:
        n = k.nodes[0]
        readers = [j.index for j in prog.kernels if j.index > k.index and any(v.id == n.id or v.inputs and
                   _reads(v, n) for v in j.inputs)]
        first = min(readers, default=len(prog.kernels))
        window = [j for j in prog.kernels[k.index + 1:first] if j.kind != "allreduce"]
        flops = sum(_flops(j, prog, env) for j in window)
        what = f"kernels {window[0].index}-{window[-1].index} ({len(window)}, {_si(flops, 'FLOP')})" if window else "nothing"
        waits = f"kernel {first}" if first < len(prog.kernels) else "the outputs"
        lines.append(f"  [{k.index:2d}] {n.attrs['op']} of {fmt_shape(n.shape)} {n.dtype.name} "
                     f"({_si(prod(resolve(n.shape, env)) * n.dtype.itemsize, 'B')}, {fmt_site(n.site)}): "
                     f"overlaps {what}; waited for before {waits}")
    return lines


def _reads(v, n) -> bool:
    """Whether value ``v`` is a view of ``n``."""
    from .passes.fusion import base_of
    return base_of(v)[0].id == n.id
