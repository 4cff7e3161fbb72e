"""BatchNormalization and LayerNormalization: the layer harness, then their formulas against numpy
(float64), the moving statistics updated inside the compiled train step, and inference mode."""
import numpy as np
import pytest

from kcompile import optimizers
from kcompile.layers import (BatchNormalization, Conv2D, Dense, Flatten, Input, LayerNormalization,
                             Normalization)
from kcompile.models import Sequential
from kcompile.utils import set_random_seed

from layer_harness import run_layer_test


@pytest.mark.parametrize("make_layer, input_shape, weights, trainable", [
    (lambda: BatchNormalization(), (5,), 4, 2),
    (lambda: BatchNormalization(momentum=0.5), (4, 3, 2), 4, 2),
    (lambda: BatchNormalization(axis=1, epsilon=0.01), (3, 4), 4, 2),
    (lambda: BatchNormalization(center=False), (6,), 3, 1),
])
def test_batch_normalization_harness(make_layer, input_shape, weights, trainable):
    run_layer_test(make_layer, input_shape, input_shape, weights, expected_trainable=trainable,
                   state_updates=True)


@pytest.mark.parametrize("make_layer, input_shape, weights", [
    (lambda: LayerNormalization(), (5,), 2),
    (lambda: LayerNormalization(axis=[1, 2]), (3, 4), 2),
    (lambda: LayerNormalization(axis=1, scale=False, epsilon=1e-5), (3, 4), 1),
    (lambda: LayerNormalization(center=False, scale=False), (2, 3, 4), 0),
])
def test_layer_normalization_harness(make_layer, input_shape, weights):
    run_layer_test(make_layer, input_shape, input_shape, weights)


