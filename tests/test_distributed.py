"""Data-parallel training over MPI: ranks on half-batches against one process on the full batch,
the gradient of ``allreduce`` against finite differences under MPI, failures that neither hang
nor change params. The multi-rank tests start ``mpiexec -n 2`` in a subprocess with a timeout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mpi_job import mpirun, needs_mpi

import graphc as gc

ROOT = Path(__file__).resolve().parents[1]


# The model both sides train: an MLP on fixed random data, global batch 32.
MODEL = """
import numpy as np
import graphc as gc

def build(opt_name, target, distributed, seed_offset=0):
    x = gc.input("x", ("batch", 12))
    y = gc.input("y", ("batch",), "int64")
    l1 = gc.nn.Linear(12, 24, rng=1 + seed_offset, name="l1")
    l2 = gc.nn.Linear(24, 5, rng=2 + seed_offset, name="l2")
    model = gc.nn.Sequential(l1, l2)
    loss = gc.softmax_cross_entropy(l2(gc.tanh(l1(x))), y)
    if opt_name == "sgd":
        opt = gc.optim.SGD(model, lr=0.2, momentum=0.9, distributed=distributed, bucket_bytes=1000)
    else:
        opt = gc.optim.Adam(model, lr=0.01, weight_decay=1e-3, distributed=distributed)
    f = gc.function([x, y], loss, updates=opt.updates(loss), target=target)
    return f, model

def data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(32, 12)).astype(np.float32), rng.integers(0, 5, 32)
"""


def _single(opt_name: str, target: str, steps: int = 10):
    ns: dict = {}
    exec(MODEL, ns)
    f, model = ns["build"](opt_name, target, False)
    X, Y = ns["data"]()
    losses = [float(f(X, Y)) for _ in range(steps)]
    return losses, [np.array(p.value) for p in model.params()]


@needs_mpi
def test_two_ranks_match_one_process_on_the_full_batch(tmp_path):
    """Ten SGD (momentum, several buckets) and Adam steps on 2 ranks with half-batches: the mean
    of the ranks' losses and the final params equal one process on the full batch. Ranks start
    from different seeds: the optimizer broadcasts rank 0's params."""
    out = tmp_path / "result.json"
    res = mpirun(tmp_path, MODEL + f"""
import json
rank, size = gc.distributed.init()
assert size == 2
X, Y = data()
mine = slice(rank * 16, (rank + 1) * 16)
result = {{}}
for target in ("cpu", "numpy"):
    for opt_name in ("sgd", "adam"):
        f, model = build(opt_name, target, True, seed_offset=100 * rank)
        losses = [float(f(X[mine], Y[mine])) for _ in range(10)]
        mean = [float(v) for v in gc.distributed.allreduce_array(np.array(losses), "mean")]
        params = [p.value.tolist() for p in model.params()]
        every = gc.distributed.comm().allgather(params)
        assert every[0] == every[1], "params differ between ranks"
        result[target + "/" + opt_name] = {{"losses": mean, "params": params}}
if rank == 0:
    open({str(out)!r}, "w").write(json.dumps(result))
""")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    for key, got in result.items():
        target, opt_name = key.split("/")
        losses, params = _single(opt_name, target)
        np.testing.assert_allclose(got["losses"], losses, rtol=2e-5, atol=1e-6, err_msg=key)
        for a, b in zip(got["params"], params):
            np.testing.assert_allclose(np.array(a, np.float32), b, rtol=1e-4, atol=2e-6, err_msg=key)


