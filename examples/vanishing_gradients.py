"""Vanishing gradients, measured inside the training step: a deep sigmoid MLP against a
ReLU MLP with residual connections, on scikit-learn's digits.

Each step also returns every layer's gradient norm (``gc.optim.grad_norms``: one fused
reduction per layer, as extra outputs of the same compiled call). In the sigmoid network
they shrink by about 4x per layer toward the input, since sigmoid' <= 1/4; the residual
path carries gradients to the first layer undiminished. Prints the norms and plots them
with the loss curves to examples/out/.

    python examples/vanishing_gradients.py [--target cpu|numpy] [--depth N] [--epochs N] [--quick]
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


def load_data():
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1e-3)
    return train_test_split(X, digits.target.astype(np.int64), test_size=0.25, random_state=0, stratify=digits.target)


def train(kind: str, args, data) -> dict:
    Xtr, Xte, ytr, yte = data
    m = build(kind, args.depth)
    norms = gc.optim.grad_norms(m.loss, {f"layer {i + 1}": layer for i, layer in enumerate(m.layers)})
    opt = gc.optim.SGD(m.model, lr=args.lr, momentum=0.9)
    t0 = time.perf_counter()
    step = gc.function(m.inputs, [m.loss, *norms.values()], updates=opt.updates(m.loss), target=args.target)
    predict = gc.function([m.x], m.logits, target=args.target)
    print(f"{kind}: compiled in {time.perf_counter() - t0:.2f} s ({len(step.kernels)} kernels)")
    rng = np.random.default_rng(0)
    hist = {"loss": [], "norms": [], "acc": 0.0}
    for _ in tqdm(range(args.epochs), desc=kind, unit="epoch"):
        perm = rng.permutation(len(Xtr))
        outs = [step(Xtr[perm[i:i + args.batch]], ytr[perm[i:i + args.batch]]) for i in range(0, len(Xtr), args.batch)]
        hist["loss"].append(float(np.mean([o[0] for o in outs])))
        hist["norms"].append(np.mean([o[1:] for o in outs], axis=0))  # per layer, averaged over the epoch
    hist["acc"] = float((predict(Xte).argmax(1) == yte).mean())
    return hist


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for kind, style in (("sigmoid", "tab:red"), ("residual", "tab:blue")):
        h = results[kind]
        layers = np.arange(1, len(h["norms"][0]) + 1)
        a.semilogy(layers, h["norms"][0], "o-", color=style, label=f"{kind}: first epoch")
        a.semilogy(layers, h["norms"][-1], "s--", color=style, alpha=0.6, label=f"{kind}: last epoch")
        b.plot(h["loss"], color=style, label=f"{kind} (test acc {h['acc']:.3f})")
    a.set_xlabel("layer (1 = input side)"), a.set_ylabel("gradient norm"), a.legend(fontsize=8)
    a.set_title("per-layer gradient norms")
    b.set_xlabel("epoch"), b.set_ylabel("train loss"), b.legend(fontsize=8), b.set_title("training")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--out", default=OUT, help="folder for the plot")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--quick", action="store_true", help="depth 4, 2 epochs, for tests")
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.epochs = 4, 2
    data = load_data()
    results = {kind: train(kind, args, data) for kind in ("sigmoid", "residual")}

    print("\nper-layer gradient norms, first epoch -> last epoch (layer 1 is next to the input):")
    print(f"{'layer':>6}  {'sigmoid':>22}  {'relu + residual':>22}")
    for i in range(args.depth):
        s, r = results["sigmoid"]["norms"], results["residual"]["norms"]
        print(f"{i + 1:6d}  {s[0][i]:10.2e} -> {s[-1][i]:9.2e}  {r[0][i]:10.2e} -> {r[-1][i]:9.2e}")
    for kind, h in results.items():
        ratio = h["norms"][0][0] / h["norms"][0][-1]
        print(f"{kind}: layer 1 / layer {args.depth} gradient norm {ratio:.2e}; final loss {h['loss'][-1]:.4f}; "
              f"test accuracy {h['acc']:.4f}")
    path = os.path.join(args.out, "vanishing_gradients.png")
    plot(results, path)
    print(f"plot: {path}")
    return results


if __name__ == "__main__":
    main()
