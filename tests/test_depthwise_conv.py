"""DepthwiseConv1D/2D and SeparableConv1D/2D: outputs, input and weight gradients against a direct
float64 numpy implementation on every target, the layer harness, a few training steps compiled
against the reference interpreter, Keras 3 parity (predictions and one SGD step with Keras's
weights, configs, output shapes, Keras's JSON rebuilt), config, JSON and file round trips, and the
errors of bad arguments."""
import json
import math
import textwrap

import numpy as np
import pytest

import kcompile
from kcompile import layers as L
from kcompile import optimizers, regularizers
from kcompile.describe import describe
from kcompile.models import Sequential, load_model, model_from_json
from kcompile.utils import set_random_seed
from layer_harness import check_fit_matches_reference, Offset, run_layer_test
from targets import TARGETS
from keras_subprocess import keras_available, run_keras_models


# -- numpy (float64) ------------------------------------------------------------------------------

def _axis(size, window, stride, padding):
    """(low pad, high pad, outputs) of one axis, TensorFlow's placement (the odd pad at the end)."""
    if padding == "valid":
        return 0, 0, (size - window) // stride + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2, out


class NumpyDepthwise:
    """The depthwise convolution of images x[N,H,W,C] by k[KH,KW,C,M], written with explicit
    windows (a dilated window takes every d-th pixel of its extent (k - 1) * d + 1), and its
    adjoint (the gradients of sum(out * g))."""

    def __init__(self, x, kernel, strides, padding, dilation=(1, 1)):
        self.x, self.k = x.astype(np.float64), kernel.astype(np.float64)
        (kh, kw, _, _), (sh, sw), (dh, dw) = self.k.shape, strides, dilation
        self.extent = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
        top, bottom, self.oh = _axis(x.shape[1], self.extent[0], sh, padding)
        left, right, self.ow = _axis(x.shape[2], self.extent[1], sw, padding)
        self.pads, self.strides, self.dilation = (top, left), strides, dilation
        self.padded = np.pad(self.x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        self.windows = np.empty((x.shape[0], self.oh, self.ow, kh, kw, x.shape[3]))
        for i in range(self.oh):
            for j in range(self.ow):
                self.windows[:, i, j] = self.padded[:, self._rows(i), self._columns(j)]

    def _rows(self, i):
        return slice(i * self.strides[0], i * self.strides[0] + self.extent[0], self.dilation[0])

    def _columns(self, j):
        return slice(j * self.strides[1], j * self.strides[1] + self.extent[1], self.dilation[1])

    def forward(self):
        n, c, m = self.x.shape[0], self.k.shape[2], self.k.shape[3]
        out = np.einsum("nijabc,abcm->nijcm", self.windows, self.k)
        return out.reshape(n, self.oh, self.ow, c * m)      # channel c*M + m

    def gradients(self, g):
        """(d/dx, d/dkernel) of sum(forward() * g)."""
        c, m = self.k.shape[2:]
        g = g.reshape(g.shape[:3] + (c, m))
        dk = np.einsum("nijabc,nijcm->abcm", self.windows, g)
        dwindows = np.einsum("nijcm,abcm->nijabc", g, self.k)
        canvas = np.zeros_like(self.padded)
        for i in range(self.oh):
            for j in range(self.ow):
                canvas[:, self._rows(i), self._columns(j)] += dwindows[:, i, j]
        top, left = self.pads
        return canvas[:, top:top + self.x.shape[1], left:left + self.x.shape[2]], dk


def numpy_layer(kind, x, weights, strides, padding, activation=None, dilation=None):
    """The layer's output and a function of the output gradient giving the gradients of (x,
    *weights); a sequence is the one-row image, as in Keras."""
    sequence = kind.endswith("1d")
    image = x[:, None] if sequence else x
    kernel = weights[0][None] if sequence else weights[0]
    dilation = dilation or (1,) * len(strides)
    depthwise = NumpyDepthwise(image, kernel, ((1,) + strides) if sequence else strides, padding,
                               ((1,) + dilation) if sequence else dilation)
    out = depthwise.forward()
    separable = kind.startswith("separable")
    if separable:
        pointwise = weights[1].reshape(weights[1].shape[-2:]).astype(np.float64)
        mixed = out @ pointwise
    else:
        mixed = out
    z = mixed + weights[-1]
    y = np.tanh(z) if activation == "tanh" else z

    def backward(gy):
        gy = gy[:, None] if sequence else gy
        gz = gy * (1 - y ** 2) if activation == "tanh" else gy
        if separable:
            gout = gz @ pointwise.T
            gpoint = np.einsum("nijk,nijf->kf", out, gz).reshape(weights[1].shape)
        else:
            gout = gz
        dx, dk = depthwise.gradients(gout)
        grads = [dx[:, 0] if sequence else dx, dk[0] if sequence else dk]
        if separable:
            grads.append(gpoint)
        grads.append(gz.sum(axis=tuple(range(gz.ndim - 1))))
        return grads

    return (y[:, 0] if sequence else y), backward


def make(kind, *args, **kwargs):
    return {"depthwise2d": L.DepthwiseConv2D, "depthwise1d": L.DepthwiseConv1D,
            "separable2d": L.SeparableConv2D, "separable1d": L.SeparableConv1D}[kind](*args, **kwargs)


def random_weights(layer, rng):
    return [rng.standard_normal(w.shape).astype(np.float32) for w in layer.weights]


def _case_layer(kind, strides, padding, multiplier, **kwargs):
    filters = (4,) if kind.startswith("separable") else ()
    size = 3 if kind.endswith("1d") else (3, 2)
    return make(kind, *filters, size, strides=strides, padding=padding,
                depth_multiplier=multiplier, **kwargs)


KINDS = ["depthwise2d", "depthwise1d", "separable2d", "separable1d"]
SHAPES = {"2d": (7, 6, 3), "1d": (9, 3)}


# -- outputs and gradients against numpy ---------------------------------------------------------

@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_output_matches_numpy(kind, strides, padding, multiplier):
    shape = SHAPES[kind[-2:]]
    rng = np.random.default_rng(strides * 10 + multiplier)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    layer = _case_layer(kind, strides, padding, multiplier)
    model = Sequential([L.Input(shape), layer])
    weights = random_weights(layer, rng)
    model.set_weights(weights)
    pair = (strides,) if kind.endswith("1d") else (strides, strides)
    want, _ = numpy_layer(kind, x, weights, pair, padding)
    assert model.output_shape == (None,) + want.shape[1:]
    assert layer.compute_output_shape((None,) + shape) == (None,) + want.shape[1:]
    for target in TARGETS:
        model.compile(optimizer="sgd", loss="mse", target=target)
        np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5,
                                   err_msg=target)


