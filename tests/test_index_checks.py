"""Every gather, pick, one-hot and scatter checks its index range: in Python for indices that are
inputs, inside the kernel for computed ones. A bad index raises an error naming the op and the
user's line, after the kernel, with nothing committed; compiled code never reads outside a buffer."""
import numpy as np
import pytest

import graphc as gc

TARGETS = [("numpy", {}), ("cpu", {}), ("cpu", {"debug": True})]
IDS = ["numpy", "cpu", "cpu-debug"]


def cross_entropy_of_shifted_labels(target, kw):
    z, y = gc.input("z", ("b", 4)), gc.input("y", ("b",), "int64")
    W = gc.param("W", np.eye(4, dtype=np.float32))
    loss = gc.softmax_cross_entropy(z @ W, y - 1)  # a label 0 becomes -1
    f = gc.function([z, y], loss, updates=[(W, W - 0.1 * gc.grad(loss, W))], target=target, **kw)
    return f, W, lambda labels: f(np.ones((len(labels), 4), np.float32), np.array(labels))


def embedding_of_offset_indices(target, kw):
    E = gc.param("E", np.arange(30, dtype=np.float32).reshape(10, 3))
    y = gc.input("y", ("n",), "int64")
    loss = gc.sum(gc.take(E, y + 3))  # the heap corruption: y = 7 reads and writes row 10
    f = gc.function([y], loss, updates=[(E, E - 0.5 * gc.grad(loss, [E])[0])], target=target, **kw)
    return f, E, lambda idx: f(np.array(idx))


def one_hot_of_computed(target, kw):
    y = gc.input("y", ("n",), "int64")
    p = gc.param("p", np.zeros(5, np.float32))
    out = gc.sum(gc.one_hot(y * 2, 5) + p, axis=0)
    f = gc.function([y], out, updates=[(p, p + 1)], target=target, **kw)
    return f, p, lambda idx: f(np.array(idx))


CASES = {
    "pick of y - 1": (cross_entropy_of_shifted_labels, [1, 2, 3], [0, 2], -1, "one_hot|pick"),
    "take of y + 3": (embedding_of_offset_indices, [1, 6], [7], 10, "take"),
    "take, far out": (embedding_of_offset_indices, [0], [10 ** 6], 10 ** 6 + 3, "take"),
    "one_hot of 2y": (one_hot_of_computed, [0, 2], [1, 3], 6, "one_hot"),
}


@pytest.mark.parametrize("target, kw", TARGETS, ids=IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_computed_index_out_of_range_raises_and_commits_nothing(case, target, kw):
    build, good, bad, value, ops = CASES[case]
    f, param, call = build(target, kw)
    first = call(good)
    before = param.value.copy()
    with pytest.raises(gc.GraphcError, match=rf"^({ops}) \(test_index_checks.py:\d+\): index {value} is out of range"):
        call(bad)
    np.testing.assert_array_equal(param.value, before)  # nothing committed
    again = call(good)  # and the step still works
    assert np.isfinite(np.asarray(again)).all() and np.shape(again) == np.shape(first)


def test_checks_are_compiled_only_for_computed_indices():
    """Input indices are checked in Python; computed ones are checked in the kernel, and no param
    is written in place before the last kernel that checks an index."""
    x, y = gc.input("x", ("b", 4)), gc.input("y", ("b",), "int64")
    W = gc.param("W", np.eye(4, dtype=np.float32))
    for labels, checked in ((y, False), (y - 1, True)):
        loss = gc.softmax_cross_entropy(x @ W, labels)
        f = gc.function([x, y], loss, updates=[(W, W - 0.1 * gc.grad(loss, W))], target="cpu")
        assert bool(f.program.checked) == checked
        prog = f.program
        last = max((k.index for k in prog.kernels if any(n.id in prog.checked for n in k.nodes)), default=-1)
        assert all(prog.memory.buffers[e].first > last for e in prog.memory.inplace)
        assert (len(f._program.spec["checks"]) > 0) == checked
        assert ("ix0 < 0" in f.source) == checked
