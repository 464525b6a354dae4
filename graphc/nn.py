"""Layers: small objects that own their params and build graph nodes when called.

Every layer is called as ``layer(x, train=False)``. ``train`` only changes what
``Dropout`` builds, so a model gives two graphs: ``model(x, train=True)`` for the
training step and ``model(x)`` for evaluation. Dropout draws its mask inside the graph
(``gc.random_uniform``) from an integer key param; the training step must advance the
key, and ``gc.optim`` optimizers' ``updates(loss)`` do so (``state_updates`` finds the
keys of any graph, for steps built without an optimizer).

>>> model = gc.nn.Sequential(gc.nn.Linear(64, 128, rng=0), gc.relu, gc.nn.Dropout(0.1), gc.nn.Linear(128, 10, rng=1))
>>> loss = gc.softmax_cross_entropy(model(x, train=True), y)
>>> step = gc.function([x, y], loss, updates=gc.optim.Adam(model, lr=1e-3).updates(loss), target="cpu")
>>> predict = gc.function([x], model(x), target="cpu")
"""
from __future__ import annotations

import contextlib
import itertools
import math
import zlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from . import init as ginit
from . import mpi, ops
from .errors import ShapeError
from .graph import toposort
from .ir import Node, as_node, param
from .ops.conv import conv_transpose2d, interpolate
from .shapes import fmt_shape

_counters: dict[str, itertools.count] = {}


def _auto_name(kind: str) -> str:
    """linear0, linear1, ...: param names say which layer they belong to."""
    return f"{kind}{next(_counters.setdefault(kind, itertools.count()))}"


class Module:
    """A layer: its params are its attributes that are params, and those of its sub-modules."""

    name: str = ""

    def _param(self, what: str, value: np.ndarray) -> Node:
        return param(f"{self.name}.{what}", value)

    def _children(self) -> Iterable:
        for v in vars(self).values():
            yield from (v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else (v,))

    def _all_params(self) -> list[Node]:
        out: dict[int, Node] = {}
        for v in self._children():
            if isinstance(v, Node) and v.op.name == "param":
                out.setdefault(v.id, v)
            elif isinstance(v, Module):
                for p in v._all_params():
                    out.setdefault(p.id, p)
        return list(out.values())

    def params(self) -> list[Node]:
        """Trainable (float) params, in construction order."""
        return [p for p in self._all_params() if p.dtype.kind == "f"]

    def state(self) -> list[Node]:
        """Integer params: dropout keys and attention masks."""
        return [p for p in self._all_params() if p.dtype.kind != "f"]

    def __call__(self, x, train: bool = False) -> Node:
        raise NotImplementedError


def _apply(layer, x, train: bool):
    return layer(x, train=train) if isinstance(layer, Module) else layer(x)


class Sequential(Module):
    """Layers applied in order; plain functions (``gc.relu``) are allowed as layers."""

    def __init__(self, *layers: Module | Callable):
        self.name, self.layers = _auto_name("seq"), list(layers)

    def __call__(self, x, train: bool = False) -> Node:
        for layer in self.layers:
            x = _apply(layer, x, train)
        return x


class Residual(Module):
    """x + block(x): gradients reach early layers through the identity path."""

    def __init__(self, block: Module | Callable):
        self.name, self.block = _auto_name("residual"), block

    def __call__(self, x, train: bool = False) -> Node:
        return x + _apply(self.block, x, train)


