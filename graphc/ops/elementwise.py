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


TRANSCENDENTAL = 10  # the cost of a libm call, in simple arithmetic ops (parallel thresholds, FLOP counts)


def _def(name: str, rule: str, ref, grad, scalar: str, doc: str = "", cost: int = 1, **extra) -> None:
    defop(name, "elementwise", _infer(rule), ref, grad, scalar, doc, cost=cost, **extra)


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


def _np_erf(x):
    import math
    return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x.copy()


def _tie_split(g, a, b):
    """Adjoints of max(a, b): all of g to the larger operand, half to each on a tie."""
    half = g * 0.5
    return [where(a > b, g, where(a == b, half, 0)), where(a < b, g, where(a == b, half, 0))]


def _np_softplus(x):
    return (np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))).astype(x.dtype, copy=False)


# --- unary ------------------------------------------------------------------------
_def("neg", SAME, np.negative, lambda g, n: [-g], "(-{0})")
_def("exp", FLOAT, np.exp, lambda g, n: [g * n], "gexp({0})", cost=TRANSCENDENTAL)
_def("log", FLOAT, np.log, lambda g, n: [g / _in(n)], "glog({0})", cost=TRANSCENDENTAL)
_def("log1p", FLOAT, np.log1p, lambda g, n: [g / (_in(n) + 1)], "glog1p({0})", cost=TRANSCENDENTAL)
_def("tanh", FLOAT, np.tanh, lambda g, n: [g * (1 - n * n)], "gtanh({0})", cost=TRANSCENDENTAL)
_def("sigmoid", FLOAT, _np_sigmoid, lambda g, n: [g * (n * (1 - n))], "gsigmoid({0})", cost=TRANSCENDENTAL)
_def("softplus", FLOAT, _np_softplus, lambda g, n: [g * sigmoid(_in(n))], "gsoftplus({0})", cost=TRANSCENDENTAL)
_def("sqrt", FLOAT, np.sqrt, lambda g, n: [g / (n * 2)], "gsqrt({0})", cost=TRANSCENDENTAL)
_def("abs", SAME, np.abs, lambda g, n: [g * sign(_in(n))], "abs({0})")
_def("sign", SAME, np.sign, lambda g, n: [None], "gsign({0})")
# relu is its own op, not maximum(x, 0): its gradient at 0 is 0 (torch.relu), where maximum's
# splits ties; -0.0 and NaN pass through, as in torch.
_def("relu", SAME, lambda x: np.where(x < 0, np.zeros((), x.dtype), x), lambda g, n: [where(_in(n) <= 0, 0, g)], "grelu({0})")
# trigonometric and hyperbolic functions, and their inverses
_def("sin", FLOAT, np.sin, lambda g, n: [g * cos(_in(n))], "gsin({0})")
_def("cos", FLOAT, np.cos, lambda g, n: [-(g * sin(_in(n)))], "gcos({0})")
_def("tan", FLOAT, np.tan, lambda g, n: [g * (n * n + 1)], "gtan({0})")
_def("arcsin", FLOAT, np.arcsin, lambda g, n: [g / sqrt(1 - _in(n) * _in(n))], "gasin({0})")
_def("arccos", FLOAT, np.arccos, lambda g, n: [-(g / sqrt(1 - _in(n) * _in(n)))], "gacos({0})")
_def("arctan", FLOAT, np.arctan, lambda g, n: [g / (_in(n) * _in(n) + 1)], "gatan({0})")
_def("sinh", FLOAT, np.sinh, lambda g, n: [g * cosh(_in(n))], "gsinh({0})")
_def("cosh", FLOAT, np.cosh, lambda g, n: [g * sinh(_in(n))], "gcosh({0})")
_def("arcsinh", FLOAT, np.arcsinh, lambda g, n: [g / sqrt(_in(n) * _in(n) + 1)], "gasinh({0})")
_def("arccosh", FLOAT, np.arccosh, lambda g, n: [g / sqrt((_in(n) - 1) * (_in(n) + 1))], "gacosh({0})")
_def("arctanh", FLOAT, np.arctanh, lambda g, n: [g / (1 - _in(n) * _in(n))], "gatanh({0})")
_TWO_OVER_SQRT_PI = 1.1283791670955126
_def("erf", FLOAT, lambda x: _np_erf(x), lambda g, n: [g * exp(-(_in(n) * _in(n))) * _TWO_OVER_SQRT_PI], "gerf({0})")
_def("erfc", FLOAT, lambda x: 1 - _np_erf(x), lambda g, n: [-(g * exp(-(_in(n) * _in(n))) * _TWO_OVER_SQRT_PI)], "gerfc({0})")
_def("expm1", FLOAT, np.expm1, lambda g, n: [g * (n + 1)], "gexpm1({0})")
_def("exp2", FLOAT, np.exp2, lambda g, n: [g * n * 0.6931471805599453], "gexp2({0})")
_def("log2", FLOAT, np.log2, lambda g, n: [g / (_in(n) * 0.6931471805599453)], "glog2({0})")
_def("log10", FLOAT, np.log10, lambda g, n: [g / (_in(n) * 2.302585092994046)], "glog10({0})")
# rounding: piecewise constant, so a zero gradient (as torch)
_def("floor", SAME, np.floor, lambda g, n: [None], "gfloor({0})")
_def("ceil", SAME, np.ceil, lambda g, n: [None], "gceil({0})")
_def("trunc", SAME, np.trunc, lambda g, n: [None], "gtrunc({0})")
_def("round", SAME, np.rint, lambda g, n: [None], "grint({0})", doc="to the nearest integer, halves to even")
_def("logical_not", BOOL, np.logical_not, lambda g, n: [None], "({0} == 0)")
_def("stop_gradient", SAME, lambda x: x, lambda g, n: [None], "{0}", view=True)  # the value itself: no kernel
_def("cast", "cast", lambda x, dtype: x.astype(dtype),
     lambda g, n: [cast(g, _in(n).dtype) if _in(n).dtype.kind == "f" else None], "np.{dtype}({0})")

