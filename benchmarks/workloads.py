"""The benchmark workloads: one SGD training step each, written once per engine.

Every engine computes the same math (forward, backward, in-place SGD update of every
param) from the same seeded initial params and the same fixed batch, so losses agree
to float32 rounding. Engines are imported lazily: a missing one fails only its builds.

    wl = WORKLOADS["W1"]; params, data = wl.init_params(), wl.make_data()
    runner = wl.build("torch", params, data); loss = runner.step()
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENGINES = ("graphc", "torch", "jax", "numpy", "graphc-numpy")
GRAPHC_TARGETS = {"graphc": "cpu", "graphc-numpy": "numpy"}
Params = dict[str, np.ndarray]
Data = dict[str, np.ndarray]


@dataclass
class Runner:
    """A built engine: ``step()`` runs one training step and returns the loss (engine-native)."""

    step: Callable[[], Any]
    info: dict[str, Any] = field(default_factory=dict)


def to_float(loss: Any) -> float:
    """The scalar value of a loss returned by any engine's step."""
    return float(np.asarray(loss.detach() if hasattr(loss, "detach") else loss))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z, stays float32


def _jax_sgd(loss_fn: Callable, params: Params, args: tuple, lr: float) -> Runner:
    import jax
    import jax.numpy as jnp

    @jax.jit
    def train(p, *a):
        loss, g = jax.value_and_grad(loss_fn)(p, *a)
        return jax.tree_util.tree_map(lambda v, d: v - lr * d, p, g), loss

    state = {"p": {k: jnp.asarray(v) for k, v in params.items()}}
    dev = tuple(jnp.asarray(a) for a in args)

    def step():
        state["p"], loss = train(state["p"], *dev)
        return loss.block_until_ready()

    return Runner(step)


TORCH_DEVICE = "cpu"  # gpu_bench sets "cuda": the same torch code, on the GPU


def _torch_sgd(loss_fn: Callable, params: Params, args: tuple, lr: float) -> Runner:
    import torch

    tp = {k: torch.tensor(v, device=TORCH_DEVICE, requires_grad=True) for k, v in params.items()}
    dev = tuple(torch.from_numpy(a).to(TORCH_DEVICE) for a in args)

    def step():
        loss = loss_fn(tp, *dev)
        loss.backward()
        with torch.no_grad():
            for p in tp.values():
                p.sub_(p.grad, alpha=lr)
                p.grad = None
        return loss.detach()

    return Runner(step)


def _graphc_sgd(graph_fn: Callable, params: Params, inputs: dict[str, tuple], data: Data, lr: float,
                target: str, threads: int | None) -> Runner:
    """``inputs``: name -> (shape, dtype) of the graph inputs, fed from ``data`` in order."""
    import graphc as gc

    xs = [gc.input(name, shape, dtype) for name, (shape, dtype) in inputs.items()]
    ps = {k: gc.param(k, v.copy()) for k, v in params.items()}
    loss = graph_fn(ps, *xs)
    grads = gc.grad(loss, list(ps.values()))
    kw = {"threads": threads} if threads else {}  # only graphc versions with a thread governor take it
    f = gc.function(xs, loss, updates=[(p, p - lr * g) for p, g in zip(ps.values(), grads)], target=target, **kw)
    feeds = [data[name] for name in inputs]
    return Runner(lambda: f(*feeds), {"kernels": len(f.kernels), "function": f})


class Workload:
    """Base: subclasses define params, data and one ``_<engine>`` method per engine."""

    name: str
    title: str
    lr: float = 0.01
    seed: int = 0

    def init_params(self) -> Params:
        raise NotImplementedError

    def make_data(self) -> Data:
        raise NotImplementedError

    def build(self, engine: str, params: Params, data: Data, threads: int | None = None) -> Runner:
        """A runner for ``engine`` owning its own copy of ``params``; ``threads`` is passed to graphc."""
        params = {k: v.copy() for k, v in params.items()}
        if engine in GRAPHC_TARGETS:
            return self._graphc(params, data, GRAPHC_TARGETS[engine], threads)
        return getattr(self, f"_{engine}")(params, data)