# (kind, strides, padding, depth_multiplier, dilation_rate): dilated with strides 1 and 2 (Keras
# takes both together in these layers), 'valid' and 'same', a kernel dilated wider than the input
# with 'same'
GRADIENT_CASES = [
    ("depthwise2d", 1, "same", 2, 1), ("depthwise2d", 2, "valid", 1, 1),
    ("depthwise1d", 2, "same", 2, 1), ("separable2d", 2, "same", 2, 1),
    ("separable2d", 1, "valid", 1, 1), ("separable1d", 1, "same", 2, 1),
    ("depthwise2d", 1, "valid", 2, (2, 3)), ("depthwise2d", 2, "same", 1, 2),
    ("depthwise2d", 1, "same", 1, (4, 6)), ("depthwise1d", 1, "valid", 1, 3),
    ("depthwise1d", 2, "same", 2, 2), ("separable2d", 2, "valid", 2, (3, 2)),
    ("separable2d", 1, "same", 1, (2, 1)), ("separable1d", 2, "valid", 2, 2),
    ("separable1d", 1, "same", 1, 5),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind, strides, padding, multiplier, dilation", GRADIENT_CASES,
                         ids=["-".join(map(str, case)) for case in GRADIENT_CASES])
def test_input_and_weight_gradients_match_numpy(kind, strides, padding, multiplier, dilation,
                                                target):
    """One SGD step of learning rate 1 on mse: each weight moves by minus its gradient, and the
    Offset before the layer by minus the batch's summed input gradient."""
    shape = SHAPES[kind[-2:]]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    layer = _case_layer(kind, strides, padding, multiplier, activation="tanh",
                        dilation_rate=dilation)
    model = Sequential([L.Input(shape), Offset(), layer])
    weights = random_weights(layer, rng)
    rank = 1 if kind.endswith("1d") else 2
    pair = (strides,) * rank
    dilation = (dilation,) * rank if isinstance(dilation, int) else dilation
    want, backward = numpy_layer(kind, x, weights, pair, padding, activation="tanh",
                                 dilation=dilation)
    assert layer.compute_output_shape((None,) + shape) == (None,) + want.shape[1:]
    y = rng.standard_normal(want.shape).astype(np.float32)
    model.set_weights([np.zeros(shape, np.float32)] + weights)
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    # mse: the mean over every output entry, so d loss / d output = 2 (output - y) / its size
    gradients = backward(2.0 * (want - y) / want.size)
    np.testing.assert_allclose(-model.layers[0].w.numpy(), gradients[0].sum(axis=0), rtol=1e-4,
                               atol=1e-7, err_msg="input gradient")
    for variable, before, gradient in zip(layer.weights, weights, gradients[1:]):
        np.testing.assert_allclose(before - variable.numpy(), gradient, rtol=1e-4, atol=1e-7,
                                   err_msg=variable.path)


