"""A character-level recurrent network trained on the Python standard library's own source.

B text streams are read T characters at a time (truncated backpropagation through time):
each compiled step runs the cell (an LSTM by default) over T characters with ``gc.scan``,
one loop body compiled once whatever T. The final state (h, and c for the LSTM) is kept in
params that the step updates, so the next chunk of each stream starts where the last ended.
The character embedding has the width of the cell's input projection, so each step looks
up its projected input instead of multiplying by a matrix. Reports the validation loss
against the unigram baseline, plots the losses to examples/out/ and prints a sample.

    python examples/char_rnn.py [--target cpu|numpy] [--cell lstm|gru|rnn] [--unroll T] [--steps N] [--quick]
"""
from __future__ import annotations

import argparse
import math
import os
import time
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

import graphc as gc

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
FILES = ("argparse.py", "textwrap.py", "string.py", "random.py", "functools.py", "os.py", "shutil.py", "pathlib.py")


def load_corpus(max_chars: int = 400_000) -> tuple[str, str]:
    """Python source from the standard library (always offline): (text, alphabet)."""
    root = os.path.dirname(os.__file__)
    parts = []
    for name in FILES:
        path = os.path.join(root, name)
        if not os.path.exists(path):  # pathlib is a package from Python 3.13
            path = os.path.join(root, name[:-3], "__init__.py")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                parts.append(f.read())
    text = "".join(parts)[:max_chars]
    text = "".join(c if c == "\n" or 32 <= ord(c) < 127 else "?" for c in text)
    return text, "".join(sorted(set(text)))


CELLS = {"lstm": gc.nn.LSTM, "gru": gc.nn.GRU, "rnn": gc.nn.RNN}


def build(vocab: int = 96, hidden: int = 128, unroll: int = 64, streams: int = 32, cell: str = "lstm",
          seed: int = 0) -> SimpleNamespace:
    """The training graph: ``loss`` of ``inputs`` [x, y] (streams, unroll) of character ids, the
    carried ``state`` params (h, and c for the LSTM) and their ``state_updates``; and a
    one-character ``sampler`` graph with its own state params and ``sample_updates``."""
    rnn = CELLS[cell](None, hidden, rng=seed)
    emb = gc.nn.Embedding(vocab, rnn.gates * hidden, std=0.1, rng=seed + 1)
    head = gc.nn.Linear(hidden, vocab, rng=seed + 2)
    pair = cell == "lstm"  # the LSTM's state is (h, c); the others' is h

    def state_params(prefix: str, n: int) -> tuple:
        return tuple(gc.param(f"{prefix}_{k}", np.zeros((n, hidden), np.float32)) for k in ("hc" if pair else "h"))

    as_state = lambda ps: ps if pair else ps[0]  # state params -> the layer's state
    leaves = lambda s: tuple(s) if pair else (s,)  # the layer's state -> one node per state param
    x = gc.input("x", (streams, unroll), dtype="int64")
    y = gc.input("y", (streams, unroll), dtype="int64")
    state = state_params("state", streams)
    hs, last = rnn.run(emb(x), as_state(state))  # hs: (streams, unroll, hidden); last: the final state
    loss = gc.softmax_cross_entropy(head(hs), y)
    # one character at a time, for sampling and evaluation, with its own state
    c = gc.input("c", (1,), dtype="int64")
    sample_state = state_params("sample", 1)
    nxt = leaves(rnn.step(emb(c), as_state(sample_state)))
    return SimpleNamespace(inputs=[x, y], loss=loss, x=x, y=y, state=state, state_updates=list(zip(state, leaves(last))),
                           params=[*rnn.params(), *emb.params(), *head.params()], char=c, sample_state=sample_state,
                           sample_updates=list(zip(sample_state, nxt)), sample_logits=head(nxt[0]))


