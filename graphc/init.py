"""Seeded initial values for params: Glorot/Xavier, He/Kaiming, zeros and ones.

Every function returns a NumPy array (float32 unless ``dtype`` says otherwise), drawn
from ``rng``: a ``numpy.random.Generator`` or an int seed, so a model built twice with
the same seed starts from the same values.

Fans follow graphc's layouts: a 2-D weight is (fan_in, fan_out), as in ``x @ W``; a
convolution filter is (OUT, C, KH, KW), so fan_in = C*KH*KW and fan_out = OUT*KH*KW,
as in PyTorch.

>>> W = gc.param("W", gc.init.glorot_uniform((784, 128), rng=0))
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Shape = int | Sequence[int]
RNG = np.random.Generator | int | None


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _tuple(shape: Shape) -> tuple:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)


def fans(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape``."""
    shape = _tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def zeros(shape: Shape, dtype="float32") -> np.ndarray:
    return np.zeros(_tuple(shape), dtype)


def ones(shape: Shape, dtype="float32") -> np.ndarray:
    return np.ones(_tuple(shape), dtype)


def uniform(shape: Shape, low: float = -1.0, high: float = 1.0, rng: RNG = None, dtype="float32") -> np.ndarray:
    return _rng(rng).uniform(low, high, _tuple(shape)).astype(dtype)


def normal(shape: Shape, std: float = 1.0, rng: RNG = None, dtype="float32") -> np.ndarray:
    return (std * _rng(rng).standard_normal(_tuple(shape))).astype(dtype)


def glorot_uniform(shape: Shape, gain: float = 1.0, rng: RNG = None, dtype="float32") -> np.ndarray:
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)): keeps activation and gradient
    variance about equal through tanh/sigmoid layers (Glorot & Bengio, 2010)."""
    fi, fo = fans(shape)
    a = gain * math.sqrt(6.0 / (fi + fo))
    return uniform(shape, -a, a, rng, dtype)


def glorot_normal(shape: Shape, gain: float = 1.0, rng: RNG = None, dtype="float32") -> np.ndarray:
    """N(0, std²) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fi, fo = fans(shape)
    return normal(shape, gain * math.sqrt(2.0 / (fi + fo)), rng, dtype)


def he_uniform(shape: Shape, gain: float = math.sqrt(2.0), rng: RNG = None, dtype="float32") -> np.ndarray:
    """U(-a, a) with a = gain * sqrt(3 / fan_in); the default gain suits ReLU (He et al., 2015)."""
    fi, _ = fans(shape)
    a = gain * math.sqrt(3.0 / fi)
    return uniform(shape, -a, a, rng, dtype)


def he_normal(shape: Shape, gain: float = math.sqrt(2.0), rng: RNG = None, dtype="float32") -> np.ndarray:
    """N(0, std²) with std = gain / sqrt(fan_in)."""
    fi, _ = fans(shape)
    return normal(shape, gain / math.sqrt(fi), rng, dtype)


xavier_uniform, xavier_normal = glorot_uniform, glorot_normal
kaiming_uniform, kaiming_normal = he_uniform, he_normal

__all__ = ["fans", "zeros", "ones", "uniform", "normal", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
           "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"]
