"""The CPU step spec: a program laid out in flat buffers and written as calls to library kernels.

``StepBuilder`` turns a program (after passes, fusion and the memory plan) into a *spec*, plain
JSON: the kernels (their structural sources, keyed by hash), one call per kernel, copy and update
commit, each with its argument block as forms in the symbolic dims (sizes, strides, offsets)
and scalar bits, the bases (param arena and workspace per dtype, constants, inputs, outputs)
and the scratch each call needs. ``render`` writes it as the Python module ``f.source`` shows;
``debug=True`` runs that module without the JIT.
"""
from __future__ import annotations

import base64
import io
from math import prod

import numpy as np

from ..._version import __version__
from ...errors import GraphcError, fmt_site
from ...ir import Node
from ...passes.fusion import base_of
from ...program import Program
from ...shapes import fmt_shape, form, form_mul, form_text, size
from ..common.layout import ZERO, Layout, Scratch, View, c_strides, commit_plan, fadd, step_view
from ..common.lowering import describe
from ..common.source import Source, comment
from . import library
from .kernels import KernelCode, copy_code, kernel_code

SYMBOLIC_GUESS = 256    # a symbolic dim's size when judging whether BLAS needs threads
BLAS_THREADED_FLOPS = 1 << 22  # smaller matmuls run on one thread whatever the setting
SPEC_FORMAT = 1

HEADER = """\
# graphc {version}: one training step for the CPU.
# Each kernel is compiled once by Numba as a C function over raw pointers (cpu/abi.py) and kept
# in graphc's kernel library, shared by every model with the same structure. `step` makes the
# calls a native driver makes, in order: k(A, B) with A the call's arguments and B the bases.
import numpy as np

from graphc.backends.cpu.mathfns import *  # noqa: F403 - the g* scalar functions of the ops' templates

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
"""


# --- forms and slots in JSON ---------------------------------------------------------------------
def jform(f) -> list:
    return [[list(k), c] for k, c in sorted(form(dict(f)).items())]


def evaluate(jf: list, env: dict) -> int:
    return sum(c * prod(env[n] for n in names) for names, c in jf)


def bits(value, dtype: str) -> int:
    a = np.array([value]).astype(dtype)
    if a.dtype.kind == "f":
        return int(a.view(np.int32 if a.dtype == np.float32 else np.int64)[0])
    return int(a.astype(np.int64)[0])


def _npy(a: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.array(a, order="C"), allow_pickle=False)  # (ascontiguousarray makes 0-d 1-d)
    return base64.b64encode(buf.getvalue()).decode()


def unnpy(s: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(s)), allow_pickle=False)


class _Guess(dict):
    def __missing__(self, key):
        return SYMBOLIC_GUESS


