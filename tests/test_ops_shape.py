"""Rearranging, padding and indexing composites: flip, roll, split, chunk, stack, tile, repeat,
tril, triu, diagonal (graphc/ops/rearrange.py), pad (graphc/ops/pad.py), take_along_axis and
scatter_add (graphc/ops/index.py) and advanced indexing ``x[i, j]`` (graphc/ops/shape.py).

One table drives the forward checks against NumPy (numpy and cpu targets, float32 and float64),
second-order gradient checks, and the comparison with PyTorch. Then symbolic dims, edge cases,
index range checks and errors.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_ops_grad import _draw, _inputs

import graphc as gc
from graphc.ops.index import scatter_add, take_along_axis
from graphc.ops.pad import pad
from graphc.ops.rearrange import chunk, diagonal, flip, repeat, roll, split, stack, tile, tril, triu

try:
    import torch
except ImportError:  # the table is built without it; test_against_torch skips
    torch = None

# --- references ---------------------------------------------------------------------------------


def np_chunk(x, k, axis=0):
    n = x.shape[axis]
    step = -(-n // k)
    return np.split(x, list(range(step, n, step)), axis) if n else [x] * k


def np_scatter_add(x, idx, src, axis):
    out = x.copy()
    coords = list(np.indices(idx.shape, sparse=True))
    coords[axis] = idx
    np.add.at(out, tuple(coords), src[tuple(slice(0, s) for s in idx.shape)])
    return out


def join(cat, pieces, axis):
    """The pieces of a split, each scaled differently, joined in reverse order: one value that shows every piece."""
    return cat([p * float(k + 1) for k, p in enumerate(pieces[::-1])], axis)


def torch_pad(t, widths, mode, **kw):
    """torch's F.pad takes (before, after) pairs from the last axis backwards."""
    flat = [w for b_a in reversed(widths) for w in b_a]
    return torch.nn.functional.pad(t, flat, mode=mode, **kw)


# --- the table ----------------------------------------------------------------------------------

IDX_A = np.array([[0, 2], [1, 1]])      # repeated rows: adjoints must accumulate
IDX_B = np.array([3, -1])               # a negative constant index wraps, as in NumPy
TAA = np.array([[[3, 0, 1, 1, 2], [0, 0, 3, 2, 1]],
                [[1, 1, 1, 1, 1], [2, 3, 0, 0, 3]],
                [[0, 3, 3, 2, 0], [1, 2, 0, 3, 3]]])   # (3, 2, 5) into axis 1 of (3, 4, 5), with repeats
SCAT = np.array([[[0, 1, 0, 3], [0, 0, 2, 3]],
                 [[3, 3, 3, 3], [1, 0, 1, 2]]])       # (2, 2, 4) into axis 1 of (2, 4, 5), with repeats


class Arr:
    """An argument: a float array of ``shape`` drawn at random, or a fixed (integer) array."""

    def __init__(self, shape=None, value=None):
        self.shape, self.value = shape, value

    def draw(self, rng):
        return rng.standard_normal(self.shape) if self.value is None else np.asarray(self.value)


def F(*shape):
    return Arr(shape)


def V(value):
    return Arr(value=value)


def case(name, fn, ref, tfn, *args):
    """``fn`` on graph nodes, ``ref`` on NumPy arrays, ``tfn`` on torch tensors (None: no torch twin)."""
    return pytest.param(fn, ref, tfn, args, id=name)