def _moments(x, axes):
    x = x.astype(np.float64)
    return x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_batch_statistics_in_training_and_moving_averages_updated_in_the_step(target):
    """Three steps with a zero learning rate: gamma and beta stay put, the moving statistics follow
    momentum * moving + (1 - momentum) * batch statistic, and inference uses them."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((24, 3, 4)) * 3 + 2).astype(np.float32)
    model = Sequential([Input(shape=(3, 4)), BatchNormalization(momentum=0.9, epsilon=1e-3)])
    layer = model.layers[0]
    gamma = rng.uniform(0.5, 2, 4).astype(np.float32)
    beta = rng.standard_normal(4).astype(np.float32)
    layer.set_weights([gamma, beta, np.zeros(4), np.ones(4)])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss="mse", target=target)
    model.fit(x, np.zeros_like(x), batch_size=8, epochs=1, shuffle=False, verbose=0)
    moving_mean, moving_variance = np.zeros(4), np.ones(4)
    for step in range(3):
        mean, variance = _moments(x[step * 8:(step + 1) * 8], (0, 1))
        moving_mean = 0.9 * moving_mean + 0.1 * mean.reshape(-1)
        moving_variance = 0.9 * moving_variance + 0.1 * variance.reshape(-1)
    got = layer.get_weights()
    np.testing.assert_allclose(got[0], gamma)
    np.testing.assert_allclose(got[1], beta)
    np.testing.assert_allclose(got[2], moving_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[3], moving_variance, rtol=1e-5)
    expected = gamma * (x - moving_mean) / np.sqrt(moving_variance + 1e-3) + beta
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)
    # training mode normalizes by the batch's own statistics
    mean, variance = _moments(x[:8], (0, 1))
    np.testing.assert_allclose(layer(x[:8], training=True),
                               gamma * (x[:8] - mean) / np.sqrt(variance + 1e-3) + beta,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_a_direct_call_in_training_mode_updates_the_moving_statistics_once(target):
    # Keras 3: layer(x, training=True) and model(x, training=True) update the moving averages;
    # inference calls leave them alone.
    x = (np.random.default_rng(0).standard_normal((8, 3)) * 5 + 2).astype(np.float32)
    mean, variance = x.astype(np.float64).mean(0), x.astype(np.float64).var(0)
    normalized = (x - mean) / np.sqrt(variance + 1e-3)
    layer = BatchNormalization(momentum=0.9)
    np.testing.assert_allclose(layer(x, training=True), normalized, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * variance, rtol=1e-5)
    layer(x)
    layer(x, training=False)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    model = Sequential([Input(shape=(3,)), BatchNormalization()])
    model.compile(optimizer="sgd", loss="mse", target=target)
    model(x, training=True)
    model(x, training=True)
    bn = model.layers[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), (1 - 0.99 ** 2) * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               0.99 ** 2 + (1 - 0.99 ** 2) * variance, rtol=1e-5)
    model(x)
    model.predict(x, verbose=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), (1 - 0.99 ** 2) * mean, rtol=1e-5)


def test_batch_normalization_of_conv_features_normalizes_each_channel():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 5, 5, 2)).astype(np.float32)
    set_random_seed(2)
    model = Sequential([Input(shape=(5, 5, 2)), Conv2D(3, 3), BatchNormalization()])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss="mse", target="llvm")
    model.fit(x, np.zeros((6, 3, 3, 3), np.float32), batch_size=6, epochs=1, verbose=0)
    features = model.layers[0](x)
    mean, variance = _moments(features, (0, 1, 2))
    moving_mean, moving_variance = model.layers[1].get_weights()[2:]
    np.testing.assert_allclose(moving_mean, 0.01 * mean.reshape(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(moving_variance, 0.99 + 0.01 * variance.reshape(-1), rtol=1e-5)


def test_frozen_batch_normalization_runs_in_inference_mode():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    model = Sequential([Input(shape=(4,)), Dense(4), BatchNormalization()])
    bn = model.layers[1]
    bn.trainable = False
    before = bn.get_weights()
    model.compile(optimizer="sgd", loss="mse", target="llvm")
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    for old, new in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_layer_normalization_matches_numpy():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((5, 3, 6)) * 4 + 1).astype(np.float32)
    for axis, reduce_axes in [(-1, (2,)), ([1, 2], (1, 2))]:
        model = Sequential([Input(shape=(3, 6)), LayerNormalization(axis=axis)])
        layer = model.layers[0]
        gamma = rng.uniform(0.5, 2, layer.gamma.shape).astype(np.float32)
        beta = rng.standard_normal(layer.beta.shape).astype(np.float32)
        layer.set_weights([gamma, beta])
        mean, variance = _moments(x, reduce_axes)
        expected = (x - mean) / np.sqrt(variance + 1e-3) * gamma + beta
        for target in ("reference", "llvm"):
            model.compile(optimizer="sgd", loss="mse", target=target)
            np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)


def test_normalization_arguments_are_checked():
    with pytest.raises(ValueError, match="batch axis"):
        BatchNormalization(axis=0).compute_output_shape((None, 4))
    with pytest.raises(ValueError, match="out of range"):
        LayerNormalization(axis=3).compute_output_shape((None, 4, 5))
    with pytest.raises(ValueError, match="momentum"):
        BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        LayerNormalization(epsilon=0)
    with pytest.raises(NotImplementedError):
        LayerNormalization(rms_scaling=True)


def test_batch_normalization_weights_are_named_and_ordered_as_in_keras():
    model = Sequential([Input(shape=(3,)), BatchNormalization()])
    assert [w.path for w in model.weights] == [
        "batch_normalization/gamma", "batch_normalization/beta",
        "batch_normalization/moving_mean", "batch_normalization/moving_variance"]
    assert [w.trainable for w in model.weights] == [True, True, False, False]
    assert [float(w.numpy()[0]) for w in model.weights] == [1.0, 0.0, 0.0, 1.0]


def test_a_model_with_batch_normalization_saves_its_moving_statistics(tmp_path):
    from kcompile.models import load_model
    rng = np.random.default_rng(5)
    x = rng.standard_normal((20, 6)).astype(np.float32)
    model = Sequential([Input(shape=(6,)), Dense(4), BatchNormalization(), Flatten(), Dense(2)])
    model.compile(optimizer="adam", loss="mse", target="llvm")
    model.fit(x, x[:, :2], batch_size=10, epochs=2, verbose=0)
    model.save(tmp_path / "bn.keras")
    loaded = load_model(tmp_path / "bn.keras")
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Normalization (the preprocessing layer): statistics from adapt(), checked against numpy
# ----------------------------------------------------------------------------------------------

def _features(rng, n=120):
    scale = np.array([1.0, 10.0, 100.0, 0.1], np.float32)
    return (rng.standard_normal((n, 4)) * scale + [5.0, -2.0, 50.0, 0.0]).astype(np.float32)


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_normalization_adapts_to_numpy_statistics_and_normalizes(target):
    rng = np.random.default_rng(7)
    x = _features(rng)
    layer = Normalization()
    layer.adapt(x)
    mean, variance, count = layer.get_weights()
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(variance, x.astype(np.float64).var(0), rtol=1e-6)
    assert count == 120 and [w.trainable for w in layer.weights] == [False] * 3
    assert layer.mean.shape == layer.variance.shape == (1, 4)     # Keras's broadcast shape
    np.testing.assert_array_equal(layer.mean[0], mean)
    model = Sequential([Input(shape=(4,)), layer])
    model.compile(loss="mse", target=target)
    out = model.predict(x, verbose=0)
    np.testing.assert_allclose(out, (x - x.mean(0)) / x.std(0), rtol=1e-4, atol=1e-5)
    # adapting again after compiling takes effect at the next call
    layer.adapt(x * 2.0)
    np.testing.assert_allclose(model.predict(x * 2.0, verbose=0), out, rtol=1e-4, atol=1e-5)


def test_normalization_merges_batches_and_keeps_the_axes_asked_for():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((30, 3, 5)).astype(np.float32) * 3 + 1
    whole, batched = Normalization(axis=(1, 2)), Normalization(axis=(1, 2))
    whole.adapt(x)
    batched.adapt(iter([x[:7], x[7:20], x[20:]]))      # unequal batches, merged exactly
    for a, b in zip(whole.get_weights(), batched.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_allclose(whole.get_weights()[0], x.astype(np.float64).mean(0), rtol=1e-5)
    single = Normalization(axis=None)
    single.adapt([x[:10], x[10:]])
    np.testing.assert_allclose(single.get_weights()[:2], [x.mean(), x.var()], rtol=1e-5)
    per_step = Normalization(axis=1)
    per_step.adapt(x)
    np.testing.assert_allclose(per_step.get_weights()[0], x.mean(axis=(0, 2)), rtol=1e-5)


def test_normalization_with_given_statistics_and_inverted():
    x = np.array([[5.0, 7.0], [1.0, -1.0]], np.float32)
    fixed = Normalization(mean=3.0, variance=4.0)
    np.testing.assert_allclose(fixed(x), (x - 3.0) / 2.0)
    assert fixed.weights == []                       # constants, as in Keras
    inverse = Normalization(mean=[1.0, 2.0], variance=[4.0, 9.0], invert=True)
    np.testing.assert_allclose(inverse(x), x * [2.0, 3.0] + [1.0, 2.0])
    tiny = Normalization(mean=0.0, variance=0.0)     # sqrt(variance) is clamped to epsilon
    np.testing.assert_allclose(tiny(np.array([[1e-7]], np.float32)), [[1.0]], rtol=1e-6)


def test_an_adapted_model_trains_saves_and_loads(tmp_path):
    from kcompile import load_model
    rng = np.random.default_rng(9)
    x = _features(rng)
    y = x @ rng.standard_normal((4, 1)).astype(np.float32)
    normalizer = Normalization()
    normalizer.adapt(x)
    model = Sequential([normalizer, Dense(8, activation="relu"), Dense(1)])
    model.compile(optimizer="adam", loss="mse", target="llvm")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    np.testing.assert_array_equal(normalizer.get_weights()[0], x.astype(np.float64).mean(0)
                                  .astype(np.float32))  # training leaves the statistics alone
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_normalization_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="both `mean` and `variance`"):
        Normalization(mean=1.0)
    with pytest.raises(ValueError, match="batch axis"):
        Normalization(axis=0).build((None, 3))
    with pytest.raises(ValueError, match="adapt.*would not be used"):
        Normalization(mean=0.0, variance=1.0).adapt(np.ones((2, 3), np.float32))
    layer = Normalization()
    layer.adapt(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"statistics of shape \(3,\)"):
        layer.adapt(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="inf or NaN"):
        Normalization().adapt(np.array([[np.nan]], np.float32))
    with pytest.raises(ValueError, match="empty iterable"):
        Normalization().adapt(iter([]))
