"""graphc's version: one place, read by the package, its build (pyproject.toml) and the caches."""
__version__ = "0.1.0"
