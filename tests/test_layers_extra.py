"""Identity, ActivityRegularization, PReLU, UnitNormalization and GroupNormalization: outputs,
input gradients and weight gradients against float64 numpy (forward written here, gradients by
central differences) on every target, training steps compiled against the reference interpreter,
Keras 3 parity (predictions and one SGD step with Keras's weights, configs, output shapes),
config, JSON and file round trips, and the errors of bad arguments.

GaussianNoise, GaussianDropout and AlphaDropout: the statistics of their noise in training (mean,
variance, skewness, kurtosis, Kolmogorov-Smirnov distance to the normal distribution; AlphaDropout's
drop fraction and Keras's affine constants), input gradients from the noise drawn, the reference
interpreter and compiled code drawing the same noise from the same seed, the inputs themselves in
inference, and (with the layers above) Keras parity of configs and inference, round trips, errors."""
import json
import math
import textwrap

import numpy as np
import pytest

import ir
from ir import build as B

import kcompile
from kcompile import initializers, optimizers, regularizers
from kcompile import layers as L
from kcompile.describe import describe
from kcompile.layers.layer import TraceScope
from kcompile.models import Sequential, load_model, model_from_json
from kcompile.utils import set_random_seed
from keras_subprocess import keras_available, run_keras_models
from layer_harness import central_differences, check_fit_matches_reference, Offset, run_layer_test
from targets import TARGETS


# -- float64 numpy references ----------------------------------------------------------------------

def prelu(x, alpha):
    return np.where(x >= 0, x, alpha * x)


def unit_normalization(x, axes):
    norm = np.sqrt((x * x).sum(axis=tuple(axes), keepdims=True))
    return x / np.maximum(norm, 1e-12)


