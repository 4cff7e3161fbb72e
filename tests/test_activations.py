"""Activations against numpy re-implementations of Keras 3's formulas (float64), on the reference
interpreter and compiled through LLVM; gradients by finite differences in float64; names, config
round trips and the layer surface."""
import math

import numpy as np
import pytest

import ir
from ir import build as B

import kcompile
from kcompile import activations, backend, optimizers
from kcompile.layers import Activation, Dense, Input
from kcompile.models import Sequential
from targets import TARGETS

SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def np_elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def np_erf(x):
    return np.vectorize(math.erf)(x)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_hard_sigmoid(x):
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


# name -> (activation as kcompile calls it, numpy formula, kinks to keep finite differences off)
CASES = {
    "relu": (activations.relu, lambda x: np.maximum(x, 0), (0,)),
    "relu_options": (lambda x: activations.relu(x, negative_slope=0.1, max_value=4.0, threshold=0.5),
                     lambda x: np.clip(np.where(x > 0.5, x, 0.0), 0, 4.0) - 0.1 * np.maximum(0.5 - x, 0),
                     (0.5, 4.0)),
    "leaky_relu": (activations.leaky_relu, lambda x: np.where(x >= 0, x, 0.2 * x), (0,)),
    "leaky_relu_0.3": (lambda x: activations.leaky_relu(x, negative_slope=0.3),
                       lambda x: np.where(x >= 0, x, 0.3 * x), (0,)),
    "relu6": (activations.relu6, lambda x: np.clip(x, 0, 6), (0, 6)),
    "sigmoid": (activations.sigmoid, np_sigmoid, ()),
    "tanh": (activations.tanh, np.tanh, ()),
    "softmax": (activations.softmax, np_softmax, ()),
    "log_softmax": (activations.log_softmax, lambda x: np.log(np_softmax(x)), ()),
    "elu": (activations.elu, np_elu, (0,)),
    "elu_0.5": (lambda x: activations.elu(x, alpha=0.5), lambda x: np_elu(x, 0.5), (0,)),
    "selu": (activations.selu, lambda x: SELU_SCALE * np_elu(x, SELU_ALPHA), (0,)),
    "celu": (lambda x: activations.celu(x, alpha=2.0),
             lambda x: np.maximum(x, 0) + 2.0 * np.expm1(np.minimum(x, 0) / 2.0), (0,)),
    "softplus": (activations.softplus, np_softplus, ()),
    "softsign": (activations.softsign, lambda x: x / (1 + np.abs(x)), (0,)),
    "silu": (activations.silu, lambda x: x * np_sigmoid(x), ()),
    "gelu": (activations.gelu, lambda x: 0.5 * x * (1 + np_erf(x / np.sqrt(2))), ()),
    "gelu_tanh": (lambda x: activations.gelu(x, approximate=True),
                  lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))), ()),
    "hard_sigmoid": (activations.hard_sigmoid, np_hard_sigmoid, (-3, 3)),
    "hard_silu": (activations.hard_silu, lambda x: x * np_hard_sigmoid(x), (-3, 3)),
    "hard_tanh": (activations.hard_tanh, lambda x: np.clip(x, -1, 1), (-1, 1)),
    "exponential": (activations.exponential, np.exp, ()),
    "log_sigmoid": (activations.log_sigmoid, lambda x: -np_softplus(-x), ()),
    "mish": (activations.mish, lambda x: x * np.tanh(np_softplus(x)), ()),
    "squareplus": (activations.squareplus, lambda x: (x + np.sqrt(x * x + 4)) / 2, ()),
    "tanh_shrink": (activations.tanh_shrink, lambda x: x - np.tanh(x), ()),
    "soft_shrink": (activations.soft_shrink,
                    lambda x: np.where(x > 0.5, x - 0.5, np.where(x < -0.5, x + 0.5, 0.0)), (-0.5, 0.5)),
    "hard_shrink": (activations.hard_shrink, lambda x: np.where(np.abs(x) > 0.5, x, 0.0), (-0.5, 0.5)),
    "sparse_plus": (activations.sparse_plus,
                    lambda x: np.where(x <= -1, 0, np.where(x >= 1, x, (x + 1) ** 2 / 4)), (-1, 1)),
    "sparse_sigmoid": (activations.sparse_sigmoid,
                       lambda x: np.where(x <= -1, 0, np.where(x >= 1, 1, (x + 1) / 2)), (-1, 1)),
    "threshold": (lambda x: activations.threshold(x, 0.3, -2.0), lambda x: np.where(x > 0.3, x, -2.0),
                  (0.3,)),
    "linear": (activations.linear, lambda x: x, ()),
}


