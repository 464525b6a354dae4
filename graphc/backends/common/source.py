"""A small indentation-aware builder for generated Python source."""
from __future__ import annotations

from contextlib import contextmanager


class Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, line: str = "") -> None:
        self.lines.append(("    " * self.depth + line) if line else "")

    @contextmanager
    def block(self, header: str):
        self(header)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def comment(text: object) -> str:
    """``text`` made safe inside a ``#`` comment of generated code: whatever could end the line
    (or the source: NUL) is escaped, so user names and paths never become code."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
