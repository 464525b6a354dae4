"""The graph IR: a node is one op applied to input nodes, with a static shape and dtype.

Ops are registered in ``OPS`` by the modules of ``graphc.ops``; each op keeps its
shape/dtype rule, NumPy reference, gradient rule and scalar lowering together.
Nodes are immutable once built; graphs are the DAGs reachable from some nodes.
"""
from __future__ import annotations

import contextvars
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GraphcError, fmt_site, user_site
from .shapes import Shape, check_dim, fmt_shape

_ids = itertools.count()

# While autodiff runs a gradient rule, the forward node it differentiates.
_ORIGIN: contextvars.ContextVar = contextvars.ContextVar("graphc_origin", default=None)
# The user-level ops being built, outermost first (JAX's name stack): generated code names the
# op a primitive came from (softmax_cross_entropy), not only the primitive (where).
_SCOPE: contextvars.ContextVar = contextvars.ContextVar("graphc_scope", default=())
# While a pass rewrites a node, the node whose provenance (site, origin) new nodes inherit.
_REPLACING: contextvars.ContextVar = contextvars.ContextVar("graphc_replacing", default=None)


@dataclass(frozen=True)
class Op:
    """One primitive. ``kind`` drives fusion and lowering:
    source | elementwise | reduce | matmul | shape | index."""

    name: str
    kind: str
    infer: Callable[..., tuple]            # (inputs, **attrs) -> (shape, dtype)
    ref: Callable[..., np.ndarray] | None  # NumPy reference: (*arrays, **attrs) -> array
    grad: Callable[..., list] | None       # (g, node) -> one adjoint (or None) per input
    scalar: str | None = None              # elementwise: Python expression over {0}, {1}, ... and its attrs
    doc: str = ""
    extra: dict = field(default_factory=dict)

    # What passes and backends need to know of an op, declared with it (``defop(..., view=True)``):
    @property
    def view(self) -> bool:
        """A view of its input (reshape, transpose, broadcast, slice): strides, never a kernel."""
        return bool(self.extra.get("view"))

    @property
    def unaligned(self) -> tuple:
        """Operands it does not read at the output's own index (one_hot's index, pick's rows)."""
        return self.extra.get("unaligned", ())

    @property
    def cost(self) -> int:
        """Work per element, in simple arithmetic ops (transcendental functions count 10)."""
        return self.extra.get("cost", 1)


OPS: dict[str, Op] = {}


def defop(name: str, kind: str, infer, ref, grad=None, scalar=None, doc: str = "", **extra) -> Op:
    if name in OPS:
        raise ValueError(f"op {name!r} defined twice")
    op = Op(name, kind, infer, ref, grad, scalar, doc, extra)
    OPS[name] = op
    return op


class Node:
    """A value in the graph. Build nodes with graphc's functions and operators."""

    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "name", "site", "origin", "adjoint_of", "id", "_param", "_guard",
                 "scope", "__weakref__")
    __array_priority__ = 1000  # numpy arrays defer to Node's operators

    def __init__(self, op: Op, inputs: tuple, attrs: dict, shape: Shape, dtype: np.dtype, name: str | None = None, site=None):
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = attrs
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.name = name
        old = _REPLACING.get()
        if old is not None:  # built by a rewrite: keep the provenance of the node it replaces
            self.origin, self.site, self.scope = old.origin, old.site, old.scope
        else:
            self.scope = "/".join(_SCOPE.get())
            self.origin = _ORIGIN.get()   # forward node whose gradient rule made this one
            # A gradient node points at the user's line of the forward op it differentiates.
            self.site = self.origin.site if self.origin is not None else site if site is not None else user_site()
        self.adjoint_of = None        # set by autodiff on the total gradient of a node
        self.id = next(_ids)
        self._param = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def phase(self) -> str:
        return "backward" if self.origin is not None else "forward"

    @property
    def value(self) -> np.ndarray:
        """Current value of a param (or constant)."""
        if self.op.name == "param":
            return self._param.value
        if self.op.name == "constant":
            return self.attrs["value"]
        raise GraphcError(f"{self.label()} has no value: only params and constants do")

    @value.setter
    def value(self, new) -> None:
        if self.op.name != "param":
            raise GraphcError(f"{self.label()} is not a param")
        self._param.set(new, self)

    def label(self) -> str:
        return f"{self.op.name} {self.name or '%' + str(self.id)}{fmt_shape(self.shape)} ({fmt_site(self.site)})"

    def key(self) -> tuple:
        """Structural identity, for common-subexpression elimination."""
        return (self.op.name, tuple(i.id for i in self.inputs), attrs_key(self.attrs), self.shape, self.dtype.str)

    def __repr__(self) -> str:
        dt = self.dtype.name
        return f"<{self.op.name} {self.name or '%' + str(self.id)}: {dt}{fmt_shape(self.shape)}>"

    def __hash__(self) -> int:
        return self.id

    def __bool__(self) -> bool:
        raise GraphcError(f"{self.label()} is symbolic and has no truth value; use gc.where")

    def __iter__(self):
        raise GraphcError(f"{self.label()} is symbolic and cannot be iterated")

    def __reduce__(self):
        # A node's identity (its id) belongs to the process that built it: a node unpickled elsewhere
        # could share an id with another node there, and graphs would silently mix them up.
        raise TypeError(f"graphc nodes cannot be pickled ({self.label()}): build the graph again in the new "
                        f"process; save a param's values with np.save(path, W.value) and restore them with "
                        f"W.value = np.load(path)")


