"""gc.allreduce on target="cuda" against the NumPy reference: the host step copies an all-reduce's
input to a host buffer, starts it there (``mpi.Pending``) and waits just before the first
kernel that reads its result. Alone (one rank) it is the identity: distributed SGD (several
buckets) and Adam train as the reference does; allreduce sum/mean forward and backward; strided
inputs; refusal inside a scan body; a failed index check leaves params unchanged. Under
``mpiexec -n 2`` (when mpi4py and mpiexec are installed), 2 ranks on half-batches follow the same
trajectory as one process on the full batch.

As in test_cuda_backend.py: when this process has neither the simulator nor a GPU,
``test_on_the_simulator`` runs this file again in a child process with NUMBA_ENABLE_CUDASIM=1.
Shapes stay tiny: the simulator runs one OS thread per CUDA thread."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cuda_sim import needs_cuda, run_on_simulator
from mpi_job import mpirun, needs_mpi
from numba import config

import graphc as gc

SIMULATOR = "1" if config.ENABLE_CUDASIM else "0"  # the ranks run CUDA as this process does





def test_on_the_simulator(tmp_path):
    """This file's tests, in a child process with the simulator."""
    run_on_simulator(__file__, tmp_path)


# The model: an MLP small enough for the simulator (8x8 matmul tiles).
MODEL = """
import numpy as np
import graphc as gc

def build(opt_name, target, distributed=True, seed_offset=0):
    x = gc.input("x", ("batch", 5))
    y = gc.input("y", ("batch",), "int64")
    l1 = gc.nn.Linear(5, 6, rng=1 + seed_offset, name="l1")
    l2 = gc.nn.Linear(6, 3, rng=2 + seed_offset, name="l2")
    model = gc.nn.Sequential(l1, l2)
    loss = gc.softmax_cross_entropy(l2(gc.tanh(l1(x))), y)
    if opt_name == "sgd":  # 200 bytes: the gradients, last first (12, 72, 24 | 120 bytes), in 2 buckets
        opt = gc.optim.SGD(model, lr=0.2, momentum=0.9, distributed=distributed, bucket_bytes=200)
    else:
        opt = gc.optim.Adam(model, lr=0.01, weight_decay=1e-3, distributed=distributed)
    f = gc.function([x, y], loss, updates=opt.updates(loss), target=target)
    return f, model

def data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(8, 5)).astype(np.float32), rng.integers(0, 3, 8)
"""
STEPS = 3


def in_flight(src: str) -> dict[str, list[str]]:
    """The kernels launched while each all-reduce of the generated step is in flight (between
    its start and its wait), by the all-reduce's variable."""
    lines = src[src.index("def step("):].splitlines()
    out = {}
    for j, line in enumerate(lines):
        m = re.match(r"    (r\d+) = allreduce_start\(", line)
        if m:
            end = next(i for i in range(j, len(lines)) if lines[i].startswith(f"    allreduce_wait({m[1]}, "))
            out[m[1]] = [x.split("[")[0].strip() for x in lines[j:end] if re.match(r"    k\w+\[", x)]
    return out


def _train(opt_name: str, target: str, steps: int = STEPS):
    ns: dict = {}
    exec(MODEL, ns)
    f, model = ns["build"](opt_name, target)
    X, Y = ns["data"]()
    losses = [float(f(X, Y)) for _ in range(steps)]
    return f, losses, [np.array(p.value) for p in model.params()]


@needs_cuda
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_distributed_optimizers_alone_match_the_reference(opt_name):
    """Alone, distributed=True averages over one rank: the same losses and params as the
    reference; the step's source starts each bucket's all-reduce and waits for it later."""
    f, losses, params = _train(opt_name, "cuda")
    _, want_losses, want_params = _train(opt_name, "numpy")
    np.testing.assert_allclose(losses, want_losses, rtol=2e-5, atol=1e-6)
    for a, b in zip(params, want_params):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
    assert len(in_flight(f._program.source)) == (2 if opt_name == "sgd" else 1)


