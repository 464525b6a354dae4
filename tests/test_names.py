"""User strings never become code: any name gc.input and gc.param accept, and any dim name, compiles
and runs on every target, and shows up in generated source only inside escaped comments."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc as gc

# names that broke generated code before: quotes, newlines with code after them, clashes
NASTY = ['x"""\nimport os; os._exit(3)\n"""', "W\nb", "x'''", "x y", "x_y", "\\", "#", "\x00", "\u2028end", "in0",
         "P_float32", "B", "np", "step", "k_0", "é", "a\r\nb"]
DIMS = ["p0", "in_x", "W_float32", "class", "B", "np", "bits", "d_n", "range", "step", "out0", "K0", "A", "é"]


def build(xname: str, wname: str, dim: str = "n"):
    x = gc.input(xname, (dim, 3))
    y = gc.input(xname + "_y", (dim,), "int64")  # a second input whose name starts like the first
    W = gc.param(wname, np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
    b = gc.param(wname + " b", np.zeros(4, np.float32))
    loss = gc.softmax_cross_entropy(gc.tanh(x @ W + b), y)
    gW, gb = gc.grad(loss, [W, b])
    return [x, y], [loss, gW], [(W, W - 0.1 * gW), (b, b - 0.1 * gb)], [W, b]


def run(target: str, xname: str, wname: str, dim: str = "n", **kw):
    ins, outs, ups, params = build(xname, wname, dim)
    f = gc.function(ins, outs, updates=ups, target=target, **kw)
    xv = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
    res = [f(xv, np.array([0, 1, 2, 3, 0])) for _ in range(2)]
    if f.source is not None:
        compile(f.source, "generated", "exec")  # the generated module stays valid Python
    return [r for pair in res for r in pair] + [p.value.copy() for p in params]


@pytest.mark.parametrize("name", NASTY)
@pytest.mark.parametrize("target", ["cpu-debug", "cpu"])
def test_nasty_names_compile_and_run(name, target):
    want = run("numpy", name, name)
    got = run("cpu", name, name, debug=target == "cpu-debug")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", DIMS)
def test_dim_names_that_clash_with_generated_names(dim):
    want = run("numpy", "x", "W", dim)
    for kw in ({"debug": True}, {}):
        for a, b in zip(run("cpu", "x", "W", dim, **kw), want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12))
def test_any_name_compiles(xname, wname):
    want = run("numpy", xname, wname)
    for a, b in zip(run("cpu", xname, wname, debug=True), want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_generated_comments_name_the_user_level_op():
    """A name stack, as JAX's: the primitives a composite is built from are commented with the
    op the user called (and gradient nodes with their forward op's), nested scopes joined by /."""
    import numpy as np

    import graphc as gc
    z = gc.input("z", ("b", 4))
    y = gc.input("y", ("b",), "int64")
    loss = gc.softmax_cross_entropy(z, y)
    f = gc.function([z, y], [loss, gc.grad(loss, z)], target="cpu", debug=True)
    f(np.zeros((3, 4), np.float32), np.array([0, 1, 2]))
    src = f.source
    assert "where in softmax_cross_entropy (forward" in src
    assert "in softmax_cross_entropy (backward" in src
    lse = gc.logsumexp(gc.softmax(z))
    assert {n.scope for n in gc.toposort([lse]) if n.op.name == "exp"} == {"logsumexp", "softmax"}
    assert gc.exp(z).scope == "exp"