# -- the harness and training ----------------------------------------------------------------------

@pytest.mark.parametrize("make_layer, input_shape, output_shape, weights", [
    (lambda: L.DepthwiseConv2D(3), (6, 5, 3), (4, 3, 3), 2),
    (lambda: L.DepthwiseConv2D((3, 2), strides=2, padding="same", depth_multiplier=2,
                               activation="relu", use_bias=False), (6, 5, 3), (3, 3, 6), 1),
    (lambda: L.DepthwiseConv1D(2, strides=2, depth_multiplier=3), (7, 2), (3, 6), 2),
    (lambda: L.SeparableConv2D(4, 3, padding="same", depth_multiplier=2), (5, 5, 2), (5, 5, 4), 3),
    (lambda: L.SeparableConv1D(3, 3, strides=2, use_bias=False, activation="tanh"), (8, 2),
     (3, 3), 2),
    (lambda: L.DepthwiseConv2D(3, dilation_rate=(2, 1), depth_multiplier=2), (6, 5, 2), (2, 3, 4),
     2),
    (lambda: L.SeparableConv1D(2, 3, strides=2, padding="same", dilation_rate=3), (9, 2), (5, 2),
     3),
])
def test_layer_harness(make_layer, input_shape, output_shape, weights):
    run_layer_test(make_layer, input_shape, output_shape, weights)


def _mixed_cnn():
    return Sequential([L.Input((9, 8, 2)), L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu",
                                                              dilation_rate=(2, 1)),
                       L.SeparableConv2D(4, 3, strides=2, padding="same", activation="tanh"),
                       L.DepthwiseConv2D(2, padding="same"), L.Flatten(), L.Dense(2)])


def _mixed_sequences():
    return Sequential([L.Input((10, 3)), L.SeparableConv1D(4, 3, depth_multiplier=2,
                                                            activation="relu", dilation_rate=2),
                       L.DepthwiseConv1D(3, strides=2, padding="same", depth_multiplier=2,
                                         dilation_rate=2),
                       L.GlobalAveragePooling1D(), L.Dense(2)])


