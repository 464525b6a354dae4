"""Every error graphc raises on purpose: its class, and a message that names the shapes,
the input and the user's line. A failed call changes nothing."""
from __future__ import annotations

import inspect
import os
import warnings

import numpy as np
import pytest

import graphc as gc


def site(offset: int = 1) -> str:
    """``file:line`` of the caller's line plus ``offset``: where the next statement is."""
    f = inspect.currentframe().f_back
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno + offset}"


def test_error_hierarchy():
    assert issubclass(gc.ShapeError, gc.GraphcError) and issubclass(gc.ShapeError, ValueError)
    assert issubclass(gc.InputError, gc.GraphcError) and issubclass(gc.InputError, ValueError)
    assert issubclass(gc.DTypeError, gc.GraphcError) and issubclass(gc.DTypeError, TypeError)


# --- build time: shapes, with both shapes and the user's line ----------------------------


def test_matmul_inner_dims_name_shapes_and_line():
    a, b = gc.input("a", (3, 4)), gc.input("b", (5, 6))
    with pytest.raises(gc.ShapeError) as info:
        where = site()
        a @ b
    msg = str(info.value)
    assert "(3, 4) @ (5, 6)" in msg and "inner dims 4 and 5" in msg and where in msg


def test_matmul_function_form_names_line():
    a, b = gc.input("a", (2, 3, 4)), gc.input("b", (5, 4, 2))
    with pytest.raises(gc.ShapeError) as info:
        where = site()
        gc.matmul(a, b)
    msg = str(info.value)
    assert "(2, 3, 4) @ (5, 4, 2)" in msg and "batch dims" in msg and where in msg


def test_broadcast_mismatch_names_shapes_and_line():
    a, b = gc.input("a", (3, 4)), gc.input("b", (5,))
    with pytest.raises(gc.ShapeError) as info:
        where = site()
        a + b
    msg = str(info.value)
    assert "(3, 4)" in msg and "(5,)" in msg and "4 and 5" in msg and where in msg
    with pytest.raises(gc.ShapeError) as info:
        where = site()
        gc.where(a > 0, a, gc.input("c", (2, 1, 3)))
    assert "(3, 4)" in str(info.value) and "(2, 1, 3)" in str(info.value) and where in str(info.value)


def test_symbolic_dims_do_not_broadcast_with_ints():
    a, b = gc.input("a", ("batch", 4)), gc.input("b", (3, 4))
    with pytest.raises(gc.ShapeError, match="batch"):
        a + b
    assert (a + gc.input("c", (1, 4))).shape == ("batch", 4)


def test_broadcast_to_mismatch():
    a = gc.input("a", (3, 4))
    with pytest.raises(gc.ShapeError) as info:
        where = site()
        gc.broadcast_to(a, (4, 3))
    assert "(3, 4)" in str(info.value) and "(4, 3)" in str(info.value) and where in str(info.value)


def test_concatenate_errors():
    a, b = gc.input("a", (3, 4)), gc.input("b", (5, 6))
    with pytest.raises(gc.ShapeError) as info:
        where = site()
        gc.concatenate([a, b], axis=0)
    assert "(3, 4), (5, 6)" in str(info.value) and where in str(info.value)
    with pytest.raises(gc.DTypeError, match="float32 and float64"):
        gc.concatenate([a, gc.input("c", (3, 4), "float64")])
    with pytest.raises(gc.ShapeError, match="no inputs"):
        gc.concatenate([])
    with pytest.raises(gc.ShapeError, match="symbolic"):
        gc.concatenate([gc.input("s", ("n", 4)), gc.input("t", ("n", 4))], axis=0)


