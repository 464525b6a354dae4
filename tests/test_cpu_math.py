"""graphc.backends.cpu.mathfns: accuracy, special values, float32 discipline, vectorization."""
from __future__ import annotations

import re

import numba
import numpy as np
import pytest

from graphc.backends.cpu import mathfns as cm

NAMES = ["gexp", "glog", "gtanh", "gsigmoid", "gsoftplus", "glog1p", "gexpm1"]
F32, F64 = np.float32, np.float64


def _make_loop(f):
    # The shape generated kernels have: a plain loop calling the scalar function.
    @numba.njit(error_model="numpy")
    def loop(a, out):
        for i in range(a.size):
            out[i] = f(a[i])

    return loop


_LOOPS = {name: _make_loop(getattr(cm, name)) for name in NAMES}


def run(name: str, x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    _LOOPS[name](x, out)
    return out


def _sigmoid64(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


REFERENCE = {
    "gexp": np.exp,
    "glog": np.log,
    "gtanh": np.tanh,
    "gsigmoid": _sigmoid64,
    "gsoftplus": lambda x: np.logaddexp(0.0, x),
    "glog1p": np.log1p,
    "gexpm1": np.expm1,
}


def _samples(kind: str, lo: float, hi: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(lo, hi, n)
    mag = np.exp(rng.uniform(np.log(lo), np.log(hi), n))  # log-uniform magnitudes
    return mag if kind == "logpos" else mag * rng.choice([-1.0, 1.0], n)


# (function, sampling, lo, hi, max float32 error in ulp); measured maxima are in the module docstring.
ACCURACY = [
    ("gexp", "uniform", -104.0, 89.0, 2.0),
    ("glog", "logpos", 1e-45, 3e38, 2.0),
    ("glog", "uniform", 0.5, 2.0, 2.0),
    ("gtanh", "uniform", -20.0, 20.0, 8.0),
    ("gtanh", "logsym", 1e-30, 2.0, 8.0),
    ("gsigmoid", "uniform", -100.0, 100.0, 4.0),
    ("gsoftplus", "uniform", -100.0, 100.0, 4.0),
    ("glog1p", "uniform", -1.0, 1.0, 4.0),
    ("glog1p", "logpos", 1e-30, 1e30, 4.0),
    ("gexpm1", "uniform", -80.0, 88.0, 3.0),
    ("gexpm1", "logsym", 1e-30, 1.0, 3.0),
]


@pytest.mark.parametrize("name,kind,lo,hi,max_ulp", ACCURACY)
def test_float32_accuracy(name, kind, lo, hi, max_ulp):
    x = _samples(kind, lo, hi, 200_000, seed=len(name) + int(hi)).astype(F32)
    got = run(name, x)
    assert got.dtype == F32
    ref = REFERENCE[name](x.astype(F64))
    normal = (np.abs(ref) >= np.finfo(F32).tiny) & (np.abs(ref) <= np.finfo(F32).max)
    ulp = np.spacing(np.abs(ref[normal]).astype(F32)).astype(F64)
    err = np.abs(got[normal] - ref[normal]) / ulp
    assert err.max() <= max_ulp, f"{name}: {err.max():.2f} ulp at x={x[normal][err.argmax()]!r}"
    assert np.all(np.isinf(got[~normal]) | (np.abs(got[~normal]) <= np.finfo(F32).tiny) | ~np.isfinite(ref[~normal]))
    if name in ("gtanh", "gsigmoid"):
        assert np.abs(got - ref).max() <= 1e-6


@pytest.mark.parametrize("name,kind,lo,hi,max_ulp", ACCURACY)
def test_float64_accuracy(name, kind, lo, hi, max_ulp):
    x = _samples(kind, lo, hi, 20_000, seed=7)
    got = run(name, x)
    ref = REFERENCE[name](x)
    finite = np.isfinite(ref) & (ref != 0)
    rel = np.abs(got[finite] - ref[finite]) / np.abs(ref[finite])
    assert rel.max() <= 4 * np.finfo(F64).eps


INF, NAN = np.inf, np.nan
# (function, [(input, expected)]): checked for float32 and float64 inputs.
SPECIAL = {
    "gexp": [(-INF, 0.0), (INF, INF), (NAN, NAN), (0.0, 1.0), (1000.0, INF), (-1000.0, 0.0)],
    "glog": [(0.0, -INF), (-0.0, -INF), (-1.0, NAN), (-INF, NAN), (INF, INF), (NAN, NAN), (1.0, 0.0)],
    "gtanh": [(INF, 1.0), (-INF, -1.0), (NAN, NAN), (0.0, 0.0), (1e-30, 1e-30), (-3e-8, np.tanh(-3e-8)), (30.0, 1.0)],
    "gsigmoid": [(INF, 1.0), (-INF, 0.0), (NAN, NAN), (0.0, 0.5), (1000.0, 1.0), (-1000.0, 0.0)],
    "gsoftplus": [(INF, INF), (-INF, 0.0), (NAN, NAN), (0.0, np.log(2.0)), (1000.0, 1000.0), (-40.0, np.exp(-40.0)),
                  (-1000.0, 0.0)],
    "glog1p": [(-1.0, -INF), (-2.0, NAN), (-INF, NAN), (INF, INF), (NAN, NAN), (0.0, 0.0), (1e-30, 1e-30), (3e38, np.log(3e38))],
    "gexpm1": [(-INF, -1.0), (INF, INF), (NAN, NAN), (0.0, 0.0), (1e-30, 1e-30), (-3e-8, np.expm1(-3e-8)), (1000.0, INF),
               (-1000.0, -1.0)],
}


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", NAMES)
def test_special_values(name, dtype):
    xs, want = (np.array(v, dtype=F64) for v in zip(*SPECIAL[name], strict=True))
    # Tile to 37 elements so the values run through the vector body and the scalar tail.
    x = np.resize(xs, 37).astype(dtype)
    got = run(name, x)
    rtol = 1e-6 if dtype == F32 else 1e-15
    np.testing.assert_allclose(got, np.resize(want, 37).astype(dtype), rtol=rtol, atol=0, equal_nan=True)
    if name in ("gsigmoid", "gsoftplus", "gexp"):
        assert np.all(got[~np.isnan(got)] >= 0)


def test_float32_exp_edges():
    x = np.array([88.72283, 88.72284, -87.33, -103.0, -104.0, -106.0], dtype=F32)
    got = run("gexp", x)
    assert np.isfinite(got[0]) and got[1] == INF
    np.testing.assert_allclose(got[2:4], np.exp(x[2:4].astype(F64)), rtol=1e-6, atol=2.0**-149)
    assert got[4] <= 2.0**-149 and got[5] == 0.0  # denormals: gradual underflow, then 0


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_float32_and_vectorizes(name):
    loop = _LOOPS[name]
    x = np.linspace(-3, 3, 64, dtype=F32)
    loop(x, np.empty_like(x))
    sig = next(s for s in loop.signatures if s[0].dtype == numba.float32)
    llvm = loop.inspect_llvm(sig)
    assert "double" not in llvm and "fpext" not in llvm
    # A vector of floats means LLVM inlined the call and vectorized the loop.
    assert re.search(r"<\d+ x float>", llvm), "loop did not vectorize"
    f = getattr(cm, name)
    f(F32(0.5))
    assert f.overloads[(numba.float32,)].signature.return_type == numba.float32