def group_normalization(x, groups, axis, gamma=None, beta=None, epsilon=1e-3):
    """Channels along `axis` in `groups` consecutive groups; each group normalized over the rest
    of the sample; then gamma * . + beta per channel."""
    moved = np.moveaxis(x, axis, -1)
    channels = moved.shape[-1]
    grouped = moved.reshape(moved.shape[:-1] + (groups, channels // groups))
    axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = grouped.mean(axis=axes, keepdims=True)
    variance = grouped.var(axis=axes, keepdims=True)
    out = ((grouped - mean) / np.sqrt(variance + epsilon)).reshape(moved.shape)
    if gamma is not None:
        out = out * gamma
    if beta is not None:
        out = out + beta
    return np.moveaxis(out, -1, axis)


# (layer, per-sample input shape, weights to set (rng, shapes) -> list, numpy forward(x, *weights),
#  numpy penalty added to the loss (output, batch) -> float, or None)
def _random_weights(rng, shapes):
    return [rng.uniform(0.2, 1.5, shape) * rng.choice([-1, 1], shape) for shape in shapes]


CASES = {
    "identity": (lambda: L.Identity(), (3, 4), _random_weights, lambda x: x, None),
    "activity_regularization": (
        lambda: L.ActivityRegularization(l1=0.03, l2=0.2), (3, 4), _random_weights, lambda x: x,
        lambda out, n: (0.03 * np.abs(out).sum() + 0.2 * (out * out).sum()) / n),
    "activity_regularization_l2": (
        lambda: L.ActivityRegularization(l2=0.5), (5,), _random_weights, lambda x: x,
        lambda out, n: 0.5 * (out * out).sum() / n),
    "prelu": (lambda: L.PReLU(), (3, 4), _random_weights, prelu, None),
    "prelu_shared": (lambda: L.PReLU(shared_axes=[1, 2]), (2, 3, 4), _random_weights, prelu, None),
    "prelu_shared_int": (lambda: L.PReLU(shared_axes=2), (3, 4), _random_weights, prelu, None),
    "prelu_regularized": (lambda: L.PReLU(alpha_regularizer=regularizers.L2(0.3)), (4,),
                          _random_weights, prelu, None),
    "unit_normalization": (lambda: L.UnitNormalization(), (3, 4), _random_weights,
                           lambda x: unit_normalization(x, [-1]), None),
    "unit_normalization_axes": (lambda: L.UnitNormalization(axis=[1, 2]), (3, 4),
                                _random_weights, lambda x: unit_normalization(x, [1, 2]), None),
    "unit_normalization_axis1": (lambda: L.UnitNormalization(axis=1), (3, 2, 2),
                                 _random_weights, lambda x: unit_normalization(x, [1]), None),
    "group_normalization": (lambda: L.GroupNormalization(groups=2), (3, 4), _random_weights,
                            lambda x, g, b: group_normalization(x, 2, -1, g, b), None),
    "group_normalization_instance": (
        lambda: L.GroupNormalization(groups=-1, epsilon=0.01), (2, 3, 4), _random_weights,
        lambda x, g, b: group_normalization(x, 4, -1, g, b, epsilon=0.01), None),
    "group_normalization_axis1": (
        lambda: L.GroupNormalization(groups=3, axis=1), (6, 2), _random_weights,
        lambda x, g, b: group_normalization(x, 3, 1, g, b), None),
    "group_normalization_one_group_no_center": (
        lambda: L.GroupNormalization(groups=1, center=False), (2, 4), _random_weights,
        lambda x, g: group_normalization(x, 1, -1, g), None),
    "group_normalization_no_scale": (
        lambda: L.GroupNormalization(groups=2, scale=False, beta_regularizer="l2"), (2, 2, 4),
        _random_weights, lambda x, b: group_normalization(x, 2, -1, None, b), None),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_and_gradients_match_numpy(name, target):
    """Predictions are the numpy forward; one SGD step of learning rate 1 moves the Offset weight
    by minus the summed input gradient and the layer's weights by minus theirs, both against
    central differences of the float64 loss (mse, plus the weights' and activity penalties)."""
    make_layer, shape, make_weights, forward, penalty = CASES[name]
    rng = np.random.default_rng(1)
    batch = 3
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    model = Sequential([L.Input(shape), Offset(), make_layer()])
    layer = model.layers[1]
    weights = [w.astype(np.float32) for w in make_weights(rng, [w.shape for w in layer.weights])]
    layer.set_weights(weights)
    weights = [w.astype(np.float64) for w in weights]
    want = forward(x.astype(np.float64), *weights)
    y = rng.standard_normal(want.shape).astype(np.float32)
    assert model.output_shape == (None,) + want.shape[1:]
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)

    regularized = [(i, r) for i, w in enumerate(layer.weights)
                   for v, r in layer._regularized if v is w]

    def loss(x, *weights):
        out = forward(x, *weights)
        value = ((out - y) ** 2).mean()
        if penalty is not None:
            value += penalty(out, batch)
        for i, regularizer in regularized:
            config = regularizer.get_config()
            value += config.get("l1", 0.0) * np.abs(weights[i]).sum() \
                + config.get("l2", 0.0) * (weights[i] ** 2).sum()
        return value

    arrays = [x.astype(np.float64)] + weights
    assert model.evaluate(x, y, verbose=0) == pytest.approx(loss(*arrays), rel=1e-5)
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(-model.layers[0].w.numpy(),
                               central_differences(loss, arrays, 0).sum(axis=0),
                               rtol=1e-4, atol=1e-6, err_msg="input gradient")
    for i, (variable, before) in enumerate(zip(layer.weights, weights)):
        np.testing.assert_allclose(before - variable.numpy(), central_differences(loss, arrays, i + 1),
                                   rtol=1e-4, atol=1e-6, err_msg=f"{variable.path} gradient")


@pytest.mark.parametrize("target", TARGETS)
def test_unit_normalization_of_a_zero_sample_is_zero_with_a_finite_gradient(target):
    """As Keras: x * min(1 / ||x||, 1e12) is 0 for x = 0 (not NaN), and training stays finite."""
    x = np.zeros((2, 3), np.float32)
    x[1] = [3.0, 0.0, 4.0]
    model = Sequential([L.Input((3,)), Offset(), L.UnitNormalization()])
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    np.testing.assert_allclose(model.predict(x, verbose=0), [[0, 0, 0], [0.6, 0, 0.8]], rtol=1e-6)
    model.fit(x, np.ones_like(x), batch_size=2, epochs=1, verbose=0)
    assert np.all(np.isfinite(model.layers[0].w.numpy()))


def test_identity_and_activity_regularization_return_their_inputs_eagerly():
    x = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32)
    for layer in (L.Identity(), L.ActivityRegularization(1.0, 1.0)):
        np.testing.assert_array_equal(layer(x), x)
        np.testing.assert_array_equal(layer(x, training=True), x)
        assert layer.weights == [] and layer.compute_output_shape((None, 3, 2)) == (None, 3, 2)


def test_prelu_alpha_has_the_per_sample_shape_with_shared_axes_one():
    for shared, shape in [(None, (5, 6, 3)), (1, (1, 6, 3)), ([1, 2], (1, 1, 3)), ((3,), (5, 6, 1))]:
        model = Sequential([L.Input((5, 6, 3)), L.PReLU(shared_axes=shared)])
        (alpha,) = model.layers[0].weights
        assert alpha.name == "alpha" and alpha.shape == shape and alpha.path.endswith("/alpha")
        np.testing.assert_array_equal(alpha.numpy(), np.zeros(shape))    # 'Zeros': a relu
    with pytest.raises(ValueError, match=r"shared axis 3 is not an axis of inputs of shape "
                                         r"\(None, 5, 6\)"):
        Sequential([L.Input((5, 6)), L.PReLU(shared_axes=[1, 3])])
    layer = L.PReLU()
    Sequential([L.Input((4,)), layer])
    with pytest.raises(ValueError, match="incompatible with the layer"):
        Sequential([L.Input((5,)), layer])


def test_group_normalization_weights_and_groups():
    model = Sequential([L.Input((3, 8)), L.GroupNormalization(groups=-1)])
    layer = model.layers[0]
    assert [w.name for w in layer.weights] == ["gamma", "beta"]
    assert [w.shape for w in layer.weights] == [(8,), (8,)]
    assert layer.groups == 8 and layer.get_config()["groups"] == 8     # as Keras: -1 is resolved
    assert len(Sequential([L.Input((4,)), L.GroupNormalization(2, scale=False)]).weights) == 1
    assert Sequential([L.Input((4,)), L.GroupNormalization(2, center=False, scale=False)]).weights == []
    for groups, message in [(3, r"number of channels \(8\) must be a multiple of the number of "
                                r"groups \(3\)"),
                            (16, r"number of groups \(16\) cannot be more than the number of "
                                 r"channels \(8\)"),
                            (32, r"number of groups \(32\) cannot be more")]:
        with pytest.raises(ValueError, match=message):
            Sequential([L.Input((3, 8)), L.GroupNormalization(groups)])
    with pytest.raises(ValueError, match="batch axis 0"):
        Sequential([L.Input((3, 8)), L.GroupNormalization(1, axis=0)])
    with pytest.raises(ValueError, match=r"axis 3 is out of range"):
        Sequential([L.Input((3, 8)), L.GroupNormalization(1, axis=3)])


# -- the harness, and training compiled against the reference ---------------------------------

@pytest.mark.parametrize("make_layer, shape, weights", [
    (lambda: L.PReLU(alpha_initializer=initializers.RandomUniform(0.1, 0.4)), (3, 4), 1),
    (lambda: L.PReLU(alpha_initializer="ones", shared_axes=[1]), (3, 4), 1),
    (lambda: L.GroupNormalization(2, gamma_initializer="random_normal",
                                  beta_initializer="random_normal"), (3, 4), 2),
    (lambda: L.GroupNormalization(3, axis=1, gamma_initializer="random_normal"), (3, 2, 2), 2),
], ids=["prelu", "prelu_shared", "group", "group_axis1"])
def test_layer_harness(make_layer, shape, weights):
    run_layer_test(make_layer, shape, shape, weights, expected_trainable=weights)


def _stack():
    return Sequential([L.Input((6, 4)), L.Dense(8), L.PReLU(alpha_initializer="random_uniform",
                                                            shared_axes=1),
                       L.GroupNormalization(4), L.ActivityRegularization(0.01, 0.02),
                       L.Dense(6, activation="tanh"), L.UnitNormalization(axis=[1, 2]), L.Identity(),
                       L.Flatten(), L.Dense(2)])


def test_a_few_fit_steps_compiled_agree_with_the_reference():
    check_fit_matches_reference(_stack)


# -- the noise layers -------------------------------------------------------------------------------

def _run_in_training(layer, x, seed, target, weights=None):
    """The layer's output in training mode, and the gradient of sum(output * weights) with respect
    to its input, from one traced graph run on `target` with the train step's `seed`."""
    node = B.arg("x", "f32", (None,) + x.shape[1:])
    seed_node = B.arg("seed", "u32", ())
    with TraceScope({}, seed=seed_node):
        out = layer(node, training=True)
    outputs, inputs, feeds = [("y", out)], [node, seed_node], {"x": x, "seed": np.uint32(seed)}
    if weights is not None:
        weights_node = B.arg("weights", "f32", node.shape)
        (gradient,) = ir.gradients(B.reduce_sum(B.mul(out, weights_node)), [node])
        outputs.append(("dx", gradient))
        inputs.append(weights_node)
        feeds["weights"] = weights
    graph = ir.Graph("noise", inputs, outputs)
    if target == "reference":
        result = ir.run(graph, feeds)
    else:
        from opinfo import compiled_runner
        result = compiled_runner(graph).run(feeds)
    return [np.asarray(result[name]) for name, _ in outputs]


_normal_cdf = np.vectorize(lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))))


