"""ONNX interop. ``gc.to_onnx``: every model passes onnx's full checker and runs in onnxruntime with the
outputs of graphc's numpy target (the example MLP, CNN and transformer: training loss with dropout,
logits and the gradient of every param, at two batch sizes; the op table one op family at a time).
``gc.from_onnx``: torch exports give torch's outputs and train; hand-built graphs give onnxruntime's
outputs; graphc models come back unchanged; unsupported ops are named either way."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc

onnx = pytest.importorskip("onnx", reason="ONNX interop needs onnx: pip install 'graphc[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX interop tests run models in onnxruntime: pip install 'graphc[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    pytest.importorskip("sklearn", reason="the examples load scikit-learn's digits")
    spec = importlib.util.spec_from_file_location(f"onnx_example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _export_and_compare(outs, ins, feeds_list, path=None, rtol=1e-5, atol=1e-6, **kw):
    """Export, check fully, and compare onnxruntime with graphc's numpy target on each feed."""
    model = gc.to_onnx(outs, ins, path, **kw)
    onnx.checker.check_model(model, full_check=True)
    sess = _session(model)
    f = gc.function(ins, outs, target="numpy")
    for feeds in feeds_list:
        got = sess.run(None, {x.name: a for x, a in zip(ins, feeds)})
        want = f(*feeds)
        for k, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {k} ({sess.get_outputs()[k].name})")
    return model


def _dims(vi) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# --- export: the examples ----------------------------------------------------------------------------
EXAMPLE_MODELS = {
    "mlp": ("mlp_digits", dict(hidden=16), lambda b: [f32(b, 64), rng.integers(0, 10, b)]),
    "cnn": ("cnn_digits", dict(channels=(4, 8)), lambda b: [f32(b, 1, 8, 8), rng.integers(0, 10, b)]),
    "transformer": ("tiny_transformer", dict(vocab=20, dim=16, heads=2, layers=2, context=8),
                    lambda b: [rng.integers(0, 20, (b, 8)), rng.integers(0, 20, (b, 8))]),
}


@pytest.mark.parametrize("name", EXAMPLE_MODELS)
def test_export_example_loss_logits_and_gradients(name, tmp_path):
    module, kw, feeds = EXAMPLE_MODELS[name]
    m = _example(module).build(**kw)
    params = [p for p in m.model.params() if p.dtype.kind == "f"]
    grads = gc.grad(m.loss, params)
    path = tmp_path / f"{name}.onnx"
    _export_and_compare([m.loss, m.logits, *grads], m.inputs, [feeds(3), feeds(5)], path, rtol=2e-4, atol=1e-5)
    model = onnx.load(path)  # what was written is what was checked
    onnx.checker.check_model(model, full_check=True)
    assert [_dims(i)[0] for i in model.graph.input] == ["batch", "batch"]
    assert [o.name for o in model.graph.output][2:] == [f"grad_{p.name}" for p in params]
    assert {p.name for p in m.model.params()} <= {t.name for t in model.graph.initializer}
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in model.graph.output)
    if name == "transformer":  # nn.Stack's scan (and its gradient's) are ONNX Scans; reshapes name product dims
        assert sum(n.op_type == "Scan" for n in model.graph.node) >= 2
        assert any("*batch" in str(d) for vi in model.graph.value_info for d in _dims(vi))


def test_export_as_built_without_passes():
    m = _example("cnn_digits").build(channels=(2, 4))
    outs = [m.loss, *gc.grad(m.loss, m.model.params()[:2])]
    feeds = [[f32(b, 1, 8, 8), rng.integers(0, 10, b)] for b in (2, 4)]
    _export_and_compare(outs, m.inputs, feeds, optimize=False, rtol=2e-4, atol=1e-5)