# --- binary -----------------------------------------------------------------------
_def("add", SAME, np.add, lambda g, n: [g, g], "({0} + {1})")
_def("sub", SAME, np.subtract, lambda g, n: [g, -g], "({0} - {1})")
_def("mul", SAME, np.multiply, lambda g, n: [g * _in(n, 1), g * _in(n, 0)], "({0} * {1})")
_def("div", FLOAT, np.divide, lambda g, n: [g / _in(n, 1), -(g * n) / _in(n, 1)], "({0} / {1})")
# At a zero base, as torch: x**0 has slope 0 (not 0 * inf), and 0**y (y >= 0) has slope 0 in y (not log 0).
_def("pow", FLOAT, np.power,
     lambda g, n: [where(_in(n, 1) == 0, 0, g * _in(n, 1) * _in(n, 0) ** (_in(n, 1) - 1)),
                   where((_in(n, 0) == 0) & (_in(n, 1) >= 0), 0, g * n * log(_in(n, 0)))], "({0} ** {1})",
     cost=TRANSCENDENTAL)
# Ties split the gradient evenly between the operands, as in torch and JAX.
_def("maximum", SAME, np.maximum, lambda g, n: _tie_split(g, _in(n, 0), _in(n, 1)), "gmax({0}, {1})")
_def("minimum", SAME, np.minimum, lambda g, n: _tie_split(g, _in(n, 1), _in(n, 0)), "gmin({0}, {1})")
_def("floor_divide", SAME, np.floor_divide, lambda g, n: [None, None], "({0} // {1})", doc="floor(a / b), as Python's //")
# a - floor(a / b) * b: the sign of b, as Python's % and torch.remainder
_def("remainder", SAME, np.remainder, lambda g, n: [g, -(g * floor_divide(_in(n, 0), _in(n, 1)))], "({0} % {1})")
# d atan2(y, x) = (x dy - y dx) / (x² + y²); 0/0 (NaN) at the origin, as torch.atan2 and jax
_def("arctan2", FLOAT, np.arctan2, lambda g, n: [g * _in(n, 1) / (_in(n, 0) * _in(n, 0) + _in(n, 1) * _in(n, 1)),
                                                 -(g * _in(n, 0)) / (_in(n, 0) * _in(n, 0) + _in(n, 1) * _in(n, 1))],
     "gatan2({0}, {1})", cost=TRANSCENDENTAL)
