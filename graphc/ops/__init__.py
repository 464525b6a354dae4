"""graphc's ops. Importing this package registers every primitive and gives nodes
their NumPy-style operators and methods."""
from __future__ import annotations

import functools

from ..errors import GraphcError, fmt_site, user_site
from ..ir import Node, scope
from . import arange as _arange_ops  # noqa: F401
from . import conv, elementwise, index, linalg, nn, random, reduce  # noqa: F401 - each registers its ops
from . import shape as _shape_ops  # noqa: F401
from .arange import arange, iota
from .collective import allreduce
from .conv import avg_pool2d, conv2d, conv_transpose2d, interpolate, max_pool2d, pad2d
from .cumulative import cumprod, cumsum, logcumsumexp
from .einsum import einsum
from .elementwise import *  # noqa: F403 - the elementwise table's builders (elementwise.__all__)
from .elementwise import abs, cast, clip, ew  # noqa: A004 - (used below)
from .index import getitem, one_hot, pick, scatter_add, take, take_along_axis
from .linalg import matmul
from .nn import log_softmax, logsumexp, mse, softmax, softmax_cross_entropy
from .pad import pad
from .random import random_uniform
from .rearrange import chunk, diagonal, flip, repeat, roll, split, stack, tile, tril, triu
from .reduce import all, any, argmax, argmin, max, mean, min, prod, std, sum, var
from .scan import scan
from .shape import broadcast_to, concatenate, expand_dims, reshape, squeeze, sum_to, swapaxes, transpose
from .sort import argsort, sort, topk

__all__ = [  # and, below, every elementwise builder
    "all", "allreduce", "any", "arange", "argmax", "argmin", "argsort", "avg_pool2d", "broadcast_to", "chunk",
    "concatenate", "conv2d", "conv_transpose2d", "cumprod", "cumsum", "diagonal", "einsum", "expand_dims", "flip",
    "interpolate", "iota", "log_softmax", "logcumsumexp", "logsumexp", "matmul", "max", "max_pool2d", "mean", "min", "mse",
    "one_hot", "pad", "pad2d", "pick", "prod", "random_uniform", "repeat", "reshape", "roll", "scan", "scatter_add",
    "softmax", "softmax_cross_entropy", "sort", "split", "squeeze", "stack", "std", "sum", "sum_to", "swapaxes", "take",
    "take_along_axis", "tile", "topk", "transpose", "tril", "triu", "var",
]
__all__ += elementwise.__all__


def _user_line(fn):
    """A builder's own argument checks (axes, reshape sizes, indices) name the op and the user's
    line, as the shape rules run by ``make`` do."""
    @functools.wraps(fn)
    def builder(*args, **kwargs):
        try:
            with scope(fn.__name__):
                return fn(*args, **kwargs)
        except GraphcError as e:
            msg, where = str(e), f"({fmt_site(user_site())})"
            if msg.endswith(where):
                raise
            prefix = "" if msg.startswith(f"{fn.__name__}:") else f"{fn.__name__}: "
            raise type(e)(f"{prefix}{msg} {where}") from None
    return builder


for _name in [*__all__, "getitem"]:
    if callable(globals()[_name]) and _name != "ew":  # the builders (not the submodules, nor ew, the generic one)
        globals()[_name] = _user_line(globals()[_name])


def _binary(name: str, reflected: bool = False):
    if reflected:
        return lambda self, other: ew(name, other, self)
    return lambda self, other: ew(name, self, other)


for _op, _name in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("truediv", "div"), ("pow", "pow"),
                   ("floordiv", "floor_divide"), ("mod", "remainder"), ("and", "logical_and"), ("or", "logical_or")):
    setattr(Node, f"__{_op}__", _binary(_name))
    setattr(Node, f"__r{_op}__", _binary(_name, reflected=True))
for _op, _name in (("lt", "lt"), ("le", "le"), ("gt", "gt"), ("ge", "ge"), ("eq", "eq"), ("ne", "ne")):
    setattr(Node, f"__{_op}__", _binary(_name))
Node.__hash__ = lambda self: self.id  # __eq__ is elementwise, as in NumPy; identity stays the hash
Node.__neg__ = lambda self: ew("neg", self)
Node.__invert__ = lambda self: ew("logical_not", self)  # & | ~ are logical (graphc has no bitwise ops)
Node.__pos__ = lambda self: self
Node.__abs__ = lambda self: abs(self)
Node.__matmul__ = lambda self, other: matmul(self, other)
Node.__rmatmul__ = lambda self, other: matmul(other, self)
Node.__getitem__ = getitem
Node.T = property(lambda self: transpose(self))
Node.mT = property(lambda self: swapaxes(self, -1, -2))
Node.astype = lambda self, dtype: cast(self, dtype)
Node.reshape = lambda self, *shape: reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], (int, str)) else shape)
Node.sum = lambda self, axis=None, keepdims=False: sum(self, axis, keepdims)
Node.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)
Node.max = lambda self, axis=None, keepdims=False: max(self, axis, keepdims)
Node.min = lambda self, axis=None, keepdims=False: min(self, axis, keepdims)
Node.prod = lambda self, axis=None, keepdims=False: prod(self, axis, keepdims)
Node.argmax = lambda self, axis=None, keepdims=False: argmax(self, axis, keepdims)
Node.argmin = lambda self, axis=None, keepdims=False: argmin(self, axis, keepdims)
Node.var = lambda self, axis=None, correction=1, keepdims=False: var(self, axis, correction, keepdims)
Node.std = lambda self, axis=None, correction=1, keepdims=False: std(self, axis, correction, keepdims)
Node.clip = lambda self, lo=None, hi=None: clip(self, lo, hi)
Node.cumsum = lambda self, axis=None: cumsum(self, axis)
