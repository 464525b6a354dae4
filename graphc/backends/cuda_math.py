"""Device math for generated CUDA kernels: the ``g*`` functions that the ops' scalar
templates call (see ``graphc/ops/elementwise.py``), as ``numba.cuda`` device functions.

On hardware they call CUDA's own math library: ``math.exp`` of a float32 lowers to
libdevice's ``__nv_expf``, so float32 code never meets float64 (NumPy ufuncs on scalars
are not lowered by numba-cuda's ``compile_ptx``, hence ``math``). Functions that need a
constant (``sigmoid``, ``softplus``, ``sign``) exist once per dtype, e.g.
``gsigmoid_float32``, so the constant has the argument's type; the code generator picks
the name (``device_name``). In the simulator (``NUMBA_ENABLE_CUDASIM=1``) kernels run as
Python, where ``math.exp(1000.0)`` and ``math.log(0.0)`` raise: there the same names call
NumPy's scalar functions, which give inf and nan as CUDA does.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
from numba import config, cuda

SIMULATOR: bool = bool(config.ENABLE_CUDASIM)
SOURCE_HASH: str = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16] + ("-sim" if SIMULATOR else "")
DTYPES = ("float32", "float64", "int32", "int64")  # dtypes with their own sign/sigmoid/softplus


def _quiet(f):
    def call(*args):
        with np.errstate(all="ignore"):  # overflow to inf and log(0) are results, not errors
            return f(*args)
    return call


if SIMULATOR:
    _exp, _log, _log1p, _tanh, _sqrt = map(_quiet, (np.exp, np.log, np.log1p, np.tanh, np.sqrt))
else:
    _exp, _log, _log1p, _tanh, _sqrt = math.exp, math.log, math.log1p, math.tanh, math.sqrt

device = cuda.jit(device=True)


@device
def gexp(x):
    return _exp(x)


@device
def glog(x):
    return _log(x)


@device
def glog1p(x):
    return _log1p(x)


@device
def gtanh(x):
    return _tanh(x)


@device
def gsqrt(x):
    return _sqrt(x)


@device
def gmax(a, b):
    """np.maximum for scalars: NaN in either operand gives NaN."""
    return a if (a > b or a != a) else b


@device
def gmin(a, b):
    """np.minimum for scalars: NaN in either operand gives NaN."""
    return a if (a < b or a != a) else b


def _typed(dt):
    """sign, sigmoid and softplus whose constants have dtype ``dt`` (closure constants
    are frozen into the compiled code with their NumPy type)."""
    zero, one = dt(0), dt(1)

    @device
    def sign(x):
        return one if x > zero else (-one if x < zero else (zero if x == zero else x))  # nan stays nan

    @device
    def sigmoid(x):
        return one / (one + _exp(-x))  # exp(-x) = inf gives 0: no overflow trap on the GPU

    @device
    def softplus(x):
        return (x if x > zero else zero) + _log1p(_exp(-abs(x)))

    return sign, sigmoid, softplus


for _name in DTYPES:
    globals()[f"gsign_{_name}"], globals()[f"gsigmoid_{_name}"], globals()[f"gsoftplus_{_name}"] = _typed(np.dtype(_name).type)

_U = np.uint64
_K_KEY, _K_SALT, _GOLDEN = _U(0xD1B54A32D192ED03), _U(0xAEF17502108EF2D9), _U(0x9E3779B97F4A7C15)
_M1, _M2, _S30, _S27, _S31, _S40 = _U(0xBF58476D1CE4E5B9), _U(0x94D049BB133111EB), _U(30), _U(27), _U(31), _U(40)
_TWO_M24 = np.float32(2.0 ** -24)


def _grand(key, salt, flat):
    """Uniform float32 in [0, 1): SplitMix64 of (key, salt, flat index), as
    graphc/ops/random.py and the CPU's ``grand`` compute it (uint64 arithmetic wraps)."""
    x = _U(key) * _K_KEY + _U(salt) * _K_SALT + _U(flat) + _GOLDEN
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    x = x ^ (x >> _S31)
    return np.float32(np.int64(x >> _S40)) * _TWO_M24


grand = device(_quiet(_grand) if SIMULATOR else _grand)


_TYPED = ("gsign", "gsigmoid", "gsoftplus")


def device_name(template: str, dtype: np.dtype) -> str:
    """An op's scalar template with its calls renamed to the device functions above."""
    text = template.replace("np.sqrt(", "gsqrt(").replace("np.sign(", "gsign(")
    for name in _TYPED:
        if f"{name}(" in text:
            if dtype.name not in DTYPES:
                raise NotImplementedError(f"{name} on {dtype} has no CUDA lowering")
            text = text.replace(f"{name}(", f"{name}_{dtype.name}(")
    return text


__all__ = ["gexp", "glog", "glog1p", "gtanh", "gsqrt", "gmax", "gmin", "grand", "device_name", "SIMULATOR",
           "SOURCE_HASH"] + [f"{n}_{d}" for n in _TYPED for d in DTYPES]
