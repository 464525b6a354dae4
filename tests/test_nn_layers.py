"""graphc.nn's image layers beyond the basic ones: Conv2D with dilation and groups (depthwise),
ConvTranspose2D, Upsample, and MaxPool2D/AvgPool2D with padding and ceil_mode. Gradients to
second order (float64), forward against PyTorch's layers where installed, params and names,
errors, and a small encoder-decoder training step on the CPU backend against the reference."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn

RNG = np.random.default_rng(0)


def check_layer(layer, x, order=2):
    """check_grad of ``layer`` with respect to its input and its params, in float64: the params
    are swapped for graph inputs while the check runs."""
    names = [k for k, v in vars(layer).items() if isinstance(v, gc.Node) and v.op.name == "param"]
    saved = {k: getattr(layer, k) for k in names}

    def fn(x, *ps):
        for k, p in zip(names, ps):
            setattr(layer, k, p)
        return layer(x)
    try:
        gc.check_grad(fn, [x, *(saved[k].value.astype(np.float64) for k in names)], order=order)
    finally:
        for k, p in saved.items():
            setattr(layer, k, p)


def image(*shape):
    """Distinct values: max pooling's gradient is defined."""
    return RNG.permutation(int(np.prod(shape))).reshape(shape) * 0.1 + RNG.uniform(-0.01, 0.01, shape)


LAYERS = [
    pytest.param(lambda: nn.Conv2D(4, 6, 3, padding=2, dilation=2, groups=2, rng=0), (2, 4, 5, 5), id="conv_dilated_grouped"),
    pytest.param(lambda: nn.Conv2D(3, 3, 3, stride=2, padding=1, groups=3, rng=0), (2, 3, 5, 6), id="conv_depthwise"),
    pytest.param(lambda: nn.Conv2D(2, 4, (2, 3), groups=2, bias=False, rng=0), (1, 2, 4, 5), id="conv_no_bias"),
    pytest.param(lambda: nn.ConvTranspose2D(3, 2, 3, stride=2, padding=1, output_padding=1, rng=0), (2, 3, 3, 4),
                 id="conv_transpose"),
    pytest.param(lambda: nn.ConvTranspose2D(4, 2, 2, dilation=2, groups=2, bias=False, rng=0), (1, 4, 3, 3),
                 id="conv_transpose_grouped"),
    pytest.param(lambda: nn.MaxPool2D(3, 2, padding=1, ceil_mode=True), (2, 2, 5, 6), id="maxpool_pad_ceil"),
    pytest.param(lambda: nn.AvgPool2D(3, 2, padding=1, count_include_pad=False), (2, 2, 5, 6), id="avgpool_exclude_pad"),
    pytest.param(lambda: nn.AvgPool2D(2, ceil_mode=True, divisor_override=3), (1, 2, 5, 5), id="avgpool_divisor"),
    pytest.param(lambda: nn.Upsample(scale_factor=2), (1, 2, 3, 4), id="upsample_nearest"),
    pytest.param(lambda: nn.Upsample(size=(5, 7), mode="bilinear", align_corners=True), (1, 2, 3, 4), id="upsample_bilinear"),
]


@pytest.mark.parametrize("make, shape", LAYERS)
def test_layer_gradients(make, shape):
    check_layer(make(), image(*shape))


def test_params_shapes_and_names():
    conv = nn.Conv2D(8, 16, 3, groups=4, rng=0, name="enc")
    assert conv.W.shape == (16, 2, 3, 3) and conv.b.shape == (16,)
    assert [p.name for p in conv.params()] == ["enc.W", "enc.b"]
    dw = nn.Conv2D(16, 16, 3, groups=16, rng=0)
    assert dw.W.shape == (16, 1, 3, 3) and dw.name.startswith("conv")
    up = nn.ConvTranspose2D(16, 6, (3, 2), groups=2, rng=0)
    assert up.W.shape == (16, 3, 3, 2) and up.b.shape == (6,) and up.name.startswith("convtranspose")
    assert up.W.dtype == np.float32
    np.testing.assert_array_equal(nn.ConvTranspose2D(8, 6, 3, rng=1).W.value, nn.ConvTranspose2D(8, 6, 3, rng=1).W.value)
    # He-uniform over the fan-in PyTorch uses, OUT/groups*KH*KW for a transposed convolution
    big = nn.ConvTranspose2D(64, 128, 3, groups=2, rng=0).W.value
    np.testing.assert_allclose(big.std(), np.sqrt(2 / (64 * 9)), rtol=0.05)
    for layer in (nn.Upsample(scale_factor=2), nn.MaxPool2D(3, padding=1), nn.AvgPool2D(2)):
        assert layer.params() == [] and layer.state() == []
    x = gc.input("x", ("b", 8, 10, 10))
    assert nn.Sequential(conv, dw, up, nn.Upsample(scale_factor=2))(x).shape == ("b", 6, 16, 14)


