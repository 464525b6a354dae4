"""Backends: turn a compiled program into something that runs. ``numpy`` is the reference."""
