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


_LIBM = ("exp", "log", "log1p", "tanh", "sqrt", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh",
         "acosh", "atanh", "erf", "erfc", "expm1", "log2", "log10")
_NUMPY = {"asin": "arcsin", "acos": "arccos", "atan": "arctan", "asinh": "arcsinh", "acosh": "arccosh", "atanh": "arctanh"}
if SIMULATOR:  # NumPy's scalar functions: inf and nan where Python's math raises (erf never does)
    _fn = {n: math.erf if n == "erf" else math.erfc if n == "erfc" else _quiet(getattr(np, _NUMPY.get(n, n))) for n in _LIBM}
else:
    _fn = {n: getattr(math, n) for n in _LIBM}
_exp, _log, _log1p, _tanh, _sqrt = (_fn[n] for n in ("exp", "log", "log1p", "tanh", "sqrt"))

device = cuda.jit(device=True)


def _libm(name: str):
    f = _fn[name]

    @device
    def g(x):
        return f(x)
    return g


gsin, gcos, gtan, gasin, gacos, gatan = (_libm(n) for n in ("sin", "cos", "tan", "asin", "acos", "atan"))
gsinh, gcosh, gasinh, gacosh, gatanh = (_libm(n) for n in ("sinh", "cosh", "asinh", "acosh", "atanh"))
gerf, gerfc, gexpm1, glog2, glog10 = (_libm(n) for n in ("erf", "erfc", "expm1", "log2", "log10"))


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


_atan2 = _quiet(np.arctan2) if SIMULATOR else math.atan2


@device
def gatan2(y, x):
    """atan2(y, x): the angle of the point (x, y)."""
    return _atan2(y, x)


@device
def gmax(a, b):
    """np.maximum for scalars: NaN in either operand gives NaN."""
    return a if (a > b or a != a) else b


@device
def gmin(a, b):
    """np.minimum for scalars: NaN in either operand gives NaN."""
    return a if (a < b or a != a) else b


@device
def glogaddexp(a, b):
    """log(exp(a) + exp(b)) without overflow; -inf is the identity."""
    hi, lo = (a, b) if a > b else (b, a)
    if hi != hi or lo != lo:
        return a + b
    if lo == -math.inf:
        return hi
    return hi + _log1p(_exp(lo - hi))


def _typed(dt):
    """Functions whose constants have dtype ``dt`` (closure constants are frozen into the
    compiled code with their NumPy type): sign, sigmoid, softplus, relu, exp2 and rounding.
    Rounding is arithmetic: floats at least 2**mantissa apart are integers already, and below
    that an int64 holds them (math.floor on the GPU returns an integer, losing inf and nan)."""
    zero, one, half, two = dt(0), dt(1), dt(0.5), dt(2)
    isfloat = np.dtype(dt).kind == "f"
    big = dt(2.0 ** np.finfo(dt).nmant) if isfloat else dt(0)

    @device
    def trunc(x):
        if not isfloat or not abs(x) < big:  # ints, nan, inf and large floats are integral already
            return x
        return dt(np.int64(x))

    @device
    def floor(x):
        t = trunc(x)
        return t - one if t > x else t

    @device
    def ceil(x):
        t = trunc(x)
        return t + one if t < x else t

    @device
    def rint(x):  # halves to even
        f = floor(x)
        d = x - f
        if d > half or (d == half and f - two * floor(f * half) != zero):
            return f + one
        return f

    @device
    def relu(x):
        return zero if x < zero else x

    @device
    def exp2(x):
        return _exp(x * dt(0.6931471805599453))

    @device
    def sign(x):
        return one if x > zero else (-one if x < zero else (zero if x == zero else x))  # nan stays nan

    @device
    def sigmoid(x):
        return one / (one + _exp(-x))  # exp(-x) = inf gives 0: no overflow trap on the GPU

    @device
    def softplus(x):
        return (x if x > zero else zero) + _log1p(_exp(-abs(x)))

    return {"gsign": sign, "gsigmoid": sigmoid, "gsoftplus": softplus, "grelu": relu, "gexp2": exp2, "gtrunc": trunc,
            "gfloor": floor, "gceil": ceil, "grint": rint}


_TYPED = ("gsign", "gsigmoid", "gsoftplus", "grelu", "gexp2", "gtrunc", "gfloor", "gceil", "grint")
for _name in DTYPES:
    for _g, _f in _typed(np.dtype(_name).type).items():
        globals()[f"{_g}_{_name}"] = _f

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


def device_name(template: str, dtype: np.dtype) -> str:
    """An op's scalar template with its typed calls renamed to this dtype's device function."""
    text = template
    for name in _TYPED:
        if f"{name}(" in text:
            if dtype.name not in DTYPES:
                raise NotImplementedError(f"{name} on {dtype} has no CUDA lowering")
            text = text.replace(f"{name}(", f"{name}_{dtype.name}(")
    return text


__all__ = ["gexp", "glog", "glog1p", "gtanh", "gsqrt", "gmax", "gmin", "grand", "glogaddexp", "gsin", "gcos", "gtan", "gasin",
           "gacos", "gatan", "gsinh", "gcosh", "gasinh", "gacosh", "gatanh", "gerf", "gerfc", "gexpm1", "glog2", "glog10",
           "gatan2", "device_name", "SIMULATOR", "SOURCE_HASH"] + [f"{n}_{d}" for n in _TYPED for d in DTYPES]