CASES = [
    # flip
    case("flip_all", lambda x: flip(x), np.flip, lambda x: torch.flip(x, (0, 1, 2)), F(3, 4, 5)),
    case("flip_ax1", lambda x: flip(x, 1), lambda x: np.flip(x, 1), lambda x: torch.flip(x, (1,)), F(3, 4, 5)),
    case("flip_ax02", lambda x: flip(x, (0, 2)), lambda x: np.flip(x, (0, 2)), lambda x: torch.flip(x, (0, 2)), F(3, 4, 5)),
    case("flip_neg_adjacent", lambda x: flip(x, (-1, -2)), lambda x: np.flip(x, (1, 2)), lambda x: torch.flip(x, (1, 2)),
         F(3, 4, 5)),
    case("flip_size1", lambda x: flip(x, (0, 1)), lambda x: np.flip(x, (0, 1)), lambda x: torch.flip(x, (0, 1)), F(3, 1, 2)),
    # roll
    case("roll_ax0", lambda x: roll(x, 2, 0), lambda x: np.roll(x, 2, 0), lambda x: torch.roll(x, 2, 0), F(4, 5)),
    case("roll_neg", lambda x: roll(x, -1, -1), lambda x: np.roll(x, -1, -1), lambda x: torch.roll(x, -1, -1), F(4, 5)),
    case("roll_tuple", lambda x: roll(x, (1, -2), (0, 2)), lambda x: np.roll(x, (1, -2), (0, 2)),
         lambda x: torch.roll(x, (1, -2), (0, 2)), F(3, 4, 5)),
    case("roll_flat", lambda x: roll(x, 7), lambda x: np.roll(x, 7), lambda x: torch.roll(x, 7), F(3, 4)),
    case("roll_big_shift", lambda x: roll(x, -9, 1), lambda x: np.roll(x, -9, 1), lambda x: torch.roll(x, -9, 1), F(3, 4)),
    case("roll_same_axis_twice", lambda x: roll(x, (1, 2), (0, 0)), lambda x: np.roll(x, (1, 2), (0, 0)),
         lambda x: torch.roll(x, 3, 0), F(4, 3)),
    # split and chunk
    case("split_sections", lambda x: join(gc.concatenate, split(x, 2, 1), 1),
         lambda x: join(np.concatenate, np.split(x, 2, 1), 1),
         lambda x: join(torch.cat, torch.tensor_split(x, 2, 1), 1), F(3, 4, 5)),
    case("split_points", lambda x: join(gc.concatenate, split(x, [1, 4], -1), -1),
         lambda x: join(np.concatenate, np.split(x, [1, 4], -1), -1),
         lambda x: join(torch.cat, torch.tensor_split(x, [1, 4], -1), -1), F(3, 4, 5)),
    case("split_odd_points", lambda x: join(gc.concatenate, split(x, [2, 10, 1, -1]), 0),
         lambda x: join(np.concatenate, np.split(x, [2, 10, 1, -1]), 0),
         lambda x: join(torch.cat, torch.tensor_split(x, [2, 10, 1, -1]), 0), F(5, 2)),
    case("chunk_uneven", lambda x: join(gc.concatenate, chunk(x, 4, 1), 1), lambda x: join(np.concatenate, np_chunk(x, 4, 1), 1),
         lambda x: join(torch.cat, torch.chunk(x, 4, 1), 1), F(2, 5)),
    case("chunk_even_neg", lambda x: join(gc.concatenate, chunk(x, 3, -1), -1),
         lambda x: join(np.concatenate, np_chunk(x, 3, -1), -1), lambda x: join(torch.cat, torch.chunk(x, 3, -1), -1), F(2, 6)),
    # stack
    case("stack_0", lambda a, b: stack([a, b * 2.0, a]), lambda a, b: np.stack([a, b * 2.0, a]),
         lambda a, b: torch.stack([a, b * 2.0, a]), F(3, 4), F(3, 4)),
    case("stack_last", lambda a, b: stack([a, b], -1), lambda a, b: np.stack([a, b], -1), lambda a, b: torch.stack([a, b], -1),
         F(3, 4), F(3, 4)),
    case("stack_mid", lambda a: stack([a], 1), lambda a: np.stack([a], 1), lambda a: torch.stack([a], 1), F(3, 4)),
    # tile and repeat
    case("tile_int", lambda x: tile(x, 3), lambda x: np.tile(x, 3), lambda x: torch.tile(x, (3,)), F(2, 3)),
    case("tile_more_reps", lambda x: tile(x, (2, 1, 3)), lambda x: np.tile(x, (2, 1, 3)), lambda x: torch.tile(x, (2, 1, 3)),
         F(2, 3)),
    case("tile_fewer_reps", lambda x: tile(x, (2, 1)), lambda x: np.tile(x, (2, 1)), lambda x: torch.tile(x, (2, 1)),
         F(2, 3, 2)),
    case("repeat_flat", lambda x: repeat(x, 2), lambda x: np.repeat(x, 2), lambda x: torch.repeat_interleave(x, 2),
         F(2, 3)),
    case("repeat_ax1", lambda x: repeat(x, 3, 1), lambda x: np.repeat(x, 3, 1), lambda x: torch.repeat_interleave(x, 3, 1),
         F(2, 3, 2)),
    case("repeat_neg_axis", lambda x: repeat(x, 2, -1), lambda x: np.repeat(x, 2, -1),
         lambda x: torch.repeat_interleave(x, 2, -1), F(2, 3)),
    # tril, triu, diagonal
    case("tril", lambda x: tril(x), np.tril, lambda x: torch.tril(x), F(4, 4)),
    case("tril_k1_wide", lambda x: tril(x, 1), lambda x: np.tril(x, 1), lambda x: torch.tril(x, 1), F(3, 5)),
    case("tril_kneg_batch", lambda x: tril(x, -1), lambda x: np.tril(x, -1), lambda x: torch.tril(x, -1), F(2, 4, 3)),
    case("triu", lambda x: triu(x), np.triu, lambda x: torch.triu(x), F(4, 4)),
    case("triu_k2_tall", lambda x: triu(x, 2), lambda x: np.triu(x, 2), lambda x: torch.triu(x, 2), F(5, 3)),
    case("triu_kneg_batch", lambda x: triu(x, -2), lambda x: np.triu(x, -2), lambda x: torch.triu(x, -2), F(2, 3, 4)),
    case("triu_k_beyond", lambda x: triu(x, 7) + tril(x, -7), lambda x: np.triu(x, 7) + np.tril(x, -7),
         lambda x: torch.triu(x, 7) + torch.tril(x, -7), F(3, 4)),
    case("diagonal", lambda x: diagonal(x), np.diagonal, lambda x: torch.diagonal(x), F(4, 5)),
    case("diagonal_off1", lambda x: diagonal(x, 1), lambda x: np.diagonal(x, 1), lambda x: torch.diagonal(x, 1), F(4, 5)),
    case("diagonal_offneg", lambda x: diagonal(x, -2), lambda x: np.diagonal(x, -2), lambda x: torch.diagonal(x, -2), F(4, 3)),
    case("diagonal_last_two", lambda x: diagonal(x, 0, -2, -1), lambda x: np.diagonal(x, 0, -2, -1),
         lambda x: torch.diagonal(x, 0, -2, -1), F(2, 3, 4)),
    case("diagonal_axes_swapped", lambda x: diagonal(x, 1, 2, 0), lambda x: np.diagonal(x, 1, 2, 0),
         lambda x: torch.diagonal(x, 1, 2, 0), F(3, 2, 4)),
    # pad
    case("pad_constant", lambda x: pad(x, ((1, 2), (0, 3))), lambda x: np.pad(x, ((1, 2), (0, 3))),
         lambda x: torch_pad(x, ((1, 2), (0, 3)), "constant"), F(3, 4)),
    case("pad_constant_value", lambda x: pad(x, 2, value=1.5), lambda x: np.pad(x, 2, constant_values=1.5),
         lambda x: torch.nn.functional.pad(x, (2, 2, 2, 2), value=1.5), F(3, 4)),
    case("pad_value_one_side", lambda x: pad(x, ((0, 0), (0, 2), (1, 0)), value=-3.0),
         lambda x: np.pad(x, ((0, 0), (0, 2), (1, 0)), constant_values=-3.0),
         lambda x: torch_pad(x, ((0, 0), (0, 2), (1, 0)), "constant", value=-3.0), F(2, 3, 4)),
    case("pad_reflect", lambda x: pad(x, ((0, 0), (2, 1), (3, 2)), "reflect"),
         lambda x: np.pad(x, ((0, 0), (2, 1), (3, 2)), "reflect"), lambda x: torch_pad(x, ((2, 1), (3, 2)), "reflect"),
         F(2, 4, 5)),
    case("pad_replicate", lambda x: pad(x, ((0, 0), (3, 1), (0, 2)), "replicate"),
         lambda x: np.pad(x, ((0, 0), (3, 1), (0, 2)), "edge"), lambda x: torch_pad(x, ((3, 1), (0, 2)), "replicate"),
         F(2, 4, 5)),
    case("pad_circular", lambda x: pad(x, ((0, 0), (1, 2), (4, 3)), "circular"),
         lambda x: np.pad(x, ((0, 0), (1, 2), (4, 3)), "wrap"), lambda x: torch_pad(x, ((1, 2), (4, 3)), "circular"),
         F(2, 4, 5)),
    case("pad_numpy_names_wide", lambda x: pad(x, (5, 7), "wrap") + pad(x, (5, 7), "edge") + pad(x, (5, 7), "reflect"),
         lambda x: np.pad(x, (5, 7), "wrap") + np.pad(x, (5, 7), "edge") + np.pad(x, (5, 7), "reflect"), None, F(3, 2)),
    case("pad_reflect_size1", lambda x: pad(x, ((2, 1), (0, 0)), "reflect"), lambda x: np.pad(x, ((2, 1), (0, 0)), "reflect"),
         None, F(1, 3)),
    # take_along_axis
    case("take_along_axis", lambda x: take_along_axis(x, TAA, 1), lambda x: np.take_along_axis(x, TAA, 1),
         lambda x: torch.take_along_dim(x, torch.tensor(TAA), 1), F(3, 4, 5)),
    case("take_along_axis_bcast", lambda x: take_along_axis(x, TAA[:1, :, :1], 1),
         lambda x: np.take_along_axis(x, TAA[:1, :, :1], 1), lambda x: torch.take_along_dim(x, torch.tensor(TAA[:1, :, :1]), 1),
         F(3, 4, 5)),
    case("take_along_axis_last_node", lambda x, i: take_along_axis(x, i, -1), lambda x, i: np.take_along_axis(x, i, -1),
         lambda x, i: torch.take_along_dim(x, i, -1), F(3, 4), V([[3, 3, 0], [1, 2, 1], [0, 0, 0]])),
    case("take_along_axis_first_node", lambda x, i: take_along_axis(x, i, 0), lambda x, i: np.take_along_axis(x, i, 0),
         lambda x, i: torch.take_along_dim(x, i, 0), F(3, 4), V([[2, 0, 1, 2], [2, 2, 0, 1]])),
    case("take_along_axis_none", lambda x: take_along_axis(x, [5, 0, 11, -1, 5], None),
         lambda x: np.take_along_axis(x, np.array([5, 0, 11, -1, 5]), None),
         lambda x: torch.take_along_dim(x, torch.tensor([5, 0, 11, 11, 5])), F(3, 4)),
    # scatter_add
    case("scatter_add_ax1", lambda x, s: scatter_add(x, SCAT, s, 1), lambda x, s: np_scatter_add(x, SCAT, s, 1),
         lambda x, s: x.scatter_add(1, torch.tensor(SCAT), s), F(2, 4, 5), F(2, 2, 4)),
    case("scatter_add_src_larger", lambda x, s: scatter_add(x, SCAT, s, 1), lambda x, s: np_scatter_add(x, SCAT, s, 1),
         lambda x, s: x.scatter_add(1, torch.tensor(SCAT), s[:2, :2, :4]), F(2, 4, 5), F(3, 3, 6)),  # torch's backward needs it
    case("scatter_add_ax0_node", lambda x, i, s: scatter_add(x, i, s, 0), lambda x, i, s: np_scatter_add(x, i, s, 0),
         lambda x, i, s: x.scatter_add(0, i, s), F(3, 4), V([[2, 2, 0, 1], [2, 0, 0, 1]]), F(2, 4)),
    case("scatter_add_last_node", lambda x, i, s: scatter_add(x, i, s, -1), lambda x, i, s: np_scatter_add(x, i, s, 1),
         lambda x, i, s: x.scatter_add(-1, i, s[:, :2]), F(3, 4), V([[3, 3], [0, 1], [2, 2]]), F(3, 3)),
    # advanced indexing
    case("adv_two_leading", lambda x: x[IDX_A, IDX_B[0]], lambda x: x[IDX_A, IDX_B[0]],
         lambda x: x[torch.tensor(IDX_A), int(IDX_B[0])], F(3, 4, 5)),
    case("adv_pair", lambda x: x[IDX_A, IDX_B], lambda x: x[IDX_A, IDX_B],
         lambda x: x[torch.tensor(IDX_A), torch.tensor(IDX_B) % 4], F(3, 4, 5)),
    case("adv_apart_first", lambda x: x[IDX_A, :, IDX_B], lambda x: x[IDX_A, :, IDX_B],
         lambda x: x[torch.tensor(IDX_A), :, torch.tensor(IDX_B) % 5], F(3, 4, 5)),
    case("adv_trailing", lambda x: x[:, IDX_A, IDX_B], lambda x: x[:, IDX_A, IDX_B],
         lambda x: x[:, torch.tensor(IDX_A), torch.tensor(IDX_B) % 5], F(3, 4, 5)),
    case("adv_int_between", lambda x: x[IDX_A, 1, IDX_B], lambda x: x[IDX_A, 1, IDX_B],
         lambda x: x[torch.tensor(IDX_A), 1, torch.tensor(IDX_B) % 5], F(3, 4, 5)),
    case("adv_int_first", lambda x: x[1, IDX_A, IDX_B], lambda x: x[1, IDX_A, IDX_B],
         lambda x: x[1, torch.tensor(IDX_A), torch.tensor(IDX_B) % 5], F(3, 4, 5)),
    case("adv_with_slice", lambda x: x[IDX_A, IDX_B, 1:4], lambda x: x[IDX_A, IDX_B, 1:4],
         lambda x: x[torch.tensor(IDX_A), torch.tensor(IDX_B) % 4, 1:4], F(3, 4, 5)),
    case("adv_newaxis_apart", lambda x: x[IDX_A, None, IDX_B], lambda x: x[IDX_A, None, IDX_B],
         lambda x: x[torch.tensor(IDX_A), None, torch.tensor(IDX_B) % 4], F(3, 4, 5)),
    case("adv_ellipsis_bcast", lambda x: x[..., [[0], [2]], [1, 0, 1]], lambda x: x[..., [[0], [2]], [1, 0, 1]],
         lambda x: x[..., torch.tensor([[0], [2]]), torch.tensor([1, 0, 1])], F(2, 3, 4)),
    case("adv_three", lambda x: x[[2, 0], [1, 1], [0, 3]], lambda x: x[[2, 0], [1, 1], [0, 3]],
         lambda x: x[[2, 0], [1, 1], [0, 3]], F(3, 2, 4)),
    case("adv_nodes", lambda x, i, j: gc.concatenate([x[i, :, j], x[i, j], x[i, None, j][:, :, 0, :2]], -1),
         lambda x, i, j: np.concatenate([x[i, :, j], x[i, j], x[i, None, j][:, :, 0, :2]], -1),
         lambda x, i, j: torch.cat([x[i, :, j], x[i, j], x[i, None, j][:, :, 0, :2]], -1), F(3, 4, 5), V([[2, 0, 2], [1, 1, 0]]),
         V([3, 0, 2])),
]