def inputs(rows=7, columns=11, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-7, 7, (rows, columns))
    x[0, :9] = [0.0, 1.0, -1.0, 3.0, -3.0, 6.0, 0.5, -0.5, 1e-4]  # boundaries of the piecewise ones
    return x


def _traced(build, dtype):
    """One graph computing every activation (and the gradient of each one's sum) of one input."""
    x = B.arg("x", dtype, (None, 11))
    outputs = []
    for name, (fn, _, _) in CASES.items():
        y = fn(x)
        outputs.append((name, y))
        if build == "gradients":
            (gradient,) = ir.gradients(B.reduce_sum(y), [x])
            outputs.append((f"{name}/gradient", gradient))
    return ir.verify(ir.Graph("activations", [x], outputs))


@pytest.fixture(scope="module")
def compiled_values():
    """Every activation and its gradient, per target, in float32."""
    graph = _traced("gradients", "f32")
    x = inputs().astype(np.float32)
    results = {}
    for target in TARGETS:
        runner = backend.make_runner(graph, target, {})
        results[target] = runner.run({"x": x})
    return x, results


@pytest.mark.parametrize("name", sorted(CASES))
def test_activation_matches_the_keras_formula(name, compiled_values):
    x, results = compiled_values
    _, formula, _ = CASES[name]
    expected = formula(x.astype(np.float64))
    for target in TARGETS:
        np.testing.assert_allclose(results[target][name], expected, rtol=2e-6, atol=2e-6,
                                   err_msg=f"{name} on {target}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_gradient_matches_the_interpreter(name, compiled_values):
    _, results = compiled_values
    reference = results["reference"][f"{name}/gradient"]
    assert np.all(np.isfinite(reference))
    for target in TARGETS:
        # atol: where tanh saturates, float32 tanh implementations round 1 - tanh^2 differently.
        np.testing.assert_allclose(results[target][f"{name}/gradient"], reference, rtol=1e-5,
                                   atol=3e-6, err_msg=f"{name} gradient on {target}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences_in_float64(name):
    fn, _, kinks = CASES[name]
    rng = np.random.default_rng(1)
    x = rng.uniform(-7, 7, (3, 11))
    for kink in kinks:  # central differences straddling a kink measure no derivative
        near = np.abs(x - kink) < 1e-3
        x[near] += 1e-2
    arg = B.arg("x", "f64", (None, 11))
    # A random cotangent, so softmax-like activations (whose plain sum is constant) are checked too.
    cotangent = rng.standard_normal((3, 11))
    weights = B.arg("w", "f64", (None, 11))
    total = B.reduce_sum(B.mul(fn(arg), weights))
    (gradient,) = ir.gradients(total, [arg])
    graph = ir.Graph("fd", [arg, weights], [("total", total), ("gradient", gradient)])
    analytic = ir.run(graph, {"x": x, "w": cotangent})["gradient"]
    h = 1e-6
    numeric = np.empty_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (ir.run(graph, {"x": up, "w": cotangent})["total"]
                          - ir.run(graph, {"x": down, "w": cotangent})["total"]) / (2 * h)
    # atol: rounding in the differences of totals up to ~1e4 (exponential) is ~1e-6.  The exact
    # gelu's erf is a rational approximation: its derivative is within 4e-6 of erf's.
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=2e-6 if name != "gelu" else 1e-5)


# Gradients at exactly 0 where the activation is not differentiable there: JAX's (Keras's) choice,
# the x <= 0 branch for the elu family; relu-like kinks give 0 (max's tie), as jax.nn.relu.
AT_ZERO = {"elu": 1.0, "elu_0.5": 0.5, "selu": SELU_SCALE * SELU_ALPHA, "celu": 1.0, "relu": 0.0}


@pytest.mark.parametrize("name", sorted(n for n, (_, _, kinks) in CASES.items()
                                        if 0 not in kinks or n in AT_ZERO))
def test_gradient_at_exactly_zero(name):
    """At x == 0 a stable form's branches meet; the gradient there must be the true one (sigmoid'(0)
    = 1/4, softplus'(0) = 1/2), not 0 from an abs or max inside it (which left a zero input row
    into a zero-bias sigmoid layer without gradient)."""
    fn, formula, _ = CASES[name]
    arg = B.arg("x", "f64", (None, 3))
    weights = B.arg("w", "f64", (None, 3))
    (gradient,) = ir.gradients(B.reduce_sum(B.mul(fn(arg), weights)), [arg])
    x, w = np.zeros((1, 3)), np.array([[1.0, -2.0, 0.5]])
    got = ir.run(ir.Graph("g0", [arg, weights], [("g", gradient)]), {"x": x, "w": w})["g"]
    if name in AT_ZERO:
        want = AT_ZERO[name] * w
    else:   # smooth at 0: central differences of the formula (softmax-like ones mix the row)
        h = 1e-6
        want = np.array([[((formula(x + h * np.eye(3)[j]) - formula(x - h * np.eye(3)[j])) * w).sum()
                          / (2 * h) for j in range(3)]])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=name)


