"""``einsum`` as a composite of primitives: transpose, reshape, slice, sum, mul and matmul.

The subscripts give every axis a label; ``...`` stands for broadcast dims, labelled
``"0", "1", ...`` and right-aligned as in NumPy. Each operand is first prepared on its own:

1. a label repeated within an operand takes the diagonal: the repeated axes are moved last,
   flattened to one axis of ``n**k`` elements and sliced with step ``1 + n + ... + n**(k-1)``
   (``n`` must be static);
2. an axis of size 1 whose label has another size elsewhere is dropped (broadcasting);
3. labels that neither the output nor another operand uses are summed away.

The operands are then contracted pairwise, left to right. A pair becomes one batched matmul
``(batch, M, K) @ (batch, K, N)``: labels shared and still needed (by the output or a later
operand) are its batch dims, shared labels no longer needed are merged into ``K``, and each
operand's own labels into ``M`` or ``N``. A pair with nothing to contract is a broadcast
multiply. Last, the result is transposed to the output order. Transposes and reshapes are
views, so BLAS reads most operands in place, and the primitives give gradients of any order.
"""
from __future__ import annotations

import string
from collections import Counter

import numpy as np

from ..errors import ShapeError
from ..ir import Node, as_node
from ..shapes import fmt_shape, size
from .elementwise import cast
from .index import getitem
from .linalg import matmul
from .reduce import sum
from .shape import reshape, transpose

_LETTERS = frozenset(string.ascii_letters)


def _name(label: str) -> str:
    return "'...'" if label.isdigit() else repr(label)


def _split(term: str, err) -> tuple[str, str, bool]:
    """A term as (letters before ``...``, letters after, whether it has ``...``)."""
    before, dots, after = term.partition("...")
    bad = set(before + after) - _LETTERS
    if bad or "..." in after:
        raise err(f"bad subscript {term!r}: use letters and at most one '...'")
    return before, after, bool(dots)


def _parse(spec: str, xs: list[Node], err) -> tuple[list[list[str]], list[str]]:
    """One label list per operand, and the output's labels."""
    lhs, arrow, rhs = spec.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(xs):
        raise err(f"{len(terms)} operand subscript(s) for {len(xs)} operand(s)")
    parts = [_split(t, err) for t in terms]
    extra = [x.ndim - len(b) - len(a) for x, (b, a, _) in zip(xs, parts)]
    for k, (x, (b, a, dots), e) in enumerate(zip(xs, parts, extra)):
        if e < 0 or (e and not dots):
            raise err(f"operand {k} has {x.ndim} axes {fmt_shape(x.shape)} but subscripts {terms[k]!r} name {len(b + a)}")
    ell = [str(j) for j in range(max(extra, default=0))]
    labels = [list(b) + ell[len(ell) - e:] + list(a) for (b, a, _), e in zip(parts, extra)]
    if not arrow:  # implicit: the broadcast dims, then the letters used once, sorted
        counts = Counter(c for t in terms for c in t if c in _LETTERS)
        return labels, ell + sorted(c for c, n in counts.items() if n == 1)
    b, a, dots = _split(rhs, err)
    if len(set(b + a)) != len(b + a):
        raise err(f"output {rhs!r} repeats an index")
    missing = sorted(set(b + a) - set(lhs))
    if missing:
        raise err(f"output index {missing[0]!r} appears in no operand")
    return labels, list(b) + (ell if dots else []) + list(a)  # without '...', broadcast dims are summed (as PyTorch)


