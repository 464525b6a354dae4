"""Gradient checking by finite differences on random projections, in float64."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .autodiff import grad
from .function import function
from .ir import Node, constant, input
from .ops import sum


def _directional(f, xs: list[np.ndarray], dirs: list[np.ndarray], eps: float) -> float:
    plus = f(*[x + eps * d if d is not None else x for x, d in zip(xs, dirs)])
    minus = f(*[x - eps * d if d is not None else x for x, d in zip(xs, dirs)])
    return float((plus - minus) / (2 * eps))


def check_grad(fn: Callable[..., Node], args: Sequence[np.ndarray], order: int = 2, eps: float = 1e-6,
               rtol: float = 1e-5, atol: float = 1e-7, seed: int = 0, target: str = "numpy") -> None:
    """Check ``grad`` of ``fn(*inputs)`` against central differences, like JAX's ``check_grads``.

    Float arguments are differentiated (in float64); integer ones are held fixed. A
    non-scalar output is projected on a random vector. Order 2 checks the gradient of
    the directional derivative, i.e. Hessian-vector products. Raises AssertionError.

    >>> gc.check_grad(lambda x: gc.tanh(x) * x, [np.random.randn(3, 4)])
    """
    rng = np.random.default_rng(seed)
    args = [np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a) for a in args]
    xs = [input(f"arg{i}", a.shape, a.dtype) for i, a in enumerate(args)]
    out = fn(*xs)
    scalar = out if out.shape == () else sum(out * constant(rng.standard_normal(_concrete(out.shape, xs, args))))
    diff = [k for k, a in enumerate(args) if a.dtype.kind == "f"]
    loss = scalar
    for level in range(1, order + 1):
        gs = grad(loss, [xs[k] for k in diff])
        dirs = [None] * len(args)
        for k in diff:
            dirs[k] = rng.standard_normal(args[k].shape)
        analytic_node = None
        for k, g in zip(diff, gs):
            term = sum(g * constant(dirs[k]))
            analytic_node = term if analytic_node is None else analytic_node + term
        f_loss = function(xs, loss, target=target)
        analytic = float(function(xs, analytic_node, target=target)(*args))
        numeric = _directional(f_loss, args, dirs, eps)
        if not np.isclose(analytic, numeric, rtol=rtol, atol=atol):
            raise AssertionError(f"order-{level} gradient mismatch: analytic {analytic!r}, finite differences {numeric!r}")
        loss = analytic_node  # next order differentiates this directional derivative


def _concrete(shape, xs, args):
    env = {}
    for x, a in zip(xs, args):
        for d, n in zip(x.shape, a.shape):
            if isinstance(d, str):
                env[d] = n
    return tuple(d if isinstance(d, int) else env[d] for d in shape)