def assert_standard_normal(z):
    """z (float64, n draws) looks like independent standard normal draws: each statistic within
    about five of its standard errors (the draws are fixed by the seed: no flakiness), and a
    Kolmogorov-Smirnov distance below its 0.1% critical value."""
    z = np.sort(np.ravel(z).astype(np.float64))
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n), z.mean()
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n), z.var()
    standardized = (z - z.mean()) / z.std()
    assert abs((standardized ** 3).mean()) < 5 * math.sqrt(6 / n), "skewness"
    assert abs((standardized ** 4).mean() - 3) < 5 * math.sqrt(24 / n), "kurtosis"
    cdf = _normal_cdf(z)
    distance = max((np.arange(1, n + 1) / n - cdf).max(), (cdf - np.arange(n) / n).max())
    assert distance < 1.95 / math.sqrt(n), f"Kolmogorov-Smirnov distance {distance}"


def test_the_noise_is_standard_normal_and_independent():
    """GaussianNoise(stddev=1) on zeros: 10^5 draws; neighbours uncorrelated; another layer name,
    seed argument or train-step seed draws other noise, the same ones the same noise."""
    zeros = np.zeros((200, 500), np.float32)
    (z,) = _run_in_training(L.GaussianNoise(1.0, name="noise"), zeros, 7, "reference")
    assert_standard_normal(z)
    assert np.abs(z).max() < 6
    flat = z.ravel().astype(np.float64)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5 / math.sqrt(flat.size)
    (same,) = _run_in_training(L.GaussianNoise(1.0, name="noise"), zeros, 7, "reference")
    np.testing.assert_array_equal(same, z)
    for layer, seed in [(L.GaussianNoise(1.0, name="other"), 7),
                        (L.GaussianNoise(1.0, seed=1, name="noise"), 7),
                        (L.GaussianNoise(1.0, name="noise"), 8)]:
        (other,) = _run_in_training(layer, zeros, seed, "reference")
        assert abs(np.corrcoef(flat, other.ravel())[0, 1]) < 5 / math.sqrt(flat.size)


