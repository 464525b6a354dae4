"""Exceptions, and the user's source location that every node and error carries."""
from __future__ import annotations

import os
import sys

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class GraphcError(Exception):
    """Base class of every error graphc raises on purpose."""


class ShapeError(GraphcError, ValueError):
    """Shapes that do not fit: at build time (broadcast, matmul) or at call time."""


class DTypeError(GraphcError, TypeError):
    """A dtype an op or input does not accept."""


class InputError(GraphcError, ValueError):
    """A bad argument at call time: count, kind, shape, dtype, range."""


class CacheError(GraphcError, RuntimeError):
    """The disk cache could not be used."""


def user_site() -> tuple[str, int]:
    """(file, line) of the innermost frame outside the graphc package: the user's line."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
    if f is None:
        return ("<unknown>", 0)
    return (f.f_code.co_filename, f.f_lineno)


def fmt_site(site: tuple[str, int] | None) -> str:
    if site is None:
        return "<unknown>"
    return f"{os.path.basename(site[0])}:{site[1]}"
