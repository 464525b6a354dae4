"""The thread governor: drops to one thread when steps slow down, and probes back."""
from graphc.backends import threads as th


def test_governor_drops_to_one_thread_under_contention_and_probes_back():
    g = th.Governor()
    g.max, g.fixed, g.mode = 2, False, 2
    g.best = {2: float("inf"), 1: float("inf")}
    for _ in range(5):
        g.before()
        g.after(0.001)
    assert g.mode == 2
    for _ in range(th.STRIKES):
        g.before()
        g.after(0.050)  # a busy neighbour: 50x slower
    assert g.mode == 1 and g.switches == 1
    for _ in range(th.PROBE_EVERY):
        g.before()
        g.after(0.002 if g.mode == 1 else 0.001)  # the neighbour left: all threads are fast again
    assert g.mode == 2


def test_fixed_thread_count_never_changes():
    g = th.Governor(threads=1)
    for _ in range(10):
        g.before()
        g.after(1.0)
    assert g.mode == 1 and g.switches == 0