@pytest.mark.parametrize("build, match", [
    (lambda: nn.Conv2D(6, 4, 3, groups=4), "not divisible by groups=4"),
    (lambda: nn.Conv2D(4, 6, 3, groups=4), "not divisible by groups=4"),
    (lambda: nn.ConvTranspose2D(4, 6, 3, groups=4), "not divisible by groups=4"),
])
def test_construction_errors(build, match):
    with pytest.raises(gc.ShapeError, match=match):
        build()


def test_call_errors():
    x = gc.input("x", ("b", 3, 8, 8))
    with pytest.raises(gc.ShapeError, match="output_padding"):
        nn.ConvTranspose2D(3, 3, 3, stride=1, output_padding=1)(x)
    with pytest.raises(gc.ShapeError, match="at most half"):
        nn.MaxPool2D(2, padding=2)(x)
    with pytest.raises(gc.ShapeError, match="exactly one"):
        nn.Upsample()(x)


def test_layers_match_torch():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    t = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    x = RNG.standard_normal((2, 4, 7, 6))
    xi = gc.input("x", x.shape, "float64")

    def run(layer):
        for k in ("W", "b"):
            p = getattr(layer, k, None)
            if p is not None:
                setattr(layer, k, gc.param(p.name, p.value.astype(np.float64)))
        return gc.function([xi], layer(xi))(x)

    def same_weights(ours, ref):
        with torch.no_grad():
            ref.weight.copy_(t(ours.W.value))
            if ours.b is not None:
                ref.bias.copy_(t(RNG.standard_normal(ours.b.shape)))
                ours.b.value = ref.bias.numpy().copy()
        return ref.double()

    cases = [
        (nn.Conv2D(4, 8, 3, stride=2, padding=2, dilation=2, groups=2, rng=1), tnn.Conv2d(4, 8, 3, 2, 2, 2, 2)),
        (nn.Conv2D(4, 4, 3, padding=1, groups=4, bias=False, rng=2), tnn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False)),
        (nn.ConvTranspose2D(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, rng=3),
         tnn.ConvTranspose2d(4, 6, 3, 2, 1, 1, groups=2)),
        (nn.ConvTranspose2D(4, 3, (2, 3), stride=(1, 3), dilation=(2, 1), rng=4),
         tnn.ConvTranspose2d(4, 3, (2, 3), (1, 3), dilation=(2, 1))),
    ]
    for ours, ref in cases:
        ref = same_weights(ours, ref)
        np.testing.assert_allclose(run(ours), ref(t(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, ref in [
        (nn.MaxPool2D(3, 2, padding=1, ceil_mode=True), tnn.MaxPool2d(3, 2, padding=1, ceil_mode=True)),
        (nn.AvgPool2D(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
         tnn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)),
        (nn.AvgPool2D((2, 3), (2, 4), padding=(1, 0)), tnn.AvgPool2d((2, 3), (2, 4), padding=(1, 0))),
        (nn.Upsample(scale_factor=2), tnn.Upsample(scale_factor=2)),
        (nn.Upsample(size=(9, 5), mode="bilinear"), tnn.Upsample(size=(9, 5), mode="bilinear")),
        (nn.Upsample(scale_factor=(1.5, 2), mode="bilinear", align_corners=True),
         tnn.Upsample(scale_factor=(1.5, 2), mode="bilinear", align_corners=True)),
    ]:
        np.testing.assert_allclose(run(ours), ref(t(x)).numpy(), rtol=1e-10, atol=1e-12)


# --- a small encoder-decoder on the CPU backend -----------------------------------------------------
def _autoencoder():
    """Depthwise-separable encoder (strided, dilated), pooled; decoder with a transposed convolution
    and bilinear upsampling; mean squared reconstruction error."""
    x = gc.input("x", ("batch", 2, 8, 8))
    model = nn.Sequential(
        nn.Conv2D(2, 2, 3, padding=1, groups=2, rng=0, name="dw"), nn.Conv2D(2, 4, 1, rng=1, name="pw"), gc.relu,
        nn.MaxPool2D(3, 2, padding=1),                                                      # (4, 4, 4)
        nn.Conv2D(4, 4, 3, padding=2, dilation=2, groups=2, rng=2, name="dil"), gc.tanh,
        nn.AvgPool2D(3, 2, padding=1, count_include_pad=False),                             # (4, 2, 2)
        nn.ConvTranspose2D(4, 3, 3, stride=2, padding=1, output_padding=1, rng=3, name="up"), gc.relu,  # (3, 4, 4)
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2D(3, 2, 1, rng=4, name="out"))  # (2, 8, 8)
    return x, gc.mse(model(x), x), model


def test_encoder_decoder_step_on_cpu_matches_reference():
    results = {}
    for target in ("numpy", "cpu"):
        x, loss, model = _autoencoder()
        f = gc.function([x], loss, updates=gc.optim.SGD(model, 0.05, momentum=0.9).updates(loss), target=target,
                        debug=True)
        rng = np.random.default_rng(4)
        results[target] = ([float(f(rng.standard_normal((3, 2, 8, 8)).astype(np.float32))) for _ in range(3)],
                           [p.value.copy() for p in model.params()])
    np.testing.assert_allclose(results["cpu"][0], results["numpy"][0], rtol=1e-4)
    for a, b in zip(results["cpu"][1], results["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert results["numpy"][0][-1] < results["numpy"][0][0]  # it learns


ACTIVATIONS = [  # graphc layer, torch layer's name and arguments
    (lambda: nn.ReLU(), "ReLU", ()),
    (lambda: nn.GELU(), "GELU", ()),
    (lambda: nn.GELU("tanh"), "GELU", ("tanh",)),
    (lambda: nn.SiLU(), "SiLU", ()),
    (lambda: nn.Tanh(), "Tanh", ()),
    (lambda: nn.Sigmoid(), "Sigmoid", ()),
    (lambda: nn.Softplus(), "Softplus", ()),
    (lambda: nn.Softsign(), "Softsign", ()),
    (lambda: nn.LeakyReLU(0.2), "LeakyReLU", (0.2,)),
    (lambda: nn.ELU(alpha=0.5), "ELU", (0.5,)),
    (lambda: nn.Hardtanh(-0.5, 2.0), "Hardtanh", (-0.5, 2.0)),
]


@pytest.mark.parametrize("make, torch_name, args", ACTIVATIONS, ids=[a[1] + str(a[2]) for a in ACTIVATIONS])
def test_activation_layers(make, torch_name, args):
    """Each activation layer: its forward and gradient on the cpu backend against the reference
    backend's and torch.nn's layer of the same name, in a Sequential."""
    layer = make()
    assert layer.params() == [] and layer.state() == []
    x = gc.input("x", (4, 6), "float64")
    y = nn.Sequential(layer)(x)
    c = RNG.standard_normal((4, 6))
    g = gc.grad(gc.sum(y * c), x)
    xv = RNG.uniform(-3, 3, (4, 6))
    got_y, got_g = gc.function([x], [y, g], target="cpu")(xv)
    ref_y, ref_g = gc.function([x], [y, g], target="numpy")(xv)
    np.testing.assert_allclose(got_y, ref_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_g, ref_g, rtol=1e-12, atol=1e-12)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(xv, requires_grad=True)
    ty = getattr(torch.nn, torch_name)(*args)(tx)
    (ty * torch.tensor(c)).sum().backward()
    np.testing.assert_allclose(got_y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_g, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_activation_layer_errors_and_custom():
    with pytest.raises(TypeError, match="LeakyReLU takes at most 1 positional"):
        nn.LeakyReLU(0.1, 0.2)
    with pytest.raises(TypeError):
        nn.ReLU(0.1)
    x = gc.input("x", (3,), "float64")
    layer = nn.Activation(gc.clip, lo=-1.0, hi=0.5)
    out = gc.function([x], layer(x), target="numpy")(np.array([-2.0, 0.0, 2.0]))
    np.testing.assert_array_equal(out, [-1.0, 0.0, 0.5])


def test_transformer_block_activation():
    """``activation`` replaces the MLP's relu: the block's graph holds the erf of an exact gelu."""
    x = gc.input("x", (2, 3, 8))
    y = nn.TransformerBlock(8, 2, activation=gc.gelu, rng=0)(x)
    assert any(n.op.name == "erf" for n in gc.toposort([y]))
    assert not any(n.op.name == "relu" for n in gc.toposort([y]))