@pytest.mark.parametrize("target", TARGETS)
def test_gaussian_noise_statistics_and_input_gradient(target):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 400)).astype(np.float32)
    weights = rng.standard_normal(x.shape).astype(np.float32)
    out, gradient = _run_in_training(L.GaussianNoise(0.3), x, 11, target, weights)
    assert_standard_normal((out.astype(np.float64) - x) / 0.3)
    np.testing.assert_array_equal(gradient, weights)          # d(x + noise)/dx = 1


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_gaussian_dropout_statistics_and_input_gradient(target, rate):
    """x * n, n normal of mean 1 and standard deviation sqrt(rate / (1 - rate)), as Keras."""
    rng = np.random.default_rng(1)
    x = (rng.uniform(0.5, 2.0, (100, 400)) * rng.choice([-1, 1], (100, 400))).astype(np.float32)
    weights = rng.standard_normal(x.shape).astype(np.float32)
    out, gradient = _run_in_training(L.GaussianDropout(rate), x, 3, target, weights)
    multiplier = out.astype(np.float64) / x
    assert_standard_normal((multiplier - 1) / math.sqrt(rate / (1 - rate)))
    np.testing.assert_allclose(gradient, weights * multiplier, rtol=1e-5, atol=1e-6)


def _alpha_dropout_constants(rate):
    """Keras's: SELU's saturation -alpha * scale, and a, b making a * x + b of mean 0 and variance 1
    for x standardized with a fraction `rate` replaced by the saturation."""
    saturation = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - rate) * (1 + rate * saturation ** 2)) ** -0.5
    return saturation, a, -a * saturation * rate


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_alpha_dropout_statistics_and_input_gradient(target, rate):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 500)).astype(np.float32)
    weights = rng.standard_normal(x.shape).astype(np.float32)
    out, gradient = _run_in_training(L.AlphaDropout(rate), x, 5, target, weights)
    saturation, a, b = _alpha_dropout_constants(rate)
    kept = np.isclose(out, a * x.astype(np.float64) + b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[~kept], a * saturation + b, rtol=1e-6)
    assert abs((1 - kept.mean()) - rate) < 5 * math.sqrt(rate * (1 - rate) / x.size)
    # the self-normalizing property: standardized inputs stay of mean 0 and variance 1
    assert abs(out.mean()) < 5 / math.sqrt(x.size) and abs(out.var() - 1) < 0.02
    np.testing.assert_allclose(gradient, weights * a * kept, rtol=1e-6, atol=1e-7)
    # noise_shape: one mask entry per sample, the same for every feature
    (rows,) = _run_in_training(L.AlphaDropout(rate, noise_shape=(None, 1)), x[:, :8], 5, target)
    kept = np.isclose(rows, a * x[:, :8].astype(np.float64) + b, rtol=1e-6, atol=1e-6)
    assert np.all(kept == kept[:, :1]) and 0 < kept[:, 0].mean() < 1