class Linear(Module):
    """y = x @ W + b over the last axis of x; W is (n_in, n_out), Glorot-uniform by default."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True, init=ginit.glorot_uniform, rng=None, name: str | None = None):
        self.name = name or _auto_name("linear")
        self.W = self._param("W", init((n_in, n_out), rng=rng))
        self.b = self._param("b", ginit.zeros(n_out)) if bias else None

    def __call__(self, x, train: bool = False) -> Node:
        x = as_node(x)
        # leading axes flattened: one BLAS call, and dW is one matmul rather than a batch of them
        y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])) if x.ndim > 2 else x, self.W)
        y = y + self.b if self.b is not None else y
        return ops.reshape(y, x.shape[:-1] + (y.shape[-1],)) if x.ndim > 2 else y


class Conv2D(Module):
    """2-D convolution over NCHW images (``gc.conv2d``); filters (OUT, C/groups, KH, KW),
    He-uniform. ``groups=in_ch`` is a depthwise convolution.

    >>> dw = gc.nn.Conv2D(32, 32, 3, padding=1, groups=32, rng=0)
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple = 3, stride: int | tuple = 1, padding: int | tuple = 0,
                 dilation: int | tuple = 1, groups: int = 1, bias: bool = True, init=ginit.he_uniform, rng=None,
                 name: str | None = None):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if in_ch % groups or out_ch % groups:
            raise ShapeError(f"Conv2D: channels {in_ch} -> {out_ch} are not divisible by groups={groups}")
        self.name, self.stride, self.padding = name or _auto_name("conv"), stride, padding
        self.dilation, self.groups = dilation, groups
        self.W = self._param("W", init((out_ch, in_ch // groups, kh, kw), rng=rng))
        self.b = self._param("b", ginit.zeros(out_ch)) if bias else None

    def __call__(self, x, train: bool = False) -> Node:
        return ops.conv2d(x, self.W, self.b, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2D(Module):
    """Transposed convolution over NCHW images (``conv_transpose2d``), e.g. to upsample in a
    decoder; filters (C, OUT/groups, KH, KW), He-uniform over OUT/groups*KH*KW, as in PyTorch.

    >>> up = gc.nn.ConvTranspose2D(64, 32, 3, stride=2, padding=1, output_padding=1, rng=0)   # H, W doubled
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple = 3, stride: int | tuple = 1, padding: int | tuple = 0,
                 output_padding: int | tuple = 0, dilation: int | tuple = 1, groups: int = 1, bias: bool = True,
                 init=ginit.he_uniform, rng=None, name: str | None = None):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if in_ch % groups or out_ch % groups:
            raise ShapeError(f"ConvTranspose2D: channels {in_ch} -> {out_ch} are not divisible by groups={groups}")
        self.name = name or _auto_name("convtranspose")
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.dilation, self.groups = dilation, groups
        self.W = self._param("W", init((in_ch, out_ch // groups, kh, kw), rng=rng))
        self.b = self._param("b", ginit.zeros(out_ch)) if bias else None

    def __call__(self, x, train: bool = False) -> Node:
        return conv_transpose2d(x, self.W, self.b, self.stride, self.padding, self.output_padding, self.dilation,
                                self.groups)


class MaxPool2D(Module):
    """``gc.max_pool2d`` over NCHW images; ``stride`` defaults to ``kernel``, padding is -inf."""

    def __init__(self, kernel: int | tuple = 2, stride: int | tuple | None = None, padding: int | tuple = 0,
                 ceil_mode: bool = False):
        self.name, self.kernel, self.stride = _auto_name("maxpool"), kernel, stride
        self.padding, self.ceil_mode = padding, ceil_mode

    def __call__(self, x, train: bool = False) -> Node:
        return ops.max_pool2d(x, self.kernel, self.stride, self.padding, self.ceil_mode)


class AvgPool2D(Module):
    """``gc.avg_pool2d`` over NCHW images; ``stride`` defaults to ``kernel``, padding is zeros,
    counted in the divisor unless ``count_include_pad=False``."""

    def __init__(self, kernel: int | tuple = 2, stride: int | tuple | None = None, padding: int | tuple = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
        self.name, self.kernel, self.stride = _auto_name("avgpool"), kernel, stride
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def __call__(self, x, train: bool = False) -> Node:
        return ops.avg_pool2d(x, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                              self.divisor_override)


class Upsample(Module):
    """Resize NCHW images (``interpolate``) to ``size`` or by ``scale_factor``, ``mode`` "nearest"
    or "bilinear", as PyTorch's ``nn.Upsample``.

    >>> up = gc.nn.Upsample(scale_factor=2, mode="bilinear")
    """

    def __init__(self, size: int | tuple | None = None, scale_factor: float | tuple | None = None, mode: str = "nearest",
                 align_corners: bool | None = None):
        self.name, self.size, self.scale_factor = _auto_name("upsample"), size, scale_factor
        self.mode, self.align_corners = mode, align_corners

    def __call__(self, x, train: bool = False) -> Node:
        return interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def __init__(self):
        self.name = _auto_name("flatten")

    def __call__(self, x, train: bool = False) -> Node:
        return ops.reshape(x, (x.shape[0], -1))


class Activation(Module):
    """An elementwise function as a layer, with its settings fixed: ``Activation(gc.leaky_relu,
    negative_slope=0.2)``. The named subclasses are torch.nn's activation layers."""

    fn: Callable = staticmethod(ops.relu)

    def __init__(self, fn: Callable | None = None, **settings):
        self.name, self.settings = _auto_name(type(self).__name__.lower()), settings
        if fn is not None:
            self.fn = fn

    def __call__(self, x, train: bool = False) -> Node:
        return self.fn(x, **self.settings)


def _activation(name: str, fn: Callable, *keywords: str) -> type:
    """A subclass of Activation whose positional arguments are ``keywords`` (``LeakyReLU(0.2)``)."""
    def __init__(self, *args, **settings):
        if len(args) > len(keywords):
            raise TypeError(f"{name} takes at most {len(keywords)} positional arguments ({', '.join(keywords) or 'none'})")
        Activation.__init__(self, None, **dict(zip(keywords, args)), **settings)
    doc = f"``gc.{fn.__name__}`` as a layer" + (f" (settings: {', '.join(keywords)})." if keywords else ".")
    return type(name, (Activation,), {"fn": staticmethod(fn), "__init__": __init__, "__doc__": doc})


ReLU = _activation("ReLU", ops.relu)
GELU = _activation("GELU", ops.gelu, "approximate")
SiLU = _activation("SiLU", ops.silu)
Tanh = _activation("Tanh", ops.tanh)
Sigmoid = _activation("Sigmoid", ops.sigmoid)
Softplus = _activation("Softplus", ops.softplus)
Softsign = _activation("Softsign", ops.softsign)
LeakyReLU = _activation("LeakyReLU", ops.leaky_relu, "negative_slope")
ELU = _activation("ELU", ops.elu, "alpha")
Hardtanh = _activation("Hardtanh", ops.hardtanh, "lo", "hi")


class Embedding(Module):
    """Rows of a (num, dim) table for integer ids of any shape: (...,) -> (..., dim)."""

    def __init__(self, num: int, dim: int, std: float = 1.0, rng=None, name: str | None = None):
        self.name = name or _auto_name("embedding")
        self.E = self._param("E", ginit.normal((num, dim), std, rng=rng))

    def __call__(self, ids, train: bool = False) -> Node:
        return ops.take(self.E, ids)


class LayerNorm(Module):
    """Normalize the last axis to zero mean and unit variance, then scale and shift."""

    def __init__(self, dim: int, eps: float = 1e-5, name: str | None = None):
        self.name, self.eps = name or _auto_name("layernorm"), eps
        self.gamma, self.beta = self._param("gamma", ginit.ones(dim)), self._param("beta", ginit.zeros(dim))

    def __call__(self, x, train: bool = False) -> Node:
        d = x - ops.mean(x, axis=-1, keepdims=True)
        var = ops.mean(d * d, axis=-1, keepdims=True)
        return d / ops.sqrt(var + self.eps) * self.gamma + self.beta


class Dropout(Module):
    """Zero each element with probability ``p`` in training and scale the rest by 1/(1-p);
    the identity in evaluation. The mask is a pure function of the key param (``seed`` at
    first, advanced by each step), the layer's name, the call and the MPI rank, so a run is
    reproducible from its seed, and in data-parallel training (``gc.distributed.init()`` before
    the model is built) each rank draws its own masks while the key stays the same on every rank
    (one checkpoint resumes them all). Automatic names count the layers made so far in the
    process: name the layer to get the same masks from a model built twice in one process.

    >>> drop = gc.nn.Dropout(0.1, seed=0, name="drop1"); h = drop(h, train=True)
    """

    def __init__(self, p: float = 0.5, seed: int = 0, name: str | None = None):
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability {p} must be in [0, 1)")
        self.name, self.p, self.calls = name or _auto_name("dropout"), float(p), 0
        self.key = self._param("key", np.int64(seed))
        self._salt = zlib.crc32(self.name.encode())

    def __call__(self, x, train: bool = False) -> Node:
        x = as_node(x)
        if not train or self.p == 0:
            return x
        # a layer called twice in one graph (an unrolled loop) draws new numbers each time
        salt = self._salt + 7919 * self.calls + 104729 * mpi.rank()  # (rank 0 alone: as without MPI)
        u = ops.random_uniform(self.key, x.shape, salt=salt, dtype=x.dtype)
        self.calls += 1
        return ops.where(u >= self.p, x * (1.0 / (1.0 - self.p)), 0.0)


def state_updates(roots: Node | Sequence[Node]) -> list[tuple[Node, Node]]:
    """(key, key + 1) for every integer param that keys random numbers in the graph of
    ``roots`` (loop bodies included), so each step draws new dropout masks.

    >>> step = gc.function([x], out, updates=gc.nn.state_updates(out))
    """
    roots = [roots] if isinstance(roots, Node) else list(roots)
    return [(k, k + 1) for k in _random_keys(roots).values() if k.op.name == "param"]


def _random_keys(roots: list[Node]) -> dict[int, Node]:
    """The integer params (and, inside a loop body, the placeholders) that keys of random numbers
    are computed from; a body's placeholders stand for its scan's inputs."""
    keys: dict[int, Node] = {}

    def sources(v: Node) -> list[Node]:
        return [m for m in toposort([v]) if m.op.name == "arg" or (m.op.name == "param" and m.dtype.kind in "iu")]
    for n in toposort(roots):
        if n.op.name == "random_uniform":
            found = sources(n.inputs[0])
        elif n.op.name == "scan":
            body = n.attrs["body"]
            outer = {p.id: v for p, v in zip(body.args, n.inputs)}
            found = [m for k in _random_keys(list(body.outputs)).values() if k.id in outer for m in sources(outer[k.id])]
        else:
            continue
        for m in found:
            keys.setdefault(m.id, m)
    return keys


class _Recurrent(Module):
    """A recurrent layer, run by ``gc.scan`` over time: one compiled loop body whatever the
    sequence length, which may be symbolic. ``xs`` is (N, T, n_in), or a list of T inputs
    (N, n_in); the result is every state, (N, T, H). The input projection ``x W + b`` does not
    depend on the state, so it runs before the loop as one matmul over all steps. Without ``h0``
    the state starts at zero. With ``n_in=None`` the inputs are already projected to
    ``gates * hidden`` (e.g. by an Embedding of that width), and the layer has no W, b.
    ``run(xs, h0)`` also returns the final state (to carry it to the next chunk of a sequence)."""

    gates = 1

    def __init__(self, n_in: int | None, hidden: int, rng=None, name: str | None = None, kind: str = "rnn"):
        rng = np.random.default_rng(rng)
        self.name, self.hidden, self.n_in = name or _auto_name(kind), hidden, n_in
        # orthogonal recurrent weights keep h's scale over many steps
        U = np.concatenate([np.linalg.qr(rng.standard_normal((hidden, hidden)))[0] for _ in range(self.gates)], 1)
        self.U = self._param("U", U.astype(np.float32))
        if n_in is not None:
            self.W = self._param("W", ginit.glorot_uniform((n_in, self.gates * hidden), rng=rng))
            self.b = self._param("b", self._bias())

    def _bias(self) -> np.ndarray:
        return ginit.zeros(self.gates * self.hidden)

    def __call__(self, xs, h0=None, train: bool = False) -> Node:
        return self.run(xs, h0)[0]

    def run(self, xs, h0=None):
        """(every state (N, T, H), the final state) for inputs ``xs`` and initial state ``h0``."""
        if isinstance(xs, (list, tuple)):
            xs = ops.stack([as_node(x) for x in xs], axis=1)
        xs = as_node(xs)
        if xs.ndim != 3:
            raise ShapeError(f"{self.name}: inputs {fmt_shape(xs.shape)} must be (N, T, n_in)")
        xp = xs if self.n_in is None else xs @ self.W + self.b
        if xp.shape[-1] != self.gates * self.hidden:
            raise ShapeError(f"{self.name}: inputs {fmt_shape(xs.shape)} have {xp.shape[-1]} features, expected "
                             f"{self.n_in if self.n_in is not None else self.gates * self.hidden}")
        state = self.zero_state(xs.shape[0], xp.dtype) if h0 is None else h0
        last, hs = ops.scan(lambda h, x: self._scan_step(x, h), state, ops.transpose(xp, (1, 0, 2)))
        return ops.transpose(hs, (1, 0, 2)), last

    def zero_state(self, n, dtype="float32"):
        return ops.broadcast_to(as_node(0.0).astype(dtype), (n, self.hidden))

    def _scan_step(self, xp: Node, state):
        h = self.step(xp, state)
        return h, h

    def step(self, xp: Node, h: Node | None) -> Node:
        """The next state from the projected input ``xp`` and the state ``h`` (None: zero)."""
        raise NotImplementedError


class RNN(_Recurrent):
    """Elman cell: h' = tanh(x W + b + h U).

    >>> hs = gc.nn.RNN(16, 64, rng=0)(x)   # x: (N, T, 16) -> (N, T, 64)
    """

    def __init__(self, n_in: int | None, hidden: int, rng=None, name: str | None = None):
        super().__init__(n_in, hidden, rng, name, "rnn")

    def step(self, xp: Node, h: Node | None) -> Node:
        return ops.tanh(xp if h is None else xp + h @ self.U)


class GRU(_Recurrent):
    """Gated recurrent unit, with PyTorch's gate order (reset, update, new) and equations:
    r, z = σ(x W_r + h U_r + b), σ(x W_z + h U_z + b); n = tanh(x W_n + b_n + r * (h U_n + bh));
    h' = (1 - z) * n + z * h. ``bh`` is torch's ``bias_hh`` of the new gate (its reset and update
    parts add to ``b``), so torch's weights load exactly.

    >>> hs = gc.nn.GRU(16, 64, rng=0)(x)
    """

    gates = 3

    def __init__(self, n_in: int | None, hidden: int, rng=None, name: str | None = None):
        super().__init__(n_in, hidden, rng, name, "gru")
        self.bh = self._param("bh", ginit.zeros(hidden))

    def step(self, xp: Node, h: Node | None) -> Node:
        H = self.hidden
        if h is None:
            h = self.zero_state(xp.shape[0], xp.dtype)
        hu = h @ self.U
        r = ops.sigmoid(xp[:, :H] + hu[:, :H])
        z = ops.sigmoid(xp[:, H:2 * H] + hu[:, H:2 * H])
        n = ops.tanh(xp[:, 2 * H:] + r * (hu[:, 2 * H:] + self.bh))
        return (1.0 - z) * n + z * h


class LSTM(_Recurrent):
    """Long short-term memory, with PyTorch's gate order (input, forget, cell, output):
    i, f, o = σ(.), g = tanh(.) of x W + b + h U; c' = f * c + i * g; h' = o * tanh(c'). The state
    is the pair (h, c); ``b`` is torch's ``bias_ih + bias_hh``, its forget part starting at 1 (so
    early gradients flow through c). Returns every h; ``run`` also returns the final (h, c).

    >>> hs = gc.nn.LSTM(16, 64, rng=0)(x)
    >>> hs, (h, c) = lstm.run(x, (h0, c0))
    """

    gates = 4

    def __init__(self, n_in: int | None, hidden: int, rng=None, name: str | None = None):
        super().__init__(n_in, hidden, rng, name, "lstm")

    def _bias(self) -> np.ndarray:
        b = ginit.zeros(4 * self.hidden)
        b[self.hidden:2 * self.hidden] = 1.0
        return b

    def zero_state(self, n, dtype="float32"):
        zero = super().zero_state(n, dtype)
        return zero, zero

    def _scan_step(self, xp: Node, state):
        h, c = self.step(xp, state)
        return (h, c), h

    def step(self, xp: Node, state) -> tuple[Node, Node]:
        """The next (h, c) from the projected input and the state (h, c) (None: zeros)."""
        h, c = self.zero_state(xp.shape[0], xp.dtype) if state is None else state
        H = self.hidden
        a = xp + h @ self.U
        i, f = ops.sigmoid(a[:, :H]), ops.sigmoid(a[:, H:2 * H])
        g, o = ops.tanh(a[:, 2 * H:3 * H]), ops.sigmoid(a[:, 3 * H:])
        c = f * c + i * g
        return o * ops.tanh(c), c


class MultiHeadAttention(Module):
    """Self-attention over x (N, T, D) with ``heads`` heads; ``causal`` masks the future.

    >>> y = gc.nn.MultiHeadAttention(64, heads=4, rng=0)(x)   # (N, T, 64) -> (N, T, 64)
    """

    def __init__(self, dim: int, heads: int, causal: bool = True, rng=None, name: str | None = None):
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        rng = np.random.default_rng(rng)
        self.name, self.heads, self.causal = name or _auto_name("attention"), heads, causal
        self.qkv = Linear(dim, 3 * dim, rng=rng, name=f"{self.name}.qkv")
        self.out = Linear(dim, dim, rng=rng, name=f"{self.name}.out")
        self._masks: dict[int, Node] = {}

    def _mask(self, t: int) -> Node:
        """The (t, t) lower-triangular mask, as an int8 state param rather than a constant: the
        CPU backend compiles a step with an array constant twice (see tests/test_nn.py)."""
        if t not in self._masks:
            self._masks[t] = self._param(f"mask{t}", np.tril(np.ones((t, t), np.int8)))
        return self._masks[t]

    def __call__(self, x, train: bool = False) -> Node:
        n, t, d = x.shape
        h, dh = self.heads, d // self.heads
        qkv = ops.transpose(ops.reshape(self.qkv(x), (n, t, 3, h, dh)), (2, 0, 3, 1, 4))  # (3, N, H, T, dh)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.mT) * (1.0 / math.sqrt(dh))  # (N, H, T, T)
        if self.causal:  # position i attends to j <= i
            scores = ops.where(self._mask(t) > 0, scores, -1e9)
        y = ops.softmax(scores, -1) @ v  # (N, H, T, dh)
        return self.out(ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (n, t, d)))


class TransformerBlock(Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x)), with dropout on each branch;
    ``activation`` is the MLP's (``gc.gelu`` for GPT-style blocks)."""

    def __init__(self, dim: int, heads: int, hidden: int | None = None, dropout: float = 0.0, rng=None,
                 name: str | None = None, activation: Callable = ops.relu):
        rng = np.random.default_rng(rng)
        self.name = name or _auto_name("block")
        self.ln1, self.ln2 = LayerNorm(dim, name=f"{self.name}.ln1"), LayerNorm(dim, name=f"{self.name}.ln2")
        self.attn = MultiHeadAttention(dim, heads, rng=rng, name=f"{self.name}.attn")
        self.mlp = Sequential(Linear(dim, hidden or 4 * dim, init=ginit.he_uniform, rng=rng, name=f"{self.name}.fc1"),
                              activation, Linear(hidden or 4 * dim, dim, rng=rng, name=f"{self.name}.fc2"))
        self.drop = Dropout(dropout, seed=int(rng.integers(2**31)), name=f"{self.name}.drop")

    def __call__(self, x, train: bool = False) -> Node:
        x = x + self.drop(self.attn(self.ln1(x), train), train)
        return x + self.drop(self.mlp(self.ln2(x), train), train)


def _modules(m: Module) -> Iterable[Module]:
    """``m`` and every module inside it."""
    yield m
    for v in m._children():
        if isinstance(v, Module):
            yield from _modules(v)


@contextlib.contextmanager
def _swapped(m: Module, new: dict[int, Node]):
    """Inside the block, ``m``'s params (and its sub-modules') are the nodes ``new`` maps their ids to."""
    undo: list = []

    def swap(v):
        return new.get(v.id, v) if isinstance(v, Node) else v

    def walk(obj):
        for k, v in list(vars(obj).items()):
            if isinstance(v, Module):
                walk(v)
            elif isinstance(v, (list, tuple, dict)):
                items = v.values() if isinstance(v, dict) else v
                for item in items:
                    if isinstance(item, Module):
                        walk(item)
                repl = {a: swap(b) for a, b in v.items()} if isinstance(v, dict) else type(v)(swap(b) for b in v)
                if isinstance(v, list):
                    undo.append((v, list(v)))
                    v[:] = repl
                else:
                    undo.append((obj, k, v))
                    setattr(obj, k, repl)
            elif isinstance(v, Node) and v.id in new:
                undo.append((obj, k, v))
                setattr(obj, k, new[v.id])
    walk(m)
    try:
        yield
    finally:
        for u in reversed(undo):
            if len(u) == 2:
                u[0][:] = u[1]
            else:
                setattr(*u)


class Stack(Module):
    """``n`` layers of one structure applied in order, run by ``gc.scan`` over the layers: each of
    the block's params becomes one param stacked along a new leading axis (n, ...), and the block
    is traced and compiled once, so depth does not multiply the graph or the compile time.

    ``block`` is a Module (every layer starts as a copy of it, as torch.nn.TransformerEncoder's
    do) or a function ``i -> Module`` called once per layer (each layer its own initial values).
    A dropout layer in the block shares one key param, mixed with the layer's index.

    >>> blocks = gc.nn.Stack(lambda i: gc.nn.TransformerBlock(64, 4, rng=i), 4)
    >>> h = blocks(x, train=True)
    """

    def __init__(self, block: Module | Callable[[int], Module], n: int, name: str | None = None):
        if int(n) < 1:
            raise ValueError(f"Stack of {n} layers: need at least one")
        self.name, self.n = name or _auto_name("stack"), int(n)
        layers = [block] * self.n if isinstance(block, Module) else [block(i) for i in range(self.n)]
        template = layers[0]
        per = [[p for p in layer._all_params() if p.dtype.kind == "f"] for layer in layers]
        for i, ps in enumerate(per[1:], 1):
            if [(p.shape, p.dtype) for p in ps] != [(p.shape, p.dtype) for p in per[0]]:
                raise ShapeError(f"{self.name}: layer {i} has params {[fmt_shape(p.shape) for p in ps]}, layer 0 "
                                 f"{[fmt_shape(p.shape) for p in per[0]]}: a stack's layers share one structure")
        self._template, self._own = template, per[0]
        self.stacked = [param(f"{self.name}.{p.name}", np.stack([ps[k].value for ps in per]))
                        for k, p in enumerate(per[0])]
        self._keys = [d.key for d in _modules(template) if isinstance(d, Dropout)]

    def _all_params(self) -> list[Node]:
        return self.stacked + self._keys

    def __call__(self, x, train: bool = False) -> Node:
        x = as_node(x)
        index = ops.arange(self.n)

        def layer(h, xs):
            ps, i = xs
            new = {p.id: q for p, q in zip(self._own, ps)} | {k.id: k * self.n + i for k in self._keys}
            with _swapped(self._template, new):
                out = _apply(self._template, h, train)
            if out.shape != h.shape:
                raise ShapeError(f"{self.name}: a layer maps {fmt_shape(h.shape)} to {fmt_shape(out.shape)}; the "
                                 "layers of a stack keep the shape of their input")
            return out, None
        return ops.scan(layer, x, (list(self.stacked), index))[0]


__all__ = ["Module", "Sequential", "Residual", "Linear", "Conv2D", "ConvTranspose2D", "MaxPool2D", "AvgPool2D", "Upsample",
           "Flatten", "Embedding", "LayerNorm", "Dropout", "RNN", "GRU", "LSTM", "Stack", "MultiHeadAttention",
           "TransformerBlock", "state_updates", "Activation", "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softplus",
           "Softsign", "LeakyReLU", "ELU", "Hardtanh"]
