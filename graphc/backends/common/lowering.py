"""What the CPU and CUDA kernel writers share: the scalar code of a fused node.

Within a kernel every value is a scalar expression at the current index of the kernel's domain.
``ScalarLowering`` writes it once for both backends: operands read from inside the kernel or from
memory, the ops that are not a plain template (``one_hot``, ``pick``, ``iota``,
``random_uniform``), the op table's templates, and where a result goes in its own array. Each
writer supplies the hooks: how an operand is loaded, its index variables, the error word of range
checks, constants and its math module's names (``cpu/math`` and ``cuda/math`` implement the same ``g*`` functions).
"""
from __future__ import annotations

import numpy as np

from ...errors import fmt_site
from ...ir import Node
from ...passes.fusion import base_of
from .source import comment


def literal(value, dtype: np.dtype) -> str:
    """A typed scalar literal: float32 code never meets a float64 constant."""
    v = np.asarray(value).item()
    if dtype == np.bool_:
        return repr(bool(v))
    if dtype.kind == "f" and not np.isfinite(v):
        return f"np.{dtype.name}({'np.nan' if v != v else ('np.inf' if v > 0 else '-np.inf')})"
    return f"np.{dtype.name}({float(v) if dtype.kind == 'f' else int(v)!r})"


def describe(n: Node) -> str:
    """The op, the user-level op it is part of, its phase and the user's line, safe in a comment:
    ``where in softmax_cross_entropy (forward, model.py:12)``."""
    scope = n.scope if n.origin is None else n.origin.scope  # a gradient node: its forward op's
    within = f" in {scope}" if scope and scope.split("/")[-1] != n.op.name else ""
    return comment(f"{n.op.name}{within} ({n.phase}, {fmt_site(n.site)})")


def peel(v: Node) -> Node:
    """What a loop reads for ``v``: outer broadcasts become index arithmetic."""
    while v.op.name in ("broadcast_to", "stop_gradient"):
        v = v.inputs[0]
    return v


class ScalarLowering:
    """Mixin for kernel writers. Subclasses set ``inside`` (ids of the kernel's nodes) and
    ``domain`` (its shape), and define ``axis(a)`` (the index variable of domain axis ``a``),
    ``load_operand(v, idx)``, ``source_value(v)``, ``flat_index(n)``, ``salt(n)``, ``math(text, n)``
    and the hooks of ``checked``."""

    inside: set
    domain: tuple

    # -- indexing -------------------------------------------------------------------------------
    def index(self, shape: tuple, lead: int | None = None) -> list[str]:
        """The index of an array of ``shape`` right-aligned in the domain (unit dims read 0)."""
        lead = len(self.domain) - len(shape) if lead is None else lead
        return ["0" if d == 1 else self.axis(j + lead) for j, d in enumerate(shape)]

    def own_index(self, n: Node) -> list[str]:
        """Where ``n``'s value goes in its own array; a reduction without keepdims keeps only
        the unreduced axes of the domain."""
        if n.op.kind == "reduce" and not n.attrs["keepdims"]:
            return ["0" if self.domain[a] == 1 else self.axis(a) for a in range(len(self.domain)) if a not in n.attrs["axes"]]
        return self.index(n.shape)

    # -- values ---------------------------------------------------------------------------------
    def read(self, n: Node, pos: int, val: dict) -> str:
        """The expression of operand ``pos`` of ``n``: a value computed in this kernel, a
        constant or count, or a load at the operand's index (one_hot reads its index operand
        along the leading axes; pick reads row ``idx`` of its values)."""
        v = n.inputs[pos]
        b = base_of(v)[0]
        if b.id in self.inside:
            return val[b.id]
        known = self.source_value(v)
        if known is not None:
            return known
        lead = len(self.domain) - n.ndim
        if n.op.name == "one_hot":
            return self.load_operand(v, self.index(v.shape, lead))
        if n.op.name == "pick" and pos == 0:
            return self.load_operand(v, self.index(v.shape[:-1], lead) + [self.checked(n, self.read(n, 1, val))])
        return self.load_operand(v, self.index(v.shape))

    def expr(self, n: Node, val: dict) -> str:
        """The scalar expression of elementwise (or one_hot/pick) node ``n``."""
        name = n.op.name
        if name == "pick":
            return self.read(n, 0, val)
        args = [self.read(n, i, val) for i in range(len(n.inputs))]
        if name == "one_hot":
            return f"np.{n.dtype.name}({self.checked(n, args[0])} == {self.axis(len(self.domain) - 1)})"
        if name == "iota":  # the index itself
            return f"np.{n.dtype.name}({self.axis(n.attrs['axis'] + len(self.domain) - n.ndim)})"
        if name == "random_uniform":  # hashed from the element's flat index
            rnd = n.op.scalar.format(*args, salt=self.salt(n), flat=self.flat_index(n))
            return rnd if n.dtype == np.float32 else f"np.{n.dtype.name}({rnd})"
        return self.math(n.op.scalar.format(*args, **n.attrs), n)  # (cast's template names its dtype)

    def math(self, text: str, n: Node) -> str:
        """``text`` with the backend's names for the op table's math functions (default: as is)."""
        return text

    # -- range checks ---------------------------------------------------------------------------
    def checked(self, n: Node, index: str) -> str:
        """``index``, range-checked when ``n``'s index is computed in the graph: out of range, the
        kernel records the check's number and the value in the error word (the first failure is
        the one reported), reads index 0 instead (nothing outside the buffers is touched), and the
        step stops before it commits any update. Hooks: ``check_number(n)`` (None: not checked),
        ``error_word()``, ``dim(d)``, ``fresh(prefix)`` and ``statements()`` (the Source)."""
        number = self.check_number(n)
        if number is None:
            return index if index.replace("_", "").isalnum() else f"({index})"
        err, s, var = self.error_word(), self.statements(), self.fresh("ix")
        bound = self.dim(n.op.extra["index_bound"](n))
        s(f"{var} = {index}  # the index of {n.op.name}")
        with s.block(f"if {var} < 0 or {var} >= {bound}:"):
            with s.block(f"if {err}[0] == 0:"):
                s(f"{err}[0] = {number}")
                s(f"{err}[1] = {var}")
            s(f"{var} = 0")
        return var


__all__ = ["ScalarLowering", "literal", "describe", "peel"]