# --- export: the op table ----------------------------------------------------------------------------
def test_export_elementwise_table():
    x = gc.input("x", ("batch", 6))
    unary = ["exp", "log", "log1p", "tanh", "sigmoid", "softplus", "sqrt", "abs", "sign", "relu", "sin", "cos", "tan", "arcsin",
             "arccos", "arctan", "sinh", "cosh", "arcsinh", "arctanh", "erf", "erfc", "expm1", "exp2", "log2", "log10", "floor",
             "ceil", "trunc", "round", "stop_gradient", "gelu", "silu", "reciprocal", "rsqrt", "softsign"]
    outs = [getattr(gc, u)(x) for u in unary] + [
        gc.arccosh(x + 1.5), -x, gc.logical_not(x > 0.5), x ** 1.7, gc.maximum(x, 0.5), gc.minimum(x, 0.5),
        gc.floor_divide(x * 10 - 5, 3.0), gc.remainder(x * 10 - 5, 3.0), gc.logical_and(x > 0.3, x < 0.6),
        gc.logical_or(x > 0.7, x < 0.2), x != 0.5, x == 0.5, x <= 0.5, gc.where(x > 0.5, x, gc.cast(x * 3, "float64")),
        gc.cast(x * 10, "int32"), gc.clip(x, 0.2, 0.7), gc.leaky_relu(x - 0.5), gc.elu(x - 0.5), gc.hardtanh(x * 3)]
    _export_and_compare(outs, [x], [[rng.uniform(0.1, 0.9, (b, 6)).astype(np.float32)] for b in (2, 5)], rtol=2e-5)
    i = gc.input("i", ("batch", 6), "int64")
    outs = [gc.floor_divide(i, 3), gc.remainder(i, 3), gc.floor_divide(i, -4), gc.remainder(i, -4), -i, gc.abs(i), i * 2 + 1,
            gc.maximum(i, 0), gc.logical_not(i), gc.cast(i, "float32") / 3, gc.any(i > 5, 1), gc.all(i > -5, 0)]
    _export_and_compare(outs, [i], [[rng.integers(-9, 9, (b, 6))] for b in (2, 5)])


def test_export_reductions_gathers_and_rearrangements():
    x = gc.input("x", ("batch", 5, 4))
    i = gc.input("i", ("batch", 3), "int64")
    order = gc.argsort(x, 1)
    outs = [gc.sum(x, 1), gc.max(x, (0, 2), keepdims=True), gc.min(x), gc.prod(x, 2), gc.mean(x), gc.var(x, (0, 2)), gc.std(x, 1),
            gc.argmax(x, 1), gc.argmin(x, 2), gc.logsumexp(x, 2), gc.softmax(x, 1), gc.log_softmax(x),
            gc.cumsum(x, 1), gc.cumsum(x, 2, reverse=True), gc.cumsum(x, 0, exclusive=True), gc.cumprod(x, 1),
            gc.cumprod(x, 2, reverse=True, exclusive=True), gc.logcumsumexp(x, 1), gc.logcumsumexp(x, 0, reverse=True),
            order, gc.sort(x, 2, descending=True)[0], gc.topk(x, 2, 1)[0], gc.take_along_axis(x, order, 1),
            gc.scatter_add(x, order, x * 2, 1), gc.take(x, i, 1), x[:, ::2, 1:], x[:, [0, 2, 2]], gc.pick(x[:, :3, :], i),
            gc.one_hot(i, 4), gc.einsum("bij,bkj->bik", x, x), x @ gc.transpose(x, (0, 2, 1)), gc.flip(x, 1), gc.roll(x, 2, 1),
            gc.tril(x), gc.repeat(x, 2, 1), gc.tile(x, (1, 2, 1)), gc.stack([x, x], 1), gc.concatenate([x, x * 2], 2),
            gc.pad(x, ((0, 0), (1, 2), (2, 1)), mode="reflect"), gc.pad(x, ((0, 0), (1, 2), (0, 0)), mode="circular"),
            gc.pad(x, ((0, 0), (1, 1), (3, 1)), value=2.5), gc.iota(x.shape, 0, "float32") + x, gc.reshape(x, (-1,)),
            gc.broadcast_to(gc.constant(1.0), ("batch", 3))]
    ties = np.round(rng.standard_normal((3, 5, 4))).astype(np.float32)  # argsort is stable, as TopK
    feeds = [[f32(2, 5, 4), rng.integers(0, 3, (2, 3))], [ties, rng.integers(0, 3, (3, 3))]]
    _export_and_compare(outs, [x, i], feeds, rtol=1e-4, atol=1e-5)