@dataclass
class MLP(Workload):
    """Dense ReLU network; ``loss`` is "ce" (softmax cross-entropy, int labels) or "mse"."""

    name: str
    sizes: tuple[int, ...]
    batch: int
    loss: str

    @property
    def title(self) -> str:
        return f"MLP {'-'.join(map(str, self.sizes))}, {self.loss.upper()}, batch {self.batch}"

    def init_params(self) -> Params:
        rng = np.random.default_rng(self.seed)
        p = {}
        for i, (a, b) in enumerate(zip(self.sizes, self.sizes[1:])):
            p[f"W{i}"] = (rng.standard_normal((a, b)) * math.sqrt(2.0 / a)).astype(np.float32)  # He
            p[f"b{i}"] = np.zeros(b, np.float32)
        return p

    def make_data(self) -> Data:
        rng = np.random.default_rng(self.seed + 1)
        x = rng.standard_normal((self.batch, self.sizes[0])).astype(np.float32)
        if self.loss == "ce":
            y = rng.integers(0, self.sizes[-1], self.batch).astype(np.int64)
        else:
            y = rng.standard_normal((self.batch, self.sizes[-1])).astype(np.float32)
        return {"x": x, "y": y}

    @property
    def layers(self) -> int:
        return len(self.sizes) - 1

    def _forward(self, p: dict, x: Any, relu: Callable) -> Any:
        h = x
        for i in range(self.layers):
            h = h @ p[f"W{i}"] + p[f"b{i}"]
            if i < self.layers - 1:
                h = relu(h)
        return h

    def _numpy(self, p: Params, data: Data) -> Runner:
        x, y, n_layers, lr = data["x"], data["y"], self.layers, np.float32(self.lr)

        def step():
            hs = [x]
            for i in range(n_layers):
                z = hs[-1] @ p[f"W{i}"] + p[f"b{i}"]
                hs.append(np.maximum(z, 0) if i < n_layers - 1 else z)
            out = hs[-1]
            if self.loss == "ce":
                s = out - out.max(1, keepdims=True)
                lse = np.log(np.exp(s).sum(1, keepdims=True))
                logp = s - lse
                loss = -logp[np.arange(len(y)), y].mean()
                g = np.exp(logp)
                g[np.arange(len(y)), y] -= 1
                g /= len(y)
            else:
                d = out - y
                loss = (d * d).mean()
                g = d * np.float32(2.0 / d.size)
            for i in reversed(range(n_layers)):
                gW, gb = hs[i].T @ g, g.sum(0)
                if i:
                    g = (g @ p[f"W{i}"].T) * (hs[i] > 0)
                p[f"W{i}"] -= lr * gW
                p[f"b{i}"] -= lr * gb
            return loss

        return Runner(step)

    def _torch(self, p: Params, data: Data) -> Runner:
        import torch.nn.functional as F

        def loss_fn(tp, x, y):
            out = self._forward(tp, x, F.relu)
            return F.cross_entropy(out, y) if self.loss == "ce" else F.mse_loss(out, y)

        return _torch_sgd(loss_fn, p, (data["x"], data["y"]), self.lr)

    def _jax(self, p: Params, data: Data) -> Runner:
        import jax
        import jax.numpy as jnp

        def loss_fn(jp, x, y):
            out = self._forward(jp, x, jax.nn.relu)
            if self.loss == "ce":
                return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1))
            return jnp.mean((out - y) ** 2)

        y = data["y"].astype(np.int32) if self.loss == "ce" else data["y"]
        return _jax_sgd(loss_fn, p, (data["x"], y), self.lr)

    def _graphc(self, p: Params, data: Data, target: str, threads: int | None) -> Runner:
        import graphc as gc

        def graph(gp, x, y):
            out = self._forward(gp, x, gc.relu)
            return gc.softmax_cross_entropy(out, y) if self.loss == "ce" else gc.mse(out, y)

        y_spec = (("batch",), "int64") if self.loss == "ce" else (("batch", self.sizes[-1]), "float32")
        inputs = {"x": (("batch", self.sizes[0]), "float32"), "y": y_spec}
        return _graphc_sgd(graph, p, inputs, data, self.lr, target, threads)


