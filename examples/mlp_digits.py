"""Train an MLP on scikit-learn's handwritten digits (8x8 images, shipped with the package).

The whole training step (forward, backward, SGD with momentum) is one compiled call.

    python examples/mlp_digits.py [--target numpy|cpu] [--epochs N] [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import graphc as gc


def build(hidden: int = 128, seed: int = 0):
    """The model, its loss and its parameters (``graphc inspect`` uses this)."""
    rng = np.random.default_rng(seed)

    def glorot(n_in, n_out):
        lim = np.sqrt(6 / (n_in + n_out))
        return rng.uniform(-lim, lim, (n_in, n_out)).astype(np.float32)

    x = gc.input("x", ("batch", 64))
    y = gc.input("y", ("batch",), dtype="int64")
    W1, b1 = gc.param("W1", glorot(64, hidden)), gc.param("b1", np.zeros(hidden, np.float32))
    W2, b2 = gc.param("W2", glorot(hidden, 10)), gc.param("b2", np.zeros(10, np.float32))
    h = gc.relu(x @ W1 + b1)
    logits = h @ W2 + b2
    loss = gc.softmax_cross_entropy(logits, y)
    return x, y, logits, loss, [W1, b1, W2, b2]


def sgd_momentum(loss, params, lr: float, momentum: float):
    """Heavy-ball SGD as graph updates: v <- m v + g; p <- p - lr v."""
    grads = gc.grad(loss, params)
    updates = []
    for p, g in zip(params, grads):
        v = gc.param(f"v_{p.name}", np.zeros(p.shape, p.dtype))
        v_new = momentum * v + g
        updates += [(v, v_new), (p, p - lr * v_new)]
    return updates


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="numpy")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="3 epochs, for tests")
    args = ap.parse_args(argv)
    epochs = 3 if args.quick else args.epochs

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1e-3)
    Xtr, Xte, ytr, yte = train_test_split(X, digits.target.astype(np.int64), test_size=0.25, random_state=0,
                                          stratify=digits.target)

    x, y, logits, loss, params = build()
    t0 = time.perf_counter()
    step = gc.function([x, y], loss, updates=sgd_momentum(loss, params, args.lr, 0.9), target=args.target)
    predict = gc.function([x], logits, target=args.target)
    step(Xtr[:args.batch], ytr[:args.batch])  # first call compiles on jitted targets
    print(f"graphc target={args.target}: compiled in {time.perf_counter() - t0:.2f} s; "
          f"{len(Xtr)} train / {len(Xte)} test digits")

    rng = np.random.default_rng(0)
    acc = 0.0
    for epoch in range(1, epochs + 1):
        t = time.perf_counter()
        perm = rng.permutation(len(Xtr))
        losses = [step(Xtr[perm[i:i + args.batch]], ytr[perm[i:i + args.batch]]) for i in range(0, len(Xtr), args.batch)]
        train_acc = float((predict(Xtr).argmax(1) == ytr).mean())
        acc = float((predict(Xte).argmax(1) == yte).mean())
        print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  train acc {train_acc:.4f}  "
              f"test acc {acc:.4f}  ({(time.perf_counter() - t) * 1e3:.0f} ms)")
    print(f"final held-out test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
