"""ONNX interop: ``gc.to_onnx`` writes a graphc graph (inference or gradient) as an ONNX model;
``gc.from_onnx`` reads one back as graphc nodes that can be differentiated and trained.

The ``onnx`` package is imported only when these are called (``pip install 'graphc[onnx]'``).
Each direction lives in its own module: ``graphc/onnx/export.py`` and ``graphc/onnx/load.py``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import GraphcError
from .ir import Node

if TYPE_CHECKING:
    import onnx


def require_onnx():
    """The ``onnx`` module, or a GraphcError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise GraphcError("ONNX interop needs the onnx package: pip install 'graphc[onnx]'") from None
    return onnx


def to_onnx(outputs: Node | Sequence[Node], inputs: Node | Sequence[Node], path: str | os.PathLike | None, opset: int = 18, *,
            output_names: Sequence[str] | None = None, optimize: bool = True) -> onnx.ModelProto:
    """Write the graph computing ``outputs`` from the gc.input nodes ``inputs`` as an ONNX model at
    ``path`` (None: only return it); returns the ``onnx.ModelProto``.

    Params become initializers named as the params; symbolic dims ("batch", "batch*seq") become
    named dynamic dims. Gradient graphs export like any other (``gc.grad``'s results are ordinary
    ops), and a ``gc.scan`` becomes an ONNX Scan. ``optimize`` first runs graphc's simplification
    passes (the model then has the ops a compiled step runs). Outputs are named ``output_names``,
    else by their node's name, ``grad_<param>`` for a gradient, or ``output<k>``.

    >>> gc.to_onnx([loss, *gc.grad(loss, params)], [x, y], "mlp_grad.onnx")
    """
    require_onnx()
    from .onnx.export import export
    return export(outputs, inputs, path, opset, output_names, optimize)


def from_onnx(path: str | os.PathLike | onnx.ModelProto) -> tuple[list[Node], list[Node], list[Node]]:
    """Read an ONNX model (a path or a ModelProto) as graphc nodes: ``(inputs, params, outputs)``.

    ``inputs`` are gc.input nodes in the graph's input order (dynamic dims become symbolic dims of
    the same name, or a generated one); ``params`` are gc.param nodes made from the float
    initializers the graph computes with (named as in the file; an initializer that is also a
    graph input is a param); ``outputs`` follow the graph's output order. Integer initializers
    (shapes, indices) become constants.

    >>> (x,), params, (logits,) = gc.from_onnx("model.onnx")
    """
    require_onnx()
    from .onnx.load import load
    return load(path)
