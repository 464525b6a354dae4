"""Elementwise primitives. Each entry: dtype rule, NumPy reference, gradient, scalar lowering.

The scalar lowering is one Python expression over the operands ``{0}, {1}, ...``;
the fused NumPy, CPU and CUDA paths all derive from it. ``g*`` functions
(``gexp`` ...) are the backends' own accurate, vectorizable float math.
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError
from ..ir import Node, as_node, defop, make
from ..shapes import broadcast

FLOAT, SAME, BOOL = "float", "same", "bool"


def _infer(rule: str):
    def infer(*xs: Node, **attrs):
        shape = broadcast(*(x.shape for x in xs))
        if rule == "cast":
            return shape, np.dtype(attrs["dtype"])
        if rule == "where":
            if xs[0].dtype != np.bool_:
                raise DTypeError(f"condition has dtype {xs[0].dtype}, expected bool")
            return shape, np.result_type(xs[1].dtype, xs[2].dtype)
        dt = np.result_type(*(x.dtype for x in xs))
        if rule == BOOL:
            return shape, np.dtype(np.bool_)
        if rule == FLOAT and dt.kind != "f":
            raise DTypeError(f"expects float operands, got {', '.join(str(x.dtype) for x in xs)}; cast with astype")
        if dt == np.bool_ and rule == SAME:
            raise DTypeError("arithmetic on bool; cast with astype")
        return shape, dt
    return infer


def _def(name: str, rule: str, ref, grad, scalar: str, doc: str = "") -> None:
    defop(name, "elementwise", _infer(rule), ref, grad, scalar, doc)


def ew(name: str, *args, **attrs) -> Node:
    """Build an elementwise node; Python scalars take the dtype of the node operand."""
    like = next((a for a in args if isinstance(a, Node)), None)
    return make(name, tuple(as_node(a, like) for a in args), **attrs)


def _in(n: Node, i: int = 0) -> Node:
    return n.inputs[i]


def _np_sigmoid(x):
    # exp of -|x| never overflows; both branches are exact where they are used.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _np_softplus(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


# --- unary ------------------------------------------------------------------------
_def("neg", SAME, np.negative, lambda g, n: [-g], "(-{0})")
_def("exp", FLOAT, np.exp, lambda g, n: [g * n], "gexp({0})")
_def("log", FLOAT, np.log, lambda g, n: [g / _in(n)], "glog({0})")
_def("log1p", FLOAT, np.log1p, lambda g, n: [g / (_in(n) + 1)], "glog1p({0})")
_def("tanh", FLOAT, np.tanh, lambda g, n: [g * (1 - n * n)], "gtanh({0})")
_def("sigmoid", FLOAT, _np_sigmoid, lambda g, n: [g * (n * (1 - n))], "gsigmoid({0})")
_def("softplus", FLOAT, _np_softplus, lambda g, n: [g * sigmoid(_in(n))], "gsoftplus({0})")
_def("sqrt", FLOAT, np.sqrt, lambda g, n: [g / (n * 2)], "np.sqrt({0})")
_def("abs", SAME, np.abs, lambda g, n: [g * sign(_in(n))], "abs({0})")
_def("sign", SAME, np.sign, lambda g, n: [None], "np.sign({0})")
_def("stop_gradient", SAME, lambda x: x, lambda g, n: [None], "{0}")
_def("cast", "cast", lambda x, dtype: x.astype(dtype),
     lambda g, n: [cast(g, _in(n).dtype) if _in(n).dtype.kind == "f" else None], "{dtype}({0})")

# --- binary -----------------------------------------------------------------------
_def("add", SAME, np.add, lambda g, n: [g, g], "({0} + {1})")
_def("sub", SAME, np.subtract, lambda g, n: [g, -g], "({0} - {1})")
_def("mul", SAME, np.multiply, lambda g, n: [g * _in(n, 1), g * _in(n, 0)], "({0} * {1})")
_def("div", FLOAT, np.divide, lambda g, n: [g / _in(n, 1), -(g * n) / _in(n, 1)], "({0} / {1})")
_def("pow", FLOAT, np.power,
     lambda g, n: [g * _in(n, 1) * _in(n, 0) ** (_in(n, 1) - 1), g * n * log(_in(n, 0))], "({0} ** {1})")
# Ties send the gradient to the second operand, so relu(x) = maximum(x, 0) has 0 slope at 0.
_def("maximum", SAME, np.maximum,
     lambda g, n: [where(_in(n, 0) > _in(n, 1), g, 0), where(_in(n, 0) > _in(n, 1), 0, g)], "gmax({0}, {1})")
_def("minimum", SAME, np.minimum,
     lambda g, n: [where(_in(n, 0) < _in(n, 1), g, 0), where(_in(n, 0) < _in(n, 1), 0, g)], "gmin({0}, {1})")
for _name, _ref, _sym in (("lt", np.less, "<"), ("le", np.less_equal, "<="), ("gt", np.greater, ">"),
                          ("ge", np.greater_equal, ">="), ("eq", np.equal, "=="), ("ne", np.not_equal, "!=")):
    _def(_name, BOOL, _ref, lambda g, n: [None, None], "({0} %s {1})" % _sym)
_def("where", "where", np.where,
     lambda g, n: [None, where(_in(n), g, 0), where(_in(n), 0, g)], "({1} if {0} else {2})")


# --- public builders ----------------------------------------------------------------
def exp(x) -> Node:
    """e**x, elementwise."""
    return ew("exp", x)


def log(x) -> Node:
    """Natural logarithm, elementwise."""
    return ew("log", x)


def log1p(x) -> Node:
    """log(1 + x), accurate for small x."""
    return ew("log1p", x)


def tanh(x) -> Node:
    return ew("tanh", x)


def sigmoid(x) -> Node:
    """1 / (1 + exp(-x)), without overflow."""
    return ew("sigmoid", x)


def softplus(x) -> Node:
    """log(1 + exp(x)), without overflow."""
    return ew("softplus", x)


def sqrt(x) -> Node:
    return ew("sqrt", x)


def abs(x) -> Node:  # noqa: A001 - NumPy's name
    return ew("abs", x)


def sign(x) -> Node:
    return ew("sign", x)


def stop_gradient(x) -> Node:
    """Identity whose gradient is zero."""
    return ew("stop_gradient", x)


def cast(x, dtype) -> Node:
    """Convert to ``dtype`` (also ``x.astype(dtype)``)."""
    x = as_node(x)
    if x.dtype == np.dtype(dtype):
        return x
    return make("cast", (x,), dtype=np.dtype(dtype))


def maximum(a, b) -> Node:
    return ew("maximum", a, b)


def minimum(a, b) -> Node:
    return ew("minimum", a, b)


def where(cond, a, b) -> Node:
    """``a`` where ``cond`` else ``b``, with broadcasting."""
    like = a if isinstance(a, Node) else b if isinstance(b, Node) else None
    return make("where", (as_node(cond), as_node(a, like), as_node(b, like)))


def relu(x) -> Node:
    """max(x, 0)."""
    return maximum(x, 0)


def square(x) -> Node:
    return x * x
