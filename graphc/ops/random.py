"""Counter-based random numbers inside the graph: reproducible, and fusible like any
elementwise op. Element ``i`` of ``random_uniform(key, shape, salt)`` is a hash of
(key, salt, i), so a step that advances ``key`` draws fresh numbers, and the same key
always gives the same numbers on every backend."""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError
from ..ir import Node, as_node, defop, make
from ..shapes import check_dim

K_KEY, K_SALT = 0xD1B54A32D192ED03, 0xAEF17502108EF2D9


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _ref(key, shape, salt, dtype):
    n = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):
        base = np.uint64(int(key) % 2**64) * np.uint64(K_KEY) + np.uint64(salt * K_SALT % 2**64)
        bits = splitmix64(base + np.arange(n, dtype=np.uint64))
    # the top 24 bits: exactly representable in float32, uniform on [0, 1)
    return ((bits >> np.uint64(40)).astype(np.float64) * 2.0**-24).astype(dtype).reshape(shape)


def _infer(key, shape, salt, dtype):
    if key.shape != () or key.dtype.kind not in "iu":
        raise DTypeError(f"the key must be a 0-d integer, got {key.dtype}{key.shape}")
    return tuple(shape), np.dtype(dtype)


defop("random_uniform", "elementwise", _infer, _ref, lambda g, n: [None], "grand({0}, {salt}, {flat})",
      doc="uniform [0, 1) numbers hashed from (key, salt, flat index)")


def random_uniform(key, shape, salt: int = 0, dtype="float32") -> Node:
    """Uniform numbers in [0, 1) of ``shape`` (dims may be symbolic), a pure function of
    the 0-d integer ``key`` (an input or an integer state param) and ``salt``.

    >>> mask = gc.random_uniform(seed, ("batch", 128), salt=1) > 0.5
    """
    shape = (shape,) if isinstance(shape, (int, str)) else tuple(check_dim(d) for d in shape)
    return make("random_uniform", (as_node(key),), shape=shape, salt=int(salt), dtype=np.dtype(dtype))