def batches(data: np.ndarray, streams: int, unroll: int):
    """(x, y) chunks of ``streams`` parallel streams through ``data``, cycling forever."""
    n = (len(data) - 1) // streams
    starts = np.arange(streams) * n
    pos = 0
    while True:
        if pos + unroll >= n:
            pos = 0
        idx = starts[:, None] + pos + np.arange(unroll)
        yield data[idx], data[idx + 1]
        pos += unroll


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--out", default=OUT, help="folder for the plot")
    ap.add_argument("--cell", default="lstm", choices=tuple(CELLS))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--unroll", type=int, default=64, help="characters per step (truncated BPTT window)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--quick", action="store_true", help="a few seconds of training, for tests")
    ap.add_argument("--save", metavar="PATH", help="checkpoint (model, optimizer, RNG state) written after each evaluation")
    ap.add_argument("--resume", metavar="PATH", help="continue from a checkpoint written by --save")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.unroll, args.hidden = 60, 8, 32
    text, alphabet = load_corpus()
    ids = np.frombuffer(text.encode("ascii"), np.uint8)
    lookup = np.zeros(128, np.int64)
    lookup[[ord(c) for c in alphabet]] = np.arange(len(alphabet))
    data = lookup[ids]
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:split + (1000 if args.quick else 5000)]
    counts = np.bincount(train, minlength=len(alphabet)) + 1
    unigram = float(-np.mean(np.log(counts / counts.sum())[val]))  # nats per character
    print(f"corpus: {len(text)} characters of stdlib source, {len(alphabet)} symbols; "
          f"unigram baseline on validation: {unigram:.3f} nats/char")

    m = build(len(alphabet), args.hidden, args.unroll, cell=args.cell)
    opt = gc.optim.Adam(m.params, lr=args.lr, clip_grad_norm=1.0)
    t0 = time.perf_counter()
    step = gc.function(m.inputs, m.loss, updates=[*opt.updates(m.loss), *m.state_updates], target=args.target)
    one = gc.function([m.char], m.sample_logits, updates=m.sample_updates, target=args.target)
    print(f"graphc target={args.target}: compiled in {time.perf_counter() - t0:.2f} s "
          f"({len(step.kernels)} kernels in the training step: {args.cell}, scanned over {args.unroll} characters)")

    def reset_sampler() -> None:
        for p in m.sample_state:
            p.value = np.zeros_like(p.value)

    def evaluate() -> float:
        reset_sampler()
        nll = 0.0
        for a, b in zip(val[:-1], val[1:]):
            z = one(a[None])[0]
            nll += np.log(np.exp(z - z.max()).sum()) + z.max() - z[b]
        return nll / (len(val) - 1)

    hist: dict[str, list] = {"step": [], "train": [], "val": []}
    stream, losses = batches(train, 32, args.unroll), []
    every = max(args.steps // 6, 1)
    saved, first = {"params": m.params, "opt": opt, "state": list(m.state)}, 1
    if args.resume:  # params, Adam's moments and step count, the carried (h, c); the step to go on from
        first = int(gc.load(args.resume, saved)["step"]) + 1
        for _ in range(first - 1):  # the streams' position
            next(stream)
        print(f"resumed from {args.resume} after step {first - 1}")
    t0 = time.perf_counter()
    for i in tqdm(range(first, args.steps + 1), desc="training", unit="step"):
        losses.append(float(step(*next(stream))))
        if i % every == 0 or i == args.steps:
            hist["step"].append(i)
            hist["train"].append(float(np.mean(losses[-every:])))
            hist["val"].append(evaluate())
            tqdm.write(f"step {i:5d}  train loss {hist['train'][-1]:.3f}  val loss {hist['val'][-1]:.3f}  "
                       f"(unigram {unigram:.3f}; {(time.perf_counter() - t0) / (i - first + 1) * 1e3:.1f} ms/step)")
            if args.save:
                gc.save(args.save, saved)
    if not hist["val"]:
        hist["step"].append(args.steps), hist["train"].append(float("nan")), hist["val"].append(evaluate())
    print(f"final validation loss {hist['val'][-1]:.3f} nats/char ({hist['val'][-1] / math.log(2):.2f} bits) "
          f"vs unigram baseline {unigram:.3f}")

    # sample: feed a prompt, then draw each next character from the softmax at temperature 0.8
    rng = np.random.default_rng(0)
    reset_sampler()
    out = "def "
    for ch in out[:-1]:
        one(lookup[[ord(ch)]])
    nxt = lookup[[ord(out[-1])]]
    for _ in range(300):
        z = one(nxt)[0] / 0.8
        p = np.exp(z - z.max())
        nxt = np.array([rng.choice(len(p), p=p / p.sum())])
        out += alphabet[nxt[0]]
    print("sample:\n" + out)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(hist["step"], hist["train"], label="train")
    ax.plot(hist["step"], hist["val"], label="validation")
    ax.axhline(unigram, color="gray", ls="--", label="unigram baseline")
    ax.set_xlabel("step"), ax.set_ylabel("nats / character"), ax.legend()
    ax.set_title(f"char-level {args.cell} on stdlib source (graphc, {args.target})")
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    fig.savefig(os.path.join(args.out, "char_rnn.png"), dpi=100)
    print(f"plot: {os.path.join(args.out, 'char_rnn.png')}")
    return {"unigram": unigram, "val": hist["val"][-1], "sample": out}


if __name__ == "__main__":
    main()