@pytest.mark.parametrize("make_model", [_mixed_cnn, _mixed_sequences], ids=["2d", "1d"])
def test_a_few_fit_steps_compiled_agree_with_the_reference(make_model):
    check_fit_matches_reference(make_model)


def test_regularizers_add_their_penalties_to_the_loss():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 6, 2)).astype(np.float32)
    layer = L.SeparableConv1D(3, 2, depth_multiplier=2, depthwise_regularizer=regularizers.L2(0.1),
                              pointwise_regularizer=regularizers.L1(0.2),
                              bias_regularizer=regularizers.L2(0.3),
                              activity_regularizer=regularizers.L1(0.05))
    model = Sequential([L.Input((6, 2)), layer])
    weights = random_weights(layer, rng)
    model.set_weights(weights)
    out, _ = numpy_layer("separable1d", x, weights, (1,), "valid")
    y = rng.standard_normal(out.shape).astype(np.float32)
    model.compile(optimizer="sgd", loss="mse", target=TARGETS[-1])
    penalty = (0.1 * np.sum(weights[0].astype(np.float64) ** 2) + 0.2 * np.abs(weights[1]).sum()
               + 0.3 * np.sum(weights[2].astype(np.float64) ** 2)
               + 0.05 * np.abs(out).sum() / len(x))       # (activity: Keras divides by the batch)
    want = np.mean((out - y) ** 2) + penalty
    assert model.evaluate(x, y, batch_size=len(x), verbose=0) == pytest.approx(want, rel=1e-5)


def test_kernels_are_glorot_uniform_over_keras_fans():
    set_random_seed(0)
    layer = L.SeparableConv2D(48, 3, depth_multiplier=4)
    layer.build((None, 10, 10, 32))
    depthwise, pointwise, bias = layer.get_weights()
    # Keras's fans of (kh, kw, in, out): the receptive field times in, and times out
    for kernel, fans in [(depthwise, 9 * 32 + 9 * 4), (pointwise, 128 + 48)]:
        limit = np.sqrt(6 / fans)
        assert np.abs(kernel).max() <= limit
        assert kernel.var() == pytest.approx(limit ** 2 / 3, rel=0.1)
    np.testing.assert_array_equal(bias, 0)


def test_weights_have_keras_names_and_shapes():
    depthwise = Sequential([L.Input((5, 5, 3)), L.DepthwiseConv2D(3, depth_multiplier=2)]).layers[0]
    assert [(w.path, w.shape) for w in depthwise.weights] == [
        ("depthwise_conv2d/kernel", (3, 3, 3, 2)), ("depthwise_conv2d/bias", (6,))]
    assert depthwise.kernel is depthwise.weights[0]
    separable = Sequential([L.Input((5, 3)), L.SeparableConv1D(4, 2, depth_multiplier=2,
                                                               name="s")]).layers[0]
    assert [(w.path, w.shape) for w in separable.weights] == [
        ("s/depthwise_kernel", (2, 3, 2)), ("s/pointwise_kernel", (1, 6, 4)), ("s/bias", (4,))]
    assert (separable.depthwise_kernel, separable.pointwise_kernel, separable.bias) == \
        tuple(separable.weights)
    assert L.DepthwiseConv1D(2).name == "depthwise_conv1d"
    assert L.SeparableConv2D(2, 2).name == "separable_conv2d"


# -- configs, JSON, files -----------------------------------------------------------------------

