"""Train an MLP on scikit-learn's handwritten digits (8x8 images, shipped with the package).

The whole training step (forward, backward, Adam with its moments and step count, the
dropout key) is one compiled call. Writes a loss/accuracy plot to examples/out/.

    python examples/mlp_digits.py [--target cpu|numpy] [--epochs N] [--quick] [--save ckpt] [--resume ckpt]
    mpiexec -n 2 python examples/mlp_digits.py --distributed   # data-parallel: half of each batch per rank
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


def build(hidden: int = 128, dropout: float = 0.1, seed: int = 0) -> SimpleNamespace:
    """The model and its graphs: ``loss`` (training, with dropout) of ``inputs`` [x, y], and
    ``logits`` (evaluation) of x. ``graphc inspect`` uses this."""
    x = gc.input("x", ("batch", 64))
    y = gc.input("y", ("batch",), dtype="int64")
    model = gc.nn.Sequential(gc.nn.Linear(64, hidden, init=gc.init.he_uniform, rng=seed), gc.relu,
                             gc.nn.Dropout(dropout, seed=seed), gc.nn.Linear(hidden, 10, rng=seed + 1))
    loss = gc.softmax_cross_entropy(model(x, train=True), y)
    return SimpleNamespace(inputs=[x, y], loss=loss, x=x, y=y, logits=model(x), model=model)


def load_data():
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1e-3)
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
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--quick", action="store_true", help="3 epochs, for tests")
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel over the ranks of `mpiexec -n N`: each takes 1/N of every batch")
    ap.add_argument("--save", metavar="PATH", help="checkpoint (model, optimizer, RNG state) written after each epoch")
    ap.add_argument("--resume", metavar="PATH", help="continue from a checkpoint written by --save")
    args = ap.parse_args(argv)
    epochs = 3 if args.quick else args.epochs
    Xtr, Xte, ytr, yte = load_data()
    rank, size = gc.distributed.init() if args.distributed else (0, 1)
    say = print if rank == 0 else (lambda *a, **k: None)

    m = build()
    opt = gc.optim.Adam(m.model, lr=args.lr, distributed=args.distributed)
    t0 = time.perf_counter()
    step = gc.function(m.inputs, m.loss, updates=opt.updates(m.loss), target=args.target)
    predict = gc.function([m.x], m.logits, target=args.target)
    say(f"graphc target={args.target}: compiled in {time.perf_counter() - t0:.2f} s; "
        f"{len(Xtr)} train / {len(Xte)} test digits"
        + (f"; {size} ranks, {gc.distributed.local_batch(args.batch)} of each batch of {args.batch} per rank"
           if args.distributed else ""))

    saved, first = {"model": m.model, "opt": opt}, 1
    if args.resume:  # params, Adam's moments and step count, the dropout key; the epoch to go on from
        first = int(gc.load(args.resume, saved)["epoch"]) + 1
        say(f"resumed from {args.resume} after epoch {first - 1}")
    hist: dict[str, list] = {"loss": [], "train_acc": [], "test_acc": []}
    bar = tqdm(range(first, epochs + 1), desc="epochs", unit="epoch", disable=rank != 0)
    for epoch in bar:
        t = time.perf_counter()
        if args.distributed:  # one shuffle shared by the ranks, each its share of every full batch
            batches = gc.distributed.batches(len(Xtr), args.batch, seed=0, epoch=epoch)
        else:  # the shuffle is a function of the epoch, so a resumed run sees the same batches
            perm = np.random.default_rng([0, epoch]).permutation(len(Xtr))
            batches = (perm[i:i + args.batch] for i in range(0, len(Xtr), args.batch))
        losses = [step(Xtr[idx], ytr[idx]) for idx in batches]
        if args.distributed:  # the mean over ranks of each rank's mean loss
            losses = gc.distributed.allreduce_array(np.array(losses, np.float64), "mean")
        hist["loss"].append(float(np.mean(losses)))
        hist["train_acc"].append(float((predict(Xtr).argmax(1) == ytr).mean()))
        hist["test_acc"].append(float((predict(Xte).argmax(1) == yte).mean()))
        bar.set_postfix(loss=f"{hist['loss'][-1]:.4f}", test_acc=f"{hist['test_acc'][-1]:.4f}")
        report = tqdm.write if rank == 0 else say
        report(f"epoch {epoch:3d}  loss {hist['loss'][-1]:.4f}  train acc {hist['train_acc'][-1]:.4f}  "
               f"test acc {hist['test_acc'][-1]:.4f}  ({(time.perf_counter() - t) * 1e3:.0f} ms)")
        if args.save and rank == 0:
            gc.save(args.save, saved, metadata={"epoch": epoch})
    acc = hist["test_acc"][-1] if hist["test_acc"] else float((predict(Xte).argmax(1) == yte).mean())
    say(f"final held-out test accuracy: {acc:.4f}")
    if args.distributed:
        st = gc.distributed.comm_stats()
        say(f"rank 0: {st['calls']} all-reduces, {st['seconds']:.2f} s in communication")
    if rank == 0:
        name = "mlp_digits_distributed.png" if args.distributed else "mlp_digits.png"
        plot(hist, os.path.join(args.out, name), f"MLP on digits (graphc, target={args.target}"
             + (f", {size} ranks)" if args.distributed else ")"))
        print(f"plot: {os.path.join(args.out, name)}")
    return acc


if __name__ == "__main__":
    main()
