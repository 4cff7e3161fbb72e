"""The Lambda layer: outputs and input gradients of common lambdas against numpy on every target, a
few training steps compiled against the reference interpreter, output_shape given and inferred,
Keras 3 parity (predictions, output shapes, configs; Keras's saved lambda loaded here), config,
JSON and file round trips with safe mode (a lambda's bytecode is refused unless loading is told
the file is trusted; a named function loads by name), and the errors."""
import codecs
import json
import marshal
import textwrap

import numpy as np
import pytest

import kcompile
from kcompile import activations, ops, optimizers, registry
from kcompile import layers as L
from kcompile.layers import Lambda
from kcompile.models import Sequential, load_model, model_from_json
from kcompile.saving import deserialize_keras_object, serialize_keras_object
from kcompile.utils import set_random_seed
from layer_harness import check_fit_matches_reference, Offset
from targets import TARGETS
from keras_subprocess import keras_available, run_keras_models


def double(x):
    return x * 2.0


def scale(x, factor=1.0, training=None):
    return x * (factor * 2.0 if training else factor)


@kcompile.saving.register_keras_serializable(package="lambda_test")
def halve(x):
    return x * 0.5


def _first(g_shape, g):
    """The adjoint of x[:, 0] for x of shape g_shape."""
    out = np.zeros(g_shape)
    out[:, 0] = g
    return out