ALL_LAYERS = [lambda: L.DepthwiseConv2D(3), lambda: L.DepthwiseConv2D((3, 1), strides=(2, 1),
                                                                      padding="SAME"),
              lambda: L.DepthwiseConv2D(2, depth_multiplier=3, activation="relu", use_bias=False,
                                        depthwise_regularizer="l2", name="dw"),
              lambda: L.DepthwiseConv1D(3, strides=2, padding="same", depth_multiplier=2,
                                        bias_initializer="ones"),
              lambda: L.SeparableConv2D(8, 3), lambda: L.SeparableConv2D(4, (2, 3), 2, "same",
                                                                          depth_multiplier=2),
              lambda: L.SeparableConv1D(5, 4, activation="tanh", pointwise_initializer="he_normal",
                                        pointwise_regularizer=regularizers.L1(0.1)),
              lambda: L.SeparableConvolution1D(2, 1), lambda: L.SeparableConvolution2D(2, 1),
              lambda: L.DepthwiseConv2D(3, strides=2, dilation_rate=(2, 3)),
              lambda: L.SeparableConv1D(3, 2, dilation_rate=4, padding="same"),
              lambda: L.DepthwiseConv1D(2, dilation_rate=[2]),
              lambda: L.SeparableConv2D(3, 2, dilation_rate=2, depth_multiplier=2)]


@pytest.mark.parametrize("index", range(len(ALL_LAYERS)))
def test_config_round_trips(index):
    layer = ALL_LAYERS[index]()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    through_json = json.loads(json.dumps(L.serialize(layer)))
    assert L.deserialize(through_json).get_config() == config
    assert kcompile.saving.deserialize_keras_object(
        json.loads(json.dumps(kcompile.saving.serialize_keras_object(layer)))).get_config() == config


def test_configs_have_keras_keys_in_keras_order():
    assert list(L.DepthwiseConv2D(3).get_config()) == [
        "name", "trainable", "dtype", "depth_multiplier", "kernel_size", "strides", "padding",
        "data_format", "dilation_rate", "activation", "use_bias", "depthwise_initializer",
        "bias_initializer", "depthwise_regularizer", "bias_regularizer", "activity_regularizer",
        "depthwise_constraint", "bias_constraint"]
    config = L.SeparableConv1D(4, 3).get_config()
    assert list(config) == [
        "name", "trainable", "dtype", "depth_multiplier", "filters", "kernel_size", "strides",
        "padding", "data_format", "dilation_rate", "activation", "use_bias",
        "depthwise_initializer", "pointwise_initializer", "bias_initializer",
        "depthwise_regularizer", "pointwise_regularizer", "bias_regularizer",
        "activity_regularizer", "depthwise_constraint", "pointwise_constraint", "bias_constraint"]
    assert (config["kernel_size"], config["strides"], config["dilation_rate"]) == ((3,), (1,), (1,))
    assert L.DepthwiseConv2D(3, dilation_rate=2).get_config()["dilation_rate"] == (2, 2)
    assert L.SeparableConv2D(2, 3, dilation_rate=(1, 3)).get_config()["dilation_rate"] == (1, 3)
    assert L.DepthwiseConv1D(3, dilation_rate=[4]).get_config()["dilation_rate"] == (4,)
    assert L.SeparableConv1D(2, 3, dilation_rate=5).dilation_rate == (5,)


def test_model_from_json_and_save_load_keep_the_predictions(tmp_path):
    for make_model, shape in [(_mixed_cnn, (9, 8, 2)), (_mixed_sequences, (10, 3))]:
        set_random_seed(0)
        model = make_model()
        x = np.random.default_rng(0).standard_normal((5,) + shape).astype(np.float32)
        want = model.predict(x, verbose=0)
        clone = model_from_json(model.to_json())
        assert [type(a) for a in clone.layers] == [type(b) for b in model.layers]
        assert [a.get_config() for a in clone.layers] == [b.get_config() for b in model.layers]
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone.predict(x, verbose=0), want)
        model.compile(optimizer="adam", loss="mse", target="reference")
        model.save(tmp_path / "m.keras")
        loaded = load_model(tmp_path / "m.keras")
        assert [a.get_config() for a in loaded.layers] == [b.get_config() for b in model.layers]
        # (the model was compiled for the reference interpreter: its sums may round otherwise)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-6, atol=1e-7)


