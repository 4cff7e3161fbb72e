"""Conv2D, the pooling layers and Reshape: the layer harness, then each layer against a direct numpy
implementation (float64), compiled and interpreted, then a small CNN trained on both targets."""
import math

import numpy as np
import pytest

import ir
from ir import build as B
from ir import build_nn as NN
from ir.fusion import fuse

from kcompile.layers import (AveragePooling1D, AveragePooling2D, Conv1D, Conv2D, Dense, Flatten,
                             GlobalAveragePooling1D, GlobalAveragePooling2D, GlobalMaxPooling1D,
                             GlobalMaxPooling2D, Input, MaxPooling1D, MaxPooling2D, Reshape)
from kcompile.models import Sequential
from kcompile.utils import set_random_seed

from layer_harness import run_layer_test


# ----------------------------------------------------------------------------------------------
# numpy references (TensorFlow's placement of 'same' padding: the odd pixel at the end)
# ----------------------------------------------------------------------------------------------

def _pads(size, window, stride, padding):
    if padding == "valid":
        return 0, 0, (size - window) // stride + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2, out


def _windows(x, size, strides, padding, fill):
    """[N, OH, OW, KH, KW, C] windows of x, padded with `fill`."""
    (kh, kw), (sh, sw) = size, strides
    top, bottom, oh = _pads(x.shape[1], kh, sh, padding)
    left, right, ow = _pads(x.shape[2], kw, sw, padding)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    out = np.empty((x.shape[0], oh, ow, kh, kw, x.shape[3]), x.dtype)
    for r in range(oh):
        for c in range(ow):
            out[:, r, c] = padded[:, r * sh:r * sh + kh, c * sw:c * sw + kw, :]
    return out


def conv_numpy(x, kernel, bias, strides, padding):
    windows = _windows(x.astype(np.float64), kernel.shape[:2], strides, padding, 0.0)
    return np.einsum("nhwijc,ijco->nhwo", windows, kernel.astype(np.float64)) + bias


def pool_numpy(x, size, strides, padding, mode):
    if mode == "max":
        return _windows(x.astype(np.float64), size, strides, padding, -np.inf).max(axis=(3, 4))
    sums = _windows(x.astype(np.float64), size, strides, padding, 0.0).sum(axis=(3, 4))
    counts = _windows(np.ones(x.shape[:3] + (1,)), size, strides, padding, 0.0).sum(axis=(3, 4))
    return sums / counts


def _predict_both(model, x):
    """The model's predictions from the reference interpreter and from compiled code."""
    out = []
    for target in ("reference", "llvm"):
        model.compile(optimizer="sgd", loss="mse", target=target)
        out.append(model.predict(x, verbose=0))
    return out


# ----------------------------------------------------------------------------------------------
# The harness
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_layer, input_shape, output_shape, weights", [
    (lambda: Conv2D(4, 3), (7, 6, 3), (5, 4, 4), 2),
    (lambda: Conv2D(4, (3, 2), strides=2, padding="same", activation="relu"), (7, 6, 3), (4, 3, 4), 2),
    (lambda: Conv2D(2, 1, use_bias=False, activation="tanh"), (4, 5, 3), (4, 5, 2), 1),
    (lambda: MaxPooling2D(), (6, 7, 3), (3, 3, 3), 0),
    (lambda: MaxPooling2D((3, 3), strides=(2, 1), padding="same"), (6, 7, 3), (3, 7, 3), 0),
    (lambda: AveragePooling2D(), (6, 7, 3), (3, 3, 3), 0),
    (lambda: AveragePooling2D(3, strides=2, padding="same"), (6, 7, 3), (3, 4, 3), 0),
    (lambda: GlobalAveragePooling2D(), (4, 5, 3), (3,), 0),
    (lambda: GlobalAveragePooling2D(keepdims=True), (4, 5, 3), (1, 1, 3), 0),
    (lambda: GlobalMaxPooling2D(), (4, 5, 3), (3,), 0),
    (lambda: GlobalAveragePooling1D(), (6, 3), (3,), 0),
    (lambda: GlobalMaxPooling1D(keepdims=True), (6, 3), (1, 3), 0),
    (lambda: Reshape((3, 4)), (12,), (3, 4), 0),
    (lambda: Reshape((-1, 2, 1)), (3, 4), (6, 2, 1), 0),
    (lambda: Conv1D(4, 3), (9, 2), (7, 4), 2),
    (lambda: Conv1D(3, 4, strides=2, padding="causal", activation="relu"), (9, 2), (5, 3), 2),
    (lambda: MaxPooling1D(), (7, 3), (3, 3), 0),
    (lambda: AveragePooling1D(3, strides=2, padding="same"), (7, 3), (4, 3), 0),
])
def test_layer_harness(make_layer, input_shape, output_shape, weights):
    run_layer_test(make_layer, input_shape, output_shape, weights)


