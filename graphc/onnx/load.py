"""ONNX model -> graphc nodes, for ``gc.from_onnx``.

A value is a graphc node, or *known*: a NumPy array from a Constant node, an integer initializer
or ops on those and on shapes. ``Shape`` gives an input's dims with the symbolic ones as names
(an object array), so the shape arithmetic exporters emit (Shape -> Gather -> Concat -> Reshape)
folds into static shapes with symbolic dims, as graphc's ops want them. Float initializers become
params where the graph computes with them; arguments that must be static (shapes, axes, pads) are
read as known values.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import ops
from ..errors import GraphcError
from ..ir import Node, constant, make, param
from ..ir import input as gc_input
from ..shapes import _factors, _make_dim, broadcast, size


def _dim_name(s: str) -> str:
    """An ONNX dim_param as a graphc dim name (an identifier)."""
    s = re.sub(r"\W", "_", s)
    return s if s and not s[0].isdigit() else f"d_{s}"


def _fold_dims(op: str, a, b):
    """Shape arithmetic on one pair of dims, ints or symbolic names."""
    if not isinstance(a, str) and not isinstance(b, str):
        a, b = int(a), int(b)
        quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1) if b else 0  # toward zero, as ONNX
        return {"Mul": a * b, "Add": a + b, "Sub": a - b, "Div": quotient, "Equal": a == b}[op]
    if op == "Mul" and (isinstance(a, str) or a >= 0) and (isinstance(b, str) or b >= 0):
        return size((a, b))
    if op == "Div":
        (ca, na), (cb, nb) = _factors(a if isinstance(a, str) else int(a)), _factors(b if isinstance(b, str) else int(b))
        if not nb - na and cb and ca % cb == 0:
            return _make_dim(ca // cb, na - nb)
    if op == "Equal" and isinstance(a, str) and isinstance(b, str) and a == b:
        return True
    if op == "Equal" and any(not isinstance(v, str) and v < 0 for v in (a, b)):
        return False  # a dim is never negative (exporters test shapes against -1)
    raise GraphcError(f"shape arithmetic {a} {op} {b} on symbolic dims is not supported")


def _as_known(arr: np.ndarray) -> np.ndarray:
    """An object array of dims becomes int64 once no symbolic dim is left."""
    if arr.dtype == object and not any(isinstance(v, str) for v in arr.flat):
        return arr.astype(np.bool_ if arr.size and isinstance(arr.flat[0], (bool, np.bool_)) else np.int64)
    return arr


NUMPY_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Less": np.less,
                "Greater": np.greater, "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal, "And": np.logical_and,
                "Or": np.logical_or, "Xor": np.logical_xor}


def _trunc_div(a, b):
    """ONNX integer Div (and fmod's quotient): toward zero."""
    return ops.floor_divide(ops.abs(a), ops.abs(b)) * (ops.sign(a) * ops.sign(b))


def _binary(op: str, a: Node, b: Node) -> Node:
    if op == "Div":
        return a / b if a.dtype.kind == "f" else _trunc_div(a, b)
    if op == "Pow":
        return a ** ops.cast(b, a.dtype)
    if op == "Xor":
        return ops.ew("ne", ops.cast(a, np.bool_), ops.cast(b, np.bool_))
    return {"Add": lambda: a + b, "Sub": lambda: a - b, "Mul": lambda: a * b, "Equal": lambda: ops.ew("eq", a, b),
            "Less": lambda: a < b, "Greater": lambda: a > b, "LessOrEqual": lambda: a <= b, "GreaterOrEqual": lambda: a >= b,
            "And": lambda: ops.logical_and(a, b), "Or": lambda: ops.logical_or(a, b), "Max": lambda: ops.maximum(a, b),
            "Min": lambda: ops.minimum(a, b)}[op]()


UNARY = {"Relu": ops.relu, "Sigmoid": ops.sigmoid, "Tanh": ops.tanh, "Exp": ops.exp, "Log": ops.log, "Sqrt": ops.sqrt,
         "Abs": ops.abs, "Neg": lambda x: -x, "Erf": ops.erf, "Sin": ops.sin, "Cos": ops.cos, "Tan": ops.tan, "Asin": ops.arcsin,
         "Acos": ops.arccos, "Atan": ops.arctan, "Sinh": ops.sinh, "Cosh": ops.cosh, "Asinh": ops.arcsinh, "Acosh": ops.arccosh,
         "Atanh": ops.arctanh, "Floor": ops.floor, "Ceil": ops.ceil, "Round": ops.round, "Sign": ops.sign,
         "Reciprocal": ops.reciprocal, "Softplus": ops.softplus, "Softsign": ops.softsign, "Not": ops.logical_not,
         "IsNaN": lambda x: ops.ew("ne", x, x), "IsInf": lambda x: ops.abs(x) == np.inf,
         "Mish": lambda x: x * ops.tanh(ops.softplus(x))}


class _Loader:
    """The values of one ONNX graph; a Scan body's loader sees its parent's values by name."""

    def __init__(self, graph: onnx.GraphProto, opset: int, parent: _Loader | None = None):
        self.graph, self.opset, self.parent = graph, opset, parent
        self.inits = {t.name: t for t in graph.initializer}
        self.env: dict[str, Node | np.ndarray | _Unsupported] = {}
        self.params: dict[str, Node] = parent.params if parent else {}
        self.consts: dict[str, Node] = {}

    def graph_inputs(self) -> list[Node]:
        out = []
        for vi in self.graph.input:
            if vi.name in self.inits:
                continue  # an initializer that is also an input: a param (its default value)
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
                raise GraphcError(f"from_onnx: input {vi.name!r} is not a tensor of known rank")
            dims = []
            for k, d in enumerate(t.shape.dim):
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                else:
                    dims.append(_dim_name(d.dim_param or f"{vi.name}_{k}"))
            x = gc_input(vi.name, tuple(dims), helper.tensor_dtype_to_np_dtype(t.elem_type))
            self.env[vi.name] = x
            out.append(x)
        return out

    # --- values ---------------------------------------------------------------------------------------
    def _owner(self, name: str) -> _Loader:
        ld = self
        while ld is not None:
            if name in ld.env or name in ld.inits:
                return ld
            ld = ld.parent
        return self

    def known(self, name: str) -> np.ndarray | None:
        """A value known without running the graph; float initializers are params, not known."""
        ld = self._owner(name)
        v = ld.env.get(name)
        if isinstance(v, _Unsupported):
            raise GraphcError(f"value {name!r} is an extra output of {v.op}, which graphc does not compute")
        if isinstance(v, np.ndarray):
            return v
        if v is None and name in ld.inits:
            arr = numpy_helper.to_array(ld.inits[name])
            return arr if arr.dtype.kind != "f" else None
        return None

    def static(self, name: str, what: str) -> np.ndarray:
        v = self.known(name)
        ld = self._owner(name)
        if v is None and name in ld.inits and name not in ld.env:
            v = numpy_helper.to_array(ld.inits[name])
        if v is None:
            raise GraphcError(f"its {what} ({name!r}) must be a constant, computed from constants and shapes only")
        return v

    def tensor(self, name: str) -> Node | None:
        if not name:
            return None
        arr = self.known(name)  # (refuses an extra output graphc does not compute)
        ld = self._owner(name)
        v = ld.env.get(name)
        if isinstance(v, Node):
            return v
        if v is None and name in ld.inits and arr is None:
            if name not in self.params:
                self.params[name] = param(name, numpy_helper.to_array(ld.inits[name]))
            return self.params[name]
        if arr is None:
            raise GraphcError(f"value {name!r} is read before any node computes it")
        if name not in ld.consts:
            ld.consts[name] = constant(arr) if arr.dtype != object else _dims_node(arr)
        return ld.consts[name]

    def value(self, name: str):
        """Known array when known, else the node."""
        k = self.known(name)
        return k if k is not None else self.tensor(name)

    # --- the graph --------------------------------------------------------------------------------------
    def run(self) -> list[Node]:
        """Every node in order; returns the graph's outputs."""
        for k, node in enumerate(self.graph.node):
            label = f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node #{k}"
            fn = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if fn is None:
                domain = f" of domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
                raise GraphcError(f"from_onnx: ONNX op {node.op_type!r}{domain} ({label}) is not supported")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            attrs = {key: v.decode() if isinstance(v, bytes) else v for key, v in attrs.items()}
            try:
                outs = fn(self, node, attrs)
            except GraphcError as e:
                msg = str(e)
                raise type(e)(msg if msg.startswith("from_onnx:") else f"from_onnx: {label}: {msg}") from None
            for name, v in zip(node.output, outs):
                if name:
                    known = None if isinstance(v, Node) else np.array(v, dtype=object if isinstance(v, str) else None)
                    self.env[name] = v if known is None else _as_known(known)
            for name in node.output[len(outs):]:
                if name:
                    self.env[name] = _Unsupported(node.op_type, name)
        try:
            return [self.tensor(o.name) for o in self.graph.output]
        except GraphcError as e:
            raise GraphcError(f"from_onnx: {e}") from None


def _dims_node(arr: np.ndarray) -> Node:
    """Shape values with symbolic dims as a node: each symbolic dim is counted when the step runs."""
    parts = [constant(np.int64(d)) if isinstance(d, int) else make("count", (), dims=(d,), dtype=np.dtype(np.int64))
             for d in _ints(arr)]
    if arr.ndim == 0:
        return parts[0]
    return ops.reshape(ops.concatenate([ops.reshape(p, (1,)) for p in parts]), arr.shape)


class _Unsupported:
    """An optional output (a pool's indices, a norm's statistics) that graphc does not compute."""

    def __init__(self, op: str, name: str):
        self.op, self.name = op, name


def _axis(a: int, ndim: int) -> int:
    return a + ndim if a < 0 else a


def _shape(v) -> tuple:
    return v.shape if isinstance(v, Node) else tuple(np.shape(v))


def _ints(arr) -> list:
    return [v if isinstance(v, str) else int(v) for v in np.asarray(arr).reshape(-1).tolist()]


# --- handlers: (loader, node, attrs) -> output values --------------------------------------------------
def _unary(op):
    def f(ld, node, a):
        return [UNARY[op](ld.tensor(node.input[0]))]
    return f


def _binary_op(op):
    def f(ld, node, a):
        ka, kb = ld.known(node.input[0]), ld.known(node.input[1])
        if ka is not None and kb is not None and op != "Pow":
            if ka.dtype == object or kb.dtype == object:
                return [np.frompyfunc(lambda x, y: _fold_dims(op, x, y), 2, 1)(ka, kb)]
            if op == "Div":
                if ka.dtype.kind == "f":
                    return [np.divide(ka, kb).astype(ka.dtype)]
                return [np.abs(ka) // np.abs(kb) * np.sign(ka) * np.sign(kb)]  # toward zero
            return [np.asarray(NUMPY_BINARY[op](ka, kb))]
        return [_binary(op, ld.tensor(node.input[0]), ld.tensor(node.input[1]))]
    return f


def _variadic(op):
    def f(ld, node, a):
        xs = [ld.tensor(i) for i in node.input]
        out = xs[0]
        for x in xs[1:]:
            out = {"Max": ops.maximum, "Min": ops.minimum}.get(op, lambda p, q: p + q)(out, x)
        return [out / float(len(xs)) if op == "Mean" else out]
    return f


def _identity(ld, node, a):
    v = ld.value(node.input[0])
    return [v] + ([ops.broadcast_to(constant(True), _shape(v))] if node.op_type == "Dropout" and len(node.output) > 1 else [])


def _dropout(ld, node, a):
    if len(node.input) > 2 and node.input[2] and bool(ld.static(node.input[2], "training_mode")):
        raise GraphcError("training_mode=True is not supported: export the model in eval mode")
    return _identity(ld, node, a)


def _cast(ld, node, a):
    dt = helper.tensor_dtype_to_np_dtype(a["to"]) if node.op_type == "Cast" else ld.tensor(node.input[1]).dtype
    k = ld.known(node.input[0])
    if k is not None and (k.dtype != object or dt.kind in "iu"):
        return [k if k.dtype == object else k.astype(dt)]
    return [ops.cast(ld.tensor(node.input[0]), dt)]


def _constant(ld, node, a):
    if "value" in a:
        return [numpy_helper.to_array(a["value"])]
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
        if key in a:
            return [np.asarray(a[key], dt)]
    raise GraphcError(f"Constant with {', '.join(a)} is not supported")


def _shape_op(ld, node, a):
    dims = list(_shape(ld.value(node.input[0])))
    start, end = a.get("start", 0), a.get("end", len(dims))
    return [_as_known(np.array(dims[slice(start, end)] if dims else [], dtype=object))]


def _size_op(ld, node, a):
    n = size(_shape(ld.value(node.input[0])))
    return [np.array(n, dtype=object) if isinstance(n, str) else np.array(n, np.int64)]


def _constant_of_shape(ld, node, a):
    shape = tuple(_ints(ld.static(node.input[0], "shape")))
    fill = numpy_helper.to_array(a["value"]).reshape(()) if "value" in a else np.float32(0)
    if all(isinstance(d, int) for d in shape):
        return [np.full(shape, fill, dtype=fill.dtype)]
    return [ops.broadcast_to(constant(fill), shape)]


def _reshape(ld, node, a):
    x, shape = ld.value(node.input[0]), _ints(ld.static(node.input[1], "shape"))
    old = _shape(x)
    target = tuple(old[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape))
    if isinstance(x, np.ndarray) and all(isinstance(d, int) for d in target):
        return [x.reshape(target)]
    return [ops.reshape(ld.tensor(node.input[0]), target)]


def _flatten(ld, node, a):
    x = ld.value(node.input[0])
    old = _shape(x)
    k = _axis(a.get("axis", 1), len(old))
    target = (size(old[:k]) if k else 1, size(old[k:]))
    return [x.reshape(target) if isinstance(x, np.ndarray) and all(isinstance(d, int) for d in target)
            else ops.reshape(ld.tensor(node.input[0]), target)]


def _transpose(ld, node, a):
    x = ld.value(node.input[0])
    perm = a.get("perm", list(reversed(range(len(_shape(x))))))
    return [np.transpose(x, perm) if isinstance(x, np.ndarray) else ops.transpose(x, perm)]


def _concat(ld, node, a):
    vals = [ld.value(i) for i in node.input]
    if all(isinstance(v, np.ndarray) for v in vals):
        return [np.concatenate([v.astype(object) if any(w.dtype == object for w in vals) else v for v in vals], a["axis"])]
    return [ops.concatenate([ld.tensor(i) for i in node.input], a["axis"])]


def _gather(ld, node, a):
    x, idx = ld.value(node.input[0]), ld.value(node.input[1])
    axis = _axis(a.get("axis", 0), len(_shape(x)))
    if isinstance(x, np.ndarray) and isinstance(idx, np.ndarray):
        return [np.take(x, idx, axis)]
    if isinstance(idx, np.ndarray):
        d = _shape(x)[axis]
        idx = constant(np.where(idx < 0, idx + d, idx).astype(np.int64)) if isinstance(d, int) else constant(idx)
    return [ops.take(ld.tensor(node.input[0]), idx, axis)]


def _axes_arg(ld, node, a, since: int):
    """Axes: an input from opset ``since`` on (optional), an attribute before."""
    if ld.opset >= since:
        return _ints(ld.static(node.input[1], "axes")) if len(node.input) > 1 and node.input[1] else None
    return a.get("axes")


def _unsqueeze(ld, node, a):
    x = ld.value(node.input[0])
    old = list(_shape(x))
    nd = len(old) + len(_axes_arg(ld, node, a, 13))
    new = list(old)
    for ax in sorted(_axis(v, nd) for v in _axes_arg(ld, node, a, 13)):
        new.insert(ax, 1)
    return [x.reshape(new) if isinstance(x, np.ndarray) else ops.reshape(x, tuple(new))]


def _squeeze(ld, node, a):
    x, axes = ld.value(node.input[0]), _axes_arg(ld, node, a, 13)
    if isinstance(x, np.ndarray):
        return [np.squeeze(x, tuple(axes) if axes else None)]
    return [ops.squeeze(x, tuple(axes) if axes else None)]


REDUCE = {"ReduceSum": ops.sum, "ReduceMean": ops.mean, "ReduceMax": ops.max, "ReduceMin": ops.min, "ReduceProd": ops.prod,
          "ReduceSumSquare": lambda x, ax, k: ops.sum(x * x, ax, k), "ReduceL1": lambda x, ax, k: ops.sum(ops.abs(x), ax, k),
          "ReduceL2": lambda x, ax, k: ops.sqrt(ops.sum(x * x, ax, k)),
          "ReduceLogSum": lambda x, ax, k: ops.log(ops.sum(x, ax, k)),
          "ReduceLogSumExp": lambda x, ax, k: ops.logsumexp(x, ax, k)}


def _reduce(ld, node, a):
    axes = _axes_arg(ld, node, a, 13 if node.op_type == "ReduceSum" else 18)
    if not axes and a.get("noop_with_empty_axes", 0):
        return [ld.value(node.input[0])]
    keep = bool(a.get("keepdims", 1))
    k = ld.known(node.input[0])
    if k is not None and node.op_type == "ReduceProd" and k.ndim == 1:  # the size of some dims
        n = size(tuple(_ints(k)))
        return [np.array([n] if keep else n, dtype=object)]
    return [REDUCE[node.op_type](ld.tensor(node.input[0]), tuple(axes) if axes else None, keep)]


def _arg(ld, node, a):
    if a.get("select_last_index", 0):
        raise GraphcError("select_last_index=1 is not supported")
    fn = ops.argmax if node.op_type == "ArgMax" else ops.argmin
    return [fn(ld.tensor(node.input[0]), a.get("axis", 0), bool(a.get("keepdims", 1)))]


def _softmax(ld, node, a):
    x = ld.tensor(node.input[0])
    fn = {"Softmax": ops.softmax, "LogSoftmax": ops.log_softmax}[node.op_type]
    if ld.opset >= 13:
        return [fn(x, a.get("axis", -1))]
    k = _axis(a.get("axis", 1), x.ndim)  # before opset 13: over all axes from `axis` on, flattened
    flat = ops.reshape(x, (size(x.shape[:k]) if k else 1, size(x.shape[k:])))
    return [ops.reshape(fn(flat, -1), x.shape)]


def _gemm(ld, node, a):
    A, B = ld.tensor(node.input[0]), ld.tensor(node.input[1])
    y = (A.T if a.get("transA", 0) else A) @ (B.T if a.get("transB", 0) else B)
    if a.get("alpha", 1.0) != 1.0:
        y = y * a["alpha"]
    if len(node.input) > 2 and node.input[2]:
        C = ld.tensor(node.input[2])
        y = y + (C * a["beta"] if a.get("beta", 1.0) != 1.0 else C)
    return [y]


def _pads(a, spatial, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(before, after) per spatial axis from ``pads`` or ``auto_pad``."""
    k = len(kernel)
    mode = a.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", "VALID"):
        pads = a.get("pads", [0] * 2 * k) if mode == "NOTSET" else [0] * 2 * k
        return [(int(pads[i]), int(pads[i + k])) for i in range(k)]
    out = []
    for n, kk, s, d in zip(spatial, kernel, strides, dilations):
        if not isinstance(n, int):
            raise GraphcError(f"auto_pad={mode} over a symbolic dim {n!r} is not supported")
        total = max((-(-n // s) - 1) * s + (kk - 1) * d + 1 - n, 0)
        out.append((total // 2, total - total // 2) if mode == "SAME_UPPER" else (total - total // 2, total // 2))
    return out


def _to_2d(x: Node, k: int) -> Node:
    """A 1-d (N, C, L) image as (N, C, 1, L), for the 2-d ops."""
    return x if k == 2 else ops.reshape(x, x.shape[:2] + (1,) + x.shape[2:])


def _spatial(node_type: str, k: int) -> None:
    if k not in (1, 2):
        raise GraphcError(f"{node_type} over {k} spatial dims: only 1-d and 2-d are supported")


def _conv(ld, node, a):
    x, w = ld.tensor(node.input[0]), ld.tensor(node.input[1])
    b = ld.tensor(node.input[2]) if len(node.input) > 2 else None
    k = w.ndim - 2
    _spatial(node.op_type, k)
    strides, dil = a.get("strides", [1] * k), a.get("dilations", [1] * k)
    pads = _pads(a, x.shape[2:], w.shape[2:], strides, dil)
    x, w = _to_2d(x, k), _to_2d(w, k)
    if k == 1:
        strides, dil, pads = [1, *strides], [1, *dil], [(0, 0), *pads]
    if node.op_type == "ConvTranspose":
        if "output_shape" in a or any(p != q for p, q in pads):
            raise GraphcError("output_shape and asymmetric pads are not supported")
        out_pad = a.get("output_padding", [0] * k)
        y = ops.conv_transpose2d(x, w, b, tuple(strides), tuple(p for p, _ in pads), tuple([0] * (2 - k) + list(out_pad)),
                                 tuple(dil), a.get("group", 1))
    else:
        if any(p != q for p, q in pads):
            x, pads = ops.pad(x, [(0, 0), (0, 0), *pads]), [(0, 0)] * 2
        y = ops.conv2d(x, w, b, tuple(strides), tuple(p for p, _ in pads), tuple(dil), a.get("group", 1))
    return [y if k == 2 else ops.reshape(y, y.shape[:2] + y.shape[3:])]


def _pool(ld, node, a):
    x = ld.tensor(node.input[0])
    kernel = a["kernel_shape"]
    k = len(kernel)
    _spatial(node.op_type, k)
    if any(d != 1 for d in a.get("dilations", [1] * k)):
        raise GraphcError("dilated pooling is not supported")
    strides = a.get("strides", [1] * k)
    pads = _pads(a, x.shape[2:], kernel, strides, [1] * k)
    x = _to_2d(x, k)
    if k == 1:
        kernel, strides, pads = [1, *kernel], [1, *strides], [(0, 0), *pads]
    is_max = node.op_type == "MaxPool"
    include = bool(a.get("count_include_pad", 0))
    if any(p != q or p > kk // 2 for (p, q), kk in zip(pads, kernel)):  # graphc's own padding is symmetric, up to k // 2
        if not is_max and not include:
            raise GraphcError("asymmetric pads with count_include_pad=0 are not supported")
        x = ops.pad(x, [(0, 0), (0, 0), *pads], value=-np.inf if is_max else 0.0)
        pads = [(0, 0)] * 2
    pad = tuple(p for p, _ in pads)
    ceil = bool(a.get("ceil_mode", 0))
    if is_max:
        y = ops.max_pool2d(x, tuple(kernel), tuple(strides), pad, ceil)
    else:
        y = ops.avg_pool2d(x, tuple(kernel), tuple(strides), pad, ceil, count_include_pad=include)
    return [y if k == 2 else ops.reshape(y, y.shape[:2] + y.shape[3:])]


def _global_pool(ld, node, a):
    x = ld.tensor(node.input[0])
    return [(ops.mean if node.op_type == "GlobalAveragePool" else ops.max)(x, tuple(range(2, x.ndim)), True)]


def _channel(v: Node, ndim: int) -> Node:
    """A per-channel (C,) vector shaped to broadcast over (N, C, ...)."""
    return ops.reshape(v, (v.shape[0],) + (1,) * (ndim - 2))


def _batch_norm(ld, node, a):
    if a.get("training_mode", 0):
        raise GraphcError("training_mode=1 is not supported: export the model in eval mode")
    x, scale, b, mean, var = (ld.tensor(i) for i in node.input[:5])
    c = lambda v: _channel(v, x.ndim)
    return [(x - c(mean)) / ops.sqrt(c(var) + a.get("epsilon", 1e-5)) * c(scale) + c(b)]


def _instance_norm(ld, node, a):
    x, scale, b = (ld.tensor(i) for i in node.input[:3])
    axes = tuple(range(2, x.ndim))
    d = x - ops.mean(x, axes, keepdims=True)
    y = d / ops.sqrt(ops.mean(d * d, axes, keepdims=True) + a.get("epsilon", 1e-5))
    return [y * _channel(scale, x.ndim) + _channel(b, x.ndim)]


def _layer_norm(ld, node, a):
    x = ld.tensor(node.input[0])
    axes = tuple(range(_axis(a.get("axis", -1), x.ndim), x.ndim))
    d = x - ops.mean(x, axes, keepdims=True)
    y = d / ops.sqrt(ops.mean(d * d, axes, keepdims=True) + a.get("epsilon", 1e-5)) * ld.tensor(node.input[1])
    return [y + ld.tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else y]


def _expand(ld, node, a):
    x, shape = ld.value(node.input[0]), tuple(_ints(ld.static(node.input[1], "shape")))
    out = broadcast(_shape(x), shape)
    if isinstance(x, np.ndarray) and all(isinstance(d, int) for d in out):
        return [np.broadcast_to(x, out).copy()]
    return [ops.broadcast_to(ld.tensor(node.input[0]), out)]


def _where(ld, node, a):
    vals = [ld.value(i) for i in node.input]
    if all(isinstance(v, np.ndarray) and v.dtype != object for v in vals):
        return [np.where(*vals)]
    return [ops.where(*(ld.tensor(i) for i in node.input))]


def _slice(ld, node, a):
    x = ld.value(node.input[0])
    shape = _shape(x)
    if ld.opset >= 10:
        arg = lambda i, what: _ints(ld.static(node.input[i], what)) if len(node.input) > i and node.input[i] else None
        starts, ends, axes, steps = arg(1, "starts"), arg(2, "ends"), arg(3, "axes"), arg(4, "steps")
    else:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    axes = [_axis(v, len(shape)) for v in (axes or range(len(starts)))]
    steps = steps or [1] * len(starts)
    key, gathers = [slice(None)] * len(shape), []
    for ax, s, e, st in zip(axes, starts, ends, steps):
        d = shape[ax]
        if isinstance(d, str):
            if (s, st) != (0, 1) or e < 2**31 - 1:
                raise GraphcError(f"slicing symbolic dim {d!r} other than whole is not supported")
            continue
        if st > 0:
            key[ax] = slice(*slice(s, e, st).indices(d))
        else:
            gathers.append((ax, list(range(*slice(s, e, st).indices(d)))))
    if isinstance(x, np.ndarray):
        x = x[tuple(key)]
        for ax, rows in gathers:
            x = np.take(x, rows, ax)
        return [x]
    x = x[tuple(key)]
    for ax, rows in gathers:  # a negative step: a gather of the rows in their order
        x = ops.take(x, constant(np.asarray(rows, np.int64)), ax)
    return [x]


def _split(ld, node, a):
    x = ld.tensor(node.input[0])
    axis = _axis(a.get("axis", 0), x.ndim)
    n = x.shape[axis]
    if ld.opset >= 13 and len(node.input) > 1 and node.input[1]:
        sizes = _ints(ld.static(node.input[1], "split"))
    elif "split" in a:
        sizes = list(a["split"])
    else:
        parts = a.get("num_outputs", len(node.output))
        step = -(-n // parts)
        sizes = [min(step, n - i) for i in range(0, n, step)]
    points = np.cumsum(sizes)[:-1].tolist()
    return ops.split(x, points, axis)


def _pad(ld, node, a):
    x = ld.tensor(node.input[0])
    mode = a.get("mode", "constant")
    if ld.opset >= 11:
        pads = _ints(ld.static(node.input[1], "pads"))
        value = ld.static(node.input[2], "constant_value").item() if len(node.input) > 2 and node.input[2] else 0
        axes = _ints(ld.static(node.input[3], "axes")) if len(node.input) > 3 and node.input[3] else list(range(x.ndim))
    else:
        pads, value, axes = list(a["pads"]), a.get("value", 0.0), list(range(x.ndim))
    widths = [(0, 0)] * x.ndim
    for i, ax in enumerate(axes):
        widths[_axis(ax, x.ndim)] = (pads[i], pads[i + len(axes)])
    if any(p < 0 for w in widths for p in w):
        raise GraphcError("negative pads (crops) are not supported")
    return [ops.pad(x, widths, mode={"edge": "replicate", "wrap": "circular"}.get(mode, mode), value=value)]


def _clip(ld, node, a):
    x = ld.tensor(node.input[0])
    if ld.opset >= 11:
        lo, hi = (ld.value(node.input[i]) if len(node.input) > i and node.input[i] else None for i in (1, 2))
        lo, hi = (v.item() if isinstance(v, np.ndarray) else v for v in (lo, hi))
    else:
        lo, hi = a.get("min"), a.get("max")
    return [ops.clip(x, lo, hi)]


def _activation(ld, node, a):
    x, t = ld.tensor(node.input[0]), node.op_type
    if t == "LeakyRelu":
        return [ops.leaky_relu(x, a.get("alpha", 0.01))]
    if t == "Elu":
        return [ops.elu(x, a.get("alpha", 1.0))]
    if t == "Selu":
        return [ops.elu(x, a.get("alpha", 1.6732632423543772)) * a.get("gamma", 1.0507009873554805)]
    if t == "HardSigmoid":
        return [ops.clip(x * a.get("alpha", 0.2) + a.get("beta", 0.5), 0.0, 1.0)]
    if t == "HardSwish":
        return [x * ops.clip(x * (1 / 6) + 0.5, 0.0, 1.0)]
    if t == "Gelu":
        return [ops.gelu(x, a.get("approximate", "none"))]
    slope = ld.tensor(node.input[1])  # PRelu
    return [ops.where(x < 0, x * slope, x)]


def _mod(ld, node, a):
    x, y = ld.tensor(node.input[0]), ld.tensor(node.input[1])
    if not a.get("fmod", 0):
        return [ops.remainder(x, y)]
    return [x - (ops.trunc(x / y) if x.dtype.kind == "f" else _trunc_div(x, y)) * y]  # C's fmod: the sign of x


def _range(ld, node, a):
    start, limit, delta = (ld.static(i, "bound") for i in node.input)
    if limit.dtype == object:
        if start.item() != 0 or delta.item() != 1:
            raise GraphcError("a range over a symbolic dim must start at 0 with step 1")
        return [ops.arange(limit.item(), dtype=start.dtype)]
    return [np.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


def _misc(ld, node, a):
    t = node.op_type
    x = ld.tensor(node.input[0])
    if t == "MatMul":
        return [ops.matmul(x, ld.tensor(node.input[1]))]
    if t == "Tile":
        return [ops.tile(x, tuple(_ints(ld.static(node.input[1], "repeats"))))]
    if t == "CumSum":
        axis = int(ld.static(node.input[1], "axis"))
        return [ops.cumsum(x, axis, reverse=bool(a.get("reverse", 0)), exclusive=bool(a.get("exclusive", 0)))]
    if t == "TopK":
        k = int(ld.static(node.input[1], "K").reshape(-1)[0])
        return list(ops.topk(x, k, a.get("axis", -1), bool(a.get("largest", 1))))
    if t == "GatherElements":
        return [ops.take_along_axis(x, ld.tensor(node.input[1]), a.get("axis", 0))]
    if t == "Trilu":
        k = int(ld.static(node.input[1], "k")) if len(node.input) > 1 and node.input[1] else 0
        return [ops.triu(x, k) if a.get("upper", 1) else ops.tril(x, k)]
    if t == "OneHot":
        depth = int(ld.static(node.input[1], "depth").reshape(-1)[0])
        off, on = ld.static(node.input[2], "values").reshape(-1)
        y = ops.one_hot(x, depth, np.asarray(on).dtype) * (on - off) + off
        axis = _axis(a.get("axis", -1), y.ndim)
        perm = tuple(range(axis)) + (y.ndim - 1,) + tuple(range(axis, y.ndim - 1))
        return [y if axis == y.ndim - 1 else ops.transpose(y, perm)]
    raise AssertionError(t)


def _scan(ld, node, a):
    """An ONNX Scan as ``gc.scan``: the body graph is read inside the traced step function, with its
    state inputs bound to the carry and its scan inputs to the step's slices."""
    g, m = a["body"], a["num_scan_inputs"]
    n = len(node.input) - m
    k = len(g.output) - n
    if any(a.get(key) and any(a[key]) for key in ("scan_input_axes", "scan_output_axes")):
        raise GraphcError("scan axes other than 0 are not supported")
    dirs = set(a.get("scan_input_directions", [0] * m)) | set(a.get("scan_output_directions", [0] * k))
    if len(dirs) > 1:
        raise GraphcError("scan inputs and outputs in different directions are not supported")

    def step(carry, xs):
        sub = _Loader(g, ld.opset, ld)
        for vi, v in zip(g.input, list(carry) + list(xs)):
            sub.env[vi.name] = v
        outs = sub.run()
        return outs[:n], outs[n:]
    init, xs = [ld.tensor(i) for i in node.input[:n]], [ld.tensor(i) for i in node.input[n:]]
    last, ys = ops.scan(step, init, xs, reverse=bool(dirs.pop()) if dirs else False)
    return list(last) + list(ys)


def _einsum(ld, node, a):
    return [ops.einsum(a["equation"], *(ld.tensor(i) for i in node.input))]


OPS = {t: _unary(t) for t in UNARY}
OPS |= {t: _binary_op(t) for t in ("Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                                   "And", "Or", "Xor")}
OPS |= {t: _variadic(t) for t in ("Max", "Min", "Sum", "Mean")}
OPS |= {t: _reduce for t in REDUCE}
OPS |= {t: _activation for t in ("LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Gelu", "PRelu")}
OPS |= {t: _misc for t in ("MatMul", "Tile", "CumSum", "TopK", "GatherElements", "Trilu", "OneHot")}
OPS |= {"Identity": _identity, "Dropout": _dropout, "Cast": _cast, "CastLike": _cast, "Constant": _constant, "Shape": _shape_op,
        "Size": _size_op, "ConstantOfShape": _constant_of_shape, "Reshape": _reshape, "Flatten": _flatten,
        "Transpose": _transpose, "Concat": _concat, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
        "ArgMax": _arg, "ArgMin": _arg, "Softmax": _softmax, "LogSoftmax": _softmax, "Gemm": _gemm, "Conv": _conv,
        "ConvTranspose": _conv, "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _global_pool,
        "GlobalMaxPool": _global_pool, "BatchNormalization": _batch_norm, "InstanceNormalization": _instance_norm,
        "LayerNormalization": _layer_norm, "Expand": _expand, "Where": _where, "Slice": _slice, "Split": _split, "Pad": _pad,
        "Clip": _clip, "Mod": _mod, "Range": _range, "Einsum": _einsum, "Scan": _scan}


def load(path) -> tuple[list[Node], list[Node], list[Node]]:
    model = path if isinstance(path, onnx.ModelProto) else onnx.load(os.fspath(path))
    ld = _Loader(model.graph, next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1))
    inputs = ld.graph_inputs()
    outputs = ld.run()
    return inputs, [ld.params[t.name] for t in model.graph.initializer if t.name in ld.params], outputs