@pytest.mark.parametrize("build, words", [
    (lambda a: gc.reshape(a, (5, 3)), ["(3, 4)", "(5, 3)"]),
    (lambda a: a.reshape(-1, -1), ["more than one -1"]),
    (lambda a: gc.reshape(a, (5, -1)), ["(3, 4)", "(5, -1)"]),
    (lambda a: gc.transpose(a, (0, 0)), ["not a permutation"]),
    (lambda a: gc.transpose(a, (0, 3)), ["(0, 3)", "not a permutation"]),
    (lambda a: gc.transpose(a, (-3, 0)), ["(-3, 0)", "not a permutation"]),
    (lambda a: gc.swapaxes(a, 0, 2), ["axis 2", "2-d"]),
    (lambda a: gc.expand_dims(a, 3), ["axis 3", "(3, 4)"]),
    (lambda a: gc.expand_dims(a, -4), ["axis -4", "(3, 4)"]),
    (lambda a: gc.squeeze(a, 0), ["(3, 4)", "not all 1"]),
    (lambda a: a[3], ["index 3", "size 3"]),
    (lambda a: a[:, -5], ["index -5", "size 4"]),
    (lambda a: a[1, 2, 3], ["too many indices", "(3, 4)"]),
    (lambda a: a[::-1], ["negative slice"]),
    (lambda a: gc.sum(a, 2), ["axis 2", "2-d"]),
    (lambda a: gc.max(a, (0, -2)), ["repeated axis"]),
    (lambda a: gc.logsumexp(a, -3), ["axis -3"]),
    (lambda a: gc.matmul(gc.input("s", ()), a), ["()", "(3, 4)", "scalars"]),
    (lambda a: gc.softmax_cross_entropy(a, gc.input("y", (4,), "int64")), ["(4,)", "(3, 4)"]),
    (lambda a: gc.softmax_cross_entropy(a, gc.input("t", (3, 5))), ["(3, 5)", "(3, 4)"]),
    (lambda a: gc.take(a, np.array([0]), axis=2), ["axis 2"]),
    (lambda a: gc.input("x", ("batch",))[0:1], ["symbolic dim", "batch"]),
], ids=["reshape", "reshape_two_minus1", "reshape_minus1_no_fit", "transpose", "transpose_range", "transpose_neg_range",
        "swapaxes_range", "expand_dims_range", "expand_dims_neg_range", "squeeze", "index", "index_neg",
        "too_many_indices", "negative_step", "axis_range", "repeated_axis", "lse_axis", "matmul_scalar",
        "sce_labels", "sce_targets", "take_axis", "slice_symbolic"])
def test_builder_shape_errors(build, words):
    a = gc.input("a", (3, 4))
    with pytest.raises(gc.ShapeError) as info:
        build(a)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    where = f"test_errors.py:{build.__code__.co_firstlineno}"  # the user's line is the lambda's
    assert msg.endswith(f"({where})"), f"{msg!r} does not name the user's line {where}"


@pytest.mark.parametrize("build, words", [
    (lambda a: a @ gc.input("d", (4,), "float64"), ["float32 @ float64"]),
    (lambda a: gc.exp(gc.input("i", (3,), "int64")), ["int64"]),
    (lambda a: gc.where(a, a, a), ["condition", "float32"]),
    (lambda a: gc.take(a, gc.input("f", (2,))), ["indices", "float32"]),
    (lambda a: gc.one_hot(a, 3), ["indices", "float32"]),
    (lambda a: gc.softmax_cross_entropy(a, gc.input("y", (3,), "bool")), ["bool"]),
    (lambda a: gc.sum(a > 0), ["bool"]),
    (lambda a: -(a > 0), ["bool"]),
], ids=["matmul_mixed", "exp_int", "where_cond", "take_float_idx", "one_hot_float", "sce_bool", "sum_bool", "neg_bool"])
def test_dtype_errors(build, words):
    a = gc.input("a", (3, 4))
    with pytest.raises(gc.DTypeError) as info:
        build(a)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_misuse_of_nodes():
    a = gc.input("a", (3,))
    with pytest.raises(gc.GraphcError, match="truth value"):
        if a > 0:
            pass
    with pytest.raises(gc.GraphcError, match="iterated"):
        list(a)
    with pytest.raises(gc.GraphcError, match="no value"):
        a.value  # noqa: B018
    with pytest.raises(gc.GraphcError, match="str"):
        a + "s"
    with pytest.raises(gc.GraphcError, match="ellipsis"):
        gc.input("b", (2, 3, 4))[..., 0, ...]
    with pytest.raises(gc.GraphcError, match="unsupported index"):
        a["k"]


def test_bad_sources():
    with pytest.raises(gc.GraphcError, match="non-empty string"):
        gc.input("", (3,))
    with pytest.raises(gc.ShapeError, match="negative"):
        gc.input("x", (-1,))
    with pytest.raises(gc.ShapeError, match="1.5"):
        gc.input("x", (1.5,))
    with pytest.raises(gc.GraphcError, match="single name"):
        gc.input("x", ("a*b",))
    with pytest.raises(gc.GraphcError, match="bool is neither float nor integer"):
        gc.param("p", np.array([True, False]))
    state = gc.param("step", np.array([1, 2]))  # integer params are step state, never trained
    with pytest.raises(gc.DTypeError, match="not float"):
        gc.grad(gc.sum(gc.cast(state, "float32")), state)
    W = gc.param("W", np.zeros((3, 4), np.float32))
    with pytest.raises(gc.GraphcError, match=r"\(2, 2\).*\(3, 4\)"):
        W.value = np.zeros((2, 2))
    with pytest.raises(gc.GraphcError, match="complex128"):
        W.value = np.zeros((3, 4), complex)
    with pytest.raises(gc.GraphcError, match="not a param"):
        gc.input("x", (3,)).value = np.zeros(3)