# (layer, per-sample input shape, numpy forward, numpy vector-Jacobian product (x, g) -> dx)
CASES = {
    "divide": (lambda: Lambda(lambda x: x / 255.0), (4,), lambda x: x / 255.0, lambda x, g: g / 255.0),
    "square_power": (lambda: Lambda(lambda x: x ** 2), (4,), lambda x: x ** 2, lambda x, g: 2 * x * g),
    "negate_plus_one": (lambda: Lambda(lambda x: -x + 1), (3,), lambda x: 1 - x, lambda x, g: -g),
    "sum_keepdims": (lambda: Lambda(lambda x: ops.sum(x, axis=-1, keepdims=True)), (2, 3),
                     lambda x: x.sum(-1, keepdims=True), lambda x, g: np.broadcast_to(g, x.shape)),
    "first_step": (lambda: Lambda(lambda x: x[:, 0]), (3, 2), lambda x: x[:, 0],
                   lambda x, g: _first(x.shape, g)),
    "arguments": (lambda: Lambda(lambda x, k: x * k, arguments={"k": 3}), (4,), lambda x: 3 * x,
                  lambda x, g: 3 * g),
    "named_with_training": (lambda: Lambda(scale, arguments={"factor": 1.5}), (4,),
                            lambda x: 1.5 * x, lambda x, g: 3.0 * g),   # fit traces training=True
    "ops_mean_square": (lambda: Lambda(lambda x: ops.mean(ops.square(x), axis=1)), (3, 2),
                        lambda x: (x ** 2).mean(1), lambda x, g: 2 * x * g[:, None, :] / 3),
    "concatenate": (lambda: Lambda(lambda x: ops.concatenate([x, 2 * x], axis=-1)), (3,),
                    lambda x: np.concatenate([x, 2 * x], -1), lambda x, g: g[:, :3] + 2 * g[:, 3:]),
    "activation": (lambda: Lambda(activations.tanh), (4,), np.tanh,
                   lambda x, g: (1 - np.tanh(x) ** 2) * g),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_output_and_input_gradient_match_numpy(name, target):
    make_layer, shape, forward, vjp = CASES[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    want = forward(x.astype(np.float64))
    y = rng.standard_normal(want.shape).astype(np.float32)
    model = Sequential([L.Input(shape), Offset(), make_layer()])
    assert model.output_shape == (None,) + want.shape[1:]
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    model.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    # mse: the mean over every output entry, so d loss / d output = 2 (output - y) / its size
    training_want = want if name != "named_with_training" else 2 * want
    gradient = vjp(x.astype(np.float64), 2.0 * (training_want - y) / want.size).sum(axis=0)
    np.testing.assert_allclose(-model.layers[0].w.numpy(), gradient, rtol=1e-5, atol=1e-7)


def test_called_on_an_array_it_runs_eagerly():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(Lambda(lambda x: x * 2 + 1)(x), x * 2 + 1)
    np.testing.assert_allclose(Lambda(scale, arguments={"factor": 2.0})(x, training=True), x * 4)
    np.testing.assert_allclose(Lambda(scale, arguments={"factor": 2.0})(x), x * 2)


def _mlp():
    return Sequential([L.Input((5,)), Lambda(lambda x: x / 2.0), L.Dense(4, activation="tanh"),
                       Lambda(lambda x, k: ops.concatenate([x ** 2, x * k], axis=-1),
                              arguments={"k": 0.5}),
                       L.Dense(3), Lambda(lambda x: x[:, :2])])


def test_a_few_fit_steps_compiled_agree_with_the_reference():
    check_fit_matches_reference(_mlp)


# -- output shapes --------------------------------------------------------------------------------

def test_output_shape_inferred_and_given_agree():
    inferred = Lambda(lambda x: ops.sum(x, axis=1))
    assert inferred.compute_output_shape((None, 3, 4)) == (None, 4)
    given = Lambda(lambda x: ops.sum(x, axis=1), output_shape=(4,))
    assert given.compute_output_shape((None, 3, 4)) == (None, 4)
    as_function = Lambda(lambda x: x[:, 0], output_shape=lambda s: (s[0],) + tuple(s[2:]))
    assert as_function.compute_output_shape((None, 3, 4)) == (None, 4)
    # None in a given shape leaves that size to the function (as Keras's shapes may)
    assert Lambda(lambda x: x, output_shape=(None, 4)).compute_output_shape((None, 3, 4)) == \
        (None, 3, 4)
    model = Sequential([L.Input((3, 4)), given, L.Dense(2)])
    assert model.output_shape == (None, 2)
    assert model.layers[0].output_shape == (None, 4)


@pytest.mark.parametrize("output_shape", [(5,), (4, 1), lambda s: (None, 3)])
def test_a_wrong_output_shape_is_refused_naming_both(output_shape):
    layer = Lambda(lambda x: ops.sum(x, axis=1), output_shape=output_shape)
    with pytest.raises(ValueError, match=r"Lambda layer 'lambda'.*output_shape=.*function computes "
                                         r"shape \(None, 4\)"):
        Sequential([L.Input((3, 4)), layer])


# -- configs, JSON, files -----------------------------------------------------------------------

def test_named_function_config_is_keras_and_round_trips():
    layer = Lambda(double, output_shape=(4,), name="twice")
    config = layer.get_config()
    assert config == {"name": "twice", "trainable": True, "dtype": "float32",
                      "function": {"module": "builtins", "class_name": "function",
                                   "config": "double", "registered_name": "function"},
                      "output_shape": (4,), "arguments": {}}
    with pytest.raises(TypeError, match="Could not locate function 'double'"):
        Lambda.from_config(json.loads(json.dumps(config)))
    restored = Lambda.from_config(json.loads(json.dumps(config)), custom_objects={"double": double})
    assert restored.function is double and restored.get_config() == config
    restored = L.deserialize(json.loads(json.dumps(L.serialize(layer))), {"double": double})
    assert restored.function is double and restored.get_config() == config
    # a registered function is saved under its registered name and found without custom_objects
    registered = Lambda(halve).get_config()
    assert registered["function"]["config"] == "lambda_test>halve"
    assert Lambda.from_config(json.loads(json.dumps(registered))).function is halve


def test_lambda_config_is_keras_bytecode_and_needs_safe_mode_off():
    offset = 0.25
    layer = Lambda(lambda x, k=2.0: x * k + offset, arguments={"k": np.array([1.0, 3.0])})
    config = json.loads(json.dumps(L.serialize(layer)))["config"]
    function = config["function"]
    assert function["class_name"] == "__lambda__"
    assert sorted(function["config"]) == ["closure", "code", "defaults"]
    assert function["config"]["defaults"] == [2.0] and function["config"]["closure"] == [0.25]
    assert config["arguments"] == {"k": {"class_name": "__numpy__",
                                         "config": {"value": [1.0, 3.0], "dtype": "float64"}}}
    with pytest.raises(ValueError, match=r"`Lambda` layer whose `function` is a Python lambda.*"
                                         r"safe_mode=False.*enable_unsafe_deserialization"):
        Lambda.from_config(config)
    with pytest.raises(ValueError, match="Python lambda"):
        L.deserialize({"class_name": "Lambda", "config": config})
    restored = Lambda.from_config(config, safe_mode=False)
    x = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_allclose(restored(x), x * np.array([1.0, 3.0]) + 0.25)
    with registry.SafeModeScope(False):
        np.testing.assert_allclose(L.deserialize({"class_name": "Lambda", "config": config})(x),
                                   x * np.array([1.0, 3.0]) + 0.25)
    # an explicit safe_mode=True is not overridden by the scope's absence
    with pytest.raises(ValueError, match="Python lambda"):
        Lambda.from_config(config, safe_mode=True)
    # deserialize_keras_object passes its safe_mode to the layer
    serialized = json.loads(json.dumps(serialize_keras_object(layer)))
    with pytest.raises(ValueError, match="Python lambda"):
        deserialize_keras_object(serialized)
    assert isinstance(deserialize_keras_object(serialized, safe_mode=False), Lambda)


def test_a_lambda_output_shape_is_saved_as_bytecode_too():
    layer = Lambda(lambda x: x[:, 0], output_shape=lambda s: (s[0], s[2]))
    config = json.loads(json.dumps(layer.get_config()))
    assert config["output_shape"]["class_name"] == "__lambda__"
    # a named function, but a lambda for the shape: refused as well
    with pytest.raises(ValueError, match="`output_shape` is a Python lambda"):
        Lambda.from_config(dict(config, function=Lambda(double).get_config()["function"]),
                           custom_objects={"double": double})
    restored = Lambda.from_config(config, safe_mode=False)
    assert restored.compute_output_shape((None, 3, 4)) == (None, 4)


def _code_compared(config):
    """A layer config with a lambda's bytecode as the code object (marshal may write one code
    object's references differently from one dump to the next)."""
    entry = config.get("function")
    if isinstance(entry, dict) and entry.get("class_name") == "__lambda__":
        inner = dict(entry["config"])
        inner["code"] = marshal.loads(codecs.decode(inner["code"].encode("ascii"), "base64"))
        config = dict(config, function=dict(entry, config=inner))
    return config


def _lambda_model():
    set_random_seed(0)
    return Sequential([L.Input((4,)), L.Dense(3), Lambda(lambda x: ops.square(x) + 1.0),
                       Lambda(halve), L.Dense(2)])


def test_save_and_load_a_lambda_model(tmp_path):
    model = _lambda_model()
    model.compile(optimizer="adam", loss="mse", target=TARGETS[-1])
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"m\.keras.*Python lambda.*safe_mode=False"):
        load_model(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras", safe_mode=False)
    assert [_code_compared(a.get_config()) for a in loaded.layers] == \
        [_code_compared(b.get_config()) for b in model.layers]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), want)
    # the lambda's globals: kcompile's ops, found again after loading
    loaded.fit(x, np.zeros((5, 2), np.float32), epochs=1, verbose=0)
    # JSON, as Keras's model_from_json: safe unless enable_unsafe_deserialization (or a scope)
    text = model.to_json()
    with pytest.raises(ValueError, match="Python lambda"):
        model_from_json(text)
    with registry.SafeModeScope(False):
        clone = model_from_json(text)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.predict(x, verbose=0), want, rtol=1e-6)


