"""graphc's examples: scripts to run (``python examples/mlp_digits.py``); the wheel ships them as
``graphc._bundled.examples`` so that ``graphc demo`` works after a plain ``pip install``."""