@pytest.mark.parametrize("make_layer", [lambda: L.GaussianNoise(0.5, seed=2),
                                        lambda: L.GaussianDropout(0.3),
                                        lambda: L.AlphaDropout(0.3, noise_shape=(None, 1, 6))],
                         ids=["noise", "gaussian_dropout", "alpha_dropout"])
def test_compiled_code_draws_the_noise_the_reference_draws(make_layer):
    if "llvm" not in TARGETS:
        pytest.skip("the LLVM backend is not available")
    x = np.random.default_rng(4).standard_normal((40, 5, 6)).astype(np.float32)
    weights = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    reference = _run_in_training(make_layer(), x, 123, "reference", weights)
    compiled = _run_in_training(make_layer(), x, 123, "llvm", weights)
    assert not np.array_equal(reference[0], x)
    for got, want in zip(compiled, reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


NOISE_LAYERS = [lambda: L.GaussianNoise(0.4), lambda: L.GaussianDropout(0.5, seed=1),
                lambda: L.AlphaDropout(0.3), lambda: L.AlphaDropout(0.2, noise_shape=(None, 1, 4))]


@pytest.mark.parametrize("target", TARGETS)
def test_the_noise_layers_are_the_identity_in_inference(target):
    x = np.random.default_rng(6).standard_normal((7, 3, 4)).astype(np.float32)
    model = Sequential([L.Input((3, 4))] + [make() for make in NOISE_LAYERS])
    model.compile(optimizer="sgd", loss="mse", target=target)
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    assert model.evaluate(x, x, verbose=0) == 0.0
    for make in NOISE_LAYERS:
        layer = make()
        np.testing.assert_array_equal(layer(x), x)
        np.testing.assert_array_equal(layer(x, training=False), x)
        noisy = layer(x, training=True)         # eagerly: a seed of the global generator
        assert noisy.shape == x.shape and not np.array_equal(noisy, x)
        assert layer.weights == [] and layer.compute_output_shape((None, 3, 4)) == (None, 3, 4)
    for zero in (L.GaussianNoise(0.0), L.GaussianDropout(0.0), L.AlphaDropout(0.0)):
        np.testing.assert_array_equal(zero(x, training=True), x)


def _noisy_model(noise=True):
    noise_layers = [L.GaussianNoise(0.2), L.GaussianDropout(0.3, seed=4),
                    L.AlphaDropout(0.2, seed=1)] if noise else []
    return Sequential([L.Input((5, 4)), L.Dense(6, activation="selu")] + noise_layers[:2]
                      + [L.Dense(6, activation="selu")] + noise_layers[2:] + [L.Flatten(), L.Dense(2)])


def test_fit_with_noise_compiled_agrees_with_the_reference():
    """The same seeds draw the same noise in the compiled step as in the reference interpreter's;
    the noise is really there (the losses differ from those of the model without it)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 5, 4)).astype(np.float32)
    y = rng.standard_normal((12, 2)).astype(np.float32)
    results = {}
    for target, noise in [(t, True) for t in TARGETS] + [("reference", False)]:
        set_random_seed(5)
        model = _noisy_model(noise)
        model.compile(optimizer=optimizers.Adam(learning_rate=0.01), loss="mse", target=target)
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        results[target, noise] = (history.history["loss"], model.get_weights(),
                                  model.predict(x, verbose=0))
    reference = results["reference", True]
    for target in TARGETS:
        losses, weights, prediction = results[target, True]
        np.testing.assert_allclose(losses, reference[0], rtol=1e-4, err_msg=target)
        for got, want in zip(weights, reference[1]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=target)
        np.testing.assert_allclose(prediction, reference[2], rtol=1e-4, atol=1e-5, err_msg=target)
    without = results["reference", False][0]
    assert all(abs(a - b) > 1e-4 for a, b in zip(reference[0], without))


def test_noise_layer_configs_have_keras_keys():
    base = {"trainable": True, "dtype": "float32"}
    assert L.GaussianNoise(0.1).get_config() == {"name": "gaussian_noise", **base, "stddev": 0.1,
                                                 "seed": None}
    assert L.GaussianDropout(0.3, seed=2).get_config() == {"name": "gaussian_dropout", **base,
                                                           "rate": 0.3, "seed": 2}
    assert L.AlphaDropout(0.2).get_config() == {"name": "alpha_dropout", **base, "rate": 0.2,
                                                "seed": None, "noise_shape": None}
    assert L.AlphaDropout(0.2, noise_shape=[None, 1]).get_config()["noise_shape"] == (None, 1)
    assert L.GaussianNoise(0.1, seed=np.int64(3)).get_config()["seed"] == 3


@pytest.mark.parametrize("make, match", [
    (lambda: L.GaussianDropout(1.0), "rate=1"),
    (lambda: L.AlphaDropout(1.0), "rate=1"),
    (lambda: L.AlphaDropout(0.5, noise_shape=(None, 2)), r"AlphaDropout noise_shape \(None, 2\) "
                                                          r"does not broadcast"),
    (lambda: L.AlphaDropout(0.5, noise_shape=(None, 3, 1)), r"AlphaDropout noise_shape.*rank"),
])
def test_training_with_impossible_noise_is_refused(make, match):
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=match):
        make()(x, training=True)


# -- configs, JSON, files -----------------------------------------------------------------------

ALL_LAYERS = [lambda: L.Identity(), lambda: L.Identity(name="pass"),
              lambda: L.ActivityRegularization(), lambda: L.ActivityRegularization(0.1, 0.2),
              lambda: L.PReLU(), lambda: L.PReLU(shared_axes=[1, 2], alpha_regularizer="l2"),
              lambda: L.PReLU(alpha_initializer="random_uniform", shared_axes=1),
              lambda: L.UnitNormalization(), lambda: L.UnitNormalization(axis=(1, 2)),
              lambda: L.GroupNormalization(), lambda: L.GroupNormalization(-1, axis=2, epsilon=0.1),
              lambda: L.GroupNormalization(4, center=False, gamma_regularizer="l1"),
              lambda: L.GaussianNoise(0.3), lambda: L.GaussianNoise(0.0, seed=5),
              lambda: L.GaussianDropout(0.1), lambda: L.GaussianDropout(0.5, seed=2, name="gd"),
              lambda: L.AlphaDropout(0.2), lambda: L.AlphaDropout(0.3, noise_shape=(None, 1, 4), seed=9)]


@pytest.mark.parametrize("index", range(len(ALL_LAYERS)))
def test_config_round_trips(index):
    layer = ALL_LAYERS[index]()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    through_json = json.loads(json.dumps(L.serialize(layer)))
    assert L.deserialize(through_json).get_config() == config
    assert kcompile.saving.deserialize_keras_object(
        json.loads(json.dumps(kcompile.saving.serialize_keras_object(layer)))).get_config() == config


def test_configs_have_keras_keys_and_defaults():
    base = {"trainable": True, "dtype": "float32"}
    assert L.Identity().get_config() == {"name": "identity", **base}
    assert L.ActivityRegularization().get_config() == {"name": "activity_regularization", **base,
                                                       "l1": 0.0, "l2": 0.0}
    assert L.PReLU().get_config() == {
        "name": "p_re_lu", **base, "alpha_initializer": {"class_name": "Zeros", "config": {}},
        "alpha_regularizer": None, "alpha_constraint": None, "shared_axes": None}
    assert L.PReLU(shared_axes=(1, 2)).get_config()["shared_axes"] == [1, 2]
    assert L.UnitNormalization().get_config() == {"name": "unit_normalization", **base, "axis": -1}
    assert L.UnitNormalization((1, 2)).get_config()["axis"] == [1, 2]
    assert L.GroupNormalization().get_config() == {
        "name": "group_normalization", **base, "groups": 32, "axis": -1, "epsilon": 1e-3,
        "center": True, "scale": True, "beta_initializer": {"class_name": "Zeros", "config": {}},
        "gamma_initializer": {"class_name": "Ones", "config": {}}, "beta_regularizer": None,
        "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None}


def test_model_from_json_and_save_load_keep_the_predictions(tmp_path):
    set_random_seed(0)
    model = _stack()
    x = np.random.default_rng(0).standard_normal((5, 6, 4)).astype(np.float32)
    want = model.predict(x, verbose=0)
    clone = model_from_json(model.to_json())
    assert [type(a) for a in clone.layers] == [type(b) for b in model.layers]
    assert [a.get_config() for a in clone.layers] == [b.get_config() for b in model.layers]
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(x, verbose=0), want)
    model.compile(optimizer="adam", loss="mse", target="reference")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")      # (compiled for the reference target, as saved)
    assert [a.get_config() for a in loaded.layers] == [b.get_config() for b in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    y = np.zeros((5, 2), np.float32)
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0),
                                                             rel=1e-6)


def test_the_description_covers_the_arguments():
    """The compile cache's key (kcompile.describe) tells the layers' arguments apart."""
    def model(stddev=0.1, rate=0.2, alpha_rate=0.3, seed=None, groups=2, axis=-1, l2=0.1, shared=None):
        return Sequential([L.Input((3, 4)), L.GaussianNoise(stddev, seed=seed),
                           L.GaussianDropout(rate), L.AlphaDropout(alpha_rate),
                           L.GroupNormalization(groups), L.UnitNormalization(axis),
                           L.ActivityRegularization(l2=l2), L.PReLU(shared_axes=shared)])
    base = describe(list(model().layers))
    assert describe(list(model().layers)) == base
    for changed in [model(stddev=0.2), model(rate=0.3), model(alpha_rate=0.1), model(seed=1),
                    model(groups=4), model(axis=1), model(l2=0.2), model(shared=1)]:
        assert describe(list(changed.layers)) != base


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: L.ActivityRegularization(l1=-0.1), ValueError, r"`l1`.*l1=-0.1"),
    (lambda: L.ActivityRegularization(l2="big"), ValueError, r"`l2`.*l2='big'"),
    (lambda: L.ActivityRegularization(l2=float("nan")), ValueError, r"`l2`"),
    (lambda: L.PReLU(shared_axes=0), ValueError, r"`shared_axes`.*shared_axes=0"),
    (lambda: L.PReLU(shared_axes=[1, -1]), ValueError, r"`shared_axes`.*\[1, -1\]"),
    (lambda: L.PReLU(shared_axes=1.0), ValueError, r"`shared_axes`"),
    (lambda: L.PReLU(alpha_constraint="non_neg"), NotImplementedError, "alpha_constraint"),
    (lambda: L.PReLU(alpha_initializer="nope"), ValueError, "nope"),
    (lambda: L.UnitNormalization(axis="last"), TypeError, r"`axis`.*axis='last'"),
    (lambda: L.UnitNormalization(axis=[]), TypeError, r"`axis`"),
    (lambda: L.UnitNormalization(axis=[1, 1.5]), TypeError, r"`axis`"),
    (lambda: L.GroupNormalization(groups=0), ValueError, r"`groups`.*groups=0"),
    (lambda: L.GroupNormalization(groups=-2), ValueError, r"`groups`.*groups=-2"),
    (lambda: L.GroupNormalization(groups=2.0), ValueError, r"`groups`"),
    (lambda: L.GroupNormalization(axis=[1, 2]), ValueError, r"`axis`.*axis=\[1, 2\]"),
    (lambda: L.GroupNormalization(epsilon=0), ValueError, r"`epsilon`"),
    (lambda: L.GroupNormalization(gamma_constraint="non_neg"), NotImplementedError,
     "gamma_constraint"),
    (lambda: L.Identity(units=3), ValueError, "Unrecognized keyword arguments"),
    (lambda: L.GaussianNoise(-0.1), ValueError, r"`stddev`.*between 0 and 1.*stddev=-0.1"),
    (lambda: L.GaussianNoise(1.5), ValueError, r"`stddev`.*stddev=1.5"),
    (lambda: L.GaussianNoise("0.1"), ValueError, r"`stddev`"),
    (lambda: L.GaussianNoise(0.1, seed=1.5), ValueError, r"GaussianNoise seed.*seed=1.5"),
    (lambda: L.GaussianDropout(1.2), ValueError, r"`rate`.*rate=1.2"),
    (lambda: L.GaussianDropout(True), ValueError, r"`rate`"),
    (lambda: L.GaussianDropout(0.1, seed="a"), ValueError, r"GaussianDropout seed"),
    (lambda: L.AlphaDropout(-0.5), ValueError, r"`rate`.*rate=-0.5"),
    (lambda: L.AlphaDropout(0.5, seed=2.0), ValueError, r"AlphaDropout seed"),
])
def test_bad_arguments_are_refused_naming_them(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("layer, shape, match", [
    (lambda: L.UnitNormalization(axis=3), (4, 3), r"axis 3 is out of range.*\(None, 4, 3\)"),
    (lambda: L.UnitNormalization(axis=[1, -2]), (4, 3), r"repeated axis"),
    (lambda: L.PReLU(shared_axes=2), (4,), r"shared axis 2"),
])
def test_bad_input_shapes_are_refused_when_the_model_is_built(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([L.Input(shape), layer()])


NEW_LAYERS = ("ActivityRegularization", "GroupNormalization", "Identity", "PReLU",
              "UnitNormalization", "GaussianNoise", "GaussianDropout", "AlphaDropout")


def test_the_layers_are_in_the_namespace():
    for name in NEW_LAYERS:
        assert name in L.__all__ and name in L._CLASSES and getattr(L, name).__name__ == name
        assert name not in L._KERAS_ONLY


# -- Keras 3 parity -------------------------------------------------------------------------------

# (Keras layer expressions, written alike in both APIs; input shape; one SGD step compared too)
KERAS_MODELS = {
    "prelu_group": (["Dense(8)", "PReLU(alpha_initializer=initializers.RandomUniform(0.1, 0.5))",
                     "GroupNormalization(4, gamma_initializer='random_normal', "
                     "beta_initializer='random_normal')", "Flatten()", "Dense(2)"], (3, 4), True),
    "images": (["Conv2D(6, 2)", "PReLU(alpha_initializer='random_uniform', shared_axes=[1, 2])",
                "GroupNormalization(groups=-1, epsilon=0.01, gamma_regularizer='l2')",
                "GroupNormalization(3, axis=1, center=False)", "UnitNormalization(axis=[1, 2])",
                "Flatten()", "Dense(2)"], (4, 4, 2), True),
    "regularized": (["Dense(5)", "ActivityRegularization(0.02, 0.05)", "Identity()",
                     "PReLU(alpha_initializer='ones', alpha_regularizer='l2', shared_axes=1)",
                     "UnitNormalization()", "Dense(3)", "ActivityRegularization(l2=0.1)",
                     "Identity()"], (2, 3), True),
    # in inference: the noise layers pass their inputs (configs and predictions compared)
    "noise": (["Dense(4, activation='selu')", "GaussianNoise(0.2, seed=3)", "GaussianDropout(0.3)",
               "AlphaDropout(0.1, noise_shape=(None, 1, 4), seed=1)", "Dense(2)"], (3, 2), False),
}

KERAS_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, keras
    from keras import initializers
    from keras.layers import *
    for spec in sys.argv[1:]:
        exprs, shape, train, path = eval(spec)
        data = np.load(path)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape)] + [eval(e) for e in exprs])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
        weights = model.get_weights()
        results = dict(prediction=model.predict(data["x"], verbose=0),
                       loss=model.evaluate(data["x"], data["y"], verbose=0))
        if train:
            model.fit(data["x"], data["y"], batch_size=len(data["x"]), epochs=1, shuffle=False,
                      verbose=0)
            results.update({f"t{i}": w for i, w in enumerate(model.get_weights())})
        configs = [layer.get_config() for layer in model.layers]
        shapes = [list(layer.output.shape) for layer in model.layers]
        np.savez(path, configs=json.dumps(configs), shapes=json.dumps(shapes),
                 **{f"w{i}": w for i, w in enumerate(weights)}, **results)
""")