def test_the_description_covers_the_arguments():
    """The compile cache's key (kcompile.describe) tells the layers' arguments apart."""
    def model(multiplier=1, strides=1, padding="valid", filters=3, dilation=1):
        return Sequential([L.Input((6, 6, 2)), L.DepthwiseConv2D(3, strides, padding, multiplier),
                           L.SeparableConv2D(filters, 2, dilation_rate=dilation)])
    base = describe(list(model().layers))
    assert describe(list(model().layers)) == base
    for changed in [model(multiplier=2), model(strides=2), model(padding="same"), model(filters=4),
                    model(dilation=2)]:
        assert describe(list(changed.layers)) != base


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_layer, error, match", [
    (lambda: L.DepthwiseConv2D(3, depth_multiplier=0), ValueError,
     r"`depth_multiplier`.*depth_multiplier=0"),
    (lambda: L.DepthwiseConv1D(3, depth_multiplier=1.5), ValueError, r"`depth_multiplier`"),
    (lambda: L.SeparableConv2D(4, 3, depth_multiplier=True), ValueError, r"`depth_multiplier`"),
    (lambda: L.SeparableConv2D(0, 3), ValueError, r"`filters`.*filters=0"),
    (lambda: L.SeparableConv1D(None, 3), ValueError, r"`filters`"),
    (lambda: L.DepthwiseConv2D(0), ValueError, r"`kernel_size`.*kernel_size=0"),
    (lambda: L.DepthwiseConv2D((3, 3, 3)), ValueError, r"`kernel_size`"),
    (lambda: L.SeparableConv1D(2, (3, 3)), ValueError, r"`kernel_size`"),
    (lambda: L.DepthwiseConv2D(3, strides=0), ValueError, r"`strides`"),
    (lambda: L.DepthwiseConv2D(3, padding="full"), ValueError, r"`padding`.*'full'"),
    (lambda: L.DepthwiseConv1D(3, padding="causal"), ValueError, r"`padding`.*'causal'"),
    (lambda: L.SeparableConv1D(2, 3, padding="causal"), ValueError, r"`padding`.*'causal'"),
    (lambda: L.DepthwiseConv2D(3, dilation_rate=0), ValueError,
     r"`dilation_rate`.*positive.*dilation_rate=0"),
    (lambda: L.DepthwiseConv2D(3, dilation_rate=(2, 2, 2)), ValueError,
     r"`dilation_rate`.*tuple of 2"),
    (lambda: L.SeparableConv1D(2, 3, dilation_rate=(2, 2)), ValueError, r"`dilation_rate`"),
    (lambda: L.DepthwiseConv1D(3, dilation_rate=1.5), ValueError, r"`dilation_rate`"),
    (lambda: L.DepthwiseConv2D(3, data_format="channels_first"), NotImplementedError,
     r"channels_last.*images"),
    (lambda: L.SeparableConv1D(2, 3, data_format="channels_first"), NotImplementedError,
     r"sequences of shape \(batch, steps, channels\)"),
    (lambda: L.DepthwiseConv2D(3, data_format="NHWC"), ValueError,
     r"'channels_last' or 'channels_first'"),
    (lambda: L.DepthwiseConv2D(3, depthwise_constraint="non_neg"), NotImplementedError,
     r"depthwise_constraint"),
    (lambda: L.DepthwiseConv1D(3, bias_constraint="non_neg"), NotImplementedError,
     r"bias_constraint"),
    (lambda: L.SeparableConv2D(2, 3, pointwise_constraint="non_neg"), NotImplementedError,
     r"pointwise_constraint"),
    (lambda: L.SeparableConv2D(2, 3, kernel_initializer="zeros"), ValueError,
     r"kernel_initializer"),
])
def test_bad_arguments_are_refused_naming_them(make_layer, error, match):
    with pytest.raises(error, match=match):
        make_layer()