# --- cold: program -> spec ---------------------------------------------------------------------
class StepBuilder:
    """Lays out a program and writes its calls: kernels, copies, outputs, update commits."""

    def __init__(self, prog: Program, inputs: list[Node], params: list[Node]):
        self.prog, self.inputs, self.params = prog, inputs, params
        self.layout = Layout(prog, inputs, params)
        self.pos = {p.id: k for k, p in enumerate(params)}  # params by position: their names count layers made before
        self.calls: list[dict] = []
        self.kernels: dict[str, str] = {}
        self.checks: list = []  # (op, site, bound form) of every index range check in a kernel
        self.loops = 0
        self.collectives: list[dict] = []  # all-reduces, by number: what host calls start and wait for
        self.pending: dict[int, int] = {}  # started all-reduces not yet waited for -> their node id

    def add(self, code: KernelCode, kernel: int | None, comment_lines: list[str], scratch: Scratch, work=None,
            layout: Layout | None = None) -> None:
        """A call of ``code``. Its scratch need counts from the root workspace's end: a loop body's
        layout starts past the loop's own buffers (``layout.ws_end``)."""
        layout = layout or self.layout
        need: dict = {}
        if layout is not self.layout:
            for dt, end in layout.ws_end.items():
                need[dt] = fadd(end, self.layout.ws_end.get(dt, {}), -1)
        for dt, n in scratch.items:
            need[dt] = fadd(need.get(dt, {}), form(n))
            self.layout.need_ws(dt)
        key = library.kernel_key(code.source)
        self.kernels[key] = code.source
        sites = []
        for n in code.checks:  # numbered across the step: the error word says which one failed
            self.checks.append([n.op.name, comment(fmt_site(n.site)), jform(form(n.op.extra["index_bound"](n)))])
            sites.append(len(self.checks))
        call = {"key": key, "pkey": None, "work": None, "kernel": kernel, "comment": comment_lines, "doc": code.doc,
                "scratch": {dt: jform(f) for dt, f in need.items()},
                "slots": [["int", jform(form(sites[s[1]]))] if s[0] == "check" else self._slot(s) for s in code.slots]}
        if code.parallel_source is not None:
            call["pkey"] = library.kernel_key(code.parallel_source)
            call["work"] = jform(sum((form_mul(form(size(shape)), w) for shape, w in work), form(0)))
            self.kernels[call["pkey"]] = code.parallel_source
        self.calls.append(call)

    @staticmethod
    def _slot(s: tuple) -> list:
        if s[0] == "int":
            return ["int", jform(dict(s[1]))]
        if s[0] == "base":
            return ["base", list(s[1])]
        if s[0] == "bits":
            return ["bits", bits(s[2], s[1]), s[1], s[2]]
        return ["count", s[1], list(s[2])]

    def program_calls(self, prog: Program, layout: Layout, kernel: int | None = None) -> None:
        """The calls of ``prog``'s kernels (a loop body's are numbered by the scan's ``kernel``)."""
        shared = {base_of(v)[0].id for k in prog.kernels for v in k.inputs} | {base_of(r)[0].id for r in prog.roots}
        where = "" if kernel is None else f"kernel {kernel}'s body, "
        for k in prog.kernels:
            at = k.index if kernel is None else kernel
            self.wait_for({base_of(v)[0].id for v in k.inputs})
            if k.kind == "allreduce":
                if layout is not self.layout:
                    raise GraphcError(f"allreduce inside a loop body ({fmt_site(k.nodes[0].site)}) is not supported "
                                      "on target='cpu': all-reduce the scan's results instead")
                self.collective_call(k, layout, at)
                continue
            if k.kind == "scan":
                self.scan_calls(k, prog, layout, at)
                continue
            code = kernel_code(k, layout, prog.memory.inplace, shared)
            head = f"{where}kernel {k.index}: {k.kind} over {k.domain}" + (f", reducing axes {k.raxes}" if k.raxes else "")
            for src, tmp in code.scratch.copies:
                self.add(copy_code(src, tmp, "a view copied contiguous"), at,
                         [f"{where}kernel {k.index} reads a strided view contiguous: copied first"], code.scratch,
                         layout=layout)
            self.add(code, at, [head] + [f"  {describe(n)}" for n in k.nodes], code.scratch, k.loop_work(), layout)

    def collective_call(self, k, layout: Layout, at: int) -> None:
        """An all-reduce: a host call that starts it (the driver stops there, mpi4py starts it,
        the driver goes on) and, before the first call that reads its result, one that waits.
        Its input must be contiguous; a strided one is copied into scratch, and then waited for
        at once (scratch is only the next call's)."""
        n = k.nodes[0]
        scratch = Scratch()
        src = self.view(n.inputs[0], scratch, layout, at)
        if tuple(src.strides) != c_strides(src.shape):
            tmp = scratch.take(src.dtype, src.shape, layout.ws_end)
            self.add(copy_code(src, tmp, "an all-reduce's input"), at, [f"kernel {at}: the all-reduce's input, contiguous"],
                     scratch, layout=layout)
            src = tmp
        dst = layout.buffer(n)
        j = len(self.collectives)
        self.collectives.append({"op": n.attrs["op"], "dtype": n.dtype.name, "count": jform(form(size(n.shape))),
                                 "src": [list(src.base), jform(dict(src.offset))],
                                 "dst": [list(dst.base), jform(dict(dst.offset))],
                                 "kernel": at, "site": comment(fmt_site(n.site))})
        self.calls.append({"host": "start", "id": j, "kernel": at,
                           "comment": [f"kernel {at}: all-reduce {n.attrs['op']} of {fmt_shape(n.shape)} {n.dtype.name} "
                                       f"across ranks ({fmt_site(n.site)}): start, and go on with the next calls"]})
        self.pending[j] = n.id
        if scratch.items:
            self.wait_for({n.id})

    def wait_for(self, reads: set) -> None:
        """Host calls that wait for the all-reduces whose results a call is about to read."""
        for j, nid in list(self.pending.items()):
            if nid in reads:
                del self.pending[j]
                self.calls.append({"host": "wait", "id": j, "kernel": self.collectives[j]["kernel"],
                                   "comment": [f"wait for all-reduce {j} (kernel {self.collectives[j]['kernel']})"]})

    def scan_calls(self, k, prog: Program, layout: Layout, at: int) -> None:
        """A scan: its initial carries copied into carry buffers, then a loop over the body's calls
        (the step's slices of xs and ys are views at the loop counter), then the final carries.
        Carry buffers and the body's workspace lie past ``layout``'s end, in the loop's region."""
        s = k.nodes[0]
        body, bprog = s.attrs["body"], prog.bodies[s.id]
        C, X = len(body.carry), len(body.xs)
        region = Scratch()
        outs = {n.attrs["index"]: n for n in k.outputs if n.op.name == "scan_get"}
        what = f"kernel {at}: scan over {s.attrs['length']} steps ({describe(s)})"
        carry = [region.take(p.dtype.name, tuple(p.shape), layout.ws_end) for p in body.carry]
        for j, v in enumerate(s.inputs[:C]):
            src = self.view(v, region, layout, at)
            self.add(copy_code(src, carry[j], "a scan's initial carry"), at, [f"{what}: initial carry {j}"], region,
                     layout=layout)
        xs = [self.view(v, region, layout, at) for v in s.inputs[C:C + X]]
        fixed = [self.view(v, region, layout, at) for v in s.inputs[C + X:]]
        var = f"@t{self.loops}"
        self.loops += 1
        T = form(s.attrs["length"])
        index = fadd(fadd(T, form(1), -1), form(var), -1) if s.attrs["reverse"] else form(var)
        bind = {p.id: v for p, v in zip(body.carry, carry)} | {p.id: v for p, v in zip(body.closure, fixed)}
        bind |= {p.id: step_view(v, index) for p, v in zip(body.xs, xs)}
        origin = {dt: fadd(layout.ws_end.get(dt, {}), form(0)) for dt in layout.ws_end}
        for dt, n in region.items:
            origin[dt] = fadd(origin.get(dt, {}), form(n))
        # ys that a body kernel computes are written straight into their step's slot of the output
        written = {o.id for kb in bprog.kernels if kb.kind != "scan" for o in kb.outputs}
        direct = {}
        for j, y in enumerate(bprog.roots[C:]):
            if C + j in outs and y.id in written and y.id not in direct:
                direct[y.id] = step_view(layout.buffer(outs[C + j]), index)
        bind |= direct
        blayout = Layout(bprog, [], [], parent=layout, origin=origin, bindings=bind)
        loop = {"loop": jform(T), "var": var, "kernel": at, "reverse": s.attrs["reverse"], "calls": [],
                "comment": [what + (", last step first" if s.attrs["reverse"] else "")]}
        around, self.calls = self.calls, loop["calls"]
        self.program_calls(bprog, blayout, at)
        # the step's ys into their stacked outputs, then the next carry (staged when it reads a carry)
        step = Scratch()
        for j, y in enumerate(bprog.roots[C:]):
            dst = step_view(layout.buffer(outs[C + j]), index) if C + j in outs else None
            if dst is not None and direct.get(y.id) != dst:
                self.add(copy_code(self.view(y, step, blayout, at), dst, "a scan's output"), at,
                         [f"{what}: this step's y {j}"], step, layout=blayout)
        carry_ids = {p.id for p in body.carry}
        nexts = {}
        for j, c in enumerate(bprog.roots[:C]):
            if c.id == body.carry[j].id:
                continue  # a carry passed on unchanged
            src = self.view(c, step, blayout, at)
            if base_of(c)[0].id in carry_ids:  # reads a carry that the copies below overwrite
                tmp = step.take(src.dtype, src.shape, blayout.ws_end)
                self.add(copy_code(src, tmp, "a staged carry"), at, [f"{what}: stage carry {j}"], step, layout=blayout)
                src = tmp
            nexts[j] = src
        for j, src in nexts.items():
            self.add(copy_code(src, carry[j], "a scan's carry"), at, [f"{what}: next carry {j}"], step, layout=blayout)
        self.calls = around
        self.calls.append(loop)
        for j in range(C):
            if j in outs:
                self.add(copy_code(carry[j], layout.buffer(outs[j]), "a scan's final carry"), at,
                         [f"{what}: final carry {j}"], region, layout=layout)

    def build(self) -> dict:
        prog, layout = self.prog, self.layout
        self.program_calls(prog, layout)
        self.wait_for(set(self.pending.values()))  # outputs and commits read what is left
        final = Scratch()
        outputs = self.outputs(final)
        self.commits(final)
        big = any(k.kind == "matmul" and k.flops(_Guess()) >= BLAS_THREADED_FLOPS for k in prog.kernels)
        return {
            "format": SPEC_FORMAT,
            "params": [[p.dtype.name, list(p.shape)] for p in self.params], "n_inputs": len(self.inputs),
            "param_dtypes": layout.param_dtypes, "ws_dtypes": layout.ws_dtypes,
            "ws_end": {dt: jform(f) for dt, f in layout.ws_end.items()},
            "consts": [_npy(c.attrs["value"]) for c in layout.consts],
            "kernels": self.kernels, "calls": self.calls, "outputs": outputs,
            "blas_threads": big, "n_kernels": len(prog.kernels), "checks": self.checks, "collectives": self.collectives,
            "doc": [f"The whole step: {len(prog.kernels)} kernels."]
                   + [f"in{j}: input {x.name} {x.dtype.name}{tuple(x.shape)}" for j, x in enumerate(self.inputs)],
        }

    def view(self, v: Node, final: Scratch, layout: Layout | None = None, kernel: int | None = None) -> View:
        """``v`` as a view; a reshape strides cannot express is copied into scratch by a call
        emitted here, before the call that reads it."""
        layout = layout or self.layout
        seen = len(final.copies)
        view = layout.view(v, final)
        for src, tmp in final.copies[seen:]:
            self.add(copy_code(src, tmp, "a view copied contiguous"), kernel, ["a strided view copied contiguous"], final,
                     layout=layout)
        return view

    def outputs(self, final: Scratch) -> list:
        """Outputs that are sources are copied in Python before the step; the others by copy
        calls, which run before any commit overwrites a param (outputs see the old params)."""
        out, n_out = [], 0
        pos_in = {x.id: j for j, x in enumerate(self.inputs)}
        pos_p = {p.id: j for j, p in enumerate(self.params)}
        for o in self.prog.roots[:self.prog.n_outputs]:
            if o.op.name == "param":
                out.append(["param", pos_p[o.id]])
            elif o.op.name == "input":
                out.append(["input", pos_in[o.id]])
            elif o.op.name == "constant":
                out.append(["const", _npy(o.attrs["value"])])
            elif o.op.name == "count":
                out.append(["count", o.dtype.name, list(o.attrs["dims"])])
            else:
                src = self.view(o, final)
                dst = View(("out", n_out), ZERO, c_strides(o.shape), tuple(o.shape), o.dtype.name)
                self.add(copy_code(src, dst, "an output"), None, [f"output {len(out)}: {describe(o)}"], final)
                out.append(["out", o.dtype.name, [jform(form(d)) for d in o.shape]])
                n_out += 1
        return out

    def commits(self, final: Scratch) -> None:
        """Updates not written in place, copied into their params at the end of the step;
        values that are params another update overwrites are staged first (so swaps work)."""
        layout = self.layout
        copies = commit_plan(self.prog)
        staged = {}
        for p, e, stage in copies:
            if stage:
                src = self.view(e, final)
                tmp = final.take(e.dtype.name, tuple(e.shape), layout.ws_end)
                self.add(copy_code(src, tmp, "a staged update"), None,
                         [f"stage the update of param {self.pos[p.id]}: it reads a param another update overwrites"],
                         final)
                staged[p.id] = tmp
        for p, e, _ in copies:
            src = staged.get(p.id) or self.view(e, final)
            self.add(copy_code(src, layout.buffer(p), "an update"), None,
                     [f"update of param {self.pos[p.id]} ({describe(e)})"], final)