def _namespace():
    namespace = {k: getattr(L, k) for k in dir(L) if not k.startswith("_")}
    namespace["initializers"] = initializers
    return namespace


def _keras_model(name):
    exprs, shape, _ = KERAS_MODELS[name]
    return Sequential([L.Input(shape=shape)] + [eval(e, _namespace()) for e in exprs])


def _keras_data(name):
    shape = KERAS_MODELS[name][1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + shape).astype(np.float32)
    y = rng.standard_normal((6,) + _keras_model(name).output_shape[1:])
    return x, y.astype(np.float32)


def _without_keras_only_keys(value):
    """A Keras config as kcompile writes it: nested objects without 'module' and
    'registered_name', dtype aside (Keras's is a DTypePolicy)."""
    if isinstance(value, dict):
        return {k: _without_keras_only_keys(v) for k, v in value.items()
                if k not in ("module", "registered_name", "dtype")}
    if isinstance(value, list):
        return [_without_keras_only_keys(v) for v in value]
    return value


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    return run_keras_models(KERAS_SCRIPT, KERAS_MODELS, _keras_data, tmp_path_factory.mktemp("keras"))


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_agrees_with_keras(name, keras_results):
    keras_out = keras_results[name]
    x, y = _keras_data(name)
    model = _keras_model(name)
    shapes = json.loads(str(keras_out["shapes"]))
    assert [list(layer.output_shape) for layer in model.layers] == shapes
    for layer, keras_config in zip(model.layers, json.loads(str(keras_out["configs"]))):
        if type(layer).__name__ not in NEW_LAYERS:
            continue
        ours = _without_keras_only_keys(json.loads(json.dumps(layer.get_config())))
        keras_config = _without_keras_only_keys(keras_config)
        assert ours.pop("name").rstrip("_0123456789") == keras_config.pop("name").rstrip("_0123456789")
        assert ours == keras_config, type(layer).__name__
    model.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=TARGETS[-1])
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(float(keras_out["loss"]), rel=1e-4)
    if KERAS_MODELS[name][2]:
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for i, (variable, got) in enumerate(zip(model.weights, model.get_weights())):
            np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{variable.path} after one SGD step")