@needs_cuda
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_allreduce_forward_and_gradient_match_the_reference(op):
    """Forward and gradient of allreduce (alone: the identity), of a buffer and of a strided
    view (copied contiguous on the device first), in float32 and float64."""
    for dtype in ("float32", "float64"):
        rng = np.random.default_rng(3)
        x = gc.input("x", ("n", 4), dtype)
        w = gc.param("w", rng.normal(size=(4, 3)).astype(dtype))
        a = gc.allreduce(gc.tanh(x @ w), op)               # a kernel's buffer
        b = gc.allreduce(gc.transpose(w) * 1.0, op)         # (fused into a loop: contiguous)
        c = gc.allreduce(gc.transpose(w), op)               # a strided view of a param
        loss = gc.sum(a * a) + gc.sum(b * c) + gc.sum(gc.allreduce(x, op) * 0.5)
        outs = [loss, a, c, *gc.grad(loss, [x, w])]
        feeds = [rng.normal(size=(5, 4)).astype(dtype)]
        want = gc.function([x], outs)(*feeds)
        f = gc.function([x], outs, target="cuda")
        got = f(*feeds)
        tol = dict(rtol=2e-5, atol=2e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
        for g, wv in zip(got, want):
            assert isinstance(g, np.ndarray) and g.dtype == wv.dtype and g.shape == wv.shape
            np.testing.assert_allclose(g, wv, **tol)
        src = f._program.source
        assert "the all-reduce's input, copied contiguous" in src
        assert f"all-reduce {op} of" in src


@needs_cuda
def test_allreduce_inside_a_scan_body_is_refused():
    xs = gc.input("xs", (4, 3))
    h0 = gc.param("h0", np.zeros(3, np.float32))

    def body(h, x):
        h = gc.allreduce(h + x, "sum")
        return h, h
    last, _ = gc.scan(body, h0, xs)
    with pytest.raises(gc.GraphcError, match=r"allreduce inside a loop body \(test_cuda_distributed.py:\d+\) "
                                             r"is not supported on target='cuda'"):
        gc.function([xs], last, target="cuda")


@needs_cuda
def test_failed_index_check_with_collectives_leaves_params_unchanged():
    """An index computed in the graph goes out of range: the step raises after the checking
    kernel, before any update, while an all-reduce of the gradients is in flight."""
    E = gc.param("E", np.arange(30, dtype=np.float32).reshape(10, 3))
    W = gc.param("W", np.ones((3, 2), np.float32))
    y = gc.input("y", ("n",), "int64")
    loss = gc.sum(gc.tanh(gc.take(E, y + 3) @ W))
    opt = gc.optim.SGD([E, W], lr=0.1, momentum=0.9, distributed=True, bucket_bytes=16)
    f = gc.function([y], loss, updates=opt.updates(loss), target="cuda")
    ref_E = gc.param("E", np.arange(30, dtype=np.float32).reshape(10, 3))
    ref_W = gc.param("W", np.ones((3, 2), np.float32))
    ref_loss = gc.sum(gc.tanh(gc.take(ref_E, y + 3) @ ref_W))
    ref_opt = gc.optim.SGD([ref_E, ref_W], lr=0.1, momentum=0.9, distributed=True, bucket_bytes=16)
    ref = gc.function([y], ref_loss, updates=ref_opt.updates(ref_loss))
    np.testing.assert_allclose(f(np.array([1, 6])), ref(np.array([1, 6])), rtol=2e-5)
    src = f._program.source
    flight = in_flight(src)  # W's bucket is reduced while E's gradient (a checked scatter_add) is computed
    assert len(flight) == 2 and any(any("scatter_add" in k for k in ks) for ks in flight.values()), flight
    # the check comes before either wait: before any kernel that reads an averaged gradient (the updates)
    assert all(src.index("raise IndexOutOfRange()") < src.index(f"allreduce_wait({r}, ") for r in flight)
    before = [p.value.copy() for p in (E, W, *opt.state_params())]
    with pytest.raises(gc.GraphcError, match=r"^take \(test_cuda_distributed.py:\d+\): index 10 is out of range"):
        f(np.array([7]))
    for b, p in zip(before, (E, W, *opt.state_params())):
        np.testing.assert_array_equal(p.value, b)
    np.testing.assert_allclose(f(np.array([0, 2])), ref(np.array([0, 2])), rtol=2e-5)  # and it still works
    for a, b in ((E, ref_E), (W, ref_W)):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-5, atol=1e-6)


@needs_cuda
@needs_mpi
def test_two_ranks_match_one_process_on_the_full_batch(tmp_path):
    """SGD (momentum, 2 buckets) and Adam on 2 ranks with half-batches, target="cuda": the mean
    of the ranks' losses and the final params equal one process on the full batch. Ranks start
    from different seeds: the optimizer broadcasts rank 0's params."""
    out = tmp_path / "result.json"
    res = mpirun(tmp_path, MODEL + f"""
import json
rank, size = gc.distributed.init()
assert size == 2
X, Y = data()
mine = slice(rank * 4, (rank + 1) * 4)
result = {{}}
for opt_name in ("sgd", "adam"):
    f, model = build(opt_name, "cuda", True, seed_offset=100 * rank)
    losses = [float(f(X[mine], Y[mine])) for _ in range({STEPS})]
    mean = [float(v) for v in gc.distributed.allreduce_array(np.array(losses), "mean")]
    params = [p.value.tolist() for p in model.params()]
    every = gc.distributed.comm().allgather(params)
    assert every[0] == every[1], "params differ between ranks"
    result[opt_name] = {{"losses": mean, "params": params}}
if rank == 0:
    open({str(out)!r}, "w").write(json.dumps(result))
""", timeout=120, NUMBA_ENABLE_CUDASIM=SIMULATOR)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"sgd", "adam"}
    for opt_name, got in result.items():
        _, losses, params = _train(opt_name, "cuda")
        np.testing.assert_allclose(got["losses"], losses, rtol=2e-5, atol=1e-6, err_msg=opt_name)
        for a, b in zip(got["params"], params):
            np.testing.assert_allclose(np.array(a, np.float32), b, rtol=1e-4, atol=2e-6, err_msg=opt_name)


@needs_cuda
@needs_mpi
def test_an_index_out_of_range_on_one_rank_aborts_the_job(tmp_path):
    """Rank 1's computed index fails its check inside a step with all-reduces: rank 0 would wait
    for rank 1's all-reduces forever, so the job is aborted with the message (it does not hang),
    even when the script catches the error."""
    res = mpirun(tmp_path, """
import numpy as np
import graphc as gc
rank, size = gc.distributed.init()
E = gc.param("E", np.arange(30, dtype=np.float32).reshape(10, 3))
y = gc.input("y", ("n",), "int64")
loss = gc.sum(gc.tanh(gc.take(E, y + 3)))
f = gc.function([y], loss, updates=gc.optim.SGD([E], lr=0.1, distributed=True).updates(loss), target="cuda")
f(np.array([1, 2]))
for _ in range(20):
    try:  # even caught, the error must not leave rank 0 waiting in an all-reduce
        f(np.array([7 if rank == 1 else 1, 2]))
    except gc.GraphcError:
        print("caught", flush=True)
""", timeout=120, NUMBA_ENABLE_CUDASIM=SIMULATOR)
    assert res.returncode != 0 and "caught" not in res.stdout
    assert "take (job.py:7): index 10 is out of range [0, 10)" in res.stderr
    assert "rank 1 of 2 failed" in res.stderr
