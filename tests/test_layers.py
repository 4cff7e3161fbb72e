"""Layers: one harness (output shape, weight count, config round trip, a training step, every target
against the reference interpreter), then each layer's semantics against numpy."""
import numpy as np
import pytest

import ir
from ir import build as B

import kcompile
from kcompile import activations, optimizers
from kcompile.layers import Activation, Dense, Dropout, Flatten, Input
from kcompile.layers.layer import TraceScope, call_eagerly
from kcompile.models import Sequential
from kcompile.utils import set_random_seed

# Targets checked against the reference interpreter; 'llvm' joins when codegen's runner lands.
TARGETS = ["reference"]


def run_layer_test(make_layer, input_shape, expected_output_shape, expected_weights):
    """Keras's run_layer_test, reduced: shape, weights, config round trip, a step on every target."""
    layer = make_layer()
    assert layer.compute_output_shape((None,) + input_shape) == (None,) + expected_output_shape
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + input_shape).astype(np.float32)
    y = rng.standard_normal((6,) + expected_output_shape).astype(np.float32)
    results = {}
    for target in TARGETS:
        set_random_seed(3)
        model = Sequential([Input(shape=input_shape), make_layer()])
        assert len(model.layers[0].weights) == expected_weights
        assert model.output_shape == (None,) + expected_output_shape
        model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=target)
        before = model.get_weights()
        prediction = model.predict(x, verbose=0)
        assert prediction.shape == (6,) + expected_output_shape
        history = model.fit(x, y, batch_size=6, epochs=1, shuffle=False, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        after = model.get_weights()
        if expected_weights:
            assert any(not np.array_equal(a, b) for a, b in zip(before, after))
        results[target] = (prediction, after)
    reference_prediction, reference_weights = results["reference"]
    for target, (prediction, weights) in results.items():
        np.testing.assert_allclose(prediction, reference_prediction, rtol=1e-4, atol=1e-5)
        for got, want in zip(weights, reference_weights):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make_layer, input_shape, output_shape, weights", [
    (lambda: Dense(3), (5,), (3,), 2),
    (lambda: Dense(3, activation="relu", use_bias=False), (5,), (3,), 1),
    (lambda: Dense(4, activation="tanh"), (2, 5), (2, 4), 2),
    (lambda: Dense(2, activation="sigmoid"), (2, 3, 5), (2, 3, 2), 2),
    (lambda: Flatten(), (2, 3, 4), (24,), 0),
    (lambda: Activation("softmax"), (7,), (7,), 0),
    (lambda: Activation("linear"), (3, 2), (3, 2), 0),
    (lambda: Dropout(0.5), (9,), (9,), 0),
])
def test_layer_harness(make_layer, input_shape, output_shape, weights):
    run_layer_test(make_layer, input_shape, output_shape, weights)


def test_dense_acts_on_the_last_axis_of_any_rank():
    rng = np.random.default_rng(1)
    for shape in [(4, 5), (4, 3, 5), (2, 3, 2, 5)]:
        layer = Dense(6, activation="relu")
        x = rng.standard_normal(shape).astype(np.float32)
        out = layer(x)
        kernel, bias = layer.get_weights()
        bias = rng.standard_normal(6).astype(np.float32)
        layer.set_weights([kernel, bias])
        expected = np.maximum(x @ kernel + bias, 0)
        np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
        assert out.shape == shape[:-1] + (6,)
        assert layer.output_shape == (None,) + shape[1:-1] + (6,)


def test_dense_defaults_are_glorot_uniform_and_zeros():
    set_random_seed(0)
    layer = Dense(300)
    layer.build((None, 200))
    kernel, bias = layer.get_weights()
    limit = np.sqrt(6 / (200 + 300))
    assert kernel.shape == (200, 300) and np.abs(kernel).max() <= limit
    # Uniform on [-limit, limit]: variance limit^2 / 3.
    assert kernel.var() == pytest.approx(limit ** 2 / 3, rel=0.05)
    np.testing.assert_array_equal(bias, 0)