def attrs_key(attrs: dict) -> tuple:
    out = []
    for k in sorted(attrs):
        v = attrs[k]
        if isinstance(v, np.ndarray):
            v = (v.dtype.str, v.shape, hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest())
        elif isinstance(v, np.dtype):
            v = v.str
        out.append((k, v))
    return tuple(out)


def make(opname: str, inputs, **attrs) -> Node:
    """Build a node of a registered op, inferring its shape and dtype.

    A rule's error is re-raised with the op name and the user's source line."""
    op = OPS[opname]
    site = user_site()
    try:
        shape, dtype = op.infer(*inputs, **attrs)
    except GraphcError as e:
        raise type(e)(f"{opname}: {e} ({fmt_site(site)})") from None
    return Node(op, inputs, attrs, shape, dtype, site=site)


class _ParamStore:
    """The current array of a param; backends may swap it for a view into their arena."""

    __slots__ = ("value",)

    def __init__(self, value: np.ndarray):
        self.value = value

    def set(self, new, node: Node) -> None:
        arr = np.asarray(new)
        if arr.shape != node.shape:
            raise GraphcError(f"param {node.name}: new value has shape {fmt_shape(arr.shape)}, expected {fmt_shape(node.shape)}")
        if arr.dtype != node.dtype:
            if not np.can_cast(arr.dtype, node.dtype, "same_kind"):
                raise GraphcError(f"param {node.name}: cannot cast {arr.dtype} to {node.dtype}")
            arr = arr.astype(node.dtype)
        self.value = np.array(arr, copy=True, order="C")


def clone(n: Node, inputs: tuple) -> Node:
    """``n`` over new inputs, with the same provenance."""
    m = Node(n.op, inputs, n.attrs, n.shape, n.dtype, name=n.name, site=n.site)
    m.origin, m.adjoint_of, m._param, m.scope = n.origin, n.adjoint_of, n._param, n.scope
    return m


def _no_infer(*a, **k):  # sources are built directly, never through make()
    raise AssertionError


for _src in ("input", "param", "constant"):
    defop(_src, "source", _no_infer, None)


def input(name: str, shape, dtype: Any = "float32") -> Node:
    """A graph input, fed at call time. Dims are ints or names (symbolic, e.g. "batch").

    >>> x = gc.input("x", ("batch", 784))
    """
    if not isinstance(name, str) or not name:
        raise GraphcError("input name must be a non-empty string")
    shape = (shape,) if isinstance(shape, (int, str)) else tuple(shape)
    shape = tuple(check_dim(d) for d in shape)
    for d in shape:
        if isinstance(d, str) and "*" in d:
            raise GraphcError(f"input {name}: dim {d!r} must be a single name")
    return Node(OPS["input"], (), {}, shape, np.dtype(dtype), name=name)


def param(name: str, value, dtype: Any = None) -> Node:
    """A parameter with a concrete current value (``p.value``): trainable when float,
    step state (such as a random key) when integer.

    >>> W = gc.param("W", np.zeros((784, 10), np.float32))
    """
    arr = np.asarray(value)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.float64 and isinstance(value, (float, int, list, tuple)) and not isinstance(value, np.generic):
        arr = arr.astype(np.float32)  # Python numbers default to float32
    if arr.dtype.kind not in "fiu":
        raise GraphcError(f"param {name}: dtype {arr.dtype} is neither float nor integer")
    node = Node(OPS["param"], (), {}, arr.shape, arr.dtype, name=name)
    node._param = _ParamStore(np.array(arr, copy=True, order="C"))
    return node


def constant(value, dtype: Any = None) -> Node:
    arr = np.array(value, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return Node(OPS["constant"], (), {"value": arr}, arr.shape, arr.dtype)


def as_node(v, like: Node | None = None) -> Node:
    """Wrap Python and NumPy values as constants. Python and NumPy scalars are weakly
    typed, as in JAX: they take the float dtype of the node they meet, so a float32
    graph stays float32."""
    if isinstance(v, Node):
        return v
    if isinstance(v, (bool, np.bool_)):
        return constant(v, np.bool_)
    if isinstance(v, (int, float, np.integer, np.floating)):
        if like is not None and like.dtype.kind == "f":
            return constant(v, like.dtype)
        if isinstance(v, (int, np.integer)):
            return constant(v, like.dtype if like is not None and like.dtype.kind in "iu" else np.int64)
        return constant(v, np.float32)
    if isinstance(v, (np.ndarray, list, tuple)):
        return constant(np.asarray(v))
    raise GraphcError(f"cannot use {type(v).__name__} {v!r} in a graph")


class replacing:
    """Context: nodes built inside inherit ``node``'s source line and gradient origin."""

    def __init__(self, node: Node):
        self.node = node

    def __enter__(self):
        self.tok = _REPLACING.set(self.node)

    def __exit__(self, *exc):
        _REPLACING.reset(self.tok)


class scope:
    """Context: nodes built inside belong to the user-level op ``name`` (nested scopes join
    with "/"); the public builders enter one each."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.tok = _SCOPE.set(_SCOPE.get() + (self.name,))

    def __exit__(self, *exc):
        _SCOPE.reset(self.tok)


class origin_of:
    """Context: nodes built inside are marked as the gradient of ``node``."""

    def __init__(self, node: Node):
        self.node = node

    def __enter__(self):
        self.tok = _ORIGIN.set(self.node)

    def __exit__(self, *exc):
        _ORIGIN.reset(self.tok)
