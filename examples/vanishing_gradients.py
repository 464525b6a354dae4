"""Vanishing gradients, measured inside the training step, on scikit-learn's digits: through
depth (a deep sigmoid MLP against a ReLU MLP with residual connections) and through time
(a tanh RNN against an LSTM).

Each step also returns gradient norms, as extra outputs of the same compiled call. Per layer
(``gc.optim.grad_norms``: one fused reduction per layer): in the sigmoid network they shrink by
about 4x per layer toward the input, since sigmoid' <= 1/4; the residual path carries gradients
to the first layer undiminished. Per time step: the recurrent models read a sequence of the
8-pixel rows of several digits, the digit to classify first and the others after it, so the
answer must be carried across the whole sequence. ``gc.grad`` of the loss with respect to the
input sequence, through the ``gc.scan`` that runs the cell, gives the gradient reaching each
row: in the tanh RNN it falls by orders of magnitude with the distance from the end of the
sequence (each step multiplies it by tanh' times U), while the LSTM's additive cell state
carries it back to the first digit. Prints the norms and plots them with the loss curves to
examples/out/.

    python examples/vanishing_gradients.py [--target cpu|numpy] [--depth N] [--digits K] [--epochs N] [--quick]
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
nn = gc.nn


def build(kind: str = "sigmoid", depth: int = 8, width: int = 64, seed: int = 0) -> SimpleNamespace:
    """A ``depth``-layer MLP on 64 pixels: "sigmoid" (plain, Glorot init) or "residual"
    (x + relu(W x + b), He init). ``layers`` are the hidden layers, input side first."""
    rng = np.random.default_rng(seed)
    x = gc.input("x", ("batch", 64))
    y = gc.input("y", ("batch",), dtype="int64")
    if kind == "sigmoid":
        layers = [nn.Linear(64 if i == 0 else width, width, rng=rng, name=f"sig{i}") for i in range(depth)]
        body = nn.Sequential(*[s for layer in layers for s in (layer, gc.sigmoid)])
    else:
        # the residual branch starts small (scaled He init), so the sum stays near the identity
        init = lambda shape, rng: gc.init.he_uniform(shape, gain=0.5, rng=rng)
        layers = [nn.Linear(64, width, init=init, rng=rng, name="res0")]
        layers += [nn.Linear(width, width, init=init, rng=rng, name=f"res{i}") for i in range(1, depth)]
        body = nn.Sequential(layers[0], gc.relu, *[nn.Residual(nn.Sequential(layer, gc.relu)) for layer in layers[1:]])
    head = nn.Linear(width, 10, rng=rng, name=f"{kind}_head")
    model = nn.Sequential(body, head)
    logits = model(x)
    loss = gc.softmax_cross_entropy(logits, y)
    return SimpleNamespace(inputs=[x, y], loss=loss, x=x, y=y, logits=logits, model=model, layers=layers)


def build_recurrent(kind: str = "rnn", digits: int = 8, hidden: int = 64, seed: int = 0) -> SimpleNamespace:
    """A "rnn" (tanh) or "lstm" layer over ``x`` (batch, 8 * digits, 8): the rows of ``digits``
    digits, one row per step; the class of the first digit from the last state. ``step_norms``
    (8 * digits,) is the norm of the loss's gradient with respect to each step's input row."""
    x = gc.input("x", ("batch", 8 * digits, 8))
    y = gc.input("y", ("batch",), dtype="int64")
    cell = {"rnn": nn.RNN, "lstm": nn.LSTM}[kind](8, hidden, rng=seed, name=kind)
    head = nn.Linear(hidden, 10, rng=seed + 1, name=f"{kind}_head")
    logits = head(cell(x)[:, -1])
    loss = gc.softmax_cross_entropy(logits, y)
    (gx,) = gc.grad(loss, [x])  # through the scan over time: (batch, steps, 8)
    step_norms = gc.sqrt(gc.sum(gx * gx, axis=(0, 2)))
    return SimpleNamespace(inputs=[x, y], loss=loss, x=x, y=y, logits=logits, model=nn.Sequential(cell, head),
                           step_norms=step_norms)


def load_data():
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1e-3)
    return train_test_split(X, digits.target.astype(np.int64), test_size=0.25, random_state=0, stratify=digits.target)


def sequences(X: np.ndarray, idx: np.ndarray, digits: int, rng) -> np.ndarray:
    """(len(idx), 8 * digits, 8): the rows of digits ``idx``, each followed by the rows of
    ``digits - 1`` others drawn from the same set (the label stays the first digit's)."""
    others = rng.integers(0, len(X), (len(idx), digits - 1))
    return np.concatenate([X[idx][:, None], X[others]], 1).reshape(len(idx), 8 * digits, 8)


def train(name: str, m: SimpleNamespace, norms: list, opt, args, data, inputs) -> dict:
    """Train ``m`` for ``args.epochs``; the step also returns ``norms``, averaged over each epoch.
    ``inputs(X, idx, rng)`` makes a batch of the model's input from rows ``idx`` of X."""
    Xtr, Xte, ytr, yte = data
    t0 = time.perf_counter()
    step = gc.function(m.inputs, [m.loss, *norms], updates=opt.updates(m.loss), target=args.target)
    predict = gc.function([m.x], m.logits, target=args.target)
    print(f"{name}: compiled in {time.perf_counter() - t0:.2f} s ({len(step.kernels)} kernels)")
    rng = np.random.default_rng(0)
    hist = {"loss": [], "norms": [], "acc": 0.0}
    for _ in tqdm(range(args.epochs), desc=name, unit="epoch"):
        perm = rng.permutation(len(Xtr))
        batches = (perm[i:i + args.batch] for i in range(0, len(perm), args.batch))
        outs = [step(inputs(Xtr, b, rng), ytr[b]) for b in batches]
        hist["loss"].append(float(np.mean([o[0] for o in outs])))
        hist["norms"].append(np.mean([np.hstack(o[1:]) for o in outs], axis=0))  # per layer or step, over the epoch
    hist["acc"] = float((predict(inputs(Xte, np.arange(len(Xte)), np.random.default_rng(1))).argmax(1) == yte).mean())
    return hist


def train_mlp(kind: str, args, data) -> dict:
    m = build(kind, args.depth)
    norms = gc.optim.grad_norms(m.loss, {f"layer {i + 1}": layer for i, layer in enumerate(m.layers)})
    opt = gc.optim.SGD(m.model, lr=args.lr, momentum=0.9)
    return train(kind, m, list(norms.values()), opt, args, data, lambda X, idx, rng: X[idx])


def train_recurrent(kind: str, args, data) -> dict:
    m = build_recurrent(kind, args.digits)
    opt = gc.optim.Adam(m.model, lr=3e-3, clip_grad_norm=1.0)
    hist = train(kind, m, [m.step_norms], opt, args, data, lambda X, idx, rng: sequences(X, idx, args.digits, rng))
    hist["norms"] = [n[::-1] for n in hist["norms"]]  # by distance from the end: 0 is the last step
    return hist


NAMES = {"sigmoid": "sigmoid", "residual": "relu + residual", "rnn": "tanh RNN", "lstm": "LSTM"}
COLORS = {"sigmoid": "tab:red", "residual": "tab:blue", "rnn": "tab:orange", "lstm": "tab:green"}


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.8))
    for kind in results:
        h, color = results[kind], COLORS[kind]
        ax, x = (c, np.arange(len(h["norms"][0]))) if kind in ("rnn", "lstm") else (a, np.arange(1, len(h["norms"][0]) + 1))
        ax.semilogy(x, h["norms"][0], "o-", ms=3, color=color, label=f"{NAMES[kind]}: first epoch")
        ax.semilogy(x, h["norms"][-1], "s--", ms=3, color=color, alpha=0.6, label=f"{NAMES[kind]}: last epoch")
        b.plot(h["loss"], color=color, label=f"{NAMES[kind]} (test acc {h['acc']:.3f})")
    a.set_xlabel("layer (1 = input side)"), a.set_ylabel("gradient norm"), a.legend(fontsize=8)
    a.set_title("through depth: per-layer gradient norms")
    b.set_xlabel("epoch"), b.set_ylabel("train loss"), b.legend(fontsize=8), b.set_title("training")
    if "rnn" in results:
        T = len(results["rnn"]["norms"][0])
        c.axvspan(T - 8.5, T - 0.5, color="gray", alpha=0.15, label="rows of the digit to classify")
    c.set_xlabel("steps from the end of the sequence"), c.set_ylabel("gradient norm w.r.t. the input row")
    c.legend(fontsize=8), c.set_title("through time: per-step gradient norms")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--out", default=OUT, help="folder for the plot")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--digits", type=int, default=8, help="digits per sequence of the recurrent models (8 rows each)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.02, help="the MLPs' (SGD); the recurrent models use Adam at 3e-3")
    ap.add_argument("--quick", action="store_true", help="depth 4, sequences of 4 digits, 2 epochs, for tests")
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.digits, args.epochs = 4, 4, 2
    data = load_data()
    results = {kind: train_mlp(kind, args, data) for kind in ("sigmoid", "residual")}
    results |= {kind: train_recurrent(kind, args, data) for kind in ("rnn", "lstm")}

    print("\nper-layer gradient norms, first epoch -> last epoch (layer 1 is next to the input):")
    print(f"{'layer':>6}  {'sigmoid':>22}  {'relu + residual':>22}")
    s, r = results["sigmoid"]["norms"], results["residual"]["norms"]
    for i in range(args.depth):
        print(f"{i + 1:6d}  {s[0][i]:10.2e} -> {s[-1][i]:9.2e}  {r[0][i]:10.2e} -> {r[-1][i]:9.2e}")
    print(f"\nper-step gradient norms w.r.t. the input rows, first epoch -> last epoch ({args.digits} digits of 8 rows; "
          "the label is the first digit's):")
    print(f"{'steps from end':>14}  {'tanh RNN':>22}  {'LSTM':>22}")
    s, r = results["rnn"]["norms"], results["lstm"]["norms"]
    T = len(s[0])
    for d in sorted({*range(0, T, 8), T - 1}):
        print(f"{d:14d}  {s[0][d]:10.2e} -> {s[-1][d]:9.2e}  {r[0][d]:10.2e} -> {r[-1][d]:9.2e}")
    print()
    for kind in ("sigmoid", "residual"):
        h = results[kind]
        ratio = h["norms"][0][0] / h["norms"][0][-1]
        print(f"{kind}: layer 1 / layer {args.depth} gradient norm {ratio:.2e}; final loss {h['loss'][-1]:.4f}; "
              f"test accuracy {h['acc']:.4f}")
    for kind in ("rnn", "lstm"):
        h = results[kind]
        ratio = h["norms"][0][-1] / h["norms"][0][0]
        print(f"{kind}: step 1 / step {T} gradient norm {ratio:.2e}; final loss {h['loss'][-1]:.4f}; "
              f"test accuracy {h['acc']:.4f}")
    path = os.path.join(args.out, "vanishing_gradients.png")
    plot(results, path)
    print(f"plot: {path}")
    return results


if __name__ == "__main__":
    main()