@dataclass
class Elementwise(Workload):
    """loss = sum(tanh(x*w + b) * sigmoid(x - w) + 0.5*w*w) / n; params w (n,), b scalar."""

    name: str
    n: int

    @property
    def title(self) -> str:
        return f"elementwise tanh*sigmoid, n={self.n:.0e}"

    def init_params(self) -> Params:
        rng = np.random.default_rng(self.seed)
        return {"w": rng.standard_normal(self.n).astype(np.float32), "b": np.array(0.1, np.float32)}

    def make_data(self) -> Data:
        return {"x": np.random.default_rng(self.seed + 1).standard_normal(self.n).astype(np.float32)}

    def _numpy(self, p: Params, data: Data) -> Runner:
        x, inv_n, lr = data["x"], np.float32(1.0 / self.n), np.float32(self.lr)

        def step():
            w = p["w"]
            t, s = np.tanh(x * w + p["b"]), _sigmoid(x - w)
            loss = (t * s + 0.5 * w * w).sum() * inv_n
            dt = s * (1 - t * t)  # d/da of tanh(a) * s
            gw = (dt * x - t * s * (1 - s) + w) * inv_n
            gb = dt.sum() * inv_n
            w -= lr * gw
            p["b"] -= lr * gb
            return loss

        return Runner(step)

    def _torch(self, p: Params, data: Data) -> Runner:
        import torch

        def loss_fn(tp, x):
            w = tp["w"]
            return (torch.tanh(x * w + tp["b"]) * torch.sigmoid(x - w) + 0.5 * w * w).sum() / self.n

        return _torch_sgd(loss_fn, p, (data["x"],), self.lr)

    def _jax(self, p: Params, data: Data) -> Runner:
        import jax
        import jax.numpy as jnp

        def loss_fn(jp, x):
            w = jp["w"]
            return jnp.sum(jnp.tanh(x * w + jp["b"]) * jax.nn.sigmoid(x - w) + 0.5 * w * w) / self.n

        return _jax_sgd(loss_fn, p, (data["x"],), self.lr)

    def _graphc(self, p: Params, data: Data, target: str, threads: int | None) -> Runner:
        import graphc as gc

        def graph(gp, x):
            w = gp["w"]
            return gc.sum(gc.tanh(x * w + gp["b"]) * gc.sigmoid(x - w) + 0.5 * w * w) / self.n

        return _graphc_sgd(graph, p, {"x": ((self.n,), "float32")}, data, self.lr, target, threads)


@dataclass
class LogReg(Workload):
    """Logistic regression, BCE with logits (mean): z = x @ w + b; loss = softplus(z) - y*z."""

    name: str
    features: int
    batch: int

    @property
    def title(self) -> str:
        return f"logistic regression, {self.features} features, batch {self.batch}"

    def init_params(self) -> Params:
        rng = np.random.default_rng(self.seed)
        w = (rng.standard_normal(self.features) * math.sqrt(1.0 / self.features)).astype(np.float32)
        return {"w": w, "b": np.array(0.0, np.float32)}

    def make_data(self) -> Data:
        rng = np.random.default_rng(self.seed + 1)
        x = rng.standard_normal((self.batch, self.features)).astype(np.float32)
        return {"x": x, "y": rng.integers(0, 2, self.batch).astype(np.float32)}

    def _numpy(self, p: Params, data: Data) -> Runner:
        x, y, lr = data["x"], data["y"], np.float32(self.lr)

        def step():
            z = x @ p["w"] + p["b"]
            loss = (np.logaddexp(np.float32(0), z) - y * z).mean()
            dz = (_sigmoid(z) - y) / np.float32(len(y))
            p["w"] -= lr * (x.T @ dz)
            p["b"] -= lr * dz.sum()
            return loss

        return Runner(step)

    def _torch(self, p: Params, data: Data) -> Runner:
        import torch.nn.functional as F

        def loss_fn(tp, x, y):
            return F.binary_cross_entropy_with_logits(x @ tp["w"] + tp["b"], y)

        return _torch_sgd(loss_fn, p, (data["x"], data["y"]), self.lr)

    def _jax(self, p: Params, data: Data) -> Runner:
        import jax
        import jax.numpy as jnp

        def loss_fn(jp, x, y):
            z = x @ jp["w"] + jp["b"]
            return jnp.mean(jax.nn.softplus(z) - y * z)

        return _jax_sgd(loss_fn, p, (data["x"], data["y"]), self.lr)

    def _graphc(self, p: Params, data: Data, target: str, threads: int | None) -> Runner:
        import graphc as gc

        def graph(gp, x, y):
            z = x @ gp["w"] + gp["b"]
            return gc.mean(gc.softplus(z) - y * z)

        inputs = {"x": (("batch", self.features), "float32"), "y": (("batch",), "float32")}
        return _graphc_sgd(graph, p, inputs, data, self.lr, target, threads)


WORKLOADS: dict[str, Workload] = {
    "W1": MLP("W1", (784, 128, 10), 64, "ce"),
    "W2": MLP("W2", (784, 512, 512, 10), 256, "ce"),
    "W3": MLP("W3", (1024, 4096, 4096, 1024), 512, "mse"),
    "W4": Elementwise("W4", 1_000_000),
    "W5": LogReg("W5", 64, 32),
}
QUICK_OVERRIDES: dict[str, Workload] = {"W3": MLP("W3", (1024, 1024, 1024, 1024), 128, "mse")}


def get(name: str, quick: bool = False) -> Workload:
    """Workload ``name``; with ``quick``, its shrunk variant where one exists (W3)."""
    return (QUICK_OVERRIDES.get(name) if quick else None) or WORKLOADS[name]