# --- grad ---------------------------------------------------------------------------------


def test_grad_of_non_scalar():
    a = gc.input("a", (3, 4))
    with pytest.raises(gc.ShapeError) as info:
        gc.grad(gc.sum(a, 0), a)
    assert "non-scalar" in str(info.value) and "(4,)" in str(info.value)


def test_grad_wrt_integer_input():
    a = gc.input("a", (3,))
    i = gc.input("i", (3,), "int64")
    with pytest.raises(gc.DTypeError) as info:
        gc.grad(gc.sum(a * gc.cast(i, "float32")), [a, i])
    assert "input i" in str(info.value) and "int64" in str(info.value)


def test_grad_bad_arguments():
    a = gc.input("a", (3,))
    with pytest.raises(gc.GraphcError, match="graph node"):
        gc.grad(3.0, a)
    with pytest.raises(gc.GraphcError, match="wrt"):
        gc.grad(gc.sum(a), [a, np.zeros(3)])
    with pytest.raises(gc.DTypeError, match="not float"):
        gc.grad(gc.sum(gc.cast(a, "int64")), a)


# --- function: build time --------------------------------------------------------------------


def test_input_missing_from_inputs_list():
    a, b = gc.input("a", (3,)), gc.input("b", (3,))
    line = site(-1)
    with pytest.raises(gc.GraphcError) as info:
        gc.function([a], a * b)
    assert "'b'" in str(info.value) and "inputs list" in str(info.value) and line in str(info.value)


@pytest.mark.parametrize("make, err, words", [
    (lambda a, W: gc.function([a], a, updates=[(W, gc.cast(W, "float64"))]), gc.DTypeError, ["W", "float64", "float32"]),
    (lambda a, W: gc.function([a], a, updates=[(W, W[0:2])]), gc.ShapeError, ["W", "(2, 4)", "(3, 4)"]),
    (lambda a, W: gc.function([a], a, updates=[(W, gc.sum(W, 0, keepdims=True).T)]), gc.ShapeError, ["(4, 1)", "(3, 4)"]),
    (lambda a, W: gc.function([a], a, updates=[(a, W)]), gc.GraphcError, ["not a param"]),
    (lambda a, W: gc.function([a], a, updates=[(W, W), (W, W * 2)]), gc.GraphcError, ["W", "twice"]),
    (lambda a, W: gc.function([a], a, updates=[W]), gc.GraphcError, ["pairs"]),
    (lambda a, W: gc.function([a, a], a), gc.GraphcError, ["'a'", "twice"]),
    (lambda a, W: gc.function([a * 2], a), gc.GraphcError, ["gc.input"]),
    (lambda a, W: gc.function([a], [a, 3]), gc.GraphcError, ["int"]),
    (lambda a, W: gc.function([a], a, target="tpu9"), gc.GraphcError, ["tpu9"]),
], ids=["update_dtype", "update_shape", "update_shape_T", "update_not_param", "update_twice", "update_not_pair",
        "duplicate_input", "input_not_input", "output_not_node", "unknown_target"])
def test_function_build_errors(make, err, words):
    a, W = gc.input("a", (3, 4)), gc.param("W", np.zeros((3, 4), np.float32))
    with pytest.raises(err) as info:
        make(a, W)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_update_broadcasts_a_scalar():
    W = gc.param("W", np.ones((2, 3), np.float32))
    gc.function([], [], updates=[(W, gc.sum(W) * 0 + 5.0)])()
    np.testing.assert_array_equal(W.value, np.full((2, 3), 5.0, np.float32))


# --- function: call time ----------------------------------------------------------------------


