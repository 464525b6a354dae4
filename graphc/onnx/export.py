"""graphc graph -> ONNX model, for ``gc.to_onnx``.

Each primitive lowers to a few standard ONNX ops (``_Exporter.lower``). Symbolic dims are named
dynamic dims (dim_param). Where an op needs a dim's value at run time (a broadcast of a scalar to
("batch", 10), the size of a scatter), it is read with Shape and Gather from the first graph input
that has the dim; reshapes copy (0) or infer (-1) symbolic dims instead, so most need none. A
``scan`` becomes an ONNX Scan whose body names the loop-invariant values outside it directly.
"""
from __future__ import annotations

import math
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import GraphcError, fmt_site
from ..graph import toposort
from ..ir import Node
from ..ops.cumulative import COMBINE
from ..ops.random import K_KEY, K_SALT
from ..shapes import _factors, fmt_shape, is_concrete, size

MIN_OPSET = 13
UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "sigmoid": "Sigmoid", "softplus": "Softplus", "sqrt": "Sqrt",
         "abs": "Abs", "sign": "Sign", "relu": "Relu", "sin": "Sin", "cos": "Cos", "tan": "Tan", "arcsin": "Asin",
         "arccos": "Acos", "arctan": "Atan", "sinh": "Sinh", "cosh": "Cosh", "arcsinh": "Asinh", "arccosh": "Acosh",
         "arctanh": "Atanh", "erf": "Erf", "stop_gradient": "Identity"}
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max", "minimum": "Min",
          "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual", "eq": "Equal"}
REDUCE = {"sum": "ReduceSum", "max": "ReduceMax", "min": "ReduceMin", "prod": "ReduceProd"}


def _onnx_dtype(dt) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dt))


def _vi(name: str, dtype, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, _onnx_dtype(dtype), [d if isinstance(d, int) else str(d) for d in shape])


def _hint(n: Node) -> str:
    return n.op.name if n.origin is None else f"d_{n.op.name}"  # gradient values read as such in Netron