def flat_calls(calls: list[dict]):
    """Every kernel call of a spec in order, loops' bodies included once (not once per step);
    host calls (collectives) are not kernel calls."""
    for c in calls:
        if "loop" in c:
            yield from flat_calls(c["calls"])
        elif "host" not in c:
            yield c


def flat_hosts(calls: list[dict]):
    """The host calls of a spec, in order."""
    for c in calls:
        if "loop" in c:
            yield from flat_hosts(c["calls"])
        elif "host" in c:
            yield c


# --- the generated module, as text ---------------------------------------------------------------
def render(spec: dict, dims: list[str], keys: list[str] | None = None) -> str:
    """The module ``f.source`` shows: every kernel the step calls, then ``step``. ``keys`` are
    the kernels a plan chose (parallel variants for big dims), per call of ``flat_calls``; by
    default the serial ones."""
    flat = list(flat_calls(spec["calls"]))
    keys = keys or [c["key"] for c in flat]
    used = list(dict.fromkeys(keys))
    users: dict[str, list] = {}
    for c, key in zip(flat, keys):
        users.setdefault(key, []).append(c["kernel"])
    parts = [HEADER.format(version=__version__)]
    for key in used:
        who = sorted({k for k in users[key] if k is not None})
        note = f"# {library.function_name(key)}: kernel{'s' if len(who) > 1 else ''} {', '.join(map(str, who))}" \
            if who else f"# {library.function_name(key)}"
        parts.append(note + "\n" + library.named(spec["kernels"][key], key))
    s = Source()
    # identifiers come from positions and prefixes only; names appear in escaped comments
    with s.block(f"def step(B{''.join(', d_' + d for d in dims)}):"):
        for line in spec["doc"]:
            s("# " + comment(line))
        names = base_names(spec)
        s(f"{', '.join(names)} = range({len(names)})  # indexes of the bases in B")
        _render_calls(s, spec["calls"], iter(keys), names, bool(spec["checks"]))
    parts.append(s.text())
    return "\n\n".join(parts)