@pytest.fixture
def step():
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), dtype="int64")
    W = gc.param("W", np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    b = gc.param("b", np.zeros(3, np.float32))
    loss = gc.softmax_cross_entropy(x @ W + b, y)
    gW, gb = gc.grad(loss, [W, b])
    f = gc.function([x, y], loss, updates=[(W, W - 0.1 * gW), (b, b - 0.1 * gb)])
    return f, (W, b)


GOOD_X, GOOD_Y = np.ones((3, 4), np.float32), np.array([0, 1, 2])


@pytest.mark.parametrize("args, words", [
    ((np.ones((3, 5), np.float32), GOOD_Y), ["input x", "axis 1", "5", "expected 4"]),
    ((np.ones((3,), np.float32), GOOD_Y), ["input x", "2-d", "1-d", "(3,)"]),
    ((np.ones((3, 4, 1), np.float32), GOOD_Y), ["input x", "3-d"]),
    ((np.ones((3, 4), np.float64), GOOD_Y), ["input x", "float64", "float32", "safely"]),
    ((np.ones((3, 4), np.int64), GOOD_Y), ["input x", "int64"]),
    ((GOOD_X, GOOD_Y.astype(np.float64)), ["input y", "float64", "int64"]),
    ((GOOD_X, GOOD_Y.astype(np.uint64)), ["input y", "uint64"]),
    ((GOOD_X,), ["expected 2 arguments", "x, y", "got 1"]),
    ((GOOD_X, GOOD_Y, GOOD_Y), ["expected 2 arguments", "got 3"]),
    ((), ["got 0"]),
    ((GOOD_X.tolist(), GOOD_Y), ["input x", "list"]),
    (("abc", GOOD_Y), ["input x", "str"]),
    ((None, GOOD_Y), ["input x", "NoneType"]),
    ((GOOD_X, None), ["input y", "NoneType"]),
    ((GOOD_X, np.array([0, 1, 3])), ["input y", "index 3", "[0, 3)"]),
    ((GOOD_X, np.array([0, -1, 2])), ["input y", "index -1", "[0, 3)"]),
    ((GOOD_X, np.array([0, 1])), ["input y", "'batch'", "2", "3", "input x"]),
    ((np.ones((0, 4), np.float32), GOOD_Y), ["'batch'", "0", "3"]),
], ids=["axis_size", "rank_low", "rank_high", "f64_into_f32", "int_into_f32", "float_labels", "uint64_labels", "too_few",
        "too_many", "none_given", "list", "str", "None", "None_labels", "label_high", "label_negative", "batch_disagrees",
        "batch_zero_vs_3"])
def test_call_errors(step, args, words):
    f, params = step
    before = [p.value.copy() for p in params]
    with pytest.raises(gc.InputError) as info:
        f(*args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    for p, old in zip(params, before):  # a rejected call changes nothing
        assert p.value.tobytes() == old.tobytes()


def test_call_error_names_input_line():
    line = site()
    x = gc.input("x", (2,))
    with pytest.raises(gc.InputError) as info:
        gc.function([x], x * 2)(np.ones(3, np.float32))
    assert line in str(info.value)


def test_safe_casts_are_accepted(step):
    f, _ = step
    f(GOOD_X.astype(np.float16), GOOD_Y.astype(np.int32))
    f(GOOD_X.astype(bool), GOOD_Y.astype(np.uint8))


def test_failed_call_loses_nothing():
    """Bad labels, or an index that only fails while running: every param is bit-identical after."""
    rng = np.random.default_rng(0)
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), dtype="int64")
    W = gc.param("W", rng.standard_normal((4, 3)).astype(np.float32))
    E = gc.param("E", rng.standard_normal((4, 4)).astype(np.float32))
    h = x + gc.take(E, y + 2)  # computed indices: no check of the inputs can catch y == 2 before running
    loss = gc.softmax_cross_entropy(h @ W, y)
    gW, gE = gc.grad(loss, [W, E])
    f = gc.function([x, y], [loss, gW], updates=[(W, W - 0.5 * gW), (E, E - 0.5 * gE)])
    xv = rng.standard_normal((3, 4)).astype(np.float32)

    def snapshot():
        return [W.value.tobytes(), E.value.tobytes()]

    before = snapshot()
    with pytest.raises(gc.InputError, match="input y"):
        f(xv, np.array([0, 1, 3]))  # label 3 of 3 classes
    assert snapshot() == before
    with pytest.raises(gc.GraphcError, match="out of range"):
        f(xv, np.array([0, 1, 2]))  # valid labels, but take(E, 4) of 4 rows fails mid-step
    assert snapshot() == before
    f(xv, np.array([0, 1, 1]))  # a good step does update
    assert snapshot() != before


def test_nan_inputs_propagate_without_exceptions():
    x = gc.input("x", ("batch", 3))
    y = gc.input("y", ("batch",), "int64")
    W = gc.param("W", np.ones((3, 2), np.float32))
    z = x @ W
    loss = gc.softmax_cross_entropy(z, y) + gc.mean(gc.log(gc.abs(x))) + gc.mean(gc.sqrt(gc.abs(x)))
    gW = gc.grad(loss, W)
    f = gc.function([x, y], [loss, gW, gc.max(x), gc.sigmoid(x), gc.softmax(z)])
    xv = np.array([[np.nan, 1, 2], [0.0, -1, np.inf]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning either
        loss_v, gW_v, mx, sig, sm = f(xv, np.array([0, 1]))
    assert np.isnan(loss_v) and np.isnan(gW_v).all() and np.isnan(mx)
    assert np.isnan(sig[0, 0]) and sig[1, 2] == 1.0
    assert np.isnan(sm[0]).all()
