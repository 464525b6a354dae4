"""The thread governor keeps whichever thread count runs steps faster."""
from graphc.backends.cpu import threads as th


def governor():
    g = th.Governor(blas=False, parallel=False)
    g.max, g.fixed, g.mode = 2, False, 2
    g.recent = {2: th.deque(maxlen=5), 1: th.deque(maxlen=5)}
    g.best = {2: float("inf"), 1: float("inf")}
    g.probe_from = 2
    return g


def run(g, steps, cost):
    for _ in range(steps):
        g.before()
        g.after(cost[g.mode])


def test_keeps_all_threads_when_they_are_faster_and_stops_probing():
    g = governor()
    run(g, 200, {2: 0.001, 1: 0.002})
    assert g.mode == 2 and g.switches == 0 and g.next_probe == float("inf")
    assert len(g.recent[1]) == th.PROBE_STEPS  # one early look at one thread, then none


def test_drops_to_one_thread_under_contention_and_comes_back():
    g = governor()
    run(g, 50, {2: 0.001, 1: 0.002})
    run(g, 60, {2: 0.050, 1: 0.002})  # a busy neighbour: two threads collapse
    assert g.mode == 1 and g.switches == 1
    run(g, 400, {2: 0.001, 1: 0.002})  # the neighbour left
    assert g.mode == 2


def test_fixed_thread_count_never_changes():
    g = th.Governor(threads=1, blas=False, parallel=False)
    for _ in range(10):
        g.before()
        g.after(1.0)
    assert g.mode == 1 and g.switches == 0 and g.fixed
