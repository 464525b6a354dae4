"""Train a small CNN on scikit-learn's 8x8 handwritten digits.

conv 3x3 (pad 1) -> ReLU -> max-pool -> conv 3x3 (pad 1) -> ReLU -> max-pool -> linear,
trained with Adam and a cosine learning-rate decay; convolutions are im2col (strided slices, one matmul), so the whole
step is one compiled call. Writes a loss/accuracy plot to examples/out/.

    python examples/cnn_digits.py [--target cpu|numpy] [--epochs N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import time
from types import SimpleNamespace

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import graphc as gc

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def build(channels: tuple[int, int] = (16, 32), seed: int = 0) -> SimpleNamespace:
    """``loss`` of ``inputs`` [x (N, 1, 8, 8), y] and evaluation ``logits`` of x."""
    c1, c2 = channels
    x = gc.input("x", ("batch", 1, 8, 8))
    y = gc.input("y", ("batch",), dtype="int64")
    nn = gc.nn
    model = nn.Sequential(
        nn.Conv2D(1, c1, 3, padding=1, rng=seed), gc.relu, nn.MaxPool2D(2),       # (N, c1, 4, 4)
        nn.Conv2D(c1, c2, 3, padding=1, rng=seed + 1), gc.relu, nn.MaxPool2D(2),  # (N, c2, 2, 2)
        nn.Flatten(), nn.Dropout(0.1, seed=seed), nn.Linear(c2 * 4, 10, rng=seed + 2))
    loss = gc.softmax_cross_entropy(model(x, train=True), y)
    return SimpleNamespace(inputs=[x, y], loss=loss, x=x, y=y, logits=model(x), model=model)


def load_data():
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    X = (X - X.mean()) / X.std()
    return train_test_split(X, digits.target.astype(np.int64), test_size=0.25, random_state=0, stratify=digits.target)


def plot(history: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(history["loss"], label="train loss")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.legend()
    b.plot(history["train_acc"], label="train")
    b.plot(history["test_acc"], label="test")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--out", default=OUT, help="folder for the plot")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--quick", action="store_true", help="2 epochs, for tests")
    ap.add_argument("--save", metavar="PATH", help="checkpoint (model, optimizer, RNG state) written after each epoch")
    ap.add_argument("--resume", metavar="PATH", help="continue from a checkpoint written by --save")
    args = ap.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    Xtr, Xte, ytr, yte = load_data()

    m = build()
    lr = gc.param("lr", np.float32(args.lr))  # a param, so the schedule changes it without recompiling
    opt = gc.optim.Adam(m.model, lr=lr)
    t0 = time.perf_counter()
    step = gc.function(m.inputs, m.loss, updates=opt.updates(m.loss), target=args.target)
    predict = gc.function([m.x], m.logits, target=args.target)
    print(f"graphc target={args.target}: compiled in {time.perf_counter() - t0:.2f} s "
          f"({len(step.kernels)} kernels in the training step); {len(Xtr)} train / {len(Xte)} test digits")

    saved, first = {"model": m.model, "opt": opt}, 1
    if args.resume:  # params, Adam's moments and step count, the dropout key; the epoch to go on from
        first = int(gc.load(args.resume, saved)["epoch"]) + 1
        print(f"resumed from {args.resume} after epoch {first - 1}")
    hist: dict[str, list] = {"loss": [], "train_acc": [], "test_acc": []}
    bar = tqdm(range(first, epochs + 1), desc="epochs", unit="epoch")
    for epoch in bar:
        t = time.perf_counter()
        lr.value = args.lr * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / epochs))  # cosine decay
        perm = np.random.default_rng([0, epoch]).permutation(len(Xtr))  # a function of the epoch: resumable
        losses = [step(Xtr[perm[i:i + args.batch]], ytr[perm[i:i + args.batch]]) for i in range(0, len(Xtr), args.batch)]
        hist["loss"].append(float(np.mean(losses)))
        hist["train_acc"].append(float((predict(Xtr).argmax(1) == ytr).mean()))
        hist["test_acc"].append(float((predict(Xte).argmax(1) == yte).mean()))
        bar.set_postfix(loss=f"{hist['loss'][-1]:.4f}", test_acc=f"{hist['test_acc'][-1]:.4f}")
        tqdm.write(f"epoch {epoch:3d}  loss {hist['loss'][-1]:.4f}  train acc {hist['train_acc'][-1]:.4f}  "
                   f"test acc {hist['test_acc'][-1]:.4f}  ({(time.perf_counter() - t) * 1e3:.0f} ms)")
        if args.save:
            gc.save(args.save, saved, metadata={"epoch": epoch})
    acc = hist["test_acc"][-1] if hist["test_acc"] else float((predict(Xte).argmax(1) == yte).mean())
    print(f"final held-out test accuracy: {acc:.4f}")
    plot(hist, os.path.join(args.out, "cnn_digits.png"), f"CNN on digits (graphc, target={args.target})")
    print(f"plot: {os.path.join(args.out, 'cnn_digits.png')}")
    return acc


if __name__ == "__main__":
    main()