@pytest.mark.parametrize("make_layer, shape, match", [
    (lambda: L.DepthwiseConv2D(3), (8, 8), r"needs images of shape.*Reshape\(\(8, 8, 1\)\)"),
    (lambda: L.SeparableConv2D(2, 3), (4, 8, 8, 1), r"needs images of shape"),
    (lambda: L.DepthwiseConv1D(3), (8,), r"needs sequences of shape.*Reshape\(\(8, 1\)\)"),
    (lambda: L.SeparableConv1D(2, 3), (4, 8, 1), r"needs sequences of shape"),
    (lambda: L.DepthwiseConv2D(5), (3, 3, 1), r"does not fit.*padding='same'"),
    (lambda: L.SeparableConv1D(2, 4), (3, 2), r"does not fit.*padding='same'"),
    # a 3-tap kernel dilated by 3 spans 7 steps
    (lambda: L.DepthwiseConv1D(3, dilation_rate=3), (6, 2),
     r"dilated by \(3,\) \(extent \(7,\)\) does not fit.*or dilation_rate"),
    (lambda: L.SeparableConv2D(2, 2, dilation_rate=(1, 4)), (4, 4, 1), r"extent \(2, 5\)"),
])
def test_inputs_the_layer_cannot_take_are_refused(make_layer, shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([L.Input(shape), make_layer()])


def test_a_built_layer_refuses_another_channel_count():
    layer = L.DepthwiseConv2D(2)
    layer.build((None, 4, 4, 3))
    with pytest.raises(ValueError, match=r"expected 3 input channels.*\(None, 4, 4, 2\)"):
        layer.compute_output_shape((None, 4, 4, 2))


NEW_LAYERS = ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")


def test_the_layers_are_in_the_namespace():
    for name in NEW_LAYERS:
        assert name in L.__all__ and name in L._CLASSES and getattr(L, name).__name__ == name
        assert name not in L._KERAS_ONLY
    assert L.SeparableConvolution1D is L.SeparableConv1D
    assert L.SeparableConvolution2D is L.SeparableConv2D
    assert {"SeparableConvolution1D", "SeparableConvolution2D"} <= set(L.__all__)


# -- Keras 3 parity -------------------------------------------------------------------------------

# (Keras layer expressions, written alike in both APIs; input shape): strides 1 and 2, padding
# 'valid' and 'same', depth_multiplier 1 and 2; one SGD step is compared too
KERAS_MODELS = {
    "images": (["DepthwiseConv2D(3, depth_multiplier=2, activation='relu')",
                "SeparableConv2D(4, 3, strides=2, padding='same')",
                "DepthwiseConv2D((2, 3), strides=2, padding='same')",
                "SeparableConv2D(3, 2, depth_multiplier=2, use_bias=False, activation='tanh')",
                "Flatten()", "Dense(2)"], (9, 8, 2)),
    "sequences": (["DepthwiseConv1D(3, strides=2, padding='same', depth_multiplier=2)",
                   "SeparableConv1D(4, 2, activation='tanh')", "DepthwiseConv1D(2)",
                   "SeparableConvolution1D(3, 3, strides=2, padding='same', depth_multiplier=2)",
                   "Flatten()", "Dense(2)"], (11, 3)),
    # dilated, with strides 1 and 2 ('valid' and 'same'), and a dilated kernel wider than the input
    "dilated_images": (["DepthwiseConv2D(3, dilation_rate=2, depth_multiplier=2)",
                        "SeparableConv2D(3, (2, 3), strides=2, dilation_rate=(3, 2), "
                        "padding='same', activation='tanh')",
                        "DepthwiseConv2D((3, 2), strides=(2, 1), dilation_rate=(1, 2))",
                        "SeparableConv2D(2, 3, dilation_rate=3, padding='same')",
                        "Flatten()", "Dense(2)"], (11, 10, 2)),
    "dilated_sequences": (["DepthwiseConv1D(3, dilation_rate=3, padding='same', depth_multiplier=2)",
                           "SeparableConv1D(4, 2, strides=2, dilation_rate=2, activation='tanh')",
                           "DepthwiseConv1D(2, strides=2, dilation_rate=4, padding='same')",
                           "SeparableConv1D(2, 3, dilation_rate=2, padding='same')",
                           "Flatten()", "Dense(2)"], (13, 3)),
}

KERAS_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, keras
    from keras.layers import *
    for spec in sys.argv[1:]:
        exprs, shape, path = eval(spec)
        data = np.load(path)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape)] + [eval(e) for e in exprs])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
        weights = model.get_weights()
        prediction = model.predict(data["x"], verbose=0)
        configs = [layer.get_config() for layer in model.layers]
        shapes = [list(layer.output.shape) for layer in model.layers]
        computed = [list(layer.compute_output_shape((None,) + tuple(shape))) for layer in
                    model.layers[:1]]
        to_json = model.to_json()
        model.fit(data["x"], data["y"], batch_size=len(data["x"]), epochs=1, shuffle=False,
                  verbose=0)
        np.savez(path, configs=json.dumps(configs), shapes=json.dumps(shapes),
                 computed=json.dumps(computed), to_json=to_json, prediction=prediction,
                 **{f"w{i}": w for i, w in enumerate(weights)},
                 **{f"t{i}": w for i, w in enumerate(model.get_weights())})