def test_gelu_erf_approximation_error_is_as_documented():
    x = np.linspace(-6, 6, 20001)
    exact = np_erf(x)
    for dtype, bound in (("f64", 1e-7), ("f32", 5e-7)):
        x_node = B.arg("x", dtype, (None,))
        graph = ir.Graph("erf", [x_node], [("y", activations.erf_approximation(x_node))])
        approximate = ir.run(graph, {"x": x.astype(np.float64 if dtype == "f64" else np.float32)})["y"]
        assert np.abs(approximate - exact).max() < bound, dtype


def test_large_inputs_stay_finite_with_finite_gradients():
    x_node = B.arg("x", "f64", (None,))
    x = np.array([-1e4, -100.0, 100.0, 1e4])
    for name in ("sigmoid", "softplus", "elu", "selu", "celu", "silu", "log_sigmoid", "mish", "gelu"):
        fn = CASES[name][0]
        y = fn(x_node)
        (gradient,) = ir.gradients(B.reduce_sum(y), [x_node])
        out = ir.run(ir.Graph(name, [x_node], [("y", y), ("g", gradient)]), {"x": x})
        assert np.all(np.isfinite(out["y"])) and np.all(np.isfinite(out["g"])), name


@pytest.mark.parametrize("target", TARGETS)
def test_log_softmax_and_cross_entropy_from_logits_keep_their_digits_for_large_logits(target):
    """log_softmax subtracts the maximum before the log-sum-exp, as Keras does: x - logsumexp(x)
    rounded logsumexp at the logits' magnitude (-0.69336 for log(1/2) at 1e4, 0.0 at 3e7).
    Expected: float64 numpy from the shifted formula."""
    logits = np.array([[1e4, 1e4, 0], [1e4, 1e4 - 1, 1e4 - 2], [1e6, 1e6, 0], [3e7, 3e7, 0],
                       [1e30, 1e30, 1e4], [-2.0, 0.5, 1.0]], np.float32)
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    want = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    model = Sequential([Input(shape=(3,)), Activation("log_softmax")])
    model.compile(optimizer="sgd", loss=kcompile.losses.CategoricalCrossentropy(from_logits=True),
                  target=target)
    np.testing.assert_allclose(model.predict(logits, verbose=0), want, rtol=1e-6, atol=1e-6)
    # the loss of each row for label 0, from the logits (the model's output is linear in them:
    # log_softmax twice is log_softmax)
    for row, expected in zip(logits, -want[:, 0]):
        loss = model.evaluate(row[None], np.array([[1.0, 0, 0]], np.float32), verbose=0)
        assert loss == pytest.approx(expected, rel=1e-6, abs=1e-6), row


def test_activations_run_eagerly_on_arrays():
    x = np.array([-10, -5, 0.0, 5, 10])
    np.testing.assert_allclose(activations.relu(x), [0, 0, 0, 5, 10])
    np.testing.assert_allclose(activations.relu(x, negative_slope=0.5), [-5, -2.5, 0, 5, 10])
    np.testing.assert_allclose(activations.relu(x, max_value=5.0), [0, 0, 0, 5, 5])
    np.testing.assert_allclose(activations.relu(x, threshold=5.0), [0, 0, 0, 0, 10])
    np.testing.assert_allclose(activations.get("leaky_relu")(x), [-2, -1, 0, 5, 10])
    np.testing.assert_allclose(activations.hard_sigmoid(np.array([-4.0, 0.0, 1.5])), [0, 0.5, 0.75])


