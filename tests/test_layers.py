"""Layers: one harness (output shape, weight count, config round trip, a training step, every target
against the reference interpreter), then each layer's semantics against numpy."""
import numpy as np
import pytest

import ir
from ir import build as B

import kcompile
from kcompile import activations, optimizers
from kcompile import layers as L
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
    (lambda: L.ReLU(max_value=1.0, negative_slope=0.1, threshold=0.2), (5,), (5,), 0),
    (lambda: L.Softmax(axis=1), (3, 4), (3, 4), 0),
    (lambda: L.ELU(alpha=0.5), (6,), (6,), 0),
    (lambda: L.Permute((2, 1)), (3, 4), (4, 3), 0),
    (lambda: L.Permute((3, 1, 2)), (2, 3, 4), (4, 2, 3), 0),
    (lambda: L.RepeatVector(3), (4,), (3, 4), 0),
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


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_dropout_of_every_unit_gives_zeros_in_training_as_keras(target):
    """Dropout(1.0), which Keras 3 takes: zeros in training (no 0 / 0), the inputs in inference;
    a model with it trains only what comes after it (here: the bias, toward the targets' mean)."""
    x = np.random.default_rng(5).random((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(Dropout(1.0)(x, training=True), np.zeros_like(x))
    np.testing.assert_array_equal(Dropout(1.0)(x), x)
    model = Sequential([Input((6,)), Dropout(1.0), Dense(1)])
    model.compile(optimizers.SGD(0.5), "mse", target=target)
    kernel = model.get_weights()[0]
    model.fit(x, np.full((4, 1), 2.0, np.float32), epochs=20, batch_size=4, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], kernel)
    assert model.get_weights()[1][0] == pytest.approx(2.0, abs=1e-3)


def test_keras_global_pooling_aliases_and_relu_threshold():
    assert L.GlobalAvgPool1D is L.GlobalAveragePooling1D
    assert L.GlobalAvgPool2D is L.GlobalAveragePooling2D
    assert L.GlobalMaxPool1D is L.GlobalMaxPooling1D and L.GlobalMaxPool2D is L.GlobalMaxPooling2D
    with pytest.raises(ValueError, match="`threshold` must be a finite number >= 0.0"):
        L.ReLU(threshold=-0.5)       # as Keras 3


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_softmax_over_a_tuple_of_axes_normalizes_them_jointly(target):
    """Softmax(axis=(1, 2)), as Keras 3's: each sample's 3 x 4 entries sum to one (numpy)."""
    x = np.random.default_rng(6).standard_normal((2, 3, 4)).astype(np.float32)
    model = Sequential([Input((3, 4)), L.Softmax(axis=(1, 2))])
    model.compile("sgd", "mse", target=target)
    e = np.exp(x - x.max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(model.predict(x, verbose=0), e / e.sum(axis=(1, 2), keepdims=True),
                               rtol=1e-5, atol=1e-7)
    assert L.Softmax.from_config({"axis": [1, 2]}).axis == (1, 2)
    with pytest.raises(ValueError, match="axis 0 is not a sample axis"):
        Sequential([Input((3, 4)), L.Softmax(axis=(0, 1))])


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


def test_freezing_a_model_freezes_its_layers_as_keras():
    """model.trainable sets every layer's flag (Keras): a frozen model's BatchNormalization keeps
    its moving statistics, and model.trainable = True unfreezes a layer frozen on its own."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    model = Sequential([Input(shape=(4,)), Dense(3), kcompile.layers.BatchNormalization(), Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.trainable = False
    assert [layer.trainable for layer in model.layers] == [False, False, False]
    before = model.get_weights()
    model.fit(x, x[:, :2], batch_size=8, verbose=0)   # after compile: no recompile needed
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    model.layers[0].trainable = False
    model.trainable = True
    assert [layer.trainable for layer in model.layers] == [True, True, True]
    assert len(model.trainable_weights) == 2 + 2 + 2


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_a_layer_shared_by_two_models_frozen_through_one_is_frozen_in_both(target):
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((8, 3)).astype(np.float32), rng.standard_normal((8, 2)).astype(np.float32)
    shared = Dense(2)
    first = Sequential([Input(shape=(3,)), shared])
    first.compile(optimizer="sgd", loss="mse", target=target)
    first.fit(x, y, verbose=0)
    second = Sequential([Input(shape=(3,)), shared])
    second.compile(optimizer="sgd", loss="mse", target=target)
    shared.trainable = False
    assert first.trainable_weights == [] and second.trainable_weights == []
    before = shared.get_weights()
    first.fit(x, y, verbose=0)
    second.fit(x, y, verbose=0)
    for old, new in zip(before, shared.get_weights()):
        np.testing.assert_array_equal(old, new)


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


@pytest.mark.parametrize("expression", ["x * self.w", "self.w * x", "B.mul(x, self.w)",
                                        "x * (self.w * 2.0) - self.w"])
def test_a_weight_used_directly_in_a_custom_call_is_trained(expression):
    """`x * self.w` in a custom layer's call uses the traced weight (it used to bake its value in
    as a constant, so the weight never trained): checked against SGD on mean((x w)^2) by hand."""
    class Scale(kcompile.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

        def call(self, x):
            return eval(expression, {"B": B, "x": x, "self": self})

        def compute_output_shape(self, input_shape):
            return input_shape

    model = Sequential([Input(shape=(3,)), Scale()])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse")
    model.fit(np.ones((4, 3), np.float32), np.zeros((4, 3), np.float32), epochs=3, verbose=0)
    w = 1.0
    for _ in range(3):   # every output is w_j: d mean over 4 x 3 of w_j^2 / d w_j = 4 * 2 w_j / 12
        w -= 0.1 * 2 * w / 3
    np.testing.assert_allclose(model.get_weights()[0], np.full(3, w, np.float32), rtol=1e-6)


def test_weights_take_keras_variable_operations():
    dense = Dense(2)
    Sequential([Input(shape=(3,)), dense])
    kernel = dense.kernel.numpy()
    dense.kernel.assign(dense.kernel * 0.5)
    np.testing.assert_array_equal(dense.kernel.numpy(), kernel * np.float32(0.5))
    np.testing.assert_array_equal(dense.bias.assign_add(np.ones(2)), np.ones(2))   # returns the value
    dense.bias.assign_sub(0.25)
    np.testing.assert_array_equal(dense.bias.numpy(), np.full(2, 0.75, np.float32))
    np.testing.assert_array_equal(dense.kernel[0], kernel[0] * np.float32(0.5))
    np.testing.assert_array_equal(-dense.kernel, -kernel * np.float32(0.5))
    np.testing.assert_array_equal(dense.kernel > 0, kernel > 0)
    np.testing.assert_array_equal(2 - dense.bias, np.full(2, 1.25, np.float32))
    with pytest.raises(ValueError, match="shape"):
        dense.bias.assign_add(np.ones(3))
    np.testing.assert_array_equal(dense.bias.numpy(), np.full(2, 0.75, np.float32))


def test_a_subclassed_model_is_refused_at_construction():
    class Custom(kcompile.Model):
        def __init__(self):
            super().__init__()
            self.dense = Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(NotImplementedError, match="Custom subclasses kcompile.Model"):
        Custom()

    class Stack(kcompile.Sequential):
        pass

    assert Stack([Input(shape=(3,)), Dense(2)]).output_shape == (None, 2)


def test_summary_show_trainable_and_layer_range(capsys):
    model = Sequential([Input(shape=(3,)), Dense(4, name="first"), Dropout(0.1, name="drop"),
                        Dense(2, name="last")])
    model.layers[0].trainable = False
    model.summary(show_trainable=True, layer_range=["drop", "last"])
    text = capsys.readouterr().out
    assert "Trainable" in text and "first" not in text
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [row.split("│")[1].split()[0] for row in rows] == ["drop", "last"]
    assert [row.split("│")[4].strip() for row in rows] == ["-", "Y"]
    assert "Total params: 26" in text   # the whole model's
    with pytest.raises(ValueError, match="does not match"):
        model.summary(layer_range=["nothing", "last"])
    for _ in range(3):
        model.pop()
    assert not model.built


def test_keras_initializer_names_and_a_keras_dtype_policy_config():
    from kcompile import initializers
    from kcompile.layers import Dense, Flatten
    rng_shape = (400, 300)
    for name, std in (("lecun_normal", np.sqrt(1 / 400)), ("lecun_uniform", np.sqrt(1 / 400)),
                      ("truncated_normal", 0.05 * 0.8796), ("normal", 0.05), ("uniform", 0.1 / np.sqrt(12))):
        values = initializers.get(name)(rng_shape)
        assert values.std() == pytest.approx(std, rel=0.03), name
    assert np.abs(initializers.TruncatedNormal(stddev=1.0, seed=1)((1000,))).max() <= 2.0
    q = initializers.get("orthogonal")((6, 4))
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(initializers.Identity(gain=2.0)((3, 3)), 2 * np.eye(3))
    assert isinstance(initializers.get({"class_name": "LecunNormal", "config": {"seed": 3}}),
                      initializers.LecunNormal)
    # a layer config as Keras 3 writes its dtype
    layer = Dense.from_config({"units": 3, "dtype": {"module": "keras", "class_name": "DTypePolicy",
                                                     "config": {"name": "float32"},
                                                     "registered_name": None}})
    assert layer.units == 3
    assert Flatten().compute_output_shape((None, None, 3)) == (None, None)


def test_a_numpy_integer_seed_goes_into_the_json_config():
    from kcompile.layers import Input, SpatialDropout1D
    from kcompile.models import Sequential, model_from_json
    model = Sequential([Input((6, 3)), Dropout(0.25, seed=np.int64(5)),
                        SpatialDropout1D(0.5, seed=np.int32(7))])
    configs = [layer.get_config() for layer in model.layers]
    assert [c["seed"] for c in configs] == [5, 7]
    assert all(type(c["seed"]) is int for c in configs)
    rebuilt = model_from_json(model.to_json())
    assert [layer.seed for layer in rebuilt.layers] == [5, 7]