def _diagonal(x: Node, labels: list[str], err) -> tuple[Node, list[str]]:
    """Take the diagonal of every label that repeats in ``labels``."""
    for lab in [lab for lab, n in Counter(labels).items() if n > 1]:
        axes = [i for i, m in enumerate(labels) if m == lab]
        rest = [i for i in range(x.ndim) if i not in axes]
        n, k = x.shape[axes[0]], len(axes)
        if any(x.shape[i] != n for i in axes):
            raise err(f"index {_name(lab)} repeats with sizes {', '.join(str(x.shape[i]) for i in axes)}")
        if not isinstance(n, int):
            raise err(f"the diagonal of index {_name(lab)} needs a static size, not {n!r}")
        flat = reshape(transpose(x, rest + axes), tuple(x.shape[i] for i in rest) + (n ** k,))
        x = getitem(flat, (Ellipsis, slice(None, None, (n ** k - 1) // (n - 1) if n > 1 else 1)))
        labels = [labels[i] for i in rest] + [lab]
    return x, labels


def _sum_out(x: Node, labels: list[str], needed: set) -> tuple[Node, list[str]]:
    axes = tuple(i for i, lab in enumerate(labels) if lab not in needed)
    return (sum(x, axes), [lab for lab in labels if lab in needed]) if axes else (x, labels)


def _contract(x: Node, lx: list[str], y: Node, ly: list[str], later: set) -> tuple[Node, list[str]]:
    """The product of two operands, summed over shared labels not in ``later``."""
    batch = [lab for lab in lx if lab in ly and lab in later]
    inner = [lab for lab in lx if lab in ly and lab not in later]
    fx, fy = [lab for lab in lx if lab not in ly], [lab for lab in ly if lab not in lx]
    dim = {**dict(zip(lx, x.shape)), **dict(zip(ly, y.shape))}
    bs, sx, sy = (tuple(dim[lab] for lab in group) for group in (batch, fx, fy))
    a = transpose(x, [lx.index(lab) for lab in batch + fx + inner])
    b = transpose(y, [ly.index(lab) for lab in batch + inner + fy])
    if not inner:  # an outer or elementwise product
        out = reshape(a, bs + sx + (1,) * len(fy)) * reshape(b, bs + (1,) * len(fx) + sy)
    else:
        k = size(tuple(dim[lab] for lab in inner))
        out = reshape(matmul(reshape(a, bs + (size(sx), k)), reshape(b, bs + (k, size(sy)))), bs + sx + sy)
    return out, batch + fx + fy


def einsum(subscripts: str, *operands) -> Node:
    """Einstein summation with NumPy's subscripts: explicit (``"ij,jk->ik"``) or implicit output,
    ``...`` for broadcast dims, repeated labels for diagonals, any number of operands (contracted
    left to right, each pair as one batched matmul). Float operands are promoted to one dtype;
    a contraction (matmul) needs floats. Broadcast dims missing from an explicit output are summed.

    >>> scores = einsum("bhqd,bhkd->bhqk", q, k)   # attention logits: one matmul
    """
    def err(msg: str) -> ShapeError:
        return ShapeError(f"einsum {subscripts!r}: {msg}")

    if not isinstance(subscripts, str):
        raise err("subscripts must be a string")
    xs = [as_node(x) for x in operands]
    if xs and all(x.dtype.kind == "f" for x in xs):
        dt = np.result_type(*(x.dtype for x in xs))
        xs = [cast(x, dt) for x in xs]
    labels, out = _parse(subscripts, xs, err)
    ops = [_diagonal(x, lab, err) for x, lab in zip(xs, labels)]
    dims: dict = {}
    for x, lab in ops:
        for label, d in zip(lab, x.shape):
            if dims.get(label, 1) == 1:
                dims[label] = d
            elif d not in (1, dims[label]):
                raise err(f"index {_name(label)} has sizes {dims[label]} and {d}")
    for j, (x, lab) in enumerate(ops):  # size-1 axes broadcast: the operand is constant along them
        keep = [i for i, (label, d) in enumerate(zip(lab, x.shape)) if d == dims[label]]
        if len(keep) < x.ndim:
            ops[j] = reshape(x, tuple(x.shape[i] for i in keep)), [lab[i] for i in keep]
    x, lx = ops[0]
    for j, (y, ly) in enumerate(ops[1:], 2):
        later = set(out).union(*(lab for _, lab in ops[j:]))  # labels the output or a later operand needs
        x, lx = _sum_out(x, lx, later | set(ly))
        y, ly = _sum_out(y, ly, later | set(lx))
        x, lx = _contract(x, lx, y, ly, later)
    x, lx = _sum_out(x, lx, set(out))
    return transpose(x, [lx.index(lab) for lab in out])
