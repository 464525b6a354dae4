"""einsum: a composite of transpose, reshape, slice, sum, mul and matmul.

Forward against ``np.einsum`` (float32 and float64, NumPy and CPU targets), gradients to
second order against finite differences, forward and backward against PyTorch, the number
of matmuls a contraction builds, symbolic dims, and the errors."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc as gc
from graphc.ops.einsum import einsum

PATTERNS = [  # (subscripts, operand shapes)
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),                          # implicit output
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),    # attention logits
    ("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)]),    # attention values
    ("bi,ij,bj->b", [(3, 4), (4, 5), (3, 5)]),            # bilinear
    ("i,j->ij", [(3,), (4,)]),                            # outer
    ("ij,kl->ijkl", [(2, 3), (4, 2)]),
    ("i,i", [(5,), (5,)]),                                # dot
    ("i,i->i", [(5,), (5,)]),                             # elementwise
    ("ii->", [(4, 4)]),                                   # trace
    ("ii", [(4, 4)]),                                     # implicit trace
    ("ii->i", [(4, 4)]),                                  # diagonal
    ("iij->ji", [(3, 3, 2)]),
    ("iii->i", [(3, 3, 3)]),
    ("ij->ji", [(3, 4)]),                                 # transpose
    ("ji", [(3, 4)]),                                     # implicit: sorted, so a transpose
    ("ij->", [(3, 4)]),
    ("ij->j", [(3, 4)]),
    ("ij,j->i", [(3, 4), (4,)]),                          # matrix-vector
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),    # broadcast batch dims
    ("...ij,...jk", [(2, 3, 4), (4, 2)]),
    ("...i,...i->...", [(3, 1, 4), (2, 4)]),
    ("i...->...", [(3, 2, 4)]),
    ("ij,ij->ij", [(1, 3), (2, 3)]),                      # size-1 broadcast of a letter
    ("bn,anm,bm->ba", [(3, 4), (2, 4, 5), (3, 5)]),       # torch's bilinear
    ("ijk,ikl,lm->jm", [(2, 3, 4), (2, 4, 5), (5, 6)]),
    ("ab,cd,bc->ad", [(2, 3), (4, 5), (3, 4)]),
    ("ij,jk,kl,lm->im", [(2, 3), (3, 4), (4, 5), (5, 2)]),
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),                  # a diagonal, then a matmul
    ("i,", [(3,), ()]),                                   # scalar operand
    (" ij , jk -> ik ", [(3, 4), (4, 5)]),                # spaces are ignored
]
IDS = [p[0].replace(" ", "_") or "empty" for p in PATTERNS]
CPU = {"ij,jk->ik", "bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd", "bi,ij,bj->b", "i,j->ij", "ii->", "ii->i",
       "...ij,...jk->...ik", "ij,ij->ij", "ij->j"}


def _args(shapes, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype) for s in shapes]


def _run(spec, args, target="numpy"):
    xs = [gc.input(f"a{i}", a.shape, a.dtype) for i, a in enumerate(args)]
    out = einsum(spec, *xs)
    return out, gc.function(xs, out, target=target)(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec, shapes", PATTERNS, ids=IDS)
def test_forward_matches_numpy(spec, shapes, dtype):
    args = _args(shapes, dtype)
    out, got = _run(spec, args)
    want = np.einsum(spec, *args)
    assert out.shape == want.shape and out.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec, shapes", [p for p in PATTERNS if p[0] in CPU], ids=sorted(CPU, key=IDS.index))
def test_forward_cpu_target(spec, shapes, dtype):
    args = _args(shapes, dtype, seed=1)
    _, got = _run(spec, args, target="cpu")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, np.einsum(spec, *args), rtol=tol, atol=tol)


def test_ellipsis_not_in_output_is_summed():
    """As PyTorch (NumPy refuses): broadcast dims missing from an explicit output are summed."""
    x = _args([(2, 3, 4)])[0]
    np.testing.assert_allclose(_run("...i->i", [x])[1], x.sum((0, 1)), rtol=1e-12)


def test_mixed_float_dtypes_promote():
    a, b = _args([(3, 4), (4, 2)])
    out, got = _run("ij,jk->ik", [a.astype(np.float32), b])
    assert out.dtype == np.float64
    np.testing.assert_allclose(got, a.astype(np.float32).astype(np.float64) @ b, rtol=1e-12)


GRAD = [
    ("ij,jk->ik", [(3, 4), (4, 2)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("bi,ij,bj->b", [(3, 4), (4, 2), (3, 2)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ii->", [(4, 4)]),
    ("iij->ji", [(3, 3, 2)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (3, 4, 2)]),
    ("ij,ij->ij", [(1, 3), (2, 3)]),
    ("ij->j", [(3, 4)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
]
TORCH = [
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    ("bi,ij,bj->b", [(3, 4), (4, 5), (3, 5)]),
    ("bn,anm,bm->ba", [(3, 4), (2, 4, 5), (3, 5)]),
    ("ii->i", [(4, 4)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ij->", [(3, 4)]),
]


@pytest.mark.parametrize("spec, shapes", GRAD, ids=[p[0] for p in GRAD])
def test_gradients_second_order(spec, shapes):
    gc.check_grad(lambda *xs: einsum(spec, *xs), _args(shapes, seed=2), order=2)


@pytest.mark.parametrize("spec, shapes", TORCH, ids=[p[0] for p in TORCH])
def test_against_torch(spec, shapes):
    torch = pytest.importorskip("torch")
    args = _args(shapes, seed=3)
    xs = [gc.input(f"a{i}", a.shape, a.dtype) for i, a in enumerate(args)]
    out = einsum(spec, *xs)
    r = np.random.default_rng(4).standard_normal(out.shape)
    got = gc.function(xs, [out, *gc.grad(gc.sum(out * gc.constant(r)), xs)])(*args)
    ts = [torch.tensor(a, requires_grad=True) for a in args]
    t_out = torch.einsum(spec, *ts)
    t_grads = torch.autograd.grad((t_out * torch.tensor(r)).sum(), ts)
    np.testing.assert_allclose(got[0], t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for k, (g, tg) in enumerate(zip(got[1:], t_grads)):
        np.testing.assert_allclose(g, tg.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"gradient of operand {k}")


def _count(out, name):
    return sum(n.op.name == name for n in gc.toposort([out]))


@pytest.mark.parametrize("spec, shapes, matmuls", [
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)], 1),
    ("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)], 1),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)], 1),
    ("abcd,dcbe->ae", [(2, 3, 4, 5), (5, 4, 3, 6)], 1),  # three contracted labels: one K
    ("bi,ij,bj->b", [(3, 4), (4, 5), (3, 5)], 2),
    ("i,j->ij", [(3,), (4,)], 0),
])
def test_each_contraction_is_one_matmul(spec, shapes, matmuls):
    xs = [gc.input(f"a{i}", s, "float32") for i, s in enumerate(shapes)]
    out = einsum(spec, *xs)
    assert _count(out, "matmul") == matmuls
    if matmuls:  # the contraction is BLAS's, not a multiply and a sum
        assert _count(out, "mul") == 0 and _count(out, "sum") == 0


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_symbolic_dims(target):
    q, k = gc.input("q", ("batch", 3, 4, 5), "float64"), gc.input("k", ("batch", 3, 6, 5), "float64")
    s = einsum("bhqd,bhkd->bhqk", q, k)
    assert s.shape == ("batch", 3, 4, 6)
    x, W = gc.input("x", ("batch", "seq", 5), "float64"), gc.input("W", (5, 7), "float64")
    y = einsum("bsd,de->bse", x, W)                       # M is the product batch*seq
    assert y.shape == ("batch", "seq", 7)
    v = gc.input("v", ("batch", 7), "float64")
    z = einsum("bse,be->bs", y, v)
    assert z.shape == ("batch", "seq")
    f = gc.function([q, k, x, W, v], [s, z], target=target)
    for n in (1, 3):
        qa, ka, xa, Wa, va = _args([(n, 3, 4, 5), (n, 3, 6, 5), (n, 2, 5), (5, 7), (n, 7)], seed=n)
        got_s, got_z = f(qa, ka, xa, Wa, va)
        np.testing.assert_allclose(got_s, np.einsum("bhqd,bhkd->bhqk", qa, ka), rtol=1e-12)
        np.testing.assert_allclose(got_z, np.einsum("bsd,de,be->bs", xa, Wa, va), rtol=1e-12)


def test_symbolic_dims_gradient():
    gc.check_grad(lambda x, W: einsum("...d,de->...e", x, W), _args([(2, 3, 4), (4, 5)], seed=5), order=2)
    x = gc.input("x", ("batch", 4), "float64")
    W = gc.param("W", _args([(4, 3)])[0])
    gW = gc.grad(gc.sum(einsum("bi,ij->bj", x, W)), W)
    xa = _args([(6, 4)], seed=6)[0]
    np.testing.assert_allclose(gc.function([x], gW)(xa), np.broadcast_to(xa.sum(0)[:, None], (4, 3)), rtol=1e-12)


ERRORS = [  # (subscripts, operand shapes, message fragment)
    ("ij,jk->ik", [(3, 4)], "1 operand"),
    ("ij", [(3, 4), (4, 5)], "2 operand"),
    ("ijk->i", [(3, 4)], "operand 0 has 2 axes"),
    ("i->i", [(3, 4)], "operand 0 has 2 axes"),
    ("...ijk->i", [(3, 4)], "operand 0 has 2 axes"),
    ("ij,jk->ik", [(3, 4), (5, 6)], "index 'j' has sizes 4 and 5"),
    ("...i,...i->i", [(2, 3), (4, 3)], "index '...' has sizes"),
    ("ii->i", [(3, 4)], "index 'i' repeats with sizes 3, 4"),
    ("i1,jk->ik", [(3, 4), (4, 5)], "bad subscript"),
    ("i.j", [(3, 4)], "bad subscript"),
    ("......i", [(3, 4)], "bad subscript"),
    ("ij->i->j", [(3, 4)], "bad subscript"),
    ("ij->ik", [(3, 4)], "output index 'k' appears in no operand"),
    ("ij->ii", [(3, 4)], "repeats an index"),
]


@pytest.mark.parametrize("spec, shapes, fragment", ERRORS)
def test_errors_name_the_subscripts(spec, shapes, fragment):
    xs = [gc.input(f"a{i}", s, "float32") for i, s in enumerate(shapes)]
    with pytest.raises(gc.ShapeError, match=re.escape(f"einsum {spec!r}") + ".*" + re.escape(fragment)):
        einsum(spec, *xs)


def test_symbolic_diagonal_is_refused():
    x = gc.input("x", ("n", "n"), "float32")
    with pytest.raises(gc.ShapeError, match=re.escape("einsum 'ii->i'") + ".*static size"):
        einsum("ii->i", x)
