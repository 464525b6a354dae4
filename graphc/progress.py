"""Progress on a terminal: a spinner line on stderr while long work runs (compiling,
benchmarking), and nothing at all when stderr is not a terminal (piped, CI).

>>> with Status("compiling the step"):
...     f = gc.function(...)
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import Any, TextIO


class Status:
    """A spinner line on stderr while work runs, only when stderr is a terminal; output printed
    meanwhile (through sys.stdout/sys.stderr, or ``echo``) clears it first."""

    def __init__(self, text: str, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.text, self.t0 = text, time.monotonic()
        self.enabled = _isatty(self.stream) and os.environ.get("TERM") != "dumb"
        try:
            "⠋".encode(getattr(self.stream, "encoding", None) or "ascii")
            self.frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
        except (UnicodeEncodeError, LookupError):
            self.frames = "|/-\\"
        self._lock, self._stop = threading.RLock(), threading.Event()
        self._shown, self._midline = False, False
        self.streams = (sys.stdout, sys.stderr)  # the real ones, also while the status replaces them

    def update(self, text: str) -> None:
        self.text = text

    def echo(self, text: str, stream: TextIO) -> None:
        with self._lock:
            self._clear()
            stream.write(text)
            stream.flush()
            self._midline = not text.endswith("\n")

    def _draw(self, k: int) -> None:
        if self._midline:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1
        line = f"{self.frames[k % len(self.frames)]} {self.text} ({time.monotonic() - self.t0:.0f} s)"
        self.stream.write("\r" + line[:width] + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _spin(self) -> None:
        k = 0
        while not self._stop.wait(0.1):
            k += 1
            with self._lock:
                self._draw(k)

    def __enter__(self) -> Status:
        if self.enabled:
            sys.stdout, sys.stderr = _Through(sys.stdout, self), _Through(sys.stderr, self)
            with self._lock:
                self._draw(0)
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            with self._lock:
                self._clear()
            sys.stdout, sys.stderr = self.streams


class _Through:
    """A text stream that clears the status line before each write."""

    def __init__(self, inner: TextIO, status: Status):
        self._inner, self._status = inner, status

    def write(self, s: str) -> int:
        self._status.echo(s, self._inner)
        return len(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