def test_export_conv_pool_resize_and_their_gradients():
    x = gc.input("x", ("batch", 4, 9, 9))
    w = gc.param("w", f32(6, 2, 3, 3))
    wt = gc.param("wt", f32(4, 3, 3, 3))
    outs = [gc.conv2d(x, w, stride=2, padding=1, groups=2), gc.conv2d(x, w, dilation=2, groups=2),
            gc.conv_transpose2d(x, wt, stride=2, padding=1, output_padding=1), gc.max_pool2d(x, 3, 2, padding=1),
            gc.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False), gc.interpolate(x, scale_factor=2, mode="bilinear"),
            gc.interpolate(x, size=(5, 7))]
    loss = sum(gc.sum(o * o) for o in outs)
    _export_and_compare(outs + [loss, *gc.grad(loss, [w, wt])], [x], [[f32(b, 4, 9, 9)] for b in (1, 2)], rtol=1e-4, atol=1e-4)


def test_export_scans_and_random_numbers():
    x = gc.input("x", ("batch", "t", 3))
    W = gc.param("W", f32(3, 4) * 0.5)
    gru = gc.nn.GRU(3, 4, rng=1)
    hs = gru(x)
    c, ys = gc.scan(lambda c, _: (c * 0.9 + 1, c), gc.sum(x, 2), length=4)  # no xs: ONNX Scan gets a dummy
    c2, ys2 = gc.scan(lambda c, xt: (c + xt @ W, gc.tanh(c)), gc.sum(x, 1) @ W, gc.transpose(x, (1, 0, 2)), reverse=True)
    key = gc.param("key", np.int64(-7))
    u = gc.random_uniform(key, ("batch", 2, "t"), salt=5)  # bit for bit: the same uint64 hash
    loss = gc.sum(hs * hs) + gc.sum(ys2) + gc.sum(c2) + gc.sum(u * gc.sum(x, 2)[:, None, :])
    outs = [hs, c, ys, c2, ys2, u, gc.random_uniform(key * 3 + 1, (), salt=2, dtype="float64"), gc.iota(("t", "batch"), 0),
            loss, *gc.grad(loss, [W, *gru.params()])]
    _export_and_compare(outs, [x], [[f32(b, t, 3)] for b, t in ((2, 3), (3, 5))], rtol=1e-4, atol=1e-5)


def test_export_names_sources_and_duplicates():
    x = gc.input("x", ("batch", 3))
    W = gc.param("W", f32(3, 2))
    y = x @ W
    model = _export_and_compare([y, x, W, y], [x], [[f32(2, 3)]], output_names=["y", "x_out", "W_out", "y_again"])
    assert [o.name for o in model.graph.output] == ["y", "x_out", "W_out", "y_again"]
    assert [t.name for t in model.graph.initializer] == ["W"]
    assert gc.to_onnx(y, x, None).graph.output[0].name == "output0"


def test_export_errors():
    x = gc.input("x", ("batch", 3))
    y = gc.input("y", ("batch",))
    with pytest.raises(gc.GraphcError, match=r"op 'allreduce' has no ONNX mapping \(test_onnx.py:\d+\)"):
        gc.to_onnx(gc.allreduce(x), [x], None)
    with pytest.raises(gc.GraphcError, match="reads input 'y'.*not among the inputs"):
        gc.to_onnx(x + y[:, None], [x], None)
    with pytest.raises(gc.GraphcError, match="opset 12 is not supported"):
        gc.to_onnx(x, [x], None, opset=12)
    with pytest.raises(gc.GraphcError, match=r"random_uniform \(test_onnx.py:\d+\) needs opset 18"):
        gc.to_onnx(gc.random_uniform(gc.param("k", np.int64(0)), (2,)), [x], None, opset=17)
    with pytest.raises(gc.GraphcError, match="symbolic dim 'n' is not a dim of any input"):
        gc.to_onnx(gc.iota(("n",), 0), [x], None)


def test_missing_onnx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    x = gc.input("x", (2,))
    with pytest.raises(gc.GraphcError, match=r"pip install 'graphc\[onnx\]'"):
        gc.to_onnx(x, [x], None)
    with pytest.raises(gc.GraphcError, match=r"pip install 'graphc\[onnx\]'"):
        gc.from_onnx("model.onnx")