@needs_mpi
def test_allreduce_gradient_against_finite_differences_under_mpi(tmp_path):
    """The job's loss is the sum of the ranks' losses; the gradient each rank gets for its own
    input (the all-reduce of the adjoint) matches central differences of that job loss along a
    random direction per rank, to second order (Hessian-vector products), for sum and mean."""
    res = mpirun(tmp_path, """
import numpy as np
import graphc as gc
rank, size = gc.distributed.init()
rng = np.random.default_rng(rank)
x0 = rng.normal(size=(3, 4))
v = rng.normal(size=(3, 4))
total = lambda a: float(gc.distributed.allreduce_array(np.array(a), "sum"))
for op in ("sum", "mean"):
    x = gc.input("x", (3, 4), "float64")
    w = gc.constant(rng.normal(size=(3, 4)))
    r = gc.allreduce(gc.sin(x) * w, op)
    loss = gc.sum(r * r * gc.cos(x))
    g = gc.grad(loss, x)
    dd = gc.sum(g * gc.constant(v))            # directional derivative on this rank
    h = gc.grad(dd, x)                         # second order: the gradient of it
    f = gc.function([x], [loss, dd, h])
    eps = 1e-6
    L = lambda a: total(f(a)[0])
    D = lambda a: total(f(a)[1])
    analytic = total(f(x0)[1])
    numeric = (L(x0 + eps * v) - L(x0 - eps * v)) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (op, analytic, numeric)
    u = np.random.default_rng(10 + rank).normal(size=(3, 4))
    analytic2 = total(np.sum(f(x0)[2] * u))
    numeric2 = (D(x0 + eps * u) - D(x0 - eps * u)) / (2 * eps)
    assert abs(analytic2 - numeric2) <= 1e-5 * max(1.0, abs(numeric2)), (op, analytic2, numeric2)
    cpu = gc.function([x], [loss, dd, h], target="cpu")
    for a, b in zip(cpu(x0), f(x0)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
print("ok", rank)
""")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ok") == 2


@needs_mpi
def test_bad_input_on_one_rank_raises_on_every_rank_and_changes_nothing(tmp_path):
    """Rank 1 passes a wrong shape: both ranks raise (the ranks agree before a step starts), no
    param changes on either, and the next good step runs normally on both."""
    res = mpirun(tmp_path, MODEL + """
rank, size = gc.distributed.init()
X, Y = data()
mine = slice(rank * 16, (rank + 1) * 16)
for target in ("cpu", "numpy"):
    f, model = build("adam", target, True)
    f(X[mine], Y[mine])
    before = [np.array(p.value) for p in model.params()]
    bad = X[mine][:, :11] if rank == 1 else X[mine]
    try:
        f(bad, Y[mine])
    except gc.InputError as e:
        print(f"rank {rank} raised: {e}", flush=True)
    else:
        raise AssertionError("no error")
    assert all(np.array_equal(a, p.value) for a, p in zip(before, model.params()))
    f(X[mine], Y[mine])
    assert not all(np.array_equal(a, p.value) for a, p in zip(before, model.params()))
print("done", rank, flush=True)
""")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("done") == 2
    assert "rank 1 raised: input x" in res.stdout and "axis 1 has size 11" in res.stdout
    assert "rank 0 raised: rank 1 failed" in res.stdout


@needs_mpi
def test_an_uncaught_error_on_one_rank_aborts_the_job(tmp_path):
    """Rank 1 dies between steps while rank 0 goes on into the next step's collectives: the job
    ends (it does not hang) and the failing rank's error is printed."""
    res = mpirun(tmp_path, MODEL + """
rank, size = gc.distributed.init()
X, Y = data()
f, model = build("sgd", "cpu", True)
mine = slice(rank * 16, (rank + 1) * 16)
f(X[mine], Y[mine])
if rank == 1:
    raise ValueError("rank one gives up")
for _ in range(1000):
    f(X[mine], Y[mine])
""", timeout=120)
    assert res.returncode != 0
    assert "rank one gives up" in res.stderr
    assert "rank 1 of 2 failed" in res.stderr


@needs_mpi
def test_each_rank_draws_its_own_dropout_masks(tmp_path):
    """As in DDP: the ranks' dropout masks differ (the rank is mixed into the salt), while the key
    param, which checkpoints save, stays the same on every rank."""
    res = mpirun(tmp_path, """
import numpy as np
import graphc as gc
rank, size = gc.distributed.init()
x = gc.input("x", (4, 64))
drop = gc.nn.Dropout(0.5, seed=3, name="drop")
f = gc.function([x], drop(x, train=True), updates=gc.nn.state_updates(drop(x, train=True)))
mask = (f(np.ones((4, 64), np.float32)) != 0).astype(np.int8)
every = gc.distributed.comm().allgather(mask)
keys = gc.distributed.comm().allgather(int(drop.key.value))
assert not np.array_equal(every[0], every[1]), "same masks on both ranks"
assert keys[0] == keys[1]
print("ok", rank)
""")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ok") == 2