def test_clone_model_refuses_a_lambda_as_keras_and_takes_a_clone_function():
    model = _lambda_model()
    with pytest.raises(ValueError, match="Python lambda"):     # Keras 3's clone_model does too
        kcompile.models.clone_model(model)
    clone = kcompile.models.clone_model(model, clone_function=lambda layer: Lambda(
        layer.function) if isinstance(layer, Lambda) else type(layer).from_config(layer.get_config()))
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_array_equal(clone.predict(x, verbose=0), model.predict(x, verbose=0))


def test_enable_unsafe_deserialization(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_UNSAFE_ENABLED", False)
    model = _lambda_model()
    model.save(tmp_path / "m.keras")
    assert registry.in_safe_mode() is None
    kcompile.config.enable_unsafe_deserialization()
    assert registry.in_safe_mode() is False
    assert isinstance(load_model(tmp_path / "m.keras").layers[1], Lambda)   # default safe_mode
    assert isinstance(model_from_json(model.to_json()).layers[1], Lambda)


def test_a_named_function_model_loads_without_safe_mode(tmp_path):
    set_random_seed(0)
    model = Sequential([L.Input((4,)), L.Dense(3), Lambda(double), Lambda(halve),
                        Lambda(activations.relu)])
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match="Could not locate function 'double'"):
        load_model(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras", custom_objects={"double": double})
    assert loaded.layers[1].function is double and loaded.layers[2].function is halve
    assert loaded.layers[3].function is activations.relu
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), want)
    with kcompile.saving.custom_object_scope({"double": double}):
        assert model_from_json(model.to_json()).layers[1].function is double


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: Lambda(3), TypeError, r"`function` must be a function.*got 3"),
    (lambda: Lambda(L.Dense(2)), TypeError, r"`function`.*put it in the model itself"),
    (lambda: Lambda(double, arguments=[1]), TypeError, r"`arguments` must be a dict"),
    (lambda: Lambda(double, output_shape="4"), TypeError, r"`output_shape`.*'4'"),
    (lambda: Lambda(double, output_shape=(4, -1)), TypeError, r"`output_shape`"),
    (lambda: Lambda(double, mask=lambda x, m: m), NotImplementedError,
     r"`mask` \(a mask computed by the Lambda\) is not supported"),
    (lambda: Lambda(double, bogus=1), ValueError, r"Unrecognized keyword arguments.*bogus"),
])
def test_bad_arguments_are_refused_naming_them(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("function, error, match", [
    (lambda x: np.mean(x), TypeError, r"cannot become a numpy array.*kcompile\.ops"),
    (lambda x: np.tanh(x), TypeError, r"numpy's tanh.*kcompile\.ops\.tanh"),
    (lambda x: x.numpy(), AttributeError, "numpy"),
    (lambda x: x if x > 0 else -x, TypeError, r"ops\.where"),
    (lambda x: float(x), TypeError, "float"),
    (lambda x: undefined_name * x, NameError, "undefined_name"),  # noqa: F821
])
def test_an_untraceable_function_is_refused_naming_the_layer(function, error, match):
    with pytest.raises(error, match=r"Lambda layer 'lambda'.*symbolic input \(shape \(None, 3\)\)"):
        Sequential([L.Input((3,)), Lambda(function)])
    with pytest.raises(error, match=match):
        Sequential([L.Input((3,)), Lambda(function)])


def test_a_function_that_returns_no_traced_value_is_refused():
    for function, kind in [(lambda x: 3.0, "float"), (lambda x: np.ones(3), "ndarray"),
                           (lambda x: None, "NoneType"), (lambda x: (x, x), "tuple")]:
        with pytest.raises(TypeError, match=rf"Lambda layer 'lambda'.*returned {kind}, not a value "
                                            "computed from its input"):
            Sequential([L.Input((3,)), Lambda(function)])


def test_a_layer_with_weights_called_in_the_function_is_refused():
    dense = L.Dense(2)
    with pytest.raises(NotImplementedError, match=r"'lambda' \(Lambda\) calls the layer 'dense'"):
        Sequential([L.Input((3,)), Lambda(lambda x: dense(x))])
    # a layer without weights is just called
    model = Sequential([L.Input((3,)), Lambda(lambda x: L.Activation("relu")(x) * 2)])
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), np.maximum(x, 0) * 2)