# ----------------------------------------------------------------------------------------------
# Conv2D
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size, strides, padding", [
    ((3, 3), (1, 1), "valid"), ((3, 3), (1, 1), "same"), ((3, 3), (2, 2), "same"),
    ((2, 3), (2, 1), "valid"), ((4, 4), (3, 2), "same"), ((1, 1), (1, 1), "valid"),
    ((1, 1), (2, 2), "same"), ((5, 5), (1, 1), "same"),
])
def test_conv2d_matches_numpy(kernel_size, strides, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 9, 8, 2)).astype(np.float32)
    set_random_seed(0)
    model = Sequential([Input(shape=(9, 8, 2)),
                        Conv2D(5, kernel_size, strides=strides, padding=padding)])
    kernel = rng.standard_normal(kernel_size + (2, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    model.set_weights([kernel, bias])
    expected = conv_numpy(x, kernel, bias, strides, padding)
    assert model.output_shape == (None,) + expected.shape[1:]
    for got in _predict_both(model, x):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_conv2d_gradients_match_finite_differences():
    """d loss / d (kernel, bias, input) of a strided 'same' convolution, float64, interpreter."""
    rng = np.random.default_rng(2)
    x = B.arg("x", "f64", (None, 5, 4, 2))
    k = B.arg("k", "f64", (3, 2, 2, 3))
    w = B.arg("w", "f64", (None, 3, 2, 3))
    loss = B.reduce_sum(B.mul(B.tanh(NN.conv2d(x, k, (2, 2), "same")), w))
    grads = ir.gradients(loss, [x, k])
    feeds = {"x": rng.standard_normal((2, 5, 4, 2)), "k": rng.standard_normal((3, 2, 2, 3)),
             "w": rng.standard_normal((2, 3, 2, 3))}
    graph = ir.Graph("conv", [x, k, w], [("loss", loss), ("dx", grads[0]), ("dk", grads[1])])
    analytic = ir.run(graph, feeds)
    loss_only = ir.Graph("conv_loss", [x, k, w], [("loss", loss)])
    for name in ("x", "k"):
        numeric = np.zeros_like(feeds[name])
        for i in range(numeric.size):
            values = []
            for step in (1e-6, -1e-6):
                moved = feeds[name].copy()
                moved.reshape(-1)[i] += step
                values.append(float(ir.run(loss_only, {**feeds, name: moved})["loss"]))
            numeric.reshape(-1)[i] = (values[0] - values[1]) / 2e-6
        np.testing.assert_allclose(analytic["d" + name], numeric, rtol=1e-6, atol=1e-8)


def test_conv2d_kernel_is_glorot_uniform_over_the_receptive_field():
    set_random_seed(0)
    layer = Conv2D(64, 3)
    layer.build((None, 28, 28, 32))
    kernel, bias = layer.get_weights()
    assert kernel.shape == (3, 3, 32, 64)
    limit = np.sqrt(6 / (9 * 32 + 9 * 64))
    assert np.abs(kernel).max() <= limit
    assert kernel.var() == pytest.approx(limit ** 2 / 3, rel=0.05)
    np.testing.assert_array_equal(bias, 0)


def test_conv2d_config_has_keras_keys_and_names():
    layer = Conv2D(8, 3)
    assert layer.name == "conv2d"
    config = layer.get_config()
    for key in ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
                "groups", "activation", "use_bias", "kernel_initializer", "bias_initializer"):
        assert key in config
    assert config["kernel_size"] == (3, 3) and config["strides"] == (1, 1)
    assert MaxPooling2D().name == "max_pooling2d"
    for layer in (Conv2D(2, 3), Conv1D(2, 3), MaxPooling2D(), AveragePooling1D(),
                  GlobalAveragePooling2D(), Flatten()):
        assert layer.data_format == layer.get_config()["data_format"] == "channels_last"


@pytest.mark.parametrize("make_layer, shape, message", [
    (lambda: Conv2D(4, 3), (None, 28, 28), "Reshape((28, 28, 1))"),
    (lambda: Conv2D(4, 5), (None, 3, 3, 1), "padding='same'"),
    (lambda: MaxPooling2D(), (None, 10), "(batch, height, width, channels)"),
    (lambda: MaxPooling2D(4), (None, 3, 3, 2), "padding='same'"),
    (lambda: Reshape((5, 5)), (None, 12), "number of values"),
])
def test_shape_errors_say_what_to_do(make_layer, shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_layer().compute_output_shape(shape)


@pytest.mark.parametrize("make_layer", [
    lambda: Conv2D(0, 3), lambda: Conv2D(4, (3, 3, 3)), lambda: Conv2D(4, 3, padding="full"),
    lambda: MaxPooling2D(pool_size=0), lambda: Reshape((2, 0)), lambda: Reshape((-1, -1)),
])
def test_bad_arguments_are_refused(make_layer):
    with pytest.raises(ValueError):
        make_layer()


@pytest.mark.parametrize("make_layer", [lambda: Conv2D(4, 3, data_format="bogus"),
                                        lambda: MaxPooling2D(data_format="channel_last"),
                                        lambda: Flatten(data_format="NHWC")])
def test_an_unknown_data_format_is_a_value_error_naming_both(make_layer):
    with pytest.raises(ValueError, match="'channels_last' or 'channels_first'"):
        make_layer()


@pytest.mark.parametrize("make_layer", [
    lambda: Conv2D(4, 3, data_format="channels_first"),
    lambda: MaxPooling2D(data_format="channels_first"),
])
def test_unsupported_arguments_say_so(make_layer):
    with pytest.raises(NotImplementedError):
        make_layer()


# ----------------------------------------------------------------------------------------------
# Conv1D and the 1-D poolings: a sequence (N, L, C) is the one-row image (N, 1, L, C)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size, strides, padding", [
    (3, 1, "valid"), (3, 2, "same"), (4, 3, "same"), (1, 1, "valid"), (4, 1, "causal"),
    (3, 2, "causal"), (5, 1, "same"),
])
def test_conv1d_matches_numpy(kernel_size, strides, padding):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 10, 2)).astype(np.float32)
    model = Sequential([Input(shape=(10, 2)), Conv1D(5, kernel_size, strides=strides,
                                                      padding=padding)])
    kernel = rng.standard_normal((kernel_size, 2, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    model.set_weights([kernel, bias])
    image = x[:, None]
    if padding == "causal":   # kernel_size - 1 zeros before the sequence, then a valid convolution
        image = np.pad(image, ((0, 0), (0, 0), (kernel_size - 1, 0), (0, 0)))
    expected = conv_numpy(image, kernel[None], bias, (1, strides),
                          "valid" if padding == "causal" else padding)[:, 0]
    assert model.output_shape == (None,) + expected.shape[1:]
    for got in _predict_both(model, x):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool_size, strides, padding", [
    (2, None, "valid"), (2, None, "same"), (3, 2, "same"), (3, 1, "valid"),
])
@pytest.mark.parametrize("layer_class, mode", [(MaxPooling1D, "max"), (AveragePooling1D, "avg")])
def test_pooling1d_matches_numpy(layer_class, mode, pool_size, strides, padding):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 7, 3)) - 3).astype(np.float32)
    model = Sequential([Input(shape=(7, 3)), layer_class(pool_size, strides, padding)])
    expected = pool_numpy(x[:, None], (1, pool_size), (1, strides or pool_size), padding, mode)[:, 0]
    assert model.output_shape == (None,) + expected.shape[1:]
    for got in _predict_both(model, x):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_conv1d_config_round_trips_and_errors_name_the_fix():
    layer = Conv1D(6, 3, strides=2, padding="causal", activation="relu", name="c")
    config = layer.get_config()
    assert (config["kernel_size"], config["strides"], config["padding"]) == ((3,), (2,), "causal")
    assert config["dilation_rate"] == (1,)
    again = Conv1D.from_config(config)
    assert (again.kernel_size, again.strides, again.padding) == ((3,), (2,), "causal")
    with pytest.raises(ValueError, match=r"Reshape\(\(10, 1\)\)"):
        Conv1D(4, 3).compute_output_shape((None, 10))
    with pytest.raises(ValueError, match="sequences of shape"):
        MaxPooling1D().compute_output_shape((None, 4, 4, 1))
    with pytest.raises(ValueError, match="'causal'"):
        Conv1D(4, 3, padding="full")
    with pytest.raises(ValueError, match="'valid' or 'same'"):
        Conv2D(4, 3, padding="causal")
    with pytest.raises(ValueError, match="`strides > 1` not supported in conjunction with"):
        Conv1D(4, 3, strides=2, dilation_rate=2)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pool_size, strides, padding", [
    ((2, 2), None, "valid"), ((2, 2), None, "same"), ((3, 3), (2, 2), "same"),
    ((3, 2), (1, 1), "valid"), ((2, 3), (3, 2), "same"),
])
@pytest.mark.parametrize("layer_class, mode", [(MaxPooling2D, "max"), (AveragePooling2D, "avg")])
def test_pooling_matches_numpy(layer_class, mode, pool_size, strides, padding):
    rng = np.random.default_rng(3)
    # negative values: 'same' max pooling must ignore the padding, not read zeros
    x = (rng.standard_normal((2, 7, 5, 3)) - 3).astype(np.float32)
    model = Sequential([Input(shape=(7, 5, 3)), layer_class(pool_size, strides, padding)])
    expected = pool_numpy(x, pool_size, strides or pool_size, padding, mode)
    assert model.output_shape == (None,) + expected.shape[1:]
    for got in _predict_both(model, x):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_max_pooling_sends_the_gradient_to_the_maximum():
    x = np.array([[1., 5., 2., 0.], [3., 4., 7., 8.], [0., 1., 2., 3.], [9., 6., 5., 4.]], np.float32)
    node = B.arg("x", "f32", (None, 4, 4, 1))
    pooled = NN.pool2d(node, (2, 2), (2, 2), "valid", "max")
    (grad,) = ir.gradients(B.reduce_sum(B.mul(pooled, B.const(np.arange(1.0, 5.0).reshape(2, 2, 1)))),
                           [node])
    out = ir.run(ir.Graph("g", [node], [("y", pooled), ("dx", grad)]), {"x": x.reshape(1, 4, 4, 1)})
    np.testing.assert_array_equal(out["y"].reshape(2, 2), [[5, 8], [9, 5]])
    np.testing.assert_array_equal(out["dx"].reshape(4, 4), [[0, 1, 0, 0], [0, 0, 0, 2],
                                                            [0, 0, 0, 0], [3, 0, 4, 0]])