# --- the forward, against NumPy --------------------------------------------------------------------


def _tol(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == "float32" else dict(rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn, ref, tfn, args", CASES)
def test_forward_matches_numpy(fn, ref, tfn, args, dtype):
    vals = _draw(args)
    xs, feeds = _inputs(vals, dtype)
    out = fn(*xs)
    got = gc.function(xs, out)(*feeds)
    want = ref(*feeds)
    assert out.dtype == np.dtype(dtype) and got.dtype == np.dtype(dtype)
    assert got.shape == want.shape == tuple(out.shape)
    np.testing.assert_allclose(got, want, **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn, ref, tfn, args", CASES)
def test_cpu_matches_numpy(fn, ref, tfn, args, dtype):
    """The compiled CPU step: the value (read by a kernel) and the gradient of sum(out * r), against
    NumPy and against the numpy target."""
    vals = _draw(args)
    xs, feeds = _inputs(vals, dtype)
    out = fn(*xs)
    r = gc.constant(np.random.default_rng(1).standard_normal(out.shape).astype(dtype))
    floats = [x for x in xs if x.dtype.kind == "f"]
    outs = [out * 2.0, *gc.grad(gc.sum(out * r), floats)]
    got = gc.function(xs, outs, target="cpu")(*feeds)
    want = gc.function(xs, outs)(*feeds)
    np.testing.assert_allclose(got[0], 2.0 * ref(*feeds), **_tol(dtype))
    for g, w in zip(got, want):
        assert g.dtype == np.dtype(dtype)
        np.testing.assert_allclose(g, w, **_tol(dtype))


@pytest.mark.parametrize("fn, ref, tfn, args", CASES)
def test_cpu_output_is_the_value(fn, ref, tfn, args):
    """The value itself as a CPU step's output: tile, repeat and diagonal of swapped axes end in a view
    that the step must copy contiguous first (values no earlier step left in the scratch)."""
    vals = _draw(args, seed=1234)
    xs, feeds = _inputs(vals, "float64")
    np.testing.assert_allclose(gc.function(xs, fn(*xs), target="cpu")(*feeds), ref(*feeds), rtol=1e-13, atol=1e-13)


# --- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, ref, tfn, args", CASES)
def test_grad_second_order(fn, ref, tfn, args):
    """Squared, so that the second order is not zero: it runs the adjoints' own adjoints."""
    def f(*xs):
        out = fn(*xs)
        return out * out
    gc.check_grad(f, _draw(args), order=2)


@pytest.mark.parametrize("fn, ref, tfn, args", CASES)
def test_float32_stays_float32(fn, ref, tfn, args):
    xs, _ = _inputs(_draw(args), "float32")
    fl = [x for x in xs if x.dtype.kind == "f"]
    loss = gc.sum(fn(*xs) * 1.5)
    gs = gc.grad(loss, fl)
    gg = gc.grad(sum((gc.sum(g * g) for g in gs), gc.constant(0.0, "float32")), fl)
    for n in gc.toposort([loss, *gs, *gg]):
        assert n.dtype != np.float64, f"{n!r} is float64 in a float32 graph"


@pytest.mark.parametrize("fn, ref, tfn, args", [c for c in CASES if c.values[2] is not None])
def test_against_torch(fn, ref, tfn, args):
    """Forward and the gradient of sum(out * r), float64, as tests/test_torch_ref.py's ``compare``."""
    pytest.importorskip("torch")
    vals = _draw(args)
    xs = [gc.input(f"a{i}", a.shape, a.dtype) for i, a in enumerate(vals)]
    out = fn(*xs)
    r = np.random.default_rng(1).standard_normal(out.shape)
    floats = [k for k, a in enumerate(vals) if a.dtype.kind == "f"]
    got = gc.function(xs, [out, *gc.grad(gc.sum(out * gc.constant(r)), [xs[k] for k in floats])])(*vals)
    ts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in vals]
    t_out = tfn(*ts)
    t_grads = torch.autograd.grad((t_out * torch.tensor(r)).sum(), [ts[k] for k in floats])
    np.testing.assert_allclose(got[0], t_out.detach().numpy(), rtol=1e-12, atol=1e-12)
    for k, g, tg in zip(floats, got[1:], t_grads):
        np.testing.assert_allclose(g, tg.numpy(), rtol=1e-12, atol=1e-12, err_msg=f"gradient of argument {k}")


# --- structure: gathers and scatters -------------------------------------------------------------


def _ops(*roots):
    return [n.op.name for n in gc.toposort(list(roots))]


def test_several_array_indices_are_one_gather_and_one_scatter():
    x = gc.input("x", (3, 4, 5), "float64")
    i, j = gc.input("i", (2,), "int64"), gc.input("j", (2,), "int64")
    y = x[i, :, j]
    assert _ops(y).count("take") == 1
    g = gc.grad(gc.sum(y * y), x)
    assert _ops(g).count("scatter_add") == 1 and _ops(g).count("take") == 1


def test_range_guards_only_where_a_flat_index_could_hide_a_bad_index():
    """A node index along an inner axis gets a guard (two wheres); a constant index (checked when built)
    or the outermost axis (a bad index leaves the flat range by itself) gets none."""
    x = gc.input("x", (3, 4), "float64")
    k, m = gc.input("k", (3, 2), "int64"), gc.input("m", (2, 4), "int64")
    i, j = gc.input("i", (2,), "int64"), gc.input("j", (2,), "int64")
    assert _ops(take_along_axis(x, k, 1)).count("where") == 2
    assert _ops(take_along_axis(x, m, 0)).count("where") == 0
    assert _ops(take_along_axis(x, np.zeros((3, 2), np.int64), 1)).count("where") == 0
    assert _ops(scatter_add(x, np.zeros((3, 2), np.int64), np.ones((3, 2)), 1)).count("where") == 0
    assert _ops(x[i, j]).count("where") == 2 and _ops(x[i, [0, 1]]).count("where") == 0
    assert _ops(x[[0, 1], j]).count("where") == 2


def test_flip_of_adjacent_axes_is_one_gather_and_views_are_free():
    x = gc.input("x", (3, 4, 5), "float64")
    assert _ops(flip(x)).count("take") == 1
    assert _ops(flip(x, (0, 2))).count("take") == 2
    for y in (roll(x, 1, 1), *split(x, 2, 1), *chunk(x, 2), stack([x, x]), pad(x, 1, "circular"), pad(x, 1, "edge")):
        assert {"take", "scatter_add"}.isdisjoint(_ops(y))


# --- symbolic dims -------------------------------------------------------------------------------


SYMBOLIC = [
    ("tril", lambda x: tril(x, 1), lambda x: np.tril(x, 1)),
    ("triu", lambda x: triu(x, -1), lambda x: np.triu(x, -1)),
    ("tril_on_batch", lambda x: tril(x.T), lambda x: np.tril(x.T)),
    ("flip_batch", lambda x: flip(x, 0), lambda x: np.flip(x, 0)),
    ("flip_all", lambda x: flip(x), np.flip),
    ("flip_last", lambda x: flip(x, -1), lambda x: np.flip(x, -1)),
    ("roll_static_axis", lambda x: roll(x, 1, 1), lambda x: np.roll(x, 1, 1)),
    ("stack", lambda x: stack([x, x * 2.0], 1), lambda x: np.stack([x, x * 2.0], 1)),
    ("tile", lambda x: tile(x, (2, 1)) * 1.0 + 0.5, lambda x: np.tile(x, (2, 1)) + 0.5),
    ("repeat_batch", lambda x: repeat(x, 2, 0) * 2.0, lambda x: np.repeat(x, 2, 0) * 2.0),
    ("pad_static_axis", lambda x: pad(x, ((0, 0), (2, 1)), "reflect") + pad(x, ((0, 0), (1, 2)), value=2.0),
     lambda x: np.pad(x, ((0, 0), (2, 1)), "reflect") + np.pad(x, ((0, 0), (1, 2)), constant_values=2.0)),
    ("take_along_axis", lambda x: take_along_axis(x, np.array([[3, 0, 0]]), 1),
     lambda x: np.take_along_axis(x, np.array([[3, 0, 0]]), 1)),
    ("take_along_batch", lambda x: take_along_axis(x, np.array([[0, 1, 0, 1]]), 0),
     lambda x: np.take_along_axis(x, np.array([[0, 1, 0, 1]]), 0)),
    ("getitem_pair", lambda x: x[[1, 0, 1], [3, 2, 0]], lambda x: x[[1, 0, 1], [3, 2, 0]]),
    ("getitem_apart", lambda x: stack([x, x * 2.0], 1)[[0, 2], :, [3, 1]],
     lambda x: np.stack([x, x * 2.0], 1)[[0, 2], :, [3, 1]]),
]


@pytest.mark.parametrize("target", ["numpy", "cpu"])
@pytest.mark.parametrize("name, fn, ref", SYMBOLIC, ids=[s[0] for s in SYMBOLIC])
def test_symbolic_batch(name, fn, ref, target):
    """("batch", 4) inputs, one compiled function run with two batch sizes; and the gradient."""
    x = gc.input("x", ("batch", 4), "float64")
    out = fn(x)
    g = gc.grad(gc.sum(out * out), x)
    f = gc.function([x], out * 1.0, target=target)
    rng = np.random.default_rng(0)
    for b in (3, 5):
        xv = rng.standard_normal((b, 4))
        np.testing.assert_allclose(f(xv), ref(xv), rtol=1e-13, atol=1e-13)
    fg = gc.function([x], g, target=target)
    for b in (3, 5):
        xv = rng.standard_normal((b, 4))
        gv = fg(xv)
        xs = gc.input("xs", (b, 4), "float64")
        want_g = gc.function([xs], gc.grad(gc.sum(fn(xs) * fn(xs)), xs))(xv)
        np.testing.assert_allclose(gv, want_g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_symbolic_node_indices(target):
    x = gc.input("x", ("batch", 4), "float64")
    i = gc.input("i", ("batch", 2), "int64")
    j = gc.input("j", ("n",), "int64")
    outs = [take_along_axis(x, i, 1), x[j, 3 - j], stack([x, x * 2.0], 1)[j, None, 1:, 3 - j], x[j]]
    f = gc.function([x, i, j], outs, target=target)
    rng = np.random.default_rng(0)
    for b, n in ((2, 3), (5, 1)):
        xv, iv, jv = rng.standard_normal((b, 4)), rng.integers(0, 4, (b, 2)), rng.integers(0, 2, n)
        want = [np.take_along_axis(xv, iv, 1), xv[jv, 3 - jv], np.stack([xv, xv * 2.0], 1)[jv, None, 1:, 3 - jv], xv[jv]]
        for g, w in zip(f(xv, iv, jv), want):
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_symbolic_scatter_add(target):
    x = gc.input("x", ("batch", 4), "float64")
    i = gc.input("i", ("batch", 2), "int64")
    s = gc.input("s", ("batch", 2), "float64")
    f = gc.function([x, i, s], scatter_add(x, i, s, 1), target=target)
    rng = np.random.default_rng(0)
    for b in (2, 5):
        xv, iv, sv = rng.standard_normal((b, 4)), rng.integers(0, 4, (b, 2)), rng.standard_normal((b, 2))
        np.testing.assert_allclose(f(xv, iv, sv), np_scatter_add(xv, iv, sv, 1), rtol=1e-13, atol=1e-13)


# --- edge cases ----------------------------------------------------------------------------------


def _run(fn, *vals, target="numpy"):
    xs = [gc.input(f"a{k}", np.shape(v), np.asarray(v).dtype) for k, v in enumerate(vals)]
    out = fn(*xs)
    return gc.function(xs, out if isinstance(out, list) else [out], target=target)(*vals)


@pytest.mark.parametrize("target", ["numpy", "cpu"])
def test_empty_and_unit_axes(target):
    e = np.zeros((0, 3))
    one = np.arange(3.0).reshape(1, 3)
    (a, b, c, d) = _run(lambda x: [flip(x), roll(x, 2, 0) * 1.0, tile(x, (2, 0)) * 1.0, repeat(x, 0, 1) * 1.0], e, target=target)
    assert a.shape == (0, 3) and b.shape == (0, 3) and c.shape == (0, 0) and d.shape == (0, 0)
    pieces = _run(lambda x: split(x, [1, 1, 5]), one, target=target)
    assert [p.shape for p in pieces] == [(1, 3), (0, 3), (0, 3), (0, 3)]
    assert [p.shape for p in _run(lambda x: chunk(x, 3), e, target=target)] == [(0, 3)] * 3
    f1, r1, d0, d1 = _run(lambda x: [flip(x) * 1.0, roll(x, -4) * 1.0, diagonal(x, 3) * 1.0, diagonal(x, -1) * 1.0],
                          one, target=target)
    np.testing.assert_array_equal(f1, np.flip(one))
    np.testing.assert_array_equal(r1, np.roll(one, -4))
    assert d0.shape == (0,) and d1.shape == (0,)
    (p,) = _run(lambda x: pad(x, ((0, 0), (2, 1)), value=4.0), e, target=target)
    np.testing.assert_array_equal(p, np.pad(e, ((0, 0), (2, 1)), constant_values=4.0))
    (t,) = _run(lambda x, i: take_along_axis(x, i, 0), one, np.zeros((0, 3), np.int64), target=target)
    assert t.shape == (0, 3)
    (s,) = _run(lambda x, i, v: scatter_add(x, i, v, 1), one, np.zeros((1, 0), np.int64), np.ones((1, 2)), target=target)
    np.testing.assert_array_equal(s, one)


def test_no_op_cases_return_the_input():
    x = gc.input("x", ("batch", 3, 1), "float64")
    assert pad(x, 0) is x and pad(x, ((0, 0), (0, 0), (0, 0)), "reflect") is x
    assert roll(x, 3, 1) is x and roll(x, 0, 0) is x and flip(x, 2) is x
    assert repeat(x, 1, 1) is x and tile(x, 1) is x and len(split(x, 1, 1)) == 1 and split(x, 1, 1)[0] is x


def test_repeated_indices_accumulate_exactly():
    x = gc.input("x", (2, 3), "float64")
    s = gc.input("s", (2, 4), "float64")
    idx = np.array([[1, 1, 1, 0], [2, 2, 2, 2]])
    y = scatter_add(x, idx, s, 1)
    gx, gs = gc.grad(gc.sum(y * y), [x, s])
    xv, sv = np.ones((2, 3)), np.arange(8.0).reshape(2, 4)
    got_y, got_gx, got_gs = gc.function([x, s], [y, gx, gs])(xv, sv)
    np.testing.assert_array_equal(got_y, [[4, 1 + 0 + 1 + 2, 1], [1, 1, 1 + 4 + 5 + 6 + 7]])
    np.testing.assert_array_equal(got_gx, 2 * got_y)
    np.testing.assert_array_equal(got_gs, 2 * np.take_along_axis(got_y, idx, 1))
    t = take_along_axis(x, np.array([[0, 0, 0], [2, 2, 1]]), 1)
    np.testing.assert_array_equal(gc.function([x], gc.grad(gc.sum(t), x))(xv), [[3, 0, 0], [0, 1, 2]])


def test_integer_inputs():
    xi = np.arange(12).reshape(3, 4)
    got = _run(lambda x: [tril(x), flip(x, 1), pad(x, 1, value=7), x[[0, 2], [3, 1]], roll(x, 1, 1)], xi)
    want = [np.tril(xi), np.flip(xi, 1), np.pad(xi, 1, constant_values=7), xi[[0, 2], [3, 1]], np.roll(xi, 1, 1)]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


# --- index ranges: exactly the user's indices out of their own axes raise --------------------------


def _index_case(name):
    """(inputs, output, good feeds, bad index feeds): each bad index stays inside the flat array, so
    only a check against its own axis can catch it."""
    x, xv = gc.input("x", (3, 4), "float64"), np.arange(12.0).reshape(3, 4)
    i, j = gc.input("i", (2,), "int64"), gc.input("j", (2,), "int64")
    k, v = gc.input("k", (3, 2), "int64"), gc.input("v", (3, 2), "float64")
    m = gc.input("m", (2, 4), "int64")
    kv, vv = np.array([[0, 3], [1, 2], [3, 3]]), np.ones((3, 2))
    pairs = [([0, 1], [4, 0]), ([0, 1], [0, -1]), ([1, 3], [0, 0]), ([-1, 1], [0, 0])]
    rows = [[[0, 4], [0, 0], [0, 0]], [[0, 0], [-1, 0], [0, 0]], [[0, 0], [0, -2], [0, 0]]]
    return {
        "getitem": ([x, i, j], x[i, j], [xv, [0, 2], [3, 1]], [[xv, a, b] for a, b in pairs]),
        "getitem_apart": ([x, i, j], x[i, None, j], [xv, [0, 2], [3, 1]], [[xv, a, b] for a, b in pairs]),
        "take_along_axis": ([x, k], take_along_axis(x, k, 1), [xv, kv], [[xv, r] for r in rows]),
        "take_along_axis_ax0": ([x, m], take_along_axis(x, m, 0), [xv, [[0, 1, 2, 2], [2, 1, 0, 0]]],
                                [[xv, [[0, 3, 0, 0], [0, 0, 0, 0]]], [xv, [[0, -1, 0, 0], [0, 0, 0, 0]]]]),
        "scatter_add": ([x, k, v], scatter_add(x, k, v, 1), [xv, kv, vv], [[xv, r, vv] for r in rows]),
    }[name]


@pytest.mark.parametrize("target", ["numpy", "cpu"])
@pytest.mark.parametrize("name", ["getitem", "getitem_apart", "take_along_axis", "take_along_axis_ax0", "scatter_add"])
def test_index_out_of_its_axis_raises(name, target):
    xs, out, good, bads = _index_case(name)
    f = gc.function(xs, out, target=target)
    arrays = lambda feeds: [np.asarray(a) for a in feeds]  # noqa: E731
    first = f(*arrays(good))
    for bad in bads:
        with pytest.raises(gc.GraphcError, match="out of range"):
            f(*arrays(bad))
    np.testing.assert_array_equal(f(*arrays(good)), first)  # and the step still works


def test_input_index_of_a_1d_gather_is_checked_before_the_step():
    x = gc.input("x", (5,), "float64")
    i = gc.input("i", (3,), "int64")
    y = take_along_axis(x, i, 0)
    assert y.op.name == "take" and y.inputs[1] is i  # the index is the input itself: checked in Python
    f = gc.function([x, i], y)
    with pytest.raises(gc.InputError, match="index 5 is out of range"):
        f(np.zeros(5), np.array([0, 5, 1]))


def test_constant_indices_are_checked_when_built():
    x = gc.input("x", (3, 4), "float64")
    with pytest.raises(gc.ShapeError, match="getitem: index 4 is out of range for axis 1 of size 4"):
        x[[0, 1], [4, 0]]
    with pytest.raises(gc.ShapeError, match="getitem: index -4 is out of range for axis 0 of size 3"):
        x[[-4], [0]]
    with pytest.raises(gc.ShapeError, match="take_along_axis: index 4 is out of range"):
        take_along_axis(x, np.full((3, 1), 4), 1)
    with pytest.raises(gc.ShapeError, match="scatter_add: index -1 is out of range"):  # torch: no negative indices
        scatter_add(x, np.full((3, 1), -1), np.ones((3, 1)), 1)
    np.testing.assert_array_equal(gc.function([x], x[[-1]])(np.arange(12.0).reshape(3, 4)), [[8, 9, 10, 11]])


# --- errors --------------------------------------------------------------------------------------

SYM = "sym"  # the case runs on a ("b", 4) input; the others on (3, 4)
ERRORS = [
    ("flip_axis", lambda x: flip(x, 2), gc.ShapeError, "flip: axis 2 is out of range"),
    ("flip_repeat", lambda x: flip(x, (0, 0)), gc.ShapeError, "flip: repeated axis"),
    ("roll_symbolic", lambda x: roll(x, 1, 0), gc.ShapeError, "roll: axis 0 .* is symbolic", SYM),
    ("roll_flat_symbolic", lambda x: roll(x, 1), gc.ShapeError, "roll: axis 0 .* is symbolic", SYM),
    ("roll_lengths", lambda x: roll(x, (1, 2, 3), (0, 1)), gc.ShapeError, "roll: shift .* and axis .* different lengths"),
    ("roll_float", lambda x: roll(x, 1.5, 1), gc.ShapeError, "roll: shift 1.5 must be an int"),
    ("split_uneven", lambda x: split(x, 3, 1), gc.ShapeError, "split: axis 1 of size 4 does not split into 3 equal sections"),
    ("split_zero", lambda x: split(x, 0, 1), gc.ShapeError, "split: sections 0 must be at least 1"),
    ("split_symbolic", lambda x: split(x, 2, 0), gc.ShapeError, "split: axis 0 .* is symbolic", SYM),
    ("chunk_zero", lambda x: chunk(x, 0, 1), gc.ShapeError, "chunk: chunks 0 must be at least 1"),
    ("chunk_axis", lambda x: chunk(x, 2, 3), gc.ShapeError, "chunk: axis 3 is out of range"),
    ("stack_shapes", lambda x: stack([x, x[:, :2]]), gc.ShapeError, r"stack: shapes \(b, 4\), \(b, 2\) differ", SYM),
    ("stack_dtypes", lambda x: stack([x, x.astype("float32")]), gc.DTypeError, "stack: dtypes float64, float32 differ"),
    ("stack_axis", lambda x: stack([x, x], 3), gc.ShapeError, "stack: axis 3 is out of range"),
    ("stack_empty", lambda x: stack([]), gc.ShapeError, "stack: no inputs"),
    ("tile_negative", lambda x: tile(x, (2, -1)), gc.ShapeError, "tile: reps -1 must be at least 0"),
    ("repeat_array", lambda x: repeat(x, [1, 2, 1, 2], 1), gc.ShapeError, "repeat: repeats .* must be an int"),
    ("repeat_negative", lambda x: repeat(x, -1, 1), gc.ShapeError, "repeat: repeats -1 must be at least 0"),
    ("tril_1d", lambda x: tril(x[0]), gc.ShapeError, r"tril: input \(4,\) needs at least 2 axes"),
    ("triu_k", lambda x: triu(x, 0.5), gc.ShapeError, "triu: k 0.5 must be an int"),
    ("diagonal_same", lambda x: diagonal(x, 0, 1, -1), gc.ShapeError, "diagonal: axis1 and axis2 are both axis 1"),
    ("diagonal_symbolic", lambda x: diagonal(x), gc.ShapeError, "diagonal: axis 0 .* is symbolic", SYM),
    ("diagonal_1d", lambda x: diagonal(x[0]), gc.ShapeError, "diagonal: input .* needs at least 2 axes"),
    ("pad_mode", lambda x: pad(x, 1, "mirror"), gc.ShapeError, "pad: mode 'mirror' is not one of"),
    ("pad_symbolic", lambda x: pad(x, 1), gc.ShapeError, "pad: axis 0 .* is symbolic", SYM),
    ("pad_negative", lambda x: pad(x, ((0, 0), (1, -1))), gc.ShapeError, "pad: pad_width .* has negative widths"),
    ("pad_width_shape", lambda x: pad(x, ((0, 0), (1, 1), (1, 1))), gc.ShapeError, "pad: pad_width .* does not fit 2 axes"),
    ("pad_width_float", lambda x: pad(x, 1.5), gc.ShapeError, "pad: pad_width 1.5 must be ints"),
    ("pad_value_mode", lambda x: pad(x, ((0, 0), (1, 1)), "reflect", value=1.0), gc.ShapeError,
     "pad: a value .* is only for mode 'constant'"),
    ("pad_empty_reflect", lambda x: pad(x[:0], ((1, 1), (0, 0)), "reflect"), gc.ShapeError, "pad: cannot pad empty axis 0"),
    ("take_along_ndim", lambda x: take_along_axis(x, np.zeros(3, np.int64), 1), gc.ShapeError,
     "take_along_axis: indices have 1 axes"),
    ("take_along_bcast", lambda x: take_along_axis(x, np.zeros((2, 1), np.int64), 1), gc.ShapeError,
     r"take_along_axis: indices \(2, 1\) do not broadcast"),
    ("take_along_float", lambda x: take_along_axis(x, x, 1), gc.DTypeError, "take_along_axis: indices have dtype float64"),
    ("take_along_axis_arg", lambda x: take_along_axis(x, np.zeros((1, 1), np.int64), (0, 1)), gc.ShapeError,
     "take_along_axis: axis .* must be an int"),
    ("scatter_ndim", lambda x: scatter_add(x, np.zeros(2, np.int64), np.ones(2), 1), gc.ShapeError,
     "scatter_add: x .* must have the same number of axes"),
    ("scatter_src_small", lambda x: scatter_add(x, np.zeros((1, 3), np.int64), np.ones((1, 2)), 1), gc.ShapeError,
     "scatter_add: indices .* are larger than src"),
    ("scatter_x_small", lambda x: scatter_add(x, np.zeros((4, 1), np.int64), np.ones((4, 1)), 1), gc.ShapeError,
     "scatter_add: indices .* are larger than src .* or x"),
    ("scatter_dtype", lambda x: scatter_add(x, np.zeros((1, 2), np.int64), np.ones((1, 2), np.float32), 1), gc.DTypeError,
     "scatter_add: src has dtype float32"),
    ("getitem_bcast", lambda x: x[[0, 1], [0, 1, 2]], gc.ShapeError, "getitem: index arrays of shapes .* do not broadcast"),
    ("getitem_bool", lambda x: x[:, np.array([True, False, True, False])], gc.DTypeError,
     "getitem: indices have dtype bool.*boolean masks are not supported"),
]


@pytest.mark.parametrize("fn, exc, msg, symbolic", [(*e[1:4], e[4:] == (SYM,)) for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(fn, exc, msg, symbolic):
    x = gc.input("x", ("b", 4) if symbolic else (3, 4), "float64")
    with pytest.raises(exc, match=f"^{msg}"):
        fn(x)
