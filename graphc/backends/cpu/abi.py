"""The CPU kernel ABI: what generated kernels call besides ``cpu/mathfns.py``.

A kernel is ``def k(A, B)``: ``A`` is its argument block (int64: sizes, strides, offsets,
scalar bits), ``B`` the step's base addresses. An array operand is a typed pointer,
``ptr_float32(B[A[j]], A[j + 1])``: base ``A[j]`` at element offset ``A[j + 1]``, indexed with
explicit strides. Scalars travel as bits (``as_float32(A[j])``). Matmuls call OpenBLAS's
``cblas_?gemm`` by symbol (bound in ``native.py``).

``DEBUG`` holds the same names as plain Python over NumPy arrays, so the generated source also
runs without the JIT (``gc.function(..., debug=True)``) with pointer semantics intact.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .native import BLAS_SYMBOLS

DTYPES = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # cblas enums


def _ptr(name: str):
    nb = getattr(types, name)

    @intrinsic
    def ptr(typingctx, base, off):
        sig = types.CPointer(nb)(types.int64, types.int64)

        def codegen(context, builder, sig, args):
            p = builder.inttoptr(args[0], context.get_value_type(sig.return_type))
            return builder.gep(p, [args[1]])
        return sig, codegen
    ptr.__name__ = f"ptr_{name}"
    return ptr


def _bits(name: str):
    nb = getattr(types, name)

    @intrinsic
    def as_(typingctx, bits):
        def codegen(context, builder, sig, args):
            ty = context.get_value_type(nb)
            bits = nb.bitwidth
            return builder.bitcast(builder.trunc(args[0], ir.IntType(bits)) if bits < 64 else args[0], ty)
        return nb(types.int64), codegen
    return as_


@intrinsic
def ptr_add(typingctx, p, k):
    """``p + k`` elements (the operand of one matrix of a batched matmul)."""
    if not isinstance(p, types.CPointer):
        return None

    def codegen(context, builder, sig, args):
        return builder.gep(args[0], [args[1]])
    return p(p, types.int64), codegen


def _gemm(dtype):
    nb, i = getattr(types, dtype), types.int32
    p = types.CPointer(nb)
    symbol = next(s for s in BLAS_SYMBOLS if s.endswith("sgemm" if dtype == "float32" else "dgemm"))
    return types.ExternalFunction(symbol, types.void(i, i, i, i, i, i, nb, p, i, p, i, nb, p, i))


JIT = {f"ptr_{d}": _ptr(d) for d in DTYPES}
JIT.update(as_float32=_bits("float32"), as_float64=_bits("float64"), ptr_add=ptr_add,
           cblas_sgemm=_gemm("float32"), cblas_dgemm=_gemm("float64"))


# --- the same ABI in plain Python -----------------------------------------------------------
class Ptr:
    """A pointer into a flat NumPy array: ``p[k]`` is ``base[off + k]``, negative k included."""

    __slots__ = ("base", "off")

    def __init__(self, base: np.ndarray, off: int):
        self.base, self.off = base, int(off)

    def __getitem__(self, k):
        return self.base[self.off + k]

    def __setitem__(self, k, v) -> None:
        self.base[self.off + k] = v

    def matrix(self, rows: int, cols: int, ld: int, trans: bool) -> np.ndarray:
        """The ``rows x cols`` row-major matrix with leading dim ``ld`` (transposed view if ``trans``)."""
        shape = (cols, rows) if trans else (rows, cols)
        if rows == 0 or cols == 0:
            return np.zeros((rows, cols), self.base.dtype)
        size = (shape[0] - 1) * ld + shape[1]
        flat = self.base[self.off:self.off + size]
        m = np.lib.stride_tricks.as_strided(flat, shape, (ld * flat.itemsize, flat.itemsize))
        return m.T if trans else m


def _debug_gemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) -> None:
    A = a.matrix(m, k, lda, ta == TRANS)
    Bm = b.matrix(k, n, ldb, tb == TRANS)
    C = c.matrix(m, n, ldc, False)
    prod = (A @ Bm) * alpha
    C[...] = prod if beta == 0 else prod + beta * C


def _debug_bits(dtype):
    return lambda bits: np.array([bits], np.int64).astype(np.int32 if dtype == np.float32 else np.int64).view(dtype)[0]


DEBUG = {f"ptr_{d}": (lambda base, off: Ptr(base, off)) for d in DTYPES}
DEBUG.update(as_float32=_debug_bits(np.float32), as_float64=_debug_bits(np.float64),
             ptr_add=lambda p, k: Ptr(p.base, p.off + k), cblas_sgemm=_debug_gemm, cblas_dgemm=_debug_gemm)