_def("logical_and", BOOL, np.logical_and, lambda g, n: [None, None], "(({0} != 0) & ({1} != 0))")
_def("logical_or", BOOL, np.logical_or, lambda g, n: [None, None], "(({0} != 0) | ({1} != 0))")
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
    """Natural logarithm, elementwise; of a softmax, sigmoid or 1 + x, built in its stable form
    (``stable_log``), so the graph and its gradient stay finite at any input."""
    x = as_node(x)
    stable = stable_log(x)
    return ew("log", x) if stable is None else stable


def _is_const(n: Node, value) -> bool:
    return n.op.name == "constant" and bool(np.all(n.attrs["value"] == value))


def _fit(x: Node, like: Node) -> Node:
    """``x`` cast and broadcast to the dtype and shape of ``like``."""
    from .shape import broadcast_to
    x = cast(x, like.dtype)
    return broadcast_to(x, like.shape) if x.shape != like.shape else x


def stable_log(a: Node) -> Node | None:
    """log(a) without overflow or underflow when ``a`` is a softmax (log(exp(z) / s) = z - log(s)),
    a sigmoid (-softplus(-x)), 1 - sigmoid (-softplus(x)), 1 + x (log1p) or exp(x) (x); None
    otherwise. ``log`` applies it as the graph is built; the stability pass, to rewritten graphs."""
    if a.op.name == "exp":
        return a.inputs[0]
    if a.op.name == "sigmoid":
        return -softplus(-a.inputs[0])
    if a.op.name == "sub" and _is_const(a.inputs[0], 1) and a.inputs[1].op.name == "sigmoid":
        return _fit(-softplus(a.inputs[1].inputs[0]), a)
    if a.op.name == "add":
        for one, x in (a.inputs, a.inputs[::-1]):
            if _is_const(one, 1) and x.shape == a.shape:
                return log1p(x)
    if a.op.name == "div" and a.inputs[0].op.name == "exp":  # softmax, where exp(z) may underflow to 0
        num, den = a.inputs
        return _fit(num.inputs[0] - log(den), a)
    return None


def arctan2(y, x) -> Node:
    """The angle of the point (x, y), in (-pi, pi] (np.arctan2, torch.atan2)."""
    return ew("arctan2", y, x)


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
    """max(x, 0); the gradient at 0 is 0, as torch.relu."""
    return ew("relu", x)


def square(x) -> Node:
    return x * x


def _unary(name: str, doc: str):
    def f(x) -> Node:
        return ew(name, x)
    f.__name__, f.__qualname__, f.__doc__ = name, name, doc
    return f


sin, cos, tan = _unary("sin", "Sine."), _unary("cos", "Cosine."), _unary("tan", "Tangent.")
arcsin, arccos = _unary("arcsin", "Inverse sine."), _unary("arccos", "Inverse cosine.")
arctan = _unary("arctan", "Inverse tangent.")
sinh, cosh = _unary("sinh", "Hyperbolic sine."), _unary("cosh", "Hyperbolic cosine.")
arcsinh, arccosh = _unary("arcsinh", "Inverse hyperbolic sine."), _unary("arccosh", "Inverse hyperbolic cosine.")
arctanh = _unary("arctanh", "Inverse hyperbolic tangent.")
erf, erfc = _unary("erf", "The error function."), _unary("erfc", "1 - erf(x), accurate where erf(x) is near 1.")
expm1, exp2 = _unary("expm1", "exp(x) - 1, accurate for small x."), _unary("exp2", "2**x.")
log2, log10 = _unary("log2", "Base-2 logarithm."), _unary("log10", "Base-10 logarithm.")
floor, ceil = _unary("floor", "Round down (zero gradient)."), _unary("ceil", "Round up (zero gradient).")
trunc = _unary("trunc", "Round toward zero (zero gradient).")
round = _unary("round", "Round to the nearest integer, halves to even, as np.round and torch.round (zero gradient).")  # noqa: A001
logical_not = _unary("logical_not", "``not x`` elementwise (non-zero is true).")