def test_names_resolve_and_serialize_like_keras():
    assert activations.get("swish") is activations.silu
    assert activations.get("hard_swish") is activations.hard_silu
    assert activations.get(None) is activations.linear
    for name, fn in activations._ACTIVATIONS.items():
        assert activations.get(activations.serialize(fn)) is fn, name
    assert activations.serialize(activations.get("swish")) == "silu"
    with pytest.raises(ValueError, match="Unknown activation function: 'gelu2'"):
        activations.get("gelu2")
    with pytest.raises(ValueError, match="Could not interpret activation"):
        activations.get(3)


@pytest.mark.parametrize("target", TARGETS)
def test_dense_activation_strings_train_and_round_trip_configs(target):
    # Every activation by name, in a layer: config round trip, prediction against numpy, one step.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    kernel, bias = rng.standard_normal((3, 4)), rng.standard_normal(4)
    for name in ("gelu", "elu", "selu", "leaky_relu", "softplus", "swish", "hard_sigmoid",
                 "exponential", "mish"):
        layer = Dense(4, activation=name)
        assert Dense.from_config(layer.get_config()).get_config() == layer.get_config()
        model = Sequential([Input(shape=(3,)), layer])
        model.set_weights([kernel, bias])
        model.compile(optimizer=optimizers.SGD(0.1), loss="mse", target=target)
        formula = CASES["silu" if name == "swish" else name][1]
        np.testing.assert_allclose(model.predict(x, verbose=0), formula(x @ kernel + bias), rtol=1e-5,
                                   atol=1e-5, err_msg=name)
        assert np.isfinite(model.train_on_batch(x, np.zeros((5, 4))))


def test_activation_layer_with_a_function():
    model = Sequential([Input(shape=(4,)), Activation(activations.log_softmax)])
    model.compile(loss="mse", target="reference")
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), np.log(np_softmax(x)), rtol=1e-5,
                               atol=1e-6)
    assert Activation.from_config(model.layers[0].get_config()).activation is activations.log_softmax


def test_integer_inputs_compute_in_float32_as_keras_but_relu_and_hard_tanh_keep_them():
    """Keras 3 casts an integer input of an activation to float32 (leaky_relu([-2, 2]) is
    [-0.4, 2.]), but for relu and hard_tanh, whose integer results are exact; the values are the
    float inputs' ones."""
    ints = np.array([[-2, 0, 3]])
    floats = ints.astype(np.float32)
    for name in ("leaky_relu", "gelu", "softsign", "hard_sigmoid", "elu", "selu", "softmax",
                 "softplus", "tanh", "sigmoid", "relu6", "hard_shrink", "mish", "exponential"):
        fn = getattr(activations, name)
        got = np.asarray(fn(ints))
        assert got.dtype == np.float32, name
        np.testing.assert_array_equal(got, np.asarray(fn(floats)), err_msg=name)
    np.testing.assert_array_equal(activations.leaky_relu(ints), np.float32([[-0.4, 0.0, 3.0]]))
    for name, want in (("relu", [[0, 0, 3]]), ("hard_tanh", [[-1, 0, 1]])):
        got = np.asarray(getattr(activations, name)(ints))
        assert got.dtype.kind == "i", name
        np.testing.assert_array_equal(got, want)


def test_a_serialized_builtin_activation_reads_back_as_itself():
    from kcompile.saving import deserialize_keras_object, serialize_keras_object
    for fn in (activations.relu, activations.gelu, activations.tanh):
        config = serialize_keras_object(fn)
        assert activations.deserialize(config) is fn
        assert activations.get(config) is fn
        assert deserialize_keras_object(config) is fn
        assert Dense(2, activation=config).activation is fn
    # Keras 3's own config of its tanh names the same function
    keras_config = {"module": "keras.src.activations.activations", "class_name": "function",
                    "config": "tanh", "registered_name": "tanh"}
    assert activations.get(keras_config) is activations.tanh