class _Scope:
    """One ONNX graph being written: the main graph or a Scan body (which sees its parents' names)."""

    def __init__(self, parent: _Scope | None):
        self.parent = parent
        self.nodes: list[onnx.NodeProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.names: dict[int, str] = {}   # graphc node id -> ONNX value name
        self.made: set[str] = set()       # names this scope's nodes produce

    def lookup(self, n: Node) -> str | None:
        s = self
        while s is not None:
            if n.id in s.names:
                return s.names[n.id]
            s = s.parent
        return None


class _Exporter:
    def __init__(self, inputs: list[Node], opset: int, reserved: list[str]):
        self.opset = opset
        self.used: set[str] = set()
        self.root = self.scope = _Scope(None)
        self.inits: list[onnx.TensorProto] = []
        self.consts: dict[tuple, str] = {}
        self.dims: dict[object, str] = {}       # dim (int or symbolic) -> 1-d int64 [value]
        self.scalars: dict[object, str] = {}    # dim -> 0-d int64 value
        self.dim_src: dict[str, tuple[str, int]] = {}
        self.shapes: dict[str, str] = {}
        self.scans: dict[int, list[str]] = {}
        self.cached: set[str] = set()           # names other nodes may reuse later: never renamed
        self.graph_inputs = []
        for x in inputs:
            name = self.fresh(x.name)
            self.root.names[x.id] = name
            self.graph_inputs.append(_vi(name, x.dtype, x.shape))
            for a, d in enumerate(x.shape):
                if isinstance(d, str):
                    self.dim_src.setdefault(d, (name, a))
        self.out_names = [self.fresh(r) for r in reserved]

    # --- names, constants, dims -------------------------------------------------------------------
    def fresh(self, hint: str | None) -> str:
        hint = hint or "v"
        name, k = hint, 1
        while name in self.used:
            name, k = f"{hint}_{k}", k + 1
        self.used.add(name)
        return name

    def emit(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int = 1, scope: _Scope | None = None,
             **attrs):
        scope = scope or self.scope
        outs = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        scope.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        scope.made.update(outs)
        return outs[0] if outputs == 1 else outs

    def const(self, value, hint: str = "const") -> str:
        """A constant of the main graph. Float ones are Constant nodes, not initializers: a reader (``from_onnx``,
        other frameworks) takes float initializers for weights to train."""
        arr = np.array(value, order="C")
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self.consts:
            if arr.dtype.kind == "f":
                name = self.emit("Constant", [], hint, scope=self.root, value=numpy_helper.from_array(arr))
                self.cached.add(name)
            else:
                name = self.fresh(hint)
                self.inits.append(numpy_helper.from_array(arr, name))
            self.consts[key] = name
        return self.consts[key]

    def ints(self, values) -> str:
        return self.const(np.asarray(values, np.int64), "ints")

    def dim(self, d) -> str:
        """A 1-d int64 tensor holding the dim ``d`` (an int or symbolic), computed in the main graph."""
        if isinstance(d, int):
            return self.ints([d])
        if d not in self.dims:
            coef, names = _factors(d)
            if coef == 1 and sum(names.values()) == 1:
                src = self.dim_src.get(d)
                if src is None:
                    raise GraphcError(f"to_onnx: symbolic dim {d!r} is not a dim of any input, so the model cannot "
                                      "compute it; add an input that has it")
                if src[0] not in self.shapes:
                    self.shapes[src[0]] = self.emit("Shape", [src[0]], f"shape_{src[0]}", scope=self.root)
                out = self.emit("Gather", [self.shapes[src[0]], self.ints([src[1]])], f"dim_{d}", scope=self.root)
            else:
                parts = [self.dim(s) for s in sorted(names.elements())] + ([self.ints([coef])] if coef != 1 else [])
                out = parts[0]
                for p in parts[1:]:
                    out = self.emit("Mul", [out, p], "dim_" + d.replace("*", "x"), scope=self.root)
            self.dims[d] = out
            self.cached.add(out)
        return self.dims[d]

    def scalar(self, d) -> str:
        """A 0-d int64 tensor holding the dim ``d``."""
        if isinstance(d, int):
            return self.const(np.int64(d), "n")
        if d not in self.scalars:
            self.scalars[d] = self.emit("Squeeze", [self.dim(d), self.ints([0])], "n_" + d.replace("*", "x"), scope=self.root)
            self.cached.add(self.scalars[d])
        return self.scalars[d]

    def shape(self, entries) -> str:
        """A 1-d int64 shape tensor of ``entries``: ints (0 and -1 keep their ONNX meaning) or symbolic dims."""
        if all(isinstance(e, int) for e in entries):
            return self.ints(list(entries))
        parts, run = [], []
        for e in entries:
            if isinstance(e, int):
                run.append(e)
                continue
            if run:
                parts.append(self.ints(run))
                run = []
            parts.append(self.dim(e))
        if run:
            parts.append(self.ints(run))
        return self.emit("Concat", parts, "shape", axis=0)

    def target(self, out: tuple, old: tuple | None) -> tuple[list, bool]:
        """Reshape entries for ``out`` from ``old``: a symbolic dim at the same position is copied (0), one
        other becomes -1, so few dims are read at run time. Returns (entries, allowzero)."""
        if 0 in out:  # 0 is a real size: every dim explicit
            return list(out), True
        entries, minus = [], False
        for i, d in enumerate(out):
            if isinstance(d, int):
                entries.append(d)
            elif old is not None and i < len(old) and old[i] == d:
                entries.append(0)
            elif not minus:
                entries.append(-1)
                minus = True
            else:
                entries.append(d)
        return entries, False

    def cast(self, v: str, src, dst) -> str:
        return v if np.dtype(src) == np.dtype(dst) else self.emit("Cast", [v], "cast", to=_onnx_dtype(dst))

    def v(self, n: Node) -> str:
        name = self.scope.lookup(n)
        assert name is not None, f"{n!r} used before it was written"
        return name

    def c(self, value, dtype) -> str:
        return self.const(np.asarray(value, dtype))

    # --- graphs -------------------------------------------------------------------------------------
    def write(self, roots: list[Node], preferred: dict[int, str] | None = None) -> None:
        """Lower every node ``roots`` need into the current scope; a root in ``preferred`` gets that name."""
        for n in toposort(roots):
            if self.scope.lookup(n) is not None:
                continue
            start = len(self.scope.nodes)
            v = self.lower(n)
            want = (preferred or {}).get(n.id)
            made = [nd for nd in self.scope.nodes[start:] if v in nd.output]
            if want and made and v not in self.cached:  # name the producing node's output after the graph output it is
                made[-1].output[list(made[-1].output).index(v)] = want
                if made[-1].name == v:
                    made[-1].name = want
                self.scope.made.add(want)
                v = want
                del preferred[n.id]
            scope = self.root if n.op.name in ("param", "constant") else self.scope
            scope.names[n.id] = v
            doc = fmt_site(n.site) if n.origin is None else f"∂ of {n.origin.op.name} ({fmt_site(n.site)})"
            for nd in self.scope.nodes[start:]:
                nd.doc_string = doc
            if made and n.op.name != "scan":
                self.scope.value_info.append(_vi(v, n.dtype, n.shape))

    def lower(self, n: Node) -> str:
        name = n.op.name
        if name in UNARY:
            return self.emit(UNARY[name], [self.v(n.inputs[0])], _hint(n))
        if name in BINARY:
            return self.emit(BINARY[name], self.operands(n), _hint(n))
        method = getattr(self, "op_" + name, None)
        if method is None:
            raise GraphcError(f"to_onnx: op {name!r} has no ONNX mapping ({fmt_site(n.site)})")
        return method(n)

    def operands(self, n: Node, dtype=None) -> list[str]:
        """The inputs' names, cast to their common dtype (ONNX ops take operands of one type)."""
        dt = dtype or np.result_type(*(i.dtype for i in n.inputs))
        return [self.cast(self.v(i), i.dtype, dt) for i in n.inputs]

    # --- sources ------------------------------------------------------------------------------------
    def op_input(self, n: Node) -> str:
        raise GraphcError(f"to_onnx: the graph reads input {n.name!r} ({fmt_site(n.site)}), which is not among the inputs")

    def op_param(self, n: Node) -> str:
        name = self.fresh(n.name or "param")
        self.inits.append(numpy_helper.from_array(np.array(n.value, order="C"), name))
        return name

    def op_constant(self, n: Node) -> str:
        return self.const(n.attrs["value"])

    # --- elementwise --------------------------------------------------------------------------------
    def _unary_chain(self, n: Node, *steps) -> str:
        v = self.v(n.inputs[0])
        for op_type, const, first in steps:
            ins = [v] if const is None else ([self.c(const, n.dtype), v] if first else [v, self.c(const, n.dtype)])
            v = self.emit(op_type, ins, _hint(n))
        return v

    def op_log1p(self, n):
        return self._unary_chain(n, ("Add", 1, False), ("Log", None, False))

    def op_expm1(self, n):
        return self._unary_chain(n, ("Exp", None, False), ("Sub", 1, False))

    def op_exp2(self, n):
        return self._unary_chain(n, ("Pow", 2, True))

    def op_log2(self, n):
        return self._unary_chain(n, ("Log", None, False), ("Div", math.log(2), False))

    def op_log10(self, n):
        return self._unary_chain(n, ("Log", None, False), ("Div", math.log(10), False))

    def op_erfc(self, n):
        return self._unary_chain(n, ("Erf", None, False), ("Sub", 1, True))

    def _rounding(self, n: Node, op_type: str) -> str:
        x = self.v(n.inputs[0])
        return self.emit(op_type, [x], _hint(n)) if n.dtype.kind == "f" else x

    def op_floor(self, n):
        return self._rounding(n, "Floor")

    def op_ceil(self, n):
        return self._rounding(n, "Ceil")

    def op_round(self, n):  # ONNX Round also rounds halves to even
        return self._rounding(n, "Round")

    def op_trunc(self, n):
        x = self.v(n.inputs[0])
        if n.dtype.kind != "f":
            return x
        neg = self.emit("Less", [x, self.c(0, n.dtype)], "negative")
        return self.emit("Where", [neg, self.emit("Ceil", [x]), self.emit("Floor", [x])], _hint(n))

    def _truth(self, n: Node) -> list[str]:
        return [self.emit("Cast", [self.v(i)], "truth", to=TensorProto.BOOL) if i.dtype != np.bool_ else self.v(i)
                for i in n.inputs]

    def op_logical_not(self, n):
        x = n.inputs[0]
        if x.dtype == np.bool_:
            return self.emit("Not", [self.v(x)], _hint(n))
        return self.emit("Equal", [self.v(x), self.c(0, x.dtype)], _hint(n))

    def op_logical_and(self, n):
        return self.emit("And", self._truth(n), _hint(n))

    def op_logical_or(self, n):
        return self.emit("Or", self._truth(n), _hint(n))

    def op_ne(self, n):
        return self.emit("Not", [self.emit("Equal", self.operands(n))], _hint(n))

    def op_cast(self, n):
        return self.emit("Cast", [self.v(n.inputs[0])], _hint(n), to=_onnx_dtype(n.dtype))

    def op_where(self, n):
        c, a, b = n.inputs
        return self.emit("Where", [self.v(c), self.cast(self.v(a), a.dtype, n.dtype), self.cast(self.v(b), b.dtype, n.dtype)],
                         _hint(n))

    def op_floor_divide(self, n):
        a, b = self.operands(n)
        if n.dtype.kind == "f":
            return self.emit("Floor", [self.emit("Div", [a, b])], _hint(n))
        # integers: (a - a mod b) / b is exact, and Mod (fmod=0) has the divisor's sign as Python's %
        return self.emit("Div", [self.emit("Sub", [a, self.emit("Mod", [a, b], fmod=0)]), b], _hint(n))

    def op_remainder(self, n):
        a, b = self.operands(n)
        if n.dtype.kind != "f":
            return self.emit("Mod", [a, b], _hint(n), fmod=0)
        q = self.emit("Floor", [self.emit("Div", [a, b])])
        return self.emit("Sub", [a, self.emit("Mul", [q, b])], _hint(n))

    def op_iota(self, n):
        shape, axis = n.shape, n.attrs["axis"]
        if is_concrete(shape):
            return self.const(np.array(n.op.ref(**n.attrs), order="C"), "iota")
        r = self.emit("Range", [self.const(np.int64(0), "zero"), self.scalar(shape[axis]), self.const(np.int64(1), "one")])
        r = self.emit("Reshape", [r, self.ints([-1 if a == axis else 1 for a in range(len(shape))])])
        r = self.emit("Expand", [r, self.shape([1 if a == axis else d for a, d in enumerate(shape)])])
        return self.cast(r, np.int64, n.dtype)

    def op_random_uniform(self, n):
        """The counter-based hash of ``ops/random.py`` in uint64 arithmetic (wrapping, as NumPy's), bit for bit."""
        if self.opset < 18:
            raise GraphcError(f"to_onnx: random_uniform ({fmt_site(n.site)}) needs opset 18 or later (BitwiseXor)")
        key, shape, salt = n.inputs[0], n.attrs["shape"], n.attrs["salt"]
        u64 = lambda v: self.const(np.uint64(v % 2**64), "u64")
        count = self.scalar(size(shape))
        flat = self.emit("Range", [self.const(np.int64(0), "zero"), count, self.const(np.int64(1), "one")], "counter")
        k = self.emit("Cast", [self.v(key)], "key", to=TensorProto.UINT64)
        x = self.emit("Add", [self.emit("Mul", [k, u64(K_KEY)]), u64(salt * K_SALT)], "base")
        x = self.emit("Add", [x, self.emit("Cast", [flat], to=TensorProto.UINT64)])
        x = self.emit("Add", [x, u64(0x9E3779B97F4A7C15)], "splitmix")
        for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None)):
            x = self.emit("BitwiseXor", [x, self.emit("BitShift", [x, u64(shift)], direction="RIGHT")], "splitmix")
            if mul is not None:
                x = self.emit("Mul", [x, u64(mul)], "splitmix")
        top = self.emit("Cast", [self.emit("BitShift", [x, u64(40)], direction="RIGHT")], to=TensorProto.DOUBLE)
        u = self.emit("Cast", [self.emit("Mul", [top, self.const(np.float64(2.0**-24))])], to=_onnx_dtype(n.dtype))
        entries, _ = self.target(shape, None)
        return self.emit("Reshape", [u, self.shape(entries)], _hint(n))

    # --- reductions and matmul ------------------------------------------------------------------------
    def reduce(self, op_type: str, x: str, axes, keepdims: bool, hint: str) -> str:
        if not axes:
            return x
        if op_type == "ReduceSum" or self.opset >= 18:  # axes became an input (ReduceSum in 13)
            return self.emit(op_type, [x, self.ints(list(axes))], hint, keepdims=int(keepdims))
        return self.emit(op_type, [x], hint, axes=list(axes), keepdims=int(keepdims))

    def op_sum(self, n):
        return self.reduce(REDUCE[n.op.name], self.v(n.inputs[0]), n.attrs["axes"], n.attrs["keepdims"], _hint(n))

    op_max = op_min = op_prod = op_sum

    def op_count(self, n):
        dims = n.attrs["dims"]
        if is_concrete(dims):
            return self.c(math.prod(dims), n.dtype)
        return self.cast(self.scalar(size(dims)), np.int64, n.dtype)

    def op_matmul(self, n):
        return self.emit("MatMul", [self.v(i) for i in n.inputs], _hint(n))

    def op_cumulative(self, n):
        x, (axis, reverse, exclusive, combine) = n.inputs[0], (n.attrs[k] for k in ("axis", "reverse", "exclusive", "combine"))
        if combine == "add":
            return self.emit("CumSum", [self.v(x), self.const(np.int64(axis), "axis")], _hint(n),
                             exclusive=int(exclusive), reverse=int(reverse))
        # No ONNX op: a Scan over the axis moved first, carrying the running product or logaddexp.
        perm = [axis] + [a for a in range(x.ndim) if a != axis]
        xt = self.emit("Transpose", [self.v(x)], perm=perm) if axis else self.v(x)
        row = tuple(x.shape[a] for a in perm[1:])
        init = self.emit("Expand", [self.c(COMBINE[combine][1], x.dtype), self.shape(row)], "identity")
        outer, sub = self.scope, _Scope(self.scope)
        self.scope = sub
        s, e = self.fresh("running"), self.fresh("element")
        if combine == "mul":
            r = self.emit("Mul", [s, e], "running")
        else:  # max + log(1 + exp(min - max)), and the max alone when min is -inf (the identity)
            hi, lo = self.emit("Max", [s, e]), self.emit("Min", [s, e])
            d = self.emit("Exp", [self.emit("Sub", [lo, hi])])
            r = self.emit("Add", [hi, self.emit("Log", [self.emit("Add", [d, self.c(1, x.dtype)])])])
            r = self.emit("Where", [self.emit("Equal", [lo, self.c(-np.inf, x.dtype)]), hi, r], "running")
        y = self.emit("Identity", [s if exclusive else r], "out")
        self.scope = outer
        body = helper.make_graph(sub.nodes, self.fresh("cumulative_body"), [_vi(s, x.dtype, row), _vi(e, x.dtype, row)],
                                 [_vi(r, x.dtype, row), _vi(y, x.dtype, row)])
        _, ys = self.emit("Scan", [init, xt], "cumulative", outputs=2, body=body, num_scan_inputs=1,
                          scan_input_directions=[int(reverse)], scan_output_directions=[int(reverse)])
        return self.emit("Transpose", [ys], _hint(n), perm=list(np.argsort(perm))) if axis else ys

    def op_argsort(self, n):
        x, axis = n.inputs[0], n.attrs["axis"]
        _, idx = self.emit("TopK", [self.v(x), self.dim(x.shape[axis])], _hint(n), outputs=2, axis=axis,
                           largest=int(n.attrs["descending"]), sorted=1)  # ties: the lower index first, as a stable sort
        return idx

    # --- shapes -------------------------------------------------------------------------------------
    def op_reshape(self, n):
        x = n.inputs[0]
        entries, allowzero = self.target(n.shape, x.shape)
        return self.emit("Reshape", [self.v(x), self.shape(entries)], _hint(n), **({"allowzero": 1} if allowzero else {}))

    def op_transpose(self, n):
        return self.emit("Transpose", [self.v(n.inputs[0])], _hint(n), perm=list(n.attrs["axes"]))

    def op_broadcast_to(self, n):
        x, shape = n.inputs[0], n.shape
        lead = len(shape) - x.ndim
        # Expand broadcasts both ways: where x already has the (symbolic) dim, 1 needs no value at run time
        entries = [1 if isinstance(d, str) and i >= lead and x.shape[i - lead] == d else d for i, d in enumerate(shape)]
        return self.emit("Expand", [self.v(x), self.shape(entries)], _hint(n))

    def op_concatenate(self, n):
        return self.emit("Concat", [self.v(i) for i in n.inputs], _hint(n), axis=n.attrs["axis"])

    def op_slice(self, n):
        cut = [(a, t) for a, t in enumerate(n.attrs["index"]) if t is not None]
        if not cut:
            return self.emit("Identity", [self.v(n.inputs[0])], _hint(n))
        starts, ends, steps = ([t[k] for _, t in cut] for k in range(3))
        return self.emit("Slice", [self.v(n.inputs[0]), self.ints(starts), self.ints(ends), self.ints([a for a, _ in cut]),
                                   self.ints(steps)], _hint(n))

    def op_unslice(self, n):
        """Zeros with g written at a slice: Pad, after spreading strided axes out with a Gather."""
        g, shape = n.inputs[0], n.attrs["shape"]
        v, nd = self.v(g), g.ndim
        before, after = [0] * nd, [0] * nd
        for a, t in enumerate(n.attrs["index"]):
            if t is None:
                continue
            start, _, step = t
            m = g.shape[a]
            if step == 1 or m <= 1:
                before[a], after[a] = start, shape[a] - start - m
                continue
            # a zero row after g, then every output position reads its row of g or that zero row
            pads = [0] * (2 * nd)
            pads[nd + a] = 1
            v = self.emit("Pad", [v, self.ints(pads)], "spread")
            rows = np.full(shape[a], m, np.int64)
            rows[start:start + (m - 1) * step + 1:step] = np.arange(m)
            v = self.emit("Gather", [v, self.ints(rows)], "spread", axis=a)
        if any(before) or any(after):
            v = self.emit("Pad", [v, self.ints(before + after)], _hint(n))
        return v

    # --- gathers and scatters -----------------------------------------------------------------------
    def index(self, i: Node) -> str:
        return self.v(i) if i.dtype in (np.int32, np.int64) else self.emit("Cast", [self.v(i)], "index", to=TensorProto.INT64)

    def op_take(self, n):
        x, idx = n.inputs
        return self.emit("Gather", [self.v(x), self.index(idx)], _hint(n), axis=n.attrs["axis"])

    def op_pick(self, n):
        z, idx = n.inputs
        i = self.emit("Unsqueeze", [self.cast(self.v(idx), idx.dtype, np.int64), self.ints([-1])])
        return self.emit("Squeeze", [self.emit("GatherElements", [self.v(z), i], axis=-1), self.ints([-1])], _hint(n))

    def op_one_hot(self, n):
        idx, depth = n.inputs[0], n.attrs["depth"]
        i = self.emit("Unsqueeze", [self.index(idx), self.ints([-1])])
        classes = self.const(np.arange(depth, dtype=np.int32 if idx.dtype == np.int32 else np.int64), "classes")
        hit = self.emit("Equal", [i, classes])
        return self.emit("Cast", [hit], _hint(n), to=_onnx_dtype(n.dtype))

    def op_scatter_add(self, n):
        """out[..., idx[j], ...] += g[..., j, ...]: ScatterND (reduction add) into zeros, with the indexed axis first."""
        if self.opset < 16:
            raise GraphcError(f"to_onnx: scatter_add ({fmt_site(n.site)}) needs opset 16 or later (ScatterND reduction)")
        g, idx = n.inputs
        axis, k = n.attrs["axis"], idx.ndim
        perm = list(range(axis, axis + k)) + [a for a in range(g.ndim) if not axis <= a < axis + k]
        gm = self.emit("Transpose", [self.v(g)], perm=perm) if perm != list(range(g.ndim)) else self.v(g)
        rest = tuple(g.shape[a] for a in perm[k:])
        zeros = self.emit("ConstantOfShape", [self.shape((n.attrs["size"],) + rest)], "zeros",
                          value=numpy_helper.from_array(np.zeros(1, n.dtype)))
        where = self.emit("Unsqueeze", [self.cast(self.v(idx), idx.dtype, np.int64), self.ints([-1])])
        out = self.emit("ScatterND", [zeros, where, gm], _hint(n), reduction="add")
        back = list(range(1, axis + 1)) + [0] + list(range(axis + 1, n.ndim))
        return self.emit("Transpose", [out], _hint(n), perm=back) if axis else out

    # --- loops --------------------------------------------------------------------------------------
    def op_scan(self, n):
        body = n.attrs["body"]
        T, rev = n.attrs["length"], int(n.attrs["reverse"])
        C, X = len(body.carry), len(body.xs)
        ins = [self.v(i) for i in n.inputs]
        xs = ins[C:C + X]
        if not xs:  # ONNX Scan counts steps by its scanned inputs: scan a (T,) dummy
            xs = [self.emit("ConstantOfShape", [self.dim(T)], "steps")]
        outer, sub = self.scope, _Scope(self.scope)
        graph_inputs = []
        for p in body.carry + body.xs:
            sub.names[p.id] = self.fresh(p.name)
            graph_inputs.append(_vi(sub.names[p.id], p.dtype, p.shape))
        if not X:
            graph_inputs.append(_vi(self.fresh("step"), np.float32, ()))
        for p, v in zip(body.closure, ins[C + X:]):
            sub.names[p.id] = v  # the loop-invariant value outside, by its name
        self.scope = sub
        self.write(list(body.outputs))
        outs, seen = [], set()
        for o in body.outputs:
            v = sub.lookup(o)
            if v not in sub.made or v in seen:  # a body output must be made by a body node, once
                v = self.emit("Identity", [v], "out")
            seen.add(v)
            outs.append(_vi(v, o.dtype, o.shape))
        self.scope = outer
        done = {o.name for o in outs} | {i.name for i in graph_inputs}
        graph = helper.make_graph(sub.nodes, self.fresh("scan_body"), graph_inputs, outs,
                                  value_info=[vi for vi in sub.value_info if vi.name not in done])
        K = len(body.ys)
        res = self.emit("Scan", ins[:C] + xs, "scan", outputs=C + K, body=graph, num_scan_inputs=len(xs),
                        scan_input_directions=[rev] * len(xs), **({"scan_output_directions": [rev] * K} if K else {}))
        self.scans[n.id] = [res] if C + K == 1 else res
        return self.scans[n.id][0]

    def op_scan_get(self, n):
        return self.scans[n.inputs[0].id][n.attrs["index"]]


