"""JAX versions of graphc's four example models, for ``benchmarks/compile.py``'s compile-time comparison.

Each model mirrors its example (``examples/mlp_digits.py``, ``cnn_digits.py``, ``tiny_transformer.py``,
``char_rnn.py``) and the graphc layers it uses (``graphc/nn.py``, ``graphc/optim.py``): the same layers, sizes,
float32 params, loss, dropout and torch-style Adam/AdamW (with gradient clipping for the RNN). The training
step is one ``jax.jit`` function (loss, gradients, optimizer update; returns the new params, optimizer state,
carry and loss), where the carry is the dropout key (split each step) or, for the RNN, the hidden state
passed from one chunk to the next. The predict function is the example's evaluation graph: logits without
dropout, or for the RNN its one-character sampling step with its state update. Loops are loops in both: the
transformer's 4 blocks are one ``jax.lax.scan`` over their stacked params (``gc.nn.Stack``), the LSTM runs over
its 64 characters by ``jax.lax.scan`` (``gc.scan``); ``build``'s layers, cell and unroll change those sizes.
Pure jax + jax.numpy: no flax or optax.

    python -c "from benchmarks import jax_models as j; print(j.compile_time('tfm'))"
"""
from __future__ import annotations

import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

F32 = np.float32


# --- params (numpy, outside the timed region; only their shapes matter for compile time) ---

def _linear(rng, n_in: int, n_out: int, he: bool = False) -> dict:
    """graphc.nn.Linear: W (n_in, n_out) Glorot- (or He-) uniform, b zeros."""
    lim = math.sqrt(6 / n_in) if he else math.sqrt(6 / (n_in + n_out))
    return {"W": rng.uniform(-lim, lim, (n_in, n_out)).astype(F32), "b": np.zeros(n_out, F32)}


def _conv(rng, c_in: int, c_out: int, k: int = 3) -> dict:
    """graphc.nn.Conv2D: filters (OUT, C, KH, KW), He-uniform, b zeros."""
    lim = math.sqrt(6 / (c_in * k * k))
    return {"W": rng.uniform(-lim, lim, (c_out, c_in, k, k)).astype(F32), "b": np.zeros(c_out, F32)}


