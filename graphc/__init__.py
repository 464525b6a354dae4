"""graphc: a compiler for training steps. Build a symbolic graph, take ``grad``
symbolically, and compile forward + backward + updates into one call.

>>> import graphc as gc
>>> x = gc.input("x", ("batch", 4)); W = gc.param("W", np.zeros((4, 2), np.float32))
>>> loss = gc.mean(gc.square(x @ W)); gW = gc.grad(loss, W)
>>> step = gc.function([x], loss, updates=[(W, W - 0.1 * gW)])
"""
from __future__ import annotations

from . import distributed, init, nn, ops, optim
from ._version import __version__
from .autodiff import grad
from .check import check_grad
from .checkpoint import load, save
from .errors import CacheError, DTypeError, GraphcError, InputError, ShapeError
from .function import Function, function
from .graph import format, to_dot, to_networkx, toposort
from .ir import Node, constant, input, param
from .onnx_io import from_onnx, to_onnx
from .ops import *  # noqa: F403 - the op functions are the public API

__all__ = [
    "__version__", "grad", "check_grad", "save", "load", "function", "Function", "format", "to_dot", "to_networkx", "toposort",
    "Node", "constant", "input", "param", "ops", "init", "nn", "optim", "distributed",
    "GraphcError", "ShapeError", "DTypeError", "InputError", "CacheError", "to_onnx", "from_onnx",
] + ops.__all__