def _default_names(outs: list[Node]) -> list[str]:
    names = []
    for k, o in enumerate(outs):
        if o.adjoint_of is not None and o.adjoint_of.name:
            names.append(f"grad_{o.adjoint_of.name}")
        else:
            names.append(o.name or f"output{k}")
    return names


def export(outputs, inputs, path, opset: int, output_names, optimize: bool) -> onnx.ModelProto:
    from .._version import __version__
    outs = [outputs] if isinstance(outputs, Node) else list(outputs)
    ins = [inputs] if isinstance(inputs, Node) else list(inputs)
    for o in outs:
        if not isinstance(o, Node):
            raise GraphcError(f"to_onnx: outputs must be graph nodes, got {type(o).__name__}")
    if not outs:
        raise GraphcError("to_onnx: no outputs")
    seen = set()
    for x in ins:
        if not isinstance(x, Node) or x.op.name != "input":
            raise GraphcError(f"to_onnx: inputs must be gc.input nodes, got {x!r}")
        if x.name in seen:
            raise GraphcError(f"to_onnx: input name {x.name!r} appears twice")
        seen.add(x.name)
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise GraphcError(f"to_onnx: opset {opset!r} is not supported; use {MIN_OPSET} or later (18 by default)")
    names = list(output_names) if output_names is not None else _default_names(outs)
    if len(names) != len(outs) or not all(isinstance(s, str) and s for s in names):
        raise GraphcError(f"to_onnx: output_names must be {len(outs)} non-empty strings, got {output_names!r}")
    roots = outs
    if optimize:
        from ..passes import optimize as run_passes
        roots, _ = run_passes(list(outs))
    ex = _Exporter(ins, opset, names)
    preferred = {}
    for r, name in zip(roots, ex.out_names):
        preferred.setdefault(r.id, name)
    ex.write(roots, preferred)
    graph_outputs, done = [], set()
    for r, name in zip(roots, ex.out_names):
        v = ex.root.lookup(r)
        if v != name:  # the value is an input, a param, a constant or another output: copy it
            ex.root.nodes.append(helper.make_node("Identity", [v], [name], name=name))
        graph_outputs.append(_vi(name, r.dtype, r.shape))
        done.add(name)
    graph = helper.make_graph(ex.root.nodes, "graphc", ex.graph_inputs, graph_outputs, initializer=ex.inits,
                              value_info=[vi for vi in ex.root.value_info if vi.name not in done])
    model = helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="graphc",
                              producer_version=__version__)
    model.doc_string = "graphc graph: " + ", ".join(f"{n} {fmt_shape(r.shape)}" for n, r in zip(ex.out_names, roots))
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