def _render_calls(s: Source, calls: list[dict], keys, names: list[str], checks: bool) -> None:
    for c in calls:
        for line in c["comment"]:
            s("# " + comment(line))
        if "loop" in c:  # a scan: its counter appears in the offsets of the step's slices
            with s.block(f"for {c['var'][1:]} in range({_form_text(c['loop'])}):"):
                _render_calls(s, c["calls"], keys, names, checks)
            continue
        if "host" in c:  # the driver stops; the host (mpi4py) starts or completes a collective
            s(f"collective_{c['host']}({c['id']}, B)")
            continue
        args = ", ".join(_slot_text(x, names) for x in c["slots"])
        s(f"{library.function_name(next(keys))}(np.array([{args}], np.int64), B)")
        if checks:  # as the driver does: a failed index check stops the step here
            s("if B[E][0]:")
            s("    return")


def _form_text(jf: list) -> str:
    """A JSON form over the step's dim arguments (``d_<name>``) and loop counters (``t<k>``)."""
    return form_text({tuple(n[1:] if n.startswith("@") else "d_" + n for n in k): c for k, c in jf})


def base_names(spec: dict) -> list[str]:
    """The bases in B's order: arenas, workspaces, constants and the error word (fixed per
    program), then each call's inputs and outputs."""
    outs = sum(1 for o in spec["outputs"] if o[0] == "out")
    return ([f"P_{d}" for d in spec["param_dtypes"]] + [f"W_{d}" for d in spec["ws_dtypes"]]
            + [f"K{j}" for j in range(len(spec["consts"]))] + ["E"]
            + [f"in{j}" for j in range(spec["n_inputs"])] + [f"out{j}" for j in range(outs)])