@pytest.mark.parametrize("name, reference", [
    ("relu", lambda x: np.maximum(x, 0)),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", np.tanh),
    ("softmax", lambda x: np.exp(x - x.max(-1, keepdims=True))
     / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)),
    ("linear", lambda x: x),
])
def test_activations_match_numpy(name, reference):
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32) * 4
    fn = activations.get(name)
    np.testing.assert_allclose(fn(x), reference(x.astype(np.float64)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(Activation(name)(x), reference(x.astype(np.float64)), rtol=1e-5,
                               atol=1e-7)


def test_sigmoid_value_and_gradient_stay_finite_for_large_inputs():
    x = B.arg("x", "f32", (None, 4))
    y = activations.sigmoid(x)
    (grad,) = ir.gradients(B.reduce_sum(y), [x])
    graph = ir.Graph("g", [x], [("y", y), ("grad", grad)])
    out = ir.run(graph, {"x": np.array([[-1000, -90, 90, 1000]], np.float32)})
    np.testing.assert_allclose(out["y"], [[0, 1 / (1 + np.exp(90.0)), 1 / (1 + np.exp(-90.0)), 1]],
                               atol=1e-30)
    assert np.all(np.isfinite(out["grad"]))


def test_dropout_is_identity_in_inference():
    x = np.random.default_rng(3).random((50, 20)).astype(np.float32) + 1
    model = Sequential([Input(shape=(20,)), Dropout(0.5)])
    model.compile(optimizer="sgd", loss="mse", target="reference")
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    np.testing.assert_array_equal(Dropout(0.5)(x), x)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_dropout_in_training_zeroes_about_rate_and_scales_the_rest(rate):
    x = np.full((200, 100), 2.0, np.float32)
    out = Dropout(rate)(x, training=True)
    zeros = np.mean(out == 0)
    # 20,000 Bernoulli(rate) draws: the fraction's standard deviation is below 0.0036.
    assert abs(zeros - rate) < 0.02
    np.testing.assert_allclose(out[out != 0], 2.0 / (1 - rate), rtol=1e-6)


def test_dropout_layers_draw_distinct_masks_and_repeat_with_the_seed():
    first, second = Dropout(0.5, name="first"), Dropout(0.5, name="second")
    x = B.arg("x", "f32", (None, 64))
    seed = B.arg("seed", "u32", ())
    with TraceScope({}, seed=seed):
        a, b = first(x, training=True), second(x, training=True)
    graph = ir.Graph("g", [x, seed], [("a", a), ("b", b)])
    ones = np.ones((8, 64), np.float32)
    out = ir.run(graph, {"x": ones, "seed": np.uint32(11)})
    assert not np.array_equal(out["a"] == 0, out["b"] == 0)
    again = ir.run(graph, {"x": ones, "seed": np.uint32(11)})
    np.testing.assert_array_equal(out["a"], again["a"])
    other = ir.run(graph, {"x": ones, "seed": np.uint32(12)})
    assert not np.array_equal(out["a"], other["a"])


def test_dropout_noise_shape_broadcasts_the_mask():
    x = np.ones((4, 6, 8), np.float32)
    out = Dropout(0.5, noise_shape=(None, 1, 8))(x, training=True)
    # One mask per sample and feature, shared over axis 1.
    assert np.all(out == out[:, :1, :])


def test_dropout_rate_zero_is_identity_in_training():
    x = np.random.default_rng(4).random((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(Dropout(0.0)(x, training=True), x)


def test_flatten_keeps_the_batch_axis():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(Flatten()(x), x.reshape(2, 12))
    assert Flatten().compute_output_shape((None, 28, 28)) == (None, 784)


def test_call_eagerly_runs_a_traced_function():
    out = call_eagerly(lambda a, b: B.add(a, b), np.ones((2, 3)), np.full((2, 3), 2.0))
    np.testing.assert_array_equal(out, np.full((2, 3), 3.0, np.float32))


def test_trainable_false_freezes_a_layer():
    rng = np.random.default_rng(5)
    x = rng.random((16, 4)).astype(np.float32)
    y = rng.random((16, 2)).astype(np.float32)
    model = Sequential([Input(shape=(4,)), Dense(3, activation="tanh"), Dense(2)])
    model.layers[0].trainable = False
    assert [w.path for w in model.trainable_weights] == ["dense_1/kernel", "dense_1/bias"]
    assert [w.path for w in model.non_trainable_weights] == ["dense/kernel", "dense/bias"]
    model.compile(optimizer="sgd", loss="mse", target="reference")
    frozen = model.layers[0].get_weights()
    trained = model.layers[1].get_weights()
    model.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(frozen, model.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(trained[0], model.layers[1].get_weights()[0])


def test_weight_and_slot_buffers_start_on_a_cache_line():
    """Weights and optimizer slots are 64-byte aligned (compiled kernels stream them with full-width
    vector loads), and keep their buffer, so its address, through assign and training."""
    import kcompile
    from codegen.buffers import ALIGN as BUFFER_ALIGNMENT
    model = kcompile.Sequential([kcompile.layers.Input((13,)), kcompile.layers.Dense(7),
                                 kcompile.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    x = np.ones((4, 13), np.float32)
    model.fit(x, np.zeros((4, 3), np.float32), verbose=0)
    variables = list(model.weights) + list(model.optimizer._slots.values())
    assert len(variables) == 4 + 8
    for variable in variables:
        assert variable.buffer.ctypes.data % BUFFER_ALIGNMENT == 0, variable.path
        assert variable.buffer.flags.c_contiguous
    kernel = model.weights[0]
    address = kernel.buffer.ctypes.data
    kernel.assign(np.full((13, 7), 0.5, np.float32))
    assert kernel.buffer.ctypes.data == address
    np.testing.assert_array_equal(kernel.numpy(), np.full((13, 7), 0.5, np.float32))