""")


def _keras_model(name):
    exprs, shape = KERAS_MODELS[name]
    namespace = {k: getattr(L, k) for k in L.__all__}
    return Sequential([L.Input(shape=shape)] + [eval(e, namespace) for e in exprs])


def _keras_data(name):
    shape = KERAS_MODELS[name][1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + shape).astype(np.float32)
    return x, rng.standard_normal((6, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    return run_keras_models(KERAS_SCRIPT, KERAS_MODELS, _keras_data, tmp_path_factory.mktemp("keras"))


def _comparable(key, value):
    """A config entry as both libraries write it: an initializer by its class and seed (Keras's
    also names its module, and GlorotUniform's holds Keras 3.15's input_axes/output_axes, None)."""
    if key.endswith("_initializer"):
        return value["class_name"], value["config"].get("seed")
    return value


keras_only = pytest.mark.skipif(not keras_available(),
                                reason="Keras 3 with the JAX backend is not installed")


@keras_only
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_agrees_with_keras(name, keras_results):
    keras_out = keras_results[name]
    x, y = _keras_data(name)
    model = _keras_model(name)
    shapes = json.loads(str(keras_out["shapes"]))
    assert [list(layer.output_shape) for layer in model.layers] == shapes
    shape = (None,) + KERAS_MODELS[name][1]
    assert [list(model.layers[0].compute_output_shape(shape))] == \
        json.loads(str(keras_out["computed"]))
    for layer, keras_config in zip(model.layers, json.loads(str(keras_out["configs"]))):
        if type(layer).__name__ not in NEW_LAYERS:
            continue
        ours = json.loads(json.dumps(layer.get_config()))
        keras_config["name"] = ours["name"]      # (Keras numbers names per process)
        assert list(ours) == list(keras_config), type(layer).__name__
        assert {k: _comparable(k, v) for k, v in ours.items() if k != "dtype"} == \
            {k: _comparable(k, v) for k, v in keras_config.items() if k != "dtype"}, \
            type(layer).__name__
    model.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=TARGETS[-1])
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for i, (variable, got) in enumerate(zip(model.weights, model.get_weights())):
        np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{variable.path} after one SGD step")


@keras_only
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_a_keras_model_json_rebuilds_and_predicts_alike(name, keras_results):
    keras_out = keras_results[name]
    x, _ = _keras_data(name)
    rebuilt = model_from_json(str(keras_out["to_json"]))
    assert [type(layer) for layer in rebuilt.layers] == [type(layer) for layer in
                                                         _keras_model(name).layers]
    rebuilt.set_weights([keras_out[f"w{i}"] for i in range(len(rebuilt.weights))])
    rebuilt.compile(optimizer="sgd", loss="mse", target=TARGETS[-1])
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