# --- import: torch exports ------------------------------------------------------------------------------
def _torch_models():
    torch = pytest.importorskip("torch")

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 3)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4 * 3 * 3, 3)

        def forward(self, x):
            y = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(y.view(y.size(0), -1))  # Shape -> Gather -> Unsqueeze -> Concat -> Reshape
    return torch, {"mlp": (MLP, (8,)), "cnn": (CNN, (1, 8, 8))}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_torch_export_loads_matches_and_trains(name, tmp_path):
    torch, models = _torch_models()
    cls, shape = models[name]
    torch.manual_seed(0)
    net = cls().eval()
    path = tmp_path / f"{name}.onnx"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; the new one needs onnxscript
        torch.onnx.export(net, (torch.randn(2, *shape),), str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    (x,), params, (logits,) = gc.from_onnx(path)
    assert x.shape == ("batch", *shape)
    assert len(params) == 4 and all(p.dtype == np.float32 for p in params)
    if name == "mlp":
        assert [p.name for p in params] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    f = gc.function([x], logits)
    for b in (3, 6):
        xv = f32(b, *shape)
        np.testing.assert_allclose(f(xv), net(torch.from_numpy(xv)).detach().numpy(), rtol=1e-5, atol=1e-5)
    y = gc.input("y", ("batch",), "int64")
    loss = gc.softmax_cross_entropy(logits, y)
    step = gc.function([x, y], loss, updates=gc.optim.Adam(params, lr=1e-2).updates(loss))
    xv, yv = f32(16, *shape), rng.integers(0, 3, 16)
    losses = [float(step(xv, yv)) for _ in range(8)]
    assert losses[-1] < losses[0] - 0.05, losses


# --- import: hand-built graphs against onnxruntime ------------------------------------------------------------
class G:
    """A small ONNX graph builder: ``g.op("Relu", x)`` returns its output's name."""

    def __init__(self, opset: int = 18):
        self.nodes, self.inits, self.inputs, self.opset, self.k = [], [], [], opset, 0

    def input(self, name, dtype, shape):
        self.inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
        return name

    def const(self, value, init: bool = False):
        """A Constant node, or (``init``) an initializer: a weight."""
        arr = np.asarray(value)
        if init:
            self.k += 1
            self.inits.append(numpy_helper.from_array(arr, f"w{self.k}"))
            return f"w{self.k}"
        return self.op("Constant", value=numpy_helper.from_array(arr))

    def ints(self, *values):
        return self.const(np.array(values, np.int64))

    def op(self, op_type, *inputs, outputs: int = 1, **attrs):
        self.k += 1
        outs = [f"{op_type.lower()}{self.k}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"n{self.k}", **attrs))
        return outs[0] if outputs == 1 else outs

    def model(self, *outs):
        outputs = [helper.make_empty_tensor_value_info(o) for o in outs]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outputs, self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=8)


def _import_and_compare(model, feeds_list, rtol=1e-5, atol=1e-5):
    sess = _session(model)
    ins, params, outs = gc.from_onnx(model)
    f = gc.function(ins, outs)
    for feeds in feeds_list:
        want = sess.run(None, {x.name: v for x, v in zip(ins, feeds)})
        for k, (g, w) in enumerate(zip(f(*feeds), want)):
            assert g.shape == w.shape and g.dtype == w.dtype, (k, g.shape, w.shape, g.dtype, w.dtype)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {k}")
    return ins, params, outs


def test_import_elementwise_and_activations():
    g = G(20)
    x, one = g.input("x", np.float32, ["N", 6]), g.const(np.float32(1))
    ab, ten = g.op("Abs", x), g.const(np.float32(10))
    ints = g.op("Cast", g.op("Mul", x, ten), to=TensorProto.INT64)
    outs = [g.op(t, x) for t in ("Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Sin", "Floor", "Ceil", "Round", "Sign", "Softplus",
                                 "Softsign", "HardSwish", "Selu", "Elu", "HardSigmoid", "IsNaN", "Identity", "Gelu")]
    outs += [g.op("Log", g.op("Add", ab, one)), g.op("Sqrt", ab), g.op("Softmax", x, axis=1), g.op("LogSoftmax", x),
             g.op("LeakyRelu", x, alpha=0.2), g.op("Clip", x, g.op("Neg", one), one), g.op("Gelu", x, approximate="tanh"),
             g.op("Where", g.op("Greater", x, one), g.op("Pow", ab, g.const(np.float32(1.5))), g.op("Div", x, ab)),
             g.op("Mean", g.op("Max", x, one, ab), g.op("Min", x, ab)), g.op("Sum", x, ab, one), g.op("Sub", x, one),
             g.op("Or", g.op("Not", g.op("Less", x, one)), g.op("And", g.op("Equal", x, ab), g.op("LessOrEqual", x, one))),
             g.op("Xor", g.op("Less", x, one), g.op("GreaterOrEqual", ab, one)), g.op("Cast", ints, to=TensorProto.FLOAT),
             g.op("Mod", ints, g.const(np.int64(3))), g.op("Mod", x, g.const(np.float32(0.3)), fmod=1),
             g.op("Div", ints, g.ints(3)), g.op("Reciprocal", g.op("Add", ab, one)),
             g.op("PRelu", x, g.const(np.float32([.1, .2, .3, .4, .5, .6]), init=True))]
    _import_and_compare(g.model(*outs), [[f32(2, 6)], [f32(5, 6)]])


def test_import_shapes_gathers_and_shape_arithmetic():
    g = G(18)
    x, idx = g.input("x", np.float32, ["batch", 3, 4]), g.input("idx", np.int64, ["batch", 2])
    shape = g.op("Shape", x)
    batch = g.op("Gather", shape, g.const(np.int64(0)), axis=0)
    flat = g.op("Concat", g.op("Unsqueeze", batch, g.ints(0)), g.ints(-1), axis=0)  # (batch, -1), as torch's view
    first, rest = g.op("Split", x, g.ints(1, 2), axis=1, outputs=2)
    half = numpy_helper.from_array(np.float32([.5]))
    steps = g.op("Cast", g.op("Range", *(g.const(np.int64(v)) for v in (0, 4, 1))), to=TensorProto.FLOAT)
    where = g.op("Expand", g.op("Unsqueeze", idx, g.ints(2)), g.ints(1, 1, 4))
    outs = [g.op("Reshape", x, flat), g.op("Reshape", x, g.ints(0, 2, -1)), g.op("Transpose", x, perm=[2, 1, 0]),
            g.op("Flatten", x, axis=2),
            g.op("Gather", g.op("Slice", x, g.ints(2), g.ints(0), g.ints(1), g.ints(-1)), g.ints(-1, 1), axis=2),
            g.op("Slice", x, g.ints(-1), g.ints(-100), g.ints(2), g.ints(-1)), g.op("Add", rest, first),
            g.op("ReduceMean", x, g.ints(-1), keepdims=0), g.op("ReduceMax", x, g.ints(1)), g.op("ReduceSum", x),
            g.op("Squeeze", g.op("Unsqueeze", x, g.ints(1)), g.ints(1)),
            g.op("Expand", g.op("Unsqueeze", x, g.ints(1)), g.ints(1, 2, 1, 1)),
            g.op("Pad", x, g.ints(0, 1, 1, 0, 1, 1), mode="reflect"),
            g.op("Pad", x, g.ints(0, 2, 0, 0, 1, 3), g.const(np.float32(2))), g.op("Tile", x, g.ints(1, 1, 2)),
            g.op("Add", x, g.op("ConstantOfShape", shape, value=half)),
            g.op("Dropout", g.op("CumSum", x, g.const(np.int64(1)), reverse=1)),
            g.op("Add", x, steps), g.op("Gather", x, idx, axis=1), g.op("GatherElements", x, where, axis=1),
            g.op("ArgMax", x, axis=2), g.op("ArgMin", x, axis=1, keepdims=0), g.op("TopK", x, g.ints(2), axis=2, outputs=2)[0],
            g.op("Einsum", x, x, equation="bij,bkj->bik"), g.op("Trilu", x, upper=0), g.op("Size", x),
            g.op("OneHot", idx, g.const(np.int64(5)), g.const(np.float32([-1, 2])))]
    _import_and_compare(g.model(*outs), [[f32(2, 3, 4), rng.integers(0, 3, (2, 2))], [f32(3, 3, 4), rng.integers(0, 3, (3, 2))]])


def test_import_conv_pool_norm_and_gemm_are_differentiable():
    g = G(18)
    x, x1 = g.input("x", np.float32, ["batch", 4, 9, 9]), g.input("x1", np.float32, ["batch", 4, 11])
    w = lambda *s: g.const(f32(*s) * 0.3, init=True)
    stats = [g.const(v.astype(np.float32), init=True) for v in (rng.uniform(.5, 2, 6), f32(6), f32(6), rng.uniform(.5, 2, 6))]
    y = g.op("Conv", x, w(6, 2, 3, 3), w(6), group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2])
    pooled = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    outs = [y, g.op("BatchNormalization", y, *stats, epsilon=1e-3), g.op("Conv", x, w(5, 4, 3, 3), auto_pad="SAME_UPPER"),
            g.op("ConvTranspose", x, w(4, 3, 3, 3), w(3), strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
            g.op("MaxPool", x, **pooled), g.op("MaxPool", x, kernel_shape=[2, 3], pads=[0, 1, 1, 0]),
            g.op("AveragePool", x, **pooled),
            g.op("AveragePool", x, **pooled, count_include_pad=1, ceil_mode=1), g.op("GlobalAveragePool", x),
            g.op("GlobalMaxPool", x),
            g.op("Conv", x1, w(5, 4, 3), strides=[2], pads=[1, 1]), g.op("MaxPool", x1, kernel_shape=[2], strides=[2]),
            g.op("InstanceNormalization", x, w(4), w(4)), g.op("LayerNormalization", x, w(9), w(9), axis=-2),
            g.op("MatMul", x, w(9, 2)),
            g.op("Gemm", g.op("Flatten", x), w(3, 4 * 81), w(3), transB=1, alpha=0.5, beta=2.0)]
    ins, params, outs = _import_and_compare(g.model(*outs), [[f32(2, 4, 9, 9), f32(2, 4, 11)], [f32(1, 4, 9, 9), f32(1, 4, 11)]],
                                            rtol=1e-4, atol=1e-4)
    loss = sum(gc.mean(o * o) for o in outs)
    grads = gc.function(ins, gc.grad(loss, params))(f32(2, 4, 9, 9), f32(2, 4, 11))
    assert len(params) == len(g.inits) and all(np.isfinite(d).all() and d.any() for d in grads)


def test_import_inputs_params_and_dim_names():
    g = G()
    x = g.input("x", np.float32, [None, "seq len", 3])  # an unnamed dim and a name that is no identifier
    w = g.const(f32(3, 2), init=True)
    g.inputs.append(helper.make_tensor_value_info(w, TensorProto.FLOAT, [3, 2]))  # an initializer that is also an input
    table = g.const(np.array([1, 0], np.int64), init=True)  # integers: indices, not weights
    model = g.model(g.op("Gather", g.op("MatMul", x, w), table, axis=2))
    (xin,), params, (out,) = gc.from_onnx(model)
    assert xin.name == "x" and xin.shape == ("x_0", "seq_len", 3)
    assert [p.name for p in params] == [w] and out.shape == ("x_0", "seq_len", 2)
    xv = f32(2, 4, 3)
    np.testing.assert_allclose(gc.function([xin], out)(xv), (xv @ params[0].value)[..., [1, 0]], rtol=1e-6)


# --- round trips and errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXAMPLE_MODELS)
def test_graphc_model_round_trip(name, tmp_path):
    module, kw, feeds = EXAMPLE_MODELS[name]
    m = _example(module).build(**kw)
    gc.to_onnx(m.logits, [m.x], tmp_path / "model.onnx")
    (x,), params, (logits,) = gc.from_onnx(tmp_path / "model.onnx")
    assert x.shape == m.x.shape and x.dtype == m.x.dtype and logits.shape == m.logits.shape
    floats = [p for p in m.model.params() if p.dtype.kind == "f"]
    assert [p.name for p in params] == [p.name for p in floats]  # float constants are Constant nodes, not weights
    for p, q in zip(params, floats):
        np.testing.assert_array_equal(p.value, q.value)
    before, after = gc.function([m.x], m.logits), gc.function([x], logits)
    for b in (2, 4):
        xv = feeds(b)[0]
        np.testing.assert_allclose(after(xv), before(xv), rtol=1e-5, atol=1e-6)


def test_import_unsupported_ops_are_named():
    g = G()
    x = g.input("x", np.float32, ["n", 3, 3])
    with pytest.raises(gc.GraphcError, match=r"ONNX op 'Det' \(Det node 'n1'\) is not supported"):
        gc.from_onnx(g.model(g.op("Det", x)))
    g = G()
    x = g.input("x", np.float32, ["n", 3])
    g.nodes.append(helper.make_node("FusedGemm", [x, x], ["y"], name="fused", domain="com.microsoft"))
    with pytest.raises(gc.GraphcError, match=r"'FusedGemm' of domain 'com.microsoft' \(FusedGemm node 'fused'\)"):
        gc.from_onnx(g.model("y"))
    g = G()
    x = g.input("x", np.float32, ["n", 1, 4, 4])
    _, indices = g.op("MaxPool", x, kernel_shape=[2, 2], outputs=2)
    with pytest.raises(gc.GraphcError, match="extra output of MaxPool"):
        gc.from_onnx(g.model(indices))