def _normal(rng, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(F32)


def _ln(dim: int) -> dict:
    return {"gamma": np.ones(dim, F32), "beta": np.zeros(dim, F32)}


# --- layers, as graphc computes them ---

def _dense(p: dict, x):
    return x @ p["W"] + p["b"]


def _dropout(key, x, p: float = 0.1):
    """graphc.nn.Dropout in training: keep where u >= p, scaled by 1 / (1 - p)."""
    return jnp.where(jax.random.uniform(key, x.shape, x.dtype) >= p, x * (1.0 / (1.0 - p)), 0.0)


def _layer_norm(p: dict, x, eps: float = 1e-5):
    d = x - x.mean(-1, keepdims=True)
    return d / jnp.sqrt((d * d).mean(-1, keepdims=True) + eps) * p["gamma"] + p["beta"]


def _conv2d(p: dict, x):
    """3x3, stride 1, padding 1, NCHW (graphc lowers it to im2col + one matmul; here XLA's convolution)."""
    y = jax.lax.conv_general_dilated(x, p["W"], (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + p["b"][:, None, None]


def _max_pool2(x):
    """graphc's max_pool2d with disjoint 2x2 windows: a reshape to windows, then a max."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))


def _xent(logits, y):
    """gc.softmax_cross_entropy with int labels: -mean(sum(one_hot(y) * log_softmax(logits)))."""
    return -jnp.mean(jnp.sum(jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype) * jax.nn.log_softmax(logits), -1))


# --- the four models: init(rng, vocab) -> params; forward(params, x, key=None) -> logits (key: training) ---

def _mlp_init(rng, vocab, **_):
    return {"fc1": _linear(rng, 64, 128, he=True), "fc2": _linear(rng, 128, 10)}


def _mlp(p, x, key=None):
    h = jax.nn.relu(_dense(p["fc1"], x))
    return _dense(p["fc2"], h if key is None else _dropout(key, h))


def _cnn_init(rng, vocab, **_):
    return {"conv1": _conv(rng, 1, 16), "conv2": _conv(rng, 16, 32), "fc": _linear(rng, 32 * 4, 10)}


def _cnn(p, x, key=None):
    h = _max_pool2(jax.nn.relu(_conv2d(p["conv1"], x)))  # (N, 16, 4, 4)
    h = _max_pool2(jax.nn.relu(_conv2d(p["conv2"], h)))  # (N, 32, 2, 2)
    h = h.reshape(h.shape[0], -1)
    return _dense(p["fc"], h if key is None else _dropout(key, h))


DIM, HEADS, CONTEXT = 64, 4, 32


def _block_init(rng) -> dict:
    return {"ln1": _ln(DIM), "qkv": _linear(rng, DIM, 3 * DIM), "out": _linear(rng, DIM, DIM), "ln2": _ln(DIM),
            "fc1": _linear(rng, DIM, 4 * DIM, he=True), "fc2": _linear(rng, 4 * DIM, DIM)}


def _tfm_init(rng, vocab, layers: int = 4, **_):
    """The blocks' params stacked along a leading axis (layers, ...), as ``gc.nn.Stack`` holds them."""
    emb, pos = _normal(rng, (vocab, DIM), 0.1), _normal(rng, (CONTEXT, DIM), 0.1)
    blocks = [_block_init(rng) for _ in range(layers)]
    return {"emb": emb, "pos": pos, "blocks": jax.tree.map(lambda *a: np.stack(a), *blocks), "ln": _ln(DIM),
            "head": _linear(rng, DIM, vocab)}


def _attention(p, x):
    """graphc.nn.MultiHeadAttention, causal: scores scaled by 1/sqrt(dh), the future set to -1e9."""
    n, t, d = x.shape
    dh = d // HEADS
    q, k, v = _dense(p["qkv"], x).reshape(n, t, 3, HEADS, dh).transpose(2, 0, 3, 1, 4)  # each (N, H, T, dh)
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(dh))
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -1e9)
    y = jax.nn.softmax(scores, -1) @ v
    return _dense(p["out"], y.transpose(0, 2, 1, 3).reshape(n, t, d))


def _block(b, h, key=None):
    """One pre-norm block: attention and a ReLU MLP, dropout 0.1 on each residual branch (with a key)."""
    keys = (None, None) if key is None else jax.random.split(key)
    drop = lambda k, h: h if k is None else _dropout(k, h)
    h = h + drop(keys[0], _attention(b, _layer_norm(b["ln1"], h)))
    return h + drop(keys[1], _dense(b["fc2"], jax.nn.relu(_dense(b["fc1"], _layer_norm(b["ln2"], h)))))


def _tfm(p, x, key=None):
    """Embedding + position embedding, the blocks as one lax.scan over their stacked params (as gc.nn.Stack;
    in training each layer draws its own dropout masks), final layer norm, head."""
    h = p["emb"][x] + p["pos"][: x.shape[1]]
    if key is None:
        h, _ = jax.lax.scan(lambda h, b: (_block(b, h), None), h, p["blocks"])
    else:
        keys = jax.random.split(key, jax.tree.leaves(p["blocks"])[0].shape[0])
        h, _ = jax.lax.scan(lambda h, bk: (_block(bk[0], h, bk[1]), None), h, (p["blocks"], keys))
    return _dense(p["head"], _layer_norm(p["ln"], h))


HIDDEN, UNROLL, STREAMS = 128, 64, 32
GATES = {"rnn": 1, "lstm": 4}


def _rnn_init(rng, vocab, cell: str = "lstm", **_):
    """A cell without input weights: the embedding has the width of its gates (``LSTM(None, 128)``);
    recurrent weights orthogonal per gate."""
    g = GATES[cell]
    U = np.concatenate([np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))[0] for _ in range(g)], 1).astype(F32)
    return {"U": U, "emb": _normal(rng, (vocab, g * HIDDEN), 0.1), "head": _linear(rng, HIDDEN, vocab)}


def _cell(cell: str, p, state, xp):
    """graphc.nn.RNN's or LSTM's step on a projected input: (the next state, h)."""
    if cell == "rnn":
        h = jnp.tanh(xp + state @ p["U"])
        return h, h
    h, c = state
    i, f, g, o = jnp.split(xp + h @ p["U"], 4, -1)  # torch's gate order
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def _rnn_loss(cell: str):
    def loss(p, state, x, y):
        """lax.scan over the characters from the carried state: (loss, the final state)."""
        xs = p["emb"][x].swapaxes(0, 1)  # (unroll, streams, gates * hidden)
        state, hs = jax.lax.scan(lambda s, xp: _cell(cell, p, s, xp), state, xs)
        return _xent(_dense(p["head"], hs.swapaxes(0, 1)), y), state
    return loss


def _rnn_sample(cell: str):
    def sample(p, state, c):
        """The example's one-character step: (logits (1, vocab), the next state)."""
        state, h = _cell(cell, p, state, p["emb"][c])
        return _dense(p["head"], h), state
    return sample


# --- optimizer: torch-style Adam / AdamW, as graphc.optim ---

def _adam(params, grads, opt, lr, wd: float = 0.0, clip: float | None = None, b1=0.9, b2=0.999, eps=1e-8):
    """graphc.optim.Adam (AdamW with wd: decoupled decay p *= 1 - lr wd), optional clipping by global norm."""
    t, m, v = opt
    if clip is not None:
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
        coef = jnp.minimum(clip / (norm + 1e-6), 1.0)
        grads = jax.tree.map(lambda g: g * coef, grads)
    m = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), m, grads)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
    tf = (t + 1).astype(jnp.float32)
    step_size, bc2_sqrt = lr / (1 - b1 ** tf), jnp.sqrt(1 - b2 ** tf)
    decay = (lambda p: p * (1 - lr * wd)) if wd else (lambda p: p)
    params = jax.tree.map(lambda p, m, v: decay(p) - step_size * (m / (jnp.sqrt(v) / bc2_sqrt + eps)), params, m, v)
    return params, (t + 1, m, v)


