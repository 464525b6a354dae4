"""What the ``graphc`` command runs besides the library: the benchmark harness (``benchmarks/``)
and the examples (``examples/``). A source checkout runs them in place; the wheel carries copies
here (``pyproject.toml`` maps them to ``graphc/_bundled/benchmarks`` and ``.../examples``), so
``graphc bench`` and ``graphc demo`` work after a plain ``pip install``."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]


def root() -> Path | None:
    """The folder holding ``benchmarks/`` and ``examples/``: the source checkout graphc runs from,
    else this package's copies; None when neither is there. On ``sys.path`` it makes
    ``benchmarks`` importable, as ``python -m benchmarks.run`` expects."""
    for where in (CHECKOUT, HERE):
        if (where / "benchmarks" / "run.py").is_file() and (where / "examples" / "mlp_digits.py").is_file():
            return where
    return None


def is_checkout(where: Path) -> bool:
    return where == CHECKOUT