def test_bytecode_that_does_not_load_is_refused_clearly():
    config = Lambda(lambda x: x).get_config()
    config["function"]["config"]["code"] = "bm90IGNvZGU=\n"    # base64 of b"not code"
    with pytest.raises(ValueError, match="cannot be loaded.*Python version"):
        Lambda.from_config(config, safe_mode=False)


def test_the_layer_is_in_the_namespace():
    assert kcompile.layers.Lambda is Lambda and "Lambda" in L.__all__
    assert L._CLASSES["Lambda"] is Lambda and "Lambda" not in L._KERAS_ONLY
    assert L.deserialize({"class_name": "Lambda", "config": Lambda(halve).get_config()}).function \
        is halve


# -- Keras 3 parity -------------------------------------------------------------------------------

# (layer expressions, written alike in both APIs -- ops and activations are each one's own --;
# input shape)
KERAS_MODELS = {
    "scaled": (["Lambda(lambda x: x / 255.0)", "Dense(3, activation='tanh')",
                "Lambda(lambda x: x ** 2)", "Dense(2)"], (4,)),
    "named": (["Lambda(double)", "Dense(3)", "Lambda(lambda x, k: x * k, arguments={'k': 3.0})",
               "Lambda(lambda x: ops.sum(x, axis=-1, keepdims=True), output_shape=(1,))"], (4,)),
    "steps": (["Lambda(lambda x: x[:, 0])", "Dense(3)", "Lambda(activations.relu)",
               "Lambda(lambda x: ops.concatenate([x, -x], axis=-1))"], (3, 4)),
}