def _adam_init(params):
    """(step count, first moments, second moments), zeros."""
    return jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params)


# --- per model: init, loss (params, carry, x, y) -> (loss, carry), predict, optimizer, lr, example inputs ---

def _classifier_loss(forward):
    def loss(p, key, x, y):
        key, sub = jax.random.split(key)
        return _xent(forward(p, x, sub), y), key
    return loss


# name -> cell -> (init, predict (the forward pass; the RNN's sampling step), loss, optimizer options, lr, whether lr is
# an argument of the step (the examples that make lr a graphc param, for their schedules) rather than a constant)
MODELS = {
    "mlp": lambda cell: (_mlp_init, _mlp, _classifier_loss(_mlp), {}, 2e-3, False),
    "cnn": lambda cell: (_cnn_init, _cnn, _classifier_loss(_cnn), {}, 3e-3, True),
    "tfm": lambda cell: (_tfm_init, _tfm, _classifier_loss(_tfm), {"wd": 0.01}, 3e-3, True),
    "rnn": lambda cell: (_rnn_init, _rnn_sample(cell), _rnn_loss(cell), {"clip": 1.0}, 3e-3, False),
}


def build(name: str, batch: int = 64, vocab: int = 96, layers: int = 4, cell: str = "lstm", unroll: int = UNROLL):
    """(step, predict, step_args, predict_args): plain (un-jitted) functions and example arguments. ``layers``:
    the transformer's blocks; ``cell`` ("lstm" or "rnn") and ``unroll``: the char-level model's."""
    init, predict, loss_fn, opt_kw, lr, lr_arg = MODELS[name](cell)
    rng = np.random.default_rng(0)
    params = jax.tree.map(jnp.asarray, init(rng, vocab, layers=layers, cell=cell))
    opt = _adam_init(params)

    def step(params, opt, carry, x, y, *lr_args):
        (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, carry, x, y)
        params, opt = _adam(params, grads, opt, lr_args[0] if lr_args else lr, **opt_kw)
        return params, opt, carry, loss

    lr_args = (jnp.float32(lr),) if lr_arg else ()
    if name == "rnn":  # (streams, unroll) characters; the batch is the example's 32 streams
        x, y = (jnp.asarray(rng.integers(0, vocab, (STREAMS, unroll)), jnp.int32) for _ in range(2))
        zeros = lambda n: jnp.zeros((n, HIDDEN), jnp.float32)
        state = lambda n: (zeros(n), zeros(n)) if cell == "lstm" else zeros(n)  # (h, c), or h
        sample_args = (params, state(1), jnp.zeros((1,), jnp.int32))  # state, character
        return step, predict, (params, opt, state(STREAMS), x, y), sample_args
    if name == "tfm":
        x, y = (jnp.asarray(rng.integers(0, vocab, (batch, CONTEXT)), jnp.int32) for _ in range(2))
    else:
        x = jnp.asarray(rng.standard_normal((batch, 64) if name == "mlp" else (batch, 1, 8, 8)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    return step, predict, (params, opt, jax.random.key(0), x, y, *lr_args), (params, x)


def compile_time(name: str, batch: int = 64, vocab: int = 96, **sizes) -> dict:
    """Build the JAX step (loss, grads, optimizer update, returns new params/state and loss) and the predict
    function for model `name` (``sizes``: ``build``'s layers, cell, unroll), then time
    jax.jit(...).lower(*example_args).compile() for both.
    Returns {"model": name, "phase": "jax", "compile_s": step+predict compile seconds, "step_compile_s": ...,
    "predict_compile_s": ..., "first_call_s": seconds of the first call of the compiled step, "step_ms": median ms
    of 50 further steps, "loss": the last step's loss (checked finite; the steps repeat one batch)}."""
    step, predict, step_args, predict_args = build(name, batch, vocab, **sizes)
    jax.block_until_ready((step_args, predict_args))
    t = time.perf_counter()
    step_c = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*step_args).compile()
    t_step = time.perf_counter() - t
    t = time.perf_counter()
    predict_c = jax.jit(predict).lower(*predict_args).compile()
    t_predict = time.perf_counter() - t
    jax.block_until_ready(predict_c(*predict_args))  # before the step donates the params
    state, rest = step_args[:3], step_args[3:]
    t = time.perf_counter()
    *state, loss = step_c(*state, *rest)
    loss.block_until_ready()
    t_first = time.perf_counter() - t
    first_loss = float(loss)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        *state, loss = step_c(*state, *rest)
        loss.block_until_ready()
        times.append(time.perf_counter() - t)
    if not np.isfinite([first_loss, float(loss)]).all():
        raise FloatingPointError(f"{name}: losses {first_loss}, {float(loss)}")
    return {"model": name, "phase": "jax", "compile_s": t_step + t_predict, "step_compile_s": t_step,
            "predict_compile_s": t_predict, "first_call_s": t_first, "step_ms": statistics.median(times) * 1e3,
            "loss": float(loss)}
