"""Identity, ActivityRegularization, PReLU, UnitNormalization and GroupNormalization: outputs,
input gradients and weight gradients against float64 numpy (forward written here, gradients by
central differences) on every target, training steps compiled against the reference interpreter,
Keras 3 parity (predictions and one SGD step with Keras's weights, configs, output shapes),
config, JSON and file round trips, and the errors of bad arguments."""
import json
import textwrap

import numpy as np
import pytest

import kcompile
from kcompile import initializers, optimizers, regularizers
from kcompile import layers as L
from kcompile.models import Sequential, load_model, model_from_json
from kcompile.utils import set_random_seed
from keras_subprocess import keras_available, run_keras
from layer_harness import run_layer_test
from targets import TARGETS


class Offset(L.Layer):
    """x + w, w of the per-sample shape and zero at first: after one SGD step of learning rate 1 on
    the whole batch, -w is the batch's summed gradient with respect to the next layer's input."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=tuple(input_shape[1:]), initializer="zeros", name="w")

    def call(self, x):
        return x + self.w


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


def central_differences(f, arrays, index, h=1e-6):
    """d f / d arrays[index] of the float64 scalar function f(*arrays)."""
    arrays = [np.array(a, np.float64) for a in arrays]
    target, gradient = arrays[index], np.zeros_like(arrays[index])
    for i in np.ndindex(target.shape):
        old = target[i]
        target[i] = old + h
        up = f(*arrays)
        target[i] = old - h
        down = f(*arrays)
        target[i] = old
        gradient[i] = (up - down) / (2 * h)
    return gradient


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
    with pytest.raises(ValueError, match=r"axis 3 is out of bounds"):
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
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 6, 4)).astype(np.float32)
    y = rng.standard_normal((12, 2)).astype(np.float32)
    results = {}
    for target in TARGETS:
        set_random_seed(5)
        model = _stack()
        model.compile(optimizer=optimizers.Adam(learning_rate=0.01), loss="mse", target=target)
        before = model.get_weights()
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        after = model.get_weights()
        assert all(not np.array_equal(a, b) for a, b in zip(before, after))
        results[target] = (history.history["loss"], after, model.predict(x, verbose=0))
    reference = results["reference"]
    for target, (losses, weights, prediction) in results.items():
        np.testing.assert_allclose(losses, reference[0], rtol=1e-4, err_msg=target)
        for got, want in zip(weights, reference[1]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=target)
        np.testing.assert_allclose(prediction, reference[2], rtol=1e-4, atol=1e-5, err_msg=target)


# -- configs, JSON, files -----------------------------------------------------------------------

ALL_LAYERS = [lambda: L.Identity(), lambda: L.Identity(name="pass"),
              lambda: L.ActivityRegularization(), lambda: L.ActivityRegularization(0.1, 0.2),
              lambda: L.PReLU(), lambda: L.PReLU(shared_axes=[1, 2], alpha_regularizer="l2"),
              lambda: L.PReLU(alpha_initializer="random_uniform", shared_axes=1),
              lambda: L.UnitNormalization(), lambda: L.UnitNormalization(axis=(1, 2)),
              lambda: L.GroupNormalization(), lambda: L.GroupNormalization(-1, axis=2, epsilon=0.1),
              lambda: L.GroupNormalization(4, center=False, gamma_regularizer="l1")]


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
])
def test_bad_arguments_are_refused_naming_them(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("layer, shape, match", [
    (lambda: L.UnitNormalization(axis=3), (4, 3), r"axis 3 is out of bounds.*\(None, 4, 3\)"),
    (lambda: L.UnitNormalization(axis=[1, -2]), (4, 3), r"repeats an axis"),
    (lambda: L.PReLU(shared_axes=2), (4,), r"shared axis 2"),
])
def test_bad_input_shapes_are_refused_when_the_model_is_built(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([L.Input(shape), layer()])


NEW_LAYERS = ("ActivityRegularization", "GroupNormalization", "Identity", "PReLU",
              "UnitNormalization")


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
    directory = tmp_path_factory.mktemp("keras")
    specs = []
    for name, (exprs, shape, train) in KERAS_MODELS.items():
        x, y = _keras_data(name)
        path = directory / f"{name}.npz"
        np.savez(path, x=x, y=y)
        specs.append(repr((exprs, shape, train, str(path))))
    run_keras(KERAS_SCRIPT, specs)
    return {name: np.load(directory / f"{name}.npz") for name in KERAS_MODELS}


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
