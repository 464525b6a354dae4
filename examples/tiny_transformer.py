"""A tiny decoder-only transformer trained on the Python standard library's own source.

Characters are embedded, a learned position embedding is added, and a stack of pre-norm
blocks of causal multi-head self-attention and an MLP (each a residual branch with dropout)
predicts the next character at every position. The blocks (4 by default) are one
``gc.nn.Stack``: their params are stacked along a leading axis and ``gc.scan`` runs one block
body over them, so the block is traced and compiled once whatever the depth. The training step
(forward, backward, AdamW, the dropout keys) is one compiled call; evaluation and sampling use
the graph built with ``train=False``. Reports the validation loss against the unigram
baseline, plots the losses to examples/out/ and prints a sample.

    python examples/tiny_transformer.py [--target cpu|numpy] [--layers N] [--steps N] [--quick]
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
    """Python source from the standard library (always offline): (text, alphabet). As in char_rnn.py."""
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


def build(vocab: int = 96, dim: int = 64, heads: int = 4, layers: int = 4, context: int = 32, dropout: float = 0.1,
          seed: int = 0) -> SimpleNamespace:
    """``loss`` (training, with dropout) of ``inputs`` [x, y] (batch, context) of character ids,
    and evaluation ``logits`` (batch, context, vocab) of x."""
    rng = np.random.default_rng(seed)
    nn = gc.nn
    emb = nn.Embedding(vocab, dim, std=0.1, rng=rng)
    pos = nn.Embedding(context, dim, std=0.1, rng=rng, name="position")
    # each layer starts from its own draw of rng; the stack holds them as (layers, ...) params
    block = lambda i: nn.TransformerBlock(dim, heads, dropout=dropout, rng=rng, name=f"block{i}")
    blocks = nn.Stack(block, layers, name="blocks")
    ln, head = nn.LayerNorm(dim), nn.Linear(dim, vocab, rng=rng)
    x = gc.input("x", ("batch", context), dtype="int64")
    y = gc.input("y", ("batch", context), dtype="int64")

    def forward(train: bool):
        h = emb(x) + pos.E  # (batch, context, dim) + (context, dim)
        return head(ln(blocks(h, train=train)))

    loss = gc.softmax_cross_entropy(forward(True), y)
    return SimpleNamespace(inputs=[x, y], loss=loss, x=x, y=y, logits=forward(False),
                           model=nn.Sequential(emb, pos, blocks, ln, head))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--out", default=OUT, help="folder for the plot")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (one gc.nn.Stack)")
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--quick", action="store_true", help="a few seconds of training, for tests")
    ap.add_argument("--save", metavar="PATH", help="checkpoint (model, optimizer, RNG state) written after each evaluation")
    ap.add_argument("--resume", metavar="PATH", help="continue from a checkpoint written by --save")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.layers, args.context = 40, 2, 16
    text, alphabet = load_corpus()
    lookup = np.zeros(128, np.int64)
    lookup[[ord(c) for c in alphabet]] = np.arange(len(alphabet))
    data = lookup[np.frombuffer(text.encode("ascii"), np.uint8)]
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    counts = np.bincount(train, minlength=len(alphabet)) + 1
    unigram = float(-np.mean(np.log(counts / counts.sum())[val]))
    print(f"corpus: {len(text)} characters of stdlib source, {len(alphabet)} symbols; "
          f"unigram baseline on validation: {unigram:.3f} nats/char")

    m = build(len(alphabet), layers=args.layers, context=args.context)
    lr = gc.param("lr", np.float32(args.lr))
    opt = gc.optim.AdamW(m.model, lr=lr, weight_decay=0.01)
    t0 = time.perf_counter()
    step = gc.function(m.inputs, m.loss, updates=opt.updates(m.loss), target=args.target)
    logits = gc.function([m.x], m.logits, target=args.target)
    print(f"graphc target={args.target}: compiled in {time.perf_counter() - t0:.2f} s "
          f"({len(step.kernels)} kernels in the training step: {args.layers} blocks, context {args.context})")

    rng = np.random.default_rng(0)
    T = args.context
    val_starts = np.random.default_rng(1).integers(0, len(val) - T - 1, 64 if args.quick else 256)
    vx, vy = val[val_starts[:, None] + np.arange(T)], val[val_starts[:, None] + np.arange(T) + 1]

    def evaluate() -> float:
        z = logits(vx)
        zmax = z.max(-1, keepdims=True)
        logp = z - zmax - np.log(np.exp(z - zmax).sum(-1, keepdims=True))
        return float(-np.take_along_axis(logp, vy[..., None], -1).mean())

    hist: dict[str, list] = {"step": [], "train": [], "val": []}
    losses, every = [], max(args.steps // 6, 1)
    saved, first = {"model": m.model, "opt": opt}, 1
    if args.resume:  # params, AdamW's moments and step count, dropout keys; the step to go on from
        first = int(gc.load(args.resume, saved)["step"]) + 1
        print(f"resumed from {args.resume} after step {first - 1}")
    t0 = time.perf_counter()
    for i in tqdm(range(first, args.steps + 1), desc="training", unit="step"):
        lr.value = args.lr * min(1.0, i / 100) * 0.5 * (1 + math.cos(math.pi * i / args.steps))  # warmup, cosine
        starts = np.random.default_rng([0, i]).integers(0, len(train) - T - 1, args.batch)  # a function of i: resumable
        idx = starts[:, None] + np.arange(T)
        losses.append(float(step(train[idx], train[idx + 1])))
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

    # sample: the last `context` characters in, the next one drawn at temperature 0.8
    window = list(val[:T])
    out = ""
    for _ in range(300):
        z = logits(np.array([window[-T:]]))[0, -1] / 0.8
        p = np.exp(z - z.max())
        window.append(int(rng.choice(len(p), p=p / p.sum())))
        out += alphabet[window[-1]]
    print("prompt:\n" + "".join(alphabet[c] for c in val[:T]) + "\nsample:\n" + out)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(hist["step"], hist["train"], label="train")
    ax.plot(hist["step"], hist["val"], label="validation")
    ax.axhline(unigram, color="gray", ls="--", label="unigram baseline")
    ax.set_xlabel("step"), ax.set_ylabel("nats / character"), ax.legend()
    ax.set_title(f"tiny transformer on stdlib source (graphc, {args.target})")
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    fig.savefig(os.path.join(args.out, "tiny_transformer.png"), dpi=100)
    print(f"plot: {os.path.join(args.out, 'tiny_transformer.png')}")
    return {"unigram": unigram, "val": hist["val"][-1], "sample": out}


if __name__ == "__main__":
    main()
