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

from .. import __version__
from ..errors import fmt_site
from ..ir import Node
from ..passes.fusion import base_of
from ..program import Program
from ..shapes import form, form_mul, form_text, size
from . import library
from .layout import ZERO, Layout, Scratch, View, c_strides
from .loops import KernelCode, copy_code, describe, kernel_code
from .source import Source, comment

SYMBOLIC_GUESS = 256    # a symbolic dim's size when judging whether BLAS needs threads
BLAS_THREADED_FLOPS = 1 << 22  # smaller matmuls run on one thread whatever the setting
SPEC_FORMAT = 1

HEADER = """\
# graphc {version}: one training step for the CPU.
# Each kernel is compiled once by Numba as a C function over raw pointers (cpu_abi.py) and kept
# in graphc's kernel library, shared by every model with the same structure. `step` makes the
# calls a native driver makes, in order: k(A, B) with A the call's arguments and B the bases.
import numpy as np

from graphc.backends.cpu_math import *  # noqa: F403 - the g* scalar functions of the ops' templates

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
        self.calls: list[dict] = []
        self.kernels: dict[str, str] = {}
        self.checks: list = []  # (op, site, bound form) of every index range check in a kernel

    def add(self, code: KernelCode, kernel: int | None, comment_lines: list[str], scratch: Scratch, work=None) -> None:
        need: dict = {}
        for dt, n in scratch.items:
            need[dt] = need.get(dt, form(0)) + form(n)
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

    def build(self) -> dict:
        prog, layout = self.prog, self.layout
        shared = {base_of(v)[0].id for k in prog.kernels for v in k.inputs} | {base_of(r)[0].id for r in prog.roots}
        for k in prog.kernels:
            code = kernel_code(k, layout, prog.memory.inplace, shared)
            head = f"kernel {k.index}: {k.kind} over {k.domain}" + (f", reducing axes {k.raxes}" if k.raxes else "")
            for src, tmp in code.scratch.copies:
                self.add(copy_code(src, tmp, "a view copied contiguous"), k.index,
                         [f"kernel {k.index} reads a strided view contiguous: copied first"], code.scratch)
            self.add(code, k.index, [head] + [f"  {describe(n)}" for n in k.nodes], code.scratch, k.loop_work())
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
            "blas_threads": big, "n_kernels": len(prog.kernels), "checks": self.checks,
            "doc": [f"The whole step: {len(prog.kernels)} kernels."]
                   + [f"in{j}: input {x.name} {x.dtype.name}{tuple(x.shape)}" for j, x in enumerate(self.inputs)],
        }

    def view(self, v: Node, final: Scratch) -> View:
        """``v`` as a view for the end of the step; a reshape strides cannot express is copied into
        scratch by a call emitted here, before the call that reads it."""
        seen = len(final.copies)
        view = self.layout.view(v, final)
        for src, tmp in final.copies[seen:]:
            self.add(copy_code(src, tmp, "a view copied contiguous"), None, ["a strided view copied contiguous"], final)
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
        prog, layout = self.prog, self.layout
        copies = [(p, e) for p, e in prog.updates if e.id not in prog.memory.inplace]
        targets = {p.id for p, _ in copies}
        staged = {}
        for p, e in copies:
            if base_of(e)[0].id in targets:
                src = self.view(e, final)
                tmp = final.take(e.dtype.name, tuple(e.shape), layout.ws_end)
                self.add(copy_code(src, tmp, "a staged update"), None,
                         [f"stage the update of {p.name}: it reads a param another update overwrites"], final)
                staged[p.id] = tmp
        for p, e in copies:
            src = staged.get(p.id) or self.view(e, final)
            self.add(copy_code(src, layout.buffer(p), "an update"), None, [f"update of {p.name} ({describe(e)})"], final)


# --- the generated module, as text ---------------------------------------------------------------
def render(spec: dict, dims: list[str], keys: list[str] | None = None) -> str:
    """The module ``f.source`` shows: every kernel the step calls, then ``step``. ``keys`` are
    the kernels a plan chose (parallel variants for big dims); by default the serial ones."""
    keys = keys or [c["key"] for c in spec["calls"]]
    used = list(dict.fromkeys(keys))
    users: dict[str, list] = {}
    for c, key in zip(spec["calls"], keys):
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
        for c, key in zip(spec["calls"], keys):
            for line in c["comment"]:
                s("# " + comment(line))
            args = ", ".join(_slot_text(x, names) for x in c["slots"])
            s(f"{library.function_name(key)}(np.array([{args}], np.int64), B)")
            if spec["checks"]:  # as the driver does: a failed index check stops the step here
                s("if B[E][0]:")
                s("    return")
    parts.append(s.text())
    return "\n\n".join(parts)


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
        return form_text({tuple("d_" + n for n in k): c for k, c in s[1]})
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
    from . import cpu_abi  # (imports Numba: only debug mode and compiling need it)
    ns: dict = {"__name__": "graphc_debug", "prange": range,
                "bits": lambda v, dt: bits(v, np.dtype(dt).name), "nan": np.nan, "inf": np.inf}
    ns.update(cpu_abi.DEBUG)
    exec(compile(source, "<graphc debug step>", "exec"), ns)
    return ns


__all__ = ["StepBuilder", "render", "base_names", "base_label", "bits", "evaluate", "unnpy", "debug_namespace",
           "SPEC_FORMAT"]