KERAS_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, keras
    from keras import activations, ops
    from keras.layers import *
    def double(x):
        return x * 2.0
    for spec in sys.argv[1:]:
        exprs, shape, path = eval(spec)
        data = np.load(path)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape)] + [eval(e) for e in exprs])
        configs = [layer.get_config() for layer in model.layers]
        shapes = [list(layer.output.shape) for layer in model.layers]
        np.savez(path, configs=json.dumps(configs), shapes=json.dumps(shapes),
                 prediction=model.predict(data["x"], verbose=0),
                 **{f"w{i}": w for i, w in enumerate(model.get_weights())})
""")


def _keras_model(name):
    exprs, shape = KERAS_MODELS[name]
    namespace = {k: getattr(L, k) for k in dir(L) if not k.startswith("_")}
    namespace.update(ops=ops, activations=activations, double=double)
    return Sequential([L.Input(shape=shape)] + [eval(e, namespace) for e in exprs])


def _keras_data(name):
    shape = KERAS_MODELS[name][1]
    rng = np.random.default_rng(0)
    return rng.standard_normal((6,) + shape).astype(np.float32), np.zeros((6, 1), np.float32)


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    return run_keras_models(KERAS_SCRIPT, KERAS_MODELS, _keras_data, tmp_path_factory.mktemp("keras"))


def _comparable(config):
    """A Lambda config for comparison: the name (Keras numbers names per process) and dtype (a
    DTypePolicy in Keras) aside, a lambda's bytecode by its structure (it names its file)."""
    config = {k: v for k, v in config.items() if k not in ("name", "dtype")}
    for key in ("function", "output_shape"):
        entry = config.get(key)
        if isinstance(entry, dict) and entry.get("class_name") == "__lambda__":
            config[key] = {"class_name": "__lambda__", "config": sorted(entry["config"]),
                           "defaults": entry["config"]["defaults"],
                           "closure": entry["config"]["closure"]}
    return config


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_agrees_with_keras(name, keras_results):
    keras_out = keras_results[name]
    x, _ = _keras_data(name)
    model = _keras_model(name)
    assert [list(layer.output_shape) for layer in model.layers] == \
        json.loads(str(keras_out["shapes"]))
    keras_configs = json.loads(str(keras_out["configs"]))
    for layer, keras_config in zip(model.layers, keras_configs):
        if isinstance(layer, Lambda):
            assert _comparable(json.loads(json.dumps(layer.get_config()))) == \
                _comparable(keras_config)
    model.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    model.compile(optimizer="sgd", loss="mse", target=TARGETS[-1])
    want = keras_out["prediction"]
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-4, atol=1e-5)
    # the layers of Keras's configs, Keras's lambdas' bytecode and all, compute what Keras did
    # (kcompile's ops stand for keras.ops in a loaded lambda's globals)
    namespace = {"double": double}
    rebuilt = Sequential([L.Input(KERAS_MODELS[name][1])] + [
        Lambda.from_config(config, custom_objects=namespace, safe_mode=False)
        if "function" in config else type(layer).from_config(
            {k: v for k, v in config.items() if k in layer.get_config()})
        for layer, config in zip(model.layers, keras_configs)])
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), want, rtol=1e-4, atol=1e-5)