def test_max_pooling_after_relu_pools_first_with_identical_values_and_gradients():
    """pool2d turns max_pool(relu(z)) into relu(max_pool(z)): the same values and gradients, ties
    and zeros included."""
    rng = np.random.default_rng(10)
    z = B.arg("z", "f32", (None, 6, 6, 3))
    w = B.arg("w", "f32", (None, 3, 3, 3))
    rewritten = NN.pool2d(B.relu(z), (2, 2), (2, 2), "valid", "max")
    assert rewritten.op == "max" and rewritten.operands[0].op == "max_pool"
    direct = NN.max_pool(B.relu(z), (2, 2), (2, 2), (0, 0, 0, 0))
    feeds = {"z": rng.integers(-2, 3, (4, 6, 6, 3)).astype(np.float32),   # many ties, zeros
             "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)}
    results = []
    for pooled in (rewritten, direct):
        (grad,) = ir.gradients(B.reduce_sum(B.mul(pooled, w)), [z])
        results.append(ir.run(ir.Graph("g", [z, w], [("y", pooled), ("dz", grad)]), feeds))
    np.testing.assert_array_equal(results[0]["y"], results[1]["y"])
    np.testing.assert_array_equal(results[0]["dz"], results[1]["dz"])


def test_global_average_pooling_is_the_spatial_mean():
    x = np.random.default_rng(4).standard_normal((3, 4, 5, 6)).astype(np.float32)
    for keepdims in (False, True):
        model = Sequential([Input(shape=(4, 5, 6)), GlobalAveragePooling2D(keepdims=keepdims)])
        for got in _predict_both(model, x):
            np.testing.assert_allclose(got, x.mean(axis=(1, 2), keepdims=keepdims), rtol=1e-5,
                                       atol=1e-6)


def test_pooling_strides_default_to_the_pool_size():
    assert MaxPooling2D(3).strides == (3, 3)
    assert AveragePooling2D((2, 3), strides=1).strides == (1, 1)
    assert MaxPooling2D(3).get_config()["strides"] == (3, 3)


# ----------------------------------------------------------------------------------------------
# Reshape
# ----------------------------------------------------------------------------------------------

def test_reshape_adds_a_channel_axis_for_conv2d():
    x = np.random.default_rng(5).random((4, 6, 6)).astype(np.float32)
    set_random_seed(1)
    model = Sequential([Input(shape=(6, 6)), Reshape((6, 6, 1)), Conv2D(2, 3)])
    kernel, bias = model.get_weights()
    for got in _predict_both(model, x):
        np.testing.assert_allclose(got, conv_numpy(x[..., None], kernel, bias, (1, 1), "valid"),
                                   rtol=1e-5, atol=1e-6)
    assert Reshape((-1, 3)).compute_output_shape((None, 4, 6)) == (None, 8, 3)


# ----------------------------------------------------------------------------------------------
# The kernels a CNN compiles to, and a CNN trained on both targets
# ----------------------------------------------------------------------------------------------

def test_convolution_runs_on_the_gemm_and_pooling_feeds_dense_through_a_view():
    """im2col patches are materialized for the GEMM (the matmul reads memory) and a pooled image
    reaches Dense through Flatten's view, without a copy."""
    x = B.arg("x", "f32", (None, 10, 10, 3))
    k = B.arg("k", "f32", (3, 3, 3, 4))
    w = B.arg("w", "f32", (64, 2))
    pooled = NN.pool2d(B.relu(NN.conv2d(x, k)), (2, 2), (2, 2), "valid", "max")
    out = B.matmul(B.reshape(pooled, (None, 64)), w)
    fused = fuse(ir.passes.run_pipeline(ir.Graph("cnn", [x, k, w], [("y", out)])))
    kinds = [(g.kind, g.root.op) for g in fused.groups]
    assert ("elementwise", "patches") in kinds
    assert sum(kind == "matmul" for kind, _ in kinds) == 2
    assert any(node.op == "reshape" for node in fused.aliases)


def _small_cnn():
    return Sequential([Input(shape=(12, 12, 1)), Conv2D(4, 3, activation="relu"),
                       MaxPooling2D(), Conv2D(6, 3, padding="same", activation="relu"),
                       AveragePooling2D(), Flatten(), Dense(10, activation="softmax")])


def test_small_cnn_trains_alike_compiled_and_interpreted():
    rng = np.random.default_rng(6)
    x = rng.random((40, 12, 12, 1)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 40)]
    results = {}
    for target in ("reference", "llvm"):
        set_random_seed(7)
        model = _small_cnn()
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                      target=target)
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results[target] = (history.history["loss"], model.get_weights(), model.predict(x, verbose=0))
    reference, compiled = results["reference"], results["llvm"]
    np.testing.assert_allclose(compiled[0], reference[0], rtol=1e-4)
    for got, want in zip(compiled[1], reference[1]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(compiled[2], reference[2], rtol=1e-4, atol=1e-6)


def test_cnn_saves_and_loads(tmp_path):
    from kcompile.models import load_model
    set_random_seed(8)
    model = _small_cnn()
    model.compile(optimizer="adam", loss="categorical_crossentropy", target="llvm")
    x = np.random.default_rng(9).random((5, 12, 12, 1)).astype(np.float32)
    model.save(tmp_path / "cnn.keras")
    loaded = load_model(tmp_path / "cnn.keras")
    assert [type(layer).__name__ for layer in loaded.layers] == \
        [type(layer).__name__ for layer in model.layers]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_exported_cnn_predictor_matches_the_model(tmp_path):
    """model.export: serial code depending on libc only (no parallel regions), same predictions."""
    import kcompile
    set_random_seed(11)
    model = _small_cnn()
    model.compile(optimizer="adam", loss="categorical_crossentropy", target="llvm")
    x = np.random.default_rng(12).random((9, 12, 12, 1)).astype(np.float32)
    model.export(str(tmp_path / "cnn"))
    with open(tmp_path / "cnn" / "model.h") as header:
        assert "kcompile_predict" in header.read()
    predictor = kcompile.load_predictor(str(tmp_path / "cnn"))
    np.testing.assert_allclose(predictor.predict(x), model.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-7)


def test_convolutions_large_enough_for_threads_match_the_reference():
    """Sample blocks of the GEMM and col2im's samples split among threads (the partial last block
    included) compute what the interpreter computes."""
    from codegen.compiler import CompileOptions
    from codegen.parallel import threads_available
    from codegen.runtime import CompiledRunner
    x = B.arg("x", "f32", (None, 28, 28, 8))
    k1 = B.arg("k1", "f32", (3, 3, 8, 16))
    k2 = B.arg("k2", "f32", (3, 3, 16, 16))
    h = NN.pool2d(B.relu(NN.conv2d(x, k1)), (2, 2), (2, 2), "valid", "max")
    loss = B.reduce_sum(B.tanh(NN.conv2d(h, k2, padding="same")))
    grads = ir.gradients(loss, [x, k1, k2])
    graph = ir.Graph("big", [x, k1, k2], [("loss", loss), ("dx", grads[0]), ("dk1", grads[1]),
                                          ("dk2", grads[2])])
    runner = CompiledRunner(graph, {}, CompileOptions(threading=None if threads_available() else False))
    rng = np.random.default_rng(13)
    weights = {"k1": rng.normal(0, 0.2, (3, 3, 8, 16)).astype(np.float32),
               "k2": rng.normal(0, 0.1, (3, 3, 16, 16)).astype(np.float32)}
    for batch in (37, 5):
        feeds = dict(weights, x=rng.standard_normal((batch, 28, 28, 8)).astype(np.float32))
        expected, actual = ir.run(graph, feeds), runner.run(feeds)
        for name in expected:
            np.testing.assert_allclose(actual[name], expected[name], rtol=2e-4, atol=2e-4,
                                       err_msg=f"{name}, batch {batch}")