def test_alone_the_distributed_step_is_the_plain_one():
    """Outside mpiexec: init gives (0, 1), all-reduces are the identity, and distributed=True
    trains exactly as without."""
    assert gc.distributed.init() == (0, 1)
    for target in ("numpy", "cpu"):
        ns: dict = {}
        exec(MODEL, ns)
        X, Y = ns["data"]()
        fd, md = ns["build"]("sgd", target, True)
        fp, mp = ns["build"]("sgd", target, False)
        for _ in range(3):
            assert float(fd(X, Y)) == float(fp(X, Y))
        for a, b in zip(md.params(), mp.params()):
            np.testing.assert_array_equal(a.value, b.value)


def test_buckets_and_overlap_are_structural():
    """One bucket by default (one all-reduce for every gradient); small buckets give one
    all-reduce each, started before the kernels of earlier layers' backward pass, waited for
    just before the update that reads it; the report says what overlaps."""
    ns: dict = {}
    exec(MODEL, ns)
    x = gc.input("x", ("batch", 12))
    y = gc.input("y", ("batch",), "int64")
    l1, l2 = gc.nn.Linear(12, 24, rng=1), gc.nn.Linear(24, 5, rng=2)
    loss = gc.softmax_cross_entropy(l2(gc.tanh(l1(x))), y)
    one = gc.function([x, y], loss, updates=gc.optim.SGD([*l1.params(), *l2.params()], lr=0.1, distributed=True)
                      .updates(loss), target="cpu")
    assert sum(k.kind == "allreduce" for k in one.program.kernels) == 1
    many = gc.function([x, y], loss, updates=gc.optim.SGD([*l1.params(), *l2.params()], lr=0.1, distributed=True,
                                                          bucket_bytes=100).updates(loss), target="cpu")
    kernels = many.program.kernels
    starts = [k.index for k in kernels if k.kind == "allreduce"]
    assert len(starts) == 4
    # the last layer's bucket starts before the first layer's weight gradient is computed
    gw1 = max(k.index for k in kernels if k.kind == "matmul")
    assert starts[0] < gw1
    src = many.source
    assert src.count("collective_start(") == 4 and src.count("collective_wait(") == 4
    assert src.index("collective_start(0, B)") < src.index("collective_wait(0, B)")
    report = many.report()
    assert "collectives: 4 all-reduces" in report and "overlap" in report
    X, Y = ns["data"]()
    ps = [*l1.params(), *l2.params()]
    start = [np.array(p.value) for p in ps]
    loss_many, after_many = many(X, Y), [np.array(p.value) for p in ps]
    for p, v in zip(ps, start):
        p.value = v
    np.testing.assert_allclose(one(X, Y), loss_many, rtol=1e-6)
    for p, v in zip(ps, after_many):
        np.testing.assert_allclose(p.value, v, rtol=1e-6, atol=1e-7)


def test_sharding_helpers():
    assert gc.distributed.local_batch(32) == 32
    idx = list(gc.distributed.batches(10, 4, seed=3))
    assert len(idx) == 2 and all(len(i) == 4 for i in idx)  # the partial batch is dropped
    again = list(gc.distributed.batches(10, 4, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(idx, again))
    assert not np.array_equal(np.concatenate(idx), np.concatenate(list(gc.distributed.batches(10, 4, seed=3, epoch=1))))


@needs_mpi
def test_sharding_across_ranks(tmp_path):
    """Ranks share one shuffle and take disjoint halves of each batch; a batch that does not
    split evenly is refused before any step."""
    res = mpirun(tmp_path, """
import numpy as np
import graphc as gc
rank, size = gc.distributed.init()
mine = np.concatenate(list(gc.distributed.batches(20, 8, seed=1)))
every = gc.distributed.comm().allgather(mine.tolist())
assert not set(every[0]) & set(every[1]) and len(every[0]) == len(every[1]) == 8
assert gc.distributed.shard(np.arange(6)).tolist() == ([0, 1, 2] if rank == 0 else [3, 4, 5])
try:
    gc.distributed.local_batch(7)
except gc.InputError as e:
    print("refused:", e)
""")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "batch size 7 does not split across 2 ranks" in res.stdout


def test_allreduce_errors():
    x = gc.input("x", (3,), "int64")
    with pytest.raises(gc.DTypeError, match="allreduce mean of int64"):
        gc.allreduce(x, "mean")
    with pytest.raises(gc.GraphcError, match="not one of"):
        gc.allreduce(gc.input("z", (3,)), "prod")
    m = gc.allreduce(gc.input("w", (3,)), "max")
    with pytest.raises(gc.GraphcError, match="has no gradient"):
        gc.grad(gc.sum(m), m.inputs[0])
