"""Static shapes with symbolic dims.

A dim is an int or a name such as ``"batch"``. Reshapes may create products of
names, written ``"batch*seq"``; a product's factors are names or ints. A name is
bound to an int when a compiled function is called.
"""
from __future__ import annotations

from collections import Counter
from math import prod

from .errors import ShapeError

Dim = int | str
Shape = tuple  # tuple[Dim, ...]


def check_dim(d: object) -> Dim:
    if isinstance(d, bool):
        raise ShapeError(f"dim {d!r} must be an int or a name")
    if isinstance(d, int) or hasattr(d, "__index__") and not isinstance(d, str):
        d = int(d)  # numpy ints
        if d < 0:
            raise ShapeError(f"dim {d} is negative")
        return d
    if isinstance(d, str) and d and all(f.isidentifier() or f.isdigit() for f in d.split("*")):
        return _make_dim(*_factors(d))  # one spelling per product: "batch*12" is "12*batch"
    raise ShapeError(f"dim {d!r} must be a non-negative int or a name like 'batch'")


def fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _factors(d: Dim) -> tuple[int, Counter]:
    """A dim as (int coefficient, multiset of names)."""
    if isinstance(d, int):
        return d, Counter()
    coef, names = 1, Counter()
    for f in d.split("*"):
        if f.isdigit():
            coef *= int(f)
        else:
            names[f] += 1
    return coef, names


def _make_dim(coef: int, names: Counter) -> Dim:
    if not names:
        return coef
    parts = ([str(coef)] if coef != 1 else []) + sorted(names.elements())
    return "*".join(parts)


def size(shape: Shape) -> Dim:
    """Number of elements, symbolic if any dim is."""
    coef, names = 1, Counter()
    for d in shape:
        c, n = _factors(d)
        coef *= c
        names += n
    return _make_dim(coef, names)


def broadcast(*shapes: Shape) -> Shape:
    """NumPy broadcasting of static shapes; symbolic dims broadcast only with 1 or themselves."""
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        dims = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError(
                "cannot broadcast " + " with ".join(fmt_shape(s) for s in shapes)
                + f": dims {' and '.join(str(d) for d in sorted(dims, key=str))} differ"
            )
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def infer_reshape(old: Shape, new: tuple) -> Shape:
    """Resolve a reshape target (with at most one -1) against the old shape."""
    new = tuple(-1 if (isinstance(d, int) and d == -1) else d for d in new)
    if sum(1 for d in new if d == -1) > 1:
        raise ShapeError(f"reshape {fmt_shape(old)} to {fmt_shape(new)}: more than one -1")
    known = [check_dim(d) for d in new if d != -1]
    oc, on = _factors(size(old))
    kc, kn = _factors(size(tuple(known)))
    if -1 in new:
        rest = on - kn
        if kn - on or (kc == 0) or oc % kc:
            raise ShapeError(f"cannot reshape {fmt_shape(old)} to {fmt_shape(new)}")
        fill = _make_dim(oc // kc, rest)
        return tuple(fill if d == -1 else check_dim(d) for d in new)
    if (oc, on) != (kc, kn):
        raise ShapeError(f"cannot reshape {fmt_shape(old)} of size {size(old)} to {fmt_shape(new)} of size {size(tuple(known))}")
    return tuple(known)


def linear_form(d: Dim) -> Counter:
    """A size as a linear form {names: coefficient}, e.g. "16*batch" -> {("batch",): 16}, so
    sums of sizes (buffer offsets) can be added up and printed simply."""
    coef, names = _factors(d)
    return Counter({tuple(sorted(names.elements())): coef})


def resolve_dim(d: Dim, env: dict) -> int:
    if isinstance(d, int):
        return d
    return prod(int(f) if f.isdigit() else env[f] for f in d.split("*"))


def resolve(shape: Shape, env: dict) -> tuple:
    return tuple(d if isinstance(d, int) else resolve_dim(d, env) for d in shape)


def is_concrete(shape: Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def norm_axes(axis, ndim: int, what: str = "axis") -> tuple:
    """Normalize None | int | tuple to a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"{what} {a} is out of range for {ndim}-d input")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated {what} in {axis}")
    return tuple(sorted(out))


# --- linear forms: offsets and strides as sums of monomials in the symbolic dims ------------
Form = Counter  # {sorted tuple of names: int coefficient}


def form(d: Dim | Form) -> Form:
    """A dim, an int or a form as a form without zero terms."""
    f = linear_form(d) if isinstance(d, (int, str)) else Counter(d)
    return Counter({k: c for k, c in f.items() if c})


def form_mul(f: Form, d: Dim) -> Form:
    """``f * d`` for a dim ``d`` (a monomial)."""
    coef, names = _factors(d)
    extra = tuple(names.elements())
    return Counter({tuple(sorted(k + extra)): c * coef for k, c in f.items() if c * coef})


def form_eval(f: Form, env: dict) -> int:
    return sum(c * prod(env[n] for n in k) for k, c in f.items())


def form_text(f: Form) -> str:
    """``f`` as an expression over the dims' names, e.g. ``128*batch + 64``."""
    terms = [" * ".join(([str(c)] if c != 1 or not k else []) + list(k)) for k, c in sorted(form(f).items())]
    return " + ".join(terms).replace("+ -", "- ") or "0"