def floor_divide(a, b) -> Node:
    """``a // b``: floor of the quotient, for ints and floats (Python, NumPy, torch semantics)."""
    return ew("floor_divide", a, b)


def remainder(a, b) -> Node:
    """``a % b`` with the sign of ``b`` (Python's %, torch.remainder)."""
    return ew("remainder", a, b)


def logical_and(a, b) -> Node:
    return ew("logical_and", a, b)


def logical_or(a, b) -> Node:
    return ew("logical_or", a, b)


# --- composites ----------------------------------------------------------------------
def reciprocal(x) -> Node:
    """1 / x."""
    x = as_node(x)
    return 1 / x


def rsqrt(x) -> Node:
    """1 / sqrt(x)."""
    return 1 / sqrt(x)


def clip(x, lo=None, hi=None) -> Node:
    """``x`` limited to [lo, hi] (either may be None), as torch.clamp: the gradient passes where
    lo <= x <= hi; NaN stays NaN with a zero gradient. ``lo``/``hi`` may be nodes."""
    x = as_node(x)
    inside = None
    out = stop_gradient(x)
    if hi is not None:
        out = where(x > hi, hi, out)
        inside = x <= hi
    if lo is not None:
        out = where(x < lo, lo, out)
        inside = (x >= lo) if inside is None else logical_and(x >= lo, inside)
    return x if inside is None else where(inside, x, out)


def hardtanh(x, lo: float = -1.0, hi: float = 1.0) -> Node:
    """clip(x, lo, hi) with torch.nn.functional.hardtanh's gradient: 0 at the bounds themselves."""
    x = as_node(x)
    outside = logical_or(x <= lo, x >= hi)
    return where(outside, where(x <= lo, lo, hi), x)


def leaky_relu(x, negative_slope: float = 0.01) -> Node:
    """x for x > 0, else negative_slope * x (the slope at 0 is negative_slope, as torch)."""
    x = as_node(x)
    return where(x > 0, x, x * negative_slope)


def elu(x, alpha: float = 1.0) -> Node:
    """x for x > 0, else alpha * (exp(x) - 1)."""
    x = as_node(x)
    return where(x <= 0, expm1(x) * alpha, x)


def gelu(x, approximate: str = "none") -> Node:
    """Gaussian error linear unit: x * Phi(x) (``approximate="tanh"``: the tanh formula), as torch."""
    x = as_node(x)
    if approximate == "tanh":
        return x * 0.5 * (1 + tanh((x + x * x * x * 0.044715) * 0.7978845608028654))
    if approximate != "none":
        raise DTypeError(f"gelu: approximate={approximate!r}; choose 'none' or 'tanh'")
    return x * 0.5 * (1 + erf(x * 0.7071067811865476))


def silu(x) -> Node:
    """x * sigmoid(x) (also called swish)."""
    x = as_node(x)
    return x * sigmoid(x)


def softsign(x) -> Node:
    """x / (1 + |x|)."""
    x = as_node(x)
    return x / (abs(x) + 1)


__all__ = [  # the public builders (ops/__init__.py exports them)
    "abs", "arccos", "arctan2", "arccosh", "arcsin", "arcsinh", "arctan", "arctanh", "cast", "ceil", "clip", "cos", "cosh", "elu",
    "erf", "erfc", "ew", "exp", "exp2", "expm1", "floor", "floor_divide", "gelu", "hardtanh", "leaky_relu", "log", "log1p",
    "log2", "log10", "logical_and", "logical_not", "logical_or", "maximum", "minimum", "reciprocal", "relu", "remainder",
    "round", "rsqrt", "sigmoid", "sign", "silu", "sin", "sinh", "softplus", "softsign", "sqrt", "square", "stop_gradient",
    "tan", "tanh", "trunc", "where",
]