def base_label(base: list) -> str:
    kind, x = base
    return {"arena": f"P_{x}", "ws": f"W_{x}", "const": f"K{x}", "err": "E", "in": f"in{x}", "out": f"out{x}"}[kind]


def _slot_text(s: list, names: list[str]) -> str:
    if s[0] == "int":
        return _form_text(s[1])
    if s[0] == "base":
        return base_label(s[1])
    if s[0] == "bits":
        return f"bits({s[3]!r}, np.{s[2]})"
    return f"bits({' * '.join(_dim_text(d) for d in s[2]) or '1'}, np.{s[1]})"


def _dim_text(d) -> str:
    """A dim as an expression over the step's dim arguments (``d_<name>``)."""
    if isinstance(d, int):
        return str(d)
    return " * ".join(f if f.isdigit() else "d_" + f for f in d.split("*"))


def debug_namespace(source: str) -> dict:
    """``source`` (a rendered step) executed without the JIT: pointers over NumPy arrays."""
    from . import abi as cpu_abi  # (imports Numba: only debug mode and compiling need it)
    ns: dict = {"__name__": "graphc_debug", "prange": range,
                "bits": lambda v, dt: bits(v, np.dtype(dt).name), "nan": np.nan, "inf": np.inf}
    ns.update(cpu_abi.DEBUG)
    exec(compile(source, "<graphc debug step>", "exec"), ns)
    return ns


__all__ = ["StepBuilder", "render", "flat_calls", "flat_hosts",
           "base_names", "base_label", "bits", "evaluate", "unnpy", "debug_namespace",
           "SPEC_FORMAT"]
