"""model.save / load_model and save_weights / load_weights: round trips bit for bit, training that
resumes exactly, clear errors for damaged or foreign files, atomic writes, and ModelCheckpoint."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

import kcompile
from kcompile import losses, metrics, optimizers, saving
from kcompile.callbacks import LambdaCallback, ModelCheckpoint
from kcompile.layers import Dense, Dropout, Flatten, Input, Layer
from kcompile.models import Sequential, load_model
from kcompile.utils import set_random_seed
from kcompile.utils.random import get_generator

from ir import build as B


def _llvm_available():
    try:
        import codegen.runtime  # noqa: F401
    except ImportError:
        return False
    return True


TARGETS = ["reference"] + (["llvm"] if _llvm_available() else [])


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2, 3)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 0, 0] > 1)
    return x, y


def _model(target="reference", optimizer=None, metrics_=("accuracy",), seed=0):
    set_random_seed(seed)
    model = Sequential([Input(shape=(2, 3)), Flatten(), Dense(8, activation="relu"), Dropout(0.25),
                        Dense(3, activation="softmax")])
    model.compile(optimizer=optimizer or optimizers.Adam(learning_rate=0.01),
                  loss="sparse_categorical_crossentropy", metrics=list(metrics_), target=target)
    return model


def _bits(array):
    """The raw bits, so that equality means bit-identical (NaN payloads and -0.0 included)."""
    array = np.ascontiguousarray(array)
    return array.view(np.uint8).tobytes(), array.dtype, array.shape


def _assert_same_state(a, b):
    assert [w.path for w in a.weights] == [w.path for w in b.weights]
    for wa, wb in zip(a.weights, b.weights):
        assert _bits(wa.buffer) == _bits(wb.buffer), wa.path
    sa, sb = a.optimizer.state(), b.optimizer.state()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert _bits(sa[key]) == _bits(sb[key]), key


def _normalized(config):
    return json.loads(json.dumps(config))


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------

def test_round_trip_restores_config_weights_compile_arguments_and_optimizer(tmp_path):
    x, y = _data()
    model = _model(metrics_=("accuracy", metrics.SparseCategoricalAccuracy(name="sparse_acc")))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    model.optimizer.learning_rate = 0.003  # as a callback would have set it
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = load_model(path)
    assert type(loaded) is Sequential and loaded.name == model.name
    assert _normalized(loaded.get_config()) == _normalized(model.get_config())
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    _assert_same_state(model, loaded)
    assert type(loaded.optimizer) is optimizers.Adam
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.learning_rate == np.float32(0.003)
    assert int(loaded.optimizer.iterations.buffer) == 6
    assert loaded.loss == model.loss
    assert loaded.metrics_names == ["loss", "accuracy", "sparse_acc"]
    assert loaded.target == "reference"
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
    assert kcompile.load_model is load_model

    # The archive: JSON and numeric .npz only, readable without pickle.
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["metadata.json", "config.json", "weights.npz", "optimizer.npz"]
        metadata = json.loads(archive.read("metadata.json"))
        config = json.loads(archive.read("config.json"))
        weights = np.load(io.BytesIO(archive.read("weights.npz")), allow_pickle=False)
        optimizer_state = np.load(io.BytesIO(archive.read("optimizer.npz")), allow_pickle=False)
        assert sorted(weights.files) == sorted(w.path for w in model.weights)
        assert "optimizer/iterations" in optimizer_state.files
        assert "dense/kernel/m" in optimizer_state.files
    assert metadata["format"] == saving.FORMAT_NAME and metadata["format_version"] == 1
    assert metadata["kcompile_version"] == kcompile.__version__ and metadata["date_saved"]
    assert config["class_name"] == "Sequential"
    assert config["config"]["layers"][2] == {"class_name": "Dense",
                                              "config": _normalized(model.layers[1].get_config())}
    assert config["compile_config"]["optimizer"]["class_name"] == "Adam"
    assert config["compile_config"]["loss"] == "sparse_categorical_crossentropy"
    assert config["compile_config"]["metrics"][0] == "accuracy"
    assert config["compile_config"]["target"] == "reference"


@pytest.mark.skipif("llvm" not in TARGETS, reason="the LLVM backend (llvmlite) is not installed")
def test_round_trip_on_llvm(tmp_path):
    x, y = _data()
    model = _model(target="llvm", optimizer=optimizers.SGD(learning_rate=0.05, momentum=0.9))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model.save(tmp_path / "llvm.keras")
    loaded = load_model(tmp_path / "llvm.keras")
    assert loaded.target == "llvm"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    _assert_same_state(model, loaded)


def test_models_not_compiled_not_built_or_built_from_data(tmp_path):
    x, y = _data()
    plain = Sequential([Input(shape=(2, 3)), Flatten(), Dense(4)])
    plain.save(tmp_path / "plain.keras")
    loaded = load_model(tmp_path / "plain.keras")
    assert not loaded.compiled
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), plain.predict(x, verbose=0))

    unbuilt = Sequential([Flatten(), Dense(4, name="head")])
    unbuilt.save(tmp_path / "unbuilt.keras")
    again = load_model(tmp_path / "unbuilt.keras")
    assert not again.built and again.get_layer("head").units == 4

    # Built from the first data it saw (no Input): the build shape is saved with the config.
    from_data = Sequential([Flatten(), Dense(3, activation="softmax")])
    from_data.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", target="reference")
    from_data.fit(x, y, epochs=1, verbose=0)
    from_data.save(tmp_path / "from_data.keras", include_optimizer=False)
    restored = load_model(tmp_path / "from_data.keras")
    assert restored.built
    np.testing.assert_array_equal(restored.predict(x, verbose=0), from_data.predict(x, verbose=0))
    assert int(restored.optimizer.iterations.buffer) == 0  # include_optimizer=False

    uncompiled = load_model(tmp_path / "from_data.keras", compile=False)
    assert not uncompiled.compiled and uncompiled.optimizer is None


def test_loss_objects_metric_functions_and_optimizer_classes_round_trip(tmp_path):
    model = Sequential([Input(shape=(3,)), Dense(2, activation="softmax")])
    model.compile(optimizer=optimizers.RMSprop(learning_rate=0.02, rho=0.8, momentum=0.5, centered=True),
                  loss=losses.CategoricalCrossentropy(label_smoothing=0.1),
                  metrics=["acc", metrics.categorical_accuracy, metrics.BinaryAccuracy(threshold=0.3)],
                  target="reference")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert type(loaded.loss) is losses.CategoricalCrossentropy
    assert loaded.loss.get_config() == model.loss.get_config()
    assert loaded.metrics_names == model.metrics_names == ["loss", "acc", "categorical_accuracy",
                                                           "binary_accuracy"]
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert type(loaded.optimizer) is optimizers.RMSprop


def scaled_tanh(x):
    return B.mul(B.tanh(x), 2.0)


def hinge_like(y_true, y_pred):
    return B.reduce_mean(B.mul(B.sub(y_pred, y_true), B.sub(y_pred, y_true)), -1)


class Scale(Layer):
    """A custom layer: one learned scale per feature."""

    def __init__(self, initial=1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = initial

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        return B.mul(inputs, self.scale.value)

    def get_config(self):
        return {**super().get_config(), "initial": self.initial}


def test_custom_layers_activations_and_losses_through_custom_objects(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    model = Sequential([Input(shape=(3,)), Scale(initial=0.5), Dense(2, activation=scaled_tanh)])
    model.compile(optimizer="rmsprop", loss=hinge_like, metrics=[hinge_like], target="reference")
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "custom.keras"
    model.save(path)

    with pytest.raises(ValueError, match=r"custom\.keras.*Unknown layer class 'Scale'"):
        load_model(path)
    with pytest.raises(ValueError, match=r"custom\.keras.*Unknown activation function: 'scaled_tanh'"):
        load_model(path, custom_objects={"Scale": Scale})
    with pytest.raises(ValueError, match=r"custom\.keras.*cannot be compiled.*custom_objects.*"
                                         r"compile=False"):
        load_model(path, custom_objects={"Scale": Scale, "scaled_tanh": scaled_tanh})
    weights_only = load_model(path, custom_objects={"Scale": Scale, "scaled_tanh": scaled_tanh},
                              compile=False)
    for a, b in zip(model.weights, weights_only.weights):
        assert _bits(a.buffer) == _bits(b.buffer)

    everything = {"Scale": Scale, "scaled_tanh": scaled_tanh, "hinge_like": hinge_like}
    loaded = load_model(path, custom_objects=everything)
    assert loaded.loss is hinge_like and loaded.metrics_names == ["loss", "hinge_like"]
    _assert_same_state(model, loaded)
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def test_registered_and_scoped_custom_objects_load_without_custom_objects(tmp_path, monkeypatch):
    # A fresh registry for this test: registration is process-global.
    from kcompile import registry
    monkeypatch.setattr(registry, "_GLOBAL_CUSTOM_OBJECTS", {})
    monkeypatch.setattr(registry, "_REGISTERED_NAMES", {})

    @saving.register_keras_serializable(package="tests")
    class Shift(Scale):
        pass

    registered_tanh = saving.register_keras_serializable("tests", name="tanh2")(scaled_tanh)
    assert saving.get_registered_name(Shift) == "tests>Shift"
    assert saving.get_registered_name(registered_tanh) == "tests>tanh2"
    assert saving.get_custom_objects()["tests>Shift"] is Shift
    assert saving.get_registered_object("tests>tanh2") is scaled_tanh

    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    model = Sequential([Input(shape=(3,)), Shift(initial=0.5), Dense(2, activation=scaled_tanh)])
    model.compile(optimizer="rmsprop", loss=hinge_like, target="reference")
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "registered.keras"
    model.save(path)

    # the layer and the activation are registered; the loss is not, so it comes from a scope
    with pytest.raises(ValueError, match="cannot be compiled"):
        load_model(path)
    with kcompile.utils.custom_object_scope({"hinge_like": hinge_like}):
        loaded = load_model(path)
    assert isinstance(loaded.layers[0], Shift) and loaded.loss is hinge_like
    _assert_same_state(model, loaded)
    # outside the scope the loss is unknown again; put in the global dict, it is found
    with pytest.raises(ValueError, match="cannot be compiled"):
        load_model(path)
    saving.get_custom_objects()["hinge_like"] = hinge_like
    np.testing.assert_array_equal(load_model(path).predict(x, verbose=0), model.predict(x, verbose=0))
    # custom_objects= still overrides the registry, under the registered name the file records
    other = load_model(path, custom_objects={"tests>Shift": Scale})
    assert type(other.layers[0]) is Scale


def test_registered_classes_load_by_their_package_name_and_never_shadow_builtins(tmp_path,
                                                                                 monkeypatch):
    from kcompile import registry
    from kcompile.layers import ReLU
    monkeypatch.setattr(registry, "_GLOBAL_CUSTOM_OBJECTS", {})
    monkeypatch.setattr(registry, "_REGISTERED_NAMES", {})

    def shift_class(amount):
        class Shift(Layer):
            def compute_output_shape(self, input_shape):
                return tuple(input_shape)

            def call(self, inputs):
                return B.add(inputs, float(amount))
        return Shift

    first = saving.register_keras_serializable(package="pkg_a")(shift_class(2.0))
    second = saving.register_keras_serializable(package="pkg_b")(shift_class(100.0))
    x = np.zeros((1, 2), np.float32)
    model = Sequential([Input(shape=(2,)), second(), ReLU(max_value=6.0)])
    model.compile(loss="mse", target="reference")
    model.save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        layers = json.loads(archive.read("config.json"))["config"]["layers"]
    assert [c.get("registered_name") for c in layers[1:]] == ["pkg_b>Shift", None]

    # a class registered under a built-in's name changes nothing for configs of the built-in
    saving.register_keras_serializable(package="other")(type("ReLU", (Layer,), {}))
    loaded = load_model(tmp_path / "m.keras")
    assert type(loaded.layers[0]) is second and type(loaded.layers[1]) is ReLU
    assert first is not second
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), np.full((1, 2), 6.0))


def test_registering_needs_a_config_and_a_name():
    class NoConfig:
        pass

    with pytest.raises(ValueError, match="get_config"):
        saving.register_keras_serializable()(NoConfig)
    with pytest.raises(ValueError, match="package"):
        saving.register_keras_serializable(package="a>b")
    with pytest.raises(TypeError, match="dicts"):
        kcompile.utils.custom_object_scope(["not", "a", "dict"])


def test_a_lambda_loss_cannot_be_saved(tmp_path):
    model = Sequential([Input(shape=(3,)), Dense(2)])
    model.compile(optimizer="sgd", loss=lambda y_true, y_pred: hinge_like(y_true, y_pred),
                  target="reference")
    with pytest.raises(ValueError, match="saved by name.*Define it with `def`"):
        model.save(tmp_path / "lambda.keras")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Resuming training exactly
# ----------------------------------------------------------------------------------------------

def _reseed_every_epoch():
    # Shuffling and Dropout seeds come from kcompile's global generator, which no model file holds:
    # seeding it at every epoch's start makes epoch e draw the same in every run.
    return LambdaCallback(on_epoch_begin=lambda epoch, logs: set_random_seed(1000 + epoch))


RESUME_FIT = dict(batch_size=16, verbose=0, callbacks=[_reseed_every_epoch()])


def _two_epochs_and_one(target):
    """(x, y, a model trained 2 epochs in one go, a model trained its first epoch)."""
    x, y = _data(n=40)
    in_one_go = _model(target)
    in_one_go.fit(x, y, epochs=2, **RESUME_FIT)
    first_half = _model(target)
    first_half.fit(x, y, epochs=1, **RESUME_FIT)
    return x, y, in_one_go, first_half


@pytest.mark.parametrize("target", TARGETS)
def test_training_resumes_exactly_after_save_and_load(tmp_path, target):
    x, y, in_one_go, first_half = _two_epochs_and_one(target)
    first_half.save(tmp_path / "epoch1.keras")
    resumed = load_model(tmp_path / "epoch1.keras")
    resumed.fit(x, y, epochs=2, initial_epoch=1, **RESUME_FIT)

    _assert_same_state(in_one_go, resumed)
    assert int(resumed.optimizer.iterations.buffer) == 6

    # The comparison can tell: without the optimizer's state (Adam's moments, its step) it differs.
    first_half.save(tmp_path / "no_optimizer.keras", include_optimizer=False)
    fresh_optimizer = load_model(tmp_path / "no_optimizer.keras")
    fresh_optimizer.fit(x, y, epochs=2, initial_epoch=1, **RESUME_FIT)
    assert not np.array_equal(fresh_optimizer.weights[0].buffer, in_one_go.weights[0].buffer)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["epoch1.weights.h5", "epoch1.keras"])
def test_training_resumes_exactly_after_save_weights_and_load_weights(tmp_path, target, name):
    """As Keras 3, a weights file of a compiled model (or a model file) holds the optimizer's state
    too: loading it back after more training continues from the saved step (Adam's moments, its
    iterations)."""
    x, y, in_one_go, model = _two_epochs_and_one(target)
    if name.endswith(".keras"):
        model.save(tmp_path / name)
    else:
        model.save_weights(tmp_path / name)
    model.fit(x, y, epochs=3, initial_epoch=1, **RESUME_FIT)           # a detour
    model.load_weights(tmp_path / name)
    assert int(model.optimizer.iterations.buffer) == 3
    model.fit(x, y, epochs=2, initial_epoch=1, **RESUME_FIT)
    _assert_same_state(in_one_go, model)

    # into a new compiled model (optimizer not built yet): the same
    fresh = _model(target, seed=5)
    fresh.load_weights(tmp_path / name)
    fresh.fit(x, y, epochs=2, initial_epoch=1, **RESUME_FIT)
    _assert_same_state(in_one_go, fresh)


def test_load_weights_into_renamed_layers_goes_by_position_with_the_optimizer_state(tmp_path):
    """As Keras 3 (whose weights files key layers by class and position): the same architecture
    with other layer names loads a weights file by position, the optimizer's slots too, so that
    training resumes exactly; weights of another kind or shape in that position still refuse."""
    x, y, in_one_go, first_half = _two_epochs_and_one("reference")
    first_half.save_weights(tmp_path / "w.weights.h5")
    set_random_seed(7)
    renamed = Sequential([Input(shape=(2, 3)), Flatten(), Dense(8, activation="relu", name="hidden"),
                          Dropout(0.25), Dense(3, activation="softmax", name="head")])
    renamed.compile(optimizer=optimizers.Adam(learning_rate=0.01),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"], target="reference")
    renamed.load_weights(tmp_path / "w.weights.h5")
    for mine, theirs in zip(renamed.weights, first_half.weights):
        np.testing.assert_array_equal(mine.buffer, theirs.buffer)
    renamed.fit(x, y, epochs=2, initial_epoch=1, **RESUME_FIT)
    for mine, theirs in zip(renamed.weights, in_one_go.weights):
        np.testing.assert_array_equal(mine.buffer, theirs.buffer)

    # a layer of other shapes in that position: refused by path, nothing loaded
    other = Sequential([Input(shape=(2, 3)), Flatten(), Dense(8, name="hidden"), Dense(4, name="head")])
    before = other.get_weights()
    with pytest.raises(ValueError, match="missing from the file: hidden/kernel"):
        other.load_weights(tmp_path / "w.weights.h5")
    for old, new in zip(before, other.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_load_weights_skips_an_optimizer_state_that_does_not_fit_with_a_warning(tmp_path):
    x, y = _data(n=32)
    adam = _model()
    adam.fit(x, y, epochs=1, batch_size=16, verbose=0)
    adam.save_weights(tmp_path / "adam.weights.npz")
    sgd = _model(optimizer=optimizers.SGD(learning_rate=0.1), seed=3)
    sgd.fit(x, y, epochs=1, batch_size=16, verbose=0)
    before = dict((k, v.copy()) for k, v in sgd.optimizer.state().items())
    with pytest.warns(UserWarning, match="optimizer's state is not"):
        sgd.load_weights(tmp_path / "adam.weights.npz")
    for w_adam, w_sgd in zip(adam.weights, sgd.weights):
        assert _bits(w_adam.buffer) == _bits(w_sgd.buffer)
    for key, value in sgd.optimizer.state().items():
        assert _bits(value) == _bits(before[key]), key
    uncompiled = Sequential([Input(shape=(2, 3)), Flatten(), Dense(8, activation="relu"),
                             Dropout(0.25), Dense(3, activation="softmax")])
    uncompiled.load_weights(tmp_path / "adam.weights.npz")      # weights only, no complaint
    for w_adam, w in zip(adam.weights, uncompiled.weights):
        assert _bits(w_adam.buffer) == _bits(w.buffer)
    arrays = dict(np.load(tmp_path / "adam.weights.npz"))
    assert "optimizer:optimizer/iterations" in arrays
    assert not any(key.startswith("optimizer:") for key in saving._weight_arrays(adam))


def _dense_model(optimizer, trainable_first=True):
    set_random_seed(4)
    model = Sequential([Input(shape=(4,)), Dense(3, name="d0", trainable=trainable_first),
                        Dense(1, name="d1")])
    model.compile(optimizer=optimizer, loss="mse", target="reference")
    return model


def _xy(n=64):
    x = np.random.default_rng(2).normal(size=(n, 4)).astype(np.float32)
    return x, x.sum(axis=1, keepdims=True)


def _state_bits(model):
    return {key: _bits(value) for key, value in model.optimizer.state().items()}


@pytest.mark.parametrize("saved,loaded,problem", [
    (lambda: optimizers.SGD(0.1), lambda: optimizers.Adam(0.001), "state of a SGD optimizer"),
    (lambda: optimizers.SGD(0.01, momentum=0.9),
     lambda: optimizers.SGD(optimizers.schedules.ExponentialDecay(0.01, 5, 0.5), momentum=0.9),
     "was a number; this model's is a schedule"),
    (lambda: optimizers.SGD(optimizers.schedules.ExponentialDecay(0.01, 5, 0.5)),
     lambda: optimizers.SGD(0.01), "was a schedule; this model's is a number"),
    (lambda: optimizers.SGD(0.1), lambda: optimizers.SGD(0.1, momentum=0.9), "slots for \\[\\]"),
])
def test_an_optimizer_state_of_another_kind_is_skipped_with_a_warning(tmp_path, saved, loaded,
                                                                      problem):
    """Another optimizer class (without the same slots), a schedule where the model has a number
    or the reverse, slots where the model's optimizer has none or the reverse: the weights load,
    the optimizer is left exactly as it was (nothing half-restored), and a warning says why."""
    x, y = _xy()
    source = _dense_model(saved())
    source.fit(x, y, epochs=2, batch_size=16, verbose=0)
    source.save_weights(tmp_path / "w.weights.npz")
    target = _dense_model(loaded())
    target.fit(x[:16], y[:16], epochs=1, batch_size=16, verbose=0)
    before = _state_bits(target)
    with pytest.warns(UserWarning, match=problem):
        target.load_weights(tmp_path / "w.weights.npz")
    assert _state_bits(target) == before
    for a, b in zip(source.weights, target.weights):
        assert _bits(a.buffer) == _bits(b.buffer)


def test_a_partial_optimizer_state_is_skipped_and_a_fresh_one_resets_the_optimizer(tmp_path):
    x, y = _xy()
    # slots for only some trainable weights (saved with the first layer frozen): skipped
    frozen = _dense_model(optimizers.Adam(0.05), trainable_first=False)
    frozen.fit(x, y, epochs=1, batch_size=16, verbose=0)
    frozen.save_weights(tmp_path / "frozen.weights.npz")
    model = _dense_model(optimizers.Adam(0.05))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    before = _state_bits(model)
    with pytest.warns(UserWarning, match="slots for"):
        model.load_weights(tmp_path / "frozen.weights.npz")
    assert _state_bits(model) == before
    # a state saved before any training (as a Keras user saves weights to reset a model later):
    # loading it brings the optimizer back to that state, so training repeats exactly
    model = _dense_model(optimizers.Adam(0.05))
    model.save_weights(tmp_path / "start.weights.npz")
    first = model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0).history["loss"]
    model.load_weights(tmp_path / "start.weights.npz")
    assert int(model.optimizer.iterations.buffer) == 0
    again = model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0).history["loss"]
    assert again == first


def test_adam_state_loads_into_adamw_which_has_the_same_slots(tmp_path):
    x, y = _xy()
    adam = _dense_model(optimizers.Adam(0.01))
    adam.fit(x, y, epochs=1, batch_size=16, verbose=0)
    adam.save_weights(tmp_path / "adam.weights.npz")
    adamw = _dense_model(optimizers.AdamW(0.01))
    adamw.load_weights(tmp_path / "adam.weights.npz")
    assert int(adamw.optimizer.iterations.buffer) == int(adam.optimizer.iterations.buffer)
    for key, value in adam.optimizer.state().items():
        assert _bits(adamw.optimizer.state()[key]) == _bits(value), key


def test_load_model_leaves_the_global_random_generator_alone(tmp_path):
    _model().save(tmp_path / "m.keras")
    set_random_seed(7)
    expected = get_generator().integers(0, 2**32, 4)
    set_random_seed(7)
    load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(get_generator().integers(0, 2**32, 4), expected)


# ----------------------------------------------------------------------------------------------
# File names
# ----------------------------------------------------------------------------------------------

def test_to_json_model_from_json_and_clone_model_rebuild_the_architecture():
    from kcompile.models import clone_model, model_from_json
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    text = model.to_json()
    assert json.loads(text)["class_name"] == "Sequential" and "compile_config" not in text
    from_json, cloned = model_from_json(text), clone_model(model)
    assert from_json.optimizer is None                           # not compiled, as Keras's
    # Keras 3 compiles a clone of a compiled model from its compile config: a new optimizer
    assert cloned.get_compile_config() == model.get_compile_config()
    assert cloned.optimizer is not model.optimizer and int(cloned.optimizer.iterations.numpy()) == 0
    assert float(cloned.optimizer.learning_rate) == pytest.approx(float(model.optimizer.learning_rate))
    for copy in (from_json, cloned):
        assert copy.get_config() == model.get_config()
        assert not np.array_equal(copy.get_weights()[0], model.get_weights()[0])  # fresh weights
        copy.set_weights(model.get_weights())
        np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-6)
    before = [w.copy() for w in model.get_weights()]
    clone = clone_model(model)
    clone.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    clone.fit(x, y, epochs=1, verbose=0)                         # the original is not touched
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    seen = []

    def clone_function(layer):
        seen.append(layer.name)
        return layer.__class__.from_config(layer.get_config())

    assert clone_model(model, clone_function=clone_function).get_config() == model.get_config()
    assert seen == [layer.name for layer in model.layers]
    with pytest.raises(ValueError, match="not valid JSON"):
        model_from_json("{oops")
    with pytest.raises(ValueError, match="'class_name' and 'config'"):
        model_from_json("[1, 2]")
    with pytest.raises(ValueError, match="cannot be rebuilt.*Conv7D"):
        model_from_json(text.replace('"Dense"', '"Conv7D"'))


def test_a_layer_named_like_the_optimizer_prefix_round_trips_through_a_weights_file(tmp_path):
    """A weights file keeps the optimizer's state under 'optimizer:'; a layer may be named so too
    (Keras 3 allows it), and its weights had been taken for optimizer state ("missing from the
    file").  Weights and the optimizer's state come back: the next epoch matches the original's."""
    x, y = _data()

    def build():
        set_random_seed(1)
        model = Sequential([Input(shape=(2, 3)), Flatten(), Dense(4, name="optimizer:head"),
                            Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", target="reference")
        return model
    model = build()
    model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    model.save_weights(tmp_path / "m.weights.npz")
    other = build()
    other.load_weights(tmp_path / "m.weights.npz")
    for got, want in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert int(other.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 3
    for m in (model, other):
        m.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for got, want in zip(other.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("build", [
    lambda L: [L.Input((5, 3)), L.TimeDistributed(L.Dense(2)), L.Flatten(), L.Dense(1)],
    lambda L: [L.Input((5, 3)), L.Bidirectional(L.LSTM(2, return_sequences=True)), L.LSTM(2)],
], ids=["TimeDistributed(Dense)+Dense", "Bidirectional(LSTM)+LSTM"])
def test_clone_model_of_a_wrapper_whose_layer_class_is_also_at_the_top(build):
    """clone_model passes the top-level layers' classes as custom objects; the wrapped layer's
    config (of one of those classes) had been turned into a layer before the wrapper's
    from_config, which failed ("'Dense' object has no attribute 'get'").  Keras 3 clones both."""
    from kcompile import layers as L
    from kcompile.models import clone_model, model_from_json
    model = Sequential(build(L))
    x = np.random.default_rng(0).standard_normal((4, 5, 3)).astype(np.float32)
    for copy in (clone_model(model),
                 model_from_json(model.to_json(), custom_objects={"Dense": L.Dense, "LSTM": L.LSTM})):
        assert copy.get_config() == model.get_config()
        copy.set_weights(model.get_weights())
        np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0),
                                   rtol=1e-6, atol=1e-7)


def test_file_suffixes_like_keras(tmp_path):
    model = _model()
    for name in ("model", "model.h5", "model.kc", "model.weights.npz"):
        with pytest.raises(ValueError, match=r"Please add a `\.keras` extension"):
            model.save(tmp_path / name)
    with pytest.raises(ValueError, match="HDF5 is not supported|legacy HDF5"):
        model.save(tmp_path / "model.h5")
    with pytest.raises(ValueError, match=r"h5py.*`\.weights\.npz`"):
        model.save_weights(tmp_path / "model.h5")
    with pytest.raises(ValueError, match=r"must end in `\.weights\.npz` or `\.weights\.h5`"):
        model.save_weights(tmp_path / "model.npz")
    with pytest.raises(ValueError, match=r"File format not supported.*`\.keras`"):
        load_model(tmp_path / "model.h5")
    with pytest.raises(ValueError, match="model.load_weights"):
        load_model(tmp_path / "model.weights.npz")
    assert os.listdir(tmp_path) == []
    # Keras 3's load_model raises a ValueError there, and its load_weights a FileNotFoundError
    for error in (FileNotFoundError, ValueError):
        with pytest.raises(error, match="File not found: filepath=.*missing.keras"):
            load_model(tmp_path / "missing.keras")
        with pytest.raises(error, match="File not found: filepath=.*missing.weights.npz"):
            model.load_weights(tmp_path / "missing.weights.npz")
    model.save(tmp_path / "model.keras")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "model.keras", overwrite=False)
    missing = tmp_path / "no_such_dir"
    for save, name in ((model.save, "model.keras"), (model.save_weights, "model.weights.npz")):
        with pytest.raises(FileNotFoundError, match=f"{missing} does not exist; create it first"):
            save(missing / name)
        with pytest.raises(NotADirectoryError, match="model.keras is a file, not a directory"):
            save(tmp_path / "model.keras" / "deeper" / name)     # under a file
    assert not missing.exists()


# ----------------------------------------------------------------------------------------------
# Damaged and foreign files
# ----------------------------------------------------------------------------------------------

def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npz(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _with_config(members, change):
    config = json.loads(members["config.json"])
    change(config)
    return {**members, "config.json": json.dumps(config)}


def _with_weights(members, change):
    weights = dict(np.load(io.BytesIO(members["weights.npz"])))
    change(weights)
    return {**members, "weights.npz": _npz(**weights)}


def _unknown_layer(config):
    config["config"]["layers"][1]["class_name"] = "Conv7D"


def _newer_format(members):
    metadata = json.loads(members["metadata.json"])
    metadata["format_version"] = 99
    return {**members, "metadata.json": json.dumps(metadata)}


BAD_FILES = {
    "truncated": (lambda data, members: data[:len(data) // 2], "not a valid `.keras` zip archive"),
    "random bytes": (lambda data, members: np.random.default_rng(0).bytes(500),
                     "not a valid `.keras` zip archive"),
    "empty": (lambda data, members: b"", "not a valid `.keras` zip archive"),
    "no config.json": ({"metadata.json", "weights.npz"}, "not a kcompile model file: it has no config.json"),
    "foreign zip": (lambda data, members: {"readme.txt": b"hello"}, "not a kcompile model file"),
    "Keras 3 file": (lambda data, members: {"config.json": b"{}", "metadata.json": b"{}",
                                            "model.weights.h5": b"\x89HDF"}, "Keras 3 `.keras` file"),
    "other format": (lambda data, members: {**members, "metadata.json": b'{"format": "x"}'},
                     "does not name the format"),
    "newer format": (lambda data, members: _newer_format(members), "format version 99"),
    "config not JSON": (lambda data, members: {**members, "config.json": b"{not json"},
                        "config.json is not valid JSON"),
    "config nested too deeply": (lambda data, members: {**members,
                                                        "config.json": b"[" * 100000 + b"]" * 100000},
                                 "config.json is nested too deeply"),
    "unknown layer class": (lambda data, members: _with_config(members, _unknown_layer),
                            "cannot be rebuilt from config.json.*Unknown layer class 'Conv7D'"),
    "weights not npz": (lambda data, members: {**members, "weights.npz": b"garbage"},
                        "weights.npz in the file is not a valid .npz"),
    "missing weight": (lambda data, members: _with_weights(members, lambda w: w.pop("dense/bias")),
                       "missing from the file: dense/bias"),
    "mis-shaped weight": (lambda data, members: _with_weights(
        members, lambda w: w.update({"dense_1/kernel": np.zeros((8, 4), np.float32)})),
        r"'dense_1/kernel' has shape \(8, 4\) in the file but \(8, 3\) in the model"),
    "extra weight": (lambda data, members: _with_weights(
        members, lambda w: w.update({"dense_9/kernel": np.zeros(2, np.float32)})),
        "in the file but not in the model: dense_9/kernel"),
    "pickled weights": (lambda data, members: _with_weights(
        members, lambda w: w.update({"dense/bias": np.array([{"x": 1}], dtype=object)})),
        "weights.npz in the file is not a valid .npz archive of numeric arrays"),
    "mis-shaped slot": (lambda data, members: {**members, "optimizer.npz": _npz(**{
        **dict(np.load(io.BytesIO(members["optimizer.npz"]))),
        "dense/kernel/m": np.zeros((2, 2), np.float32)})}, r"slot 'dense/kernel/m' has shape \(2, 2\)"),
    "NaN learning rate": (lambda data, members: {**members, "optimizer.npz": _npz(**{
        **dict(np.load(io.BytesIO(members["optimizer.npz"]))),
        "optimizer/learning_rate": np.float32("nan")})},
        "bad.keras: optimizer.npz: 'optimizer/learning_rate' is nan, not a finite number"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_damaged_or_foreign_files_give_a_clear_value_error(tmp_path, case):
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    good = tmp_path / "good.keras"
    model.save(good)
    data, members = good.read_bytes(), _members(good)
    damage, message = BAD_FILES[case]
    bad = tmp_path / "bad.keras"
    if isinstance(damage, set):
        _write_zip(bad, {name: members[name] for name in damage})
    else:
        damaged = damage(data, members)
        if isinstance(damaged, dict):
            _write_zip(bad, damaged)
        else:
            bad.write_bytes(damaged)
    with pytest.raises(ValueError, match=message) as raised:
        load_model(bad)
    assert type(raised.value) is ValueError  # not a zipfile / numpy / json error type
    assert str(raised.value).startswith(f"Cannot load {bad}: ")


# ----------------------------------------------------------------------------------------------
# save_weights / load_weights
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,as_text", [("w.weights.npz", False), ("model.weights.h5", True)])
def test_weights_round_trip_by_path(tmp_path, name, as_text):
    # (Keras 3 programs write `model.weights.h5`: kcompile takes the name and writes its .npz there.)
    x, _ = _data()
    source, target = _model(seed=1), _model(seed=2)
    source.save_weights(tmp_path / name)
    with np.load(tmp_path / name, allow_pickle=False) as npz:
        # (and the compiled model's optimizer state, see the test of resuming from weights files)
        assert sorted(f for f in npz.files if not f.startswith(saving.WEIGHTS_OPTIMIZER_PREFIX)) \
            == sorted(w.path for w in source.weights)
    assert not np.array_equal(target.predict(x, verbose=0), source.predict(x, verbose=0))
    target.load_weights(str(tmp_path / name) if as_text else tmp_path / name)
    np.testing.assert_array_equal(target.predict(x, verbose=0), source.predict(x, verbose=0))
    for a, b in zip(source.weights, target.weights):
        assert _bits(a.buffer) == _bits(b.buffer)

    # The weights of a whole-model file load too, as in Keras.
    third = _model(seed=3)
    source.save(tmp_path / "m.keras")
    third.load_weights(tmp_path / "m.keras")
    np.testing.assert_array_equal(third.predict(x, verbose=0), source.predict(x, verbose=0))


def test_a_weights_h5_name_is_not_a_model_file_and_a_real_hdf5_file_is_refused(tmp_path):
    source, target = _model(seed=1), _model(seed=2)
    source.save_weights(tmp_path / "model.weights.h5")
    with pytest.raises(ValueError, match="model.load_weights"):
        load_model(tmp_path / "model.weights.h5")
    # A real HDF5 file (what Keras writes; its signature at 0 or after a 512-byte user block) is
    # refused with the reason, and nothing is loaded.
    before = target.get_weights()
    for prefix in (b"", b"\0" * 512):
        (tmp_path / "keras.weights.h5").write_bytes(prefix + b"\x89HDF\r\n\x1a\n" + b"\0" * 600)
        with pytest.raises(ValueError, match="HDF5 file.*kcompile's `.weights.h5` files are its own "
                                             "format"):
            target.load_weights(tmp_path / "keras.weights.h5")
    for a, b in zip(before, target.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_load_weights_checks_everything_before_changing_anything(tmp_path):
    model = _model(seed=1)
    before = [w.numpy() for w in model.weights]
    arrays = {w.path: w.numpy() + 1 for w in model.weights}
    arrays["dense_1/bias"] = np.zeros(4, np.float32)  # the last weight does not fit
    with open(tmp_path / "bad.weights.npz", "wb") as file:
        np.savez(file, **arrays)
    with pytest.raises(ValueError, match=r"(?s)bad\.weights\.npz.*nothing was loaded.*'dense_1/bias' has "
                                         r"shape \(4,\) in the file but \(3,\) in the model") as raised:
        model.load_weights(tmp_path / "bad.weights.npz")
    assert type(raised.value) is ValueError
    for old, variable in zip(before, model.weights):
        np.testing.assert_array_equal(variable.buffer, old)

    with pytest.warns(UserWarning, match="Skipping weights"):
        model.load_weights(tmp_path / "bad.weights.npz", skip_mismatch=True)
    np.testing.assert_array_equal(model.get_layer("dense").kernel.buffer, arrays["dense/kernel"])
    np.testing.assert_array_equal(model.get_layer("dense_1").bias.buffer, before[3])

    (tmp_path / "junk.weights.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.weights\.npz: the file is not a valid \.npz"):
        model.load_weights(tmp_path / "junk.weights.npz")
    with pytest.raises(ValueError, match="not built yet"):
        Sequential([Dense(2)]).load_weights(tmp_path / "bad.weights.npz")


def test_save_weights_of_an_unbuilt_model_is_refused_and_keeps_the_file(tmp_path):
    # a model without an input shape has no weights: its (empty) file must not replace a good one
    path = tmp_path / "model.weights.h5"
    model = Sequential([Input((4,)), Dense(3)])
    model.save_weights(path)
    good = path.read_bytes()
    with pytest.raises(ValueError, match="not built yet, so it has no weights to save"):
        Sequential([Dense(3)]).save_weights(path)
    assert path.read_bytes() == good
    # with a known input shape it is built first, as load_weights does
    shaped = Sequential([Dense(3, input_shape=(4,))])
    shaped.save_weights(tmp_path / "shaped.weights.h5")
    assert shaped.built
    model.load_weights(tmp_path / "shaped.weights.h5")
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), shaped.layers[0].kernel.numpy())


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------

def _failing_savez(*args, **kwargs):
    raise OSError("disk full")


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    x, y = _data()
    model = _model()
    model.save(tmp_path / "model.keras")
    model.save_weights(tmp_path / "model.weights.npz")
    saved = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    model.fit(x, y, epochs=1, verbose=0)  # something new to save
    monkeypatch.setattr(np, "savez", _failing_savez)
    for save, name in ((model.save, "model.keras"), (model.save_weights, "model.weights.npz"),
                       (model.save, "new.keras")):
        with pytest.raises(OSError, match="disk full"):
            save(tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == sorted(saved)
    for name, data in saved.items():
        assert (tmp_path / name).read_bytes() == data
    monkeypatch.undo()
    assert _normalized(load_model(tmp_path / "model.keras").get_config()) == _normalized(model.get_config())


# ----------------------------------------------------------------------------------------------
# ModelCheckpoint with the real model.save
# ----------------------------------------------------------------------------------------------

def test_model_checkpoint_saves_the_best_model_during_fit(tmp_path):
    x, y = _data(n=64)
    val_x, val_y = _data(n=32, seed=5)
    model = _model(optimizer=optimizers.SGD(learning_rate=0.5))  # a large rate: val_loss goes up and down
    snapshots = []
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(
        (logs["val_loss"], [w.numpy() for w in model.weights])))
    best_path = tmp_path / "best.keras"
    weights_path = tmp_path / "best.weights.npz"
    history = model.fit(x, y, epochs=6, batch_size=16, verbose=0, validation_data=(val_x, val_y),
                        callbacks=[record,
                                   ModelCheckpoint(best_path, monitor="val_loss", save_best_only=True),
                                   ModelCheckpoint(weights_path, save_best_only=True,
                                                   save_weights_only=True)])
    assert sorted(os.listdir(tmp_path)) == ["best.keras", "best.weights.npz"]
    best_epoch = int(np.argmin(history.history["val_loss"]))
    best_weights = snapshots[best_epoch][1]
    loaded = load_model(best_path)
    for array, variable in zip(best_weights, loaded.weights):
        assert _bits(array) == _bits(variable.buffer)
    assert loaded.evaluate(val_x, val_y, verbose=0)[0] == pytest.approx(min(history.history["val_loss"]),
                                                                        rel=1e-6)
    from_weights = _model(seed=9)          # (Adam: the file's SGD state is not for it)
    with pytest.warns(UserWarning, match="optimizer's state is not loaded"):
        from_weights.load_weights(weights_path)
    for array, variable in zip(best_weights, from_weights.weights):
        assert _bits(array) == _bits(variable.buffer)


def test_saving_through_a_symlink_keeps_the_link_and_the_file_keeps_its_mode(tmp_path):
    """As open() would: the link's target is replaced and the link stays; a private file stays
    private (the new file took the umask's 0644 and replaced the link itself)."""
    x, y = _data()
    model = _model()
    target, weights_target = tmp_path / "run1.keras", tmp_path / "run1.weights.npz"
    model.save(target)
    model.save_weights(weights_target)
    os.chmod(target, 0o600)
    (tmp_path / "latest.keras").symlink_to(target.name)
    (tmp_path / "latest.weights.npz").symlink_to(weights_target.name)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "latest.keras")
    model.save_weights(tmp_path / "latest.weights.npz")
    ModelCheckpoint(tmp_path / "latest.keras").set_model(model)
    for link, real in (("latest.keras", target), ("latest.weights.npz", weights_target)):
        assert (tmp_path / link).is_symlink()
    assert os.stat(target).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["latest.keras", "latest.weights.npz", "run1.keras",
                                            "run1.weights.npz"]
    for got, want in zip(load_model(target).get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_long_file_names_save_and_checkpoint(tmp_path):
    """The temporary file's name is short: any name the file system takes can be saved to (one of
    249 bytes failed, naming a temporary file the user never gave)."""
    x, y = _data()
    model = _model()
    name = "m" * (249 - len(".keras")) + ".keras"
    model.save(tmp_path / name)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(tmp_path / ("c" + name[1:]))])
    assert sorted(os.listdir(tmp_path)) == sorted([name, "c" + name[1:]])


def test_a_directory_that_refuses_new_files_is_named(tmp_path, monkeypatch):
    model = _model()
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError, match=f"cannot create a file in {tmp_path}.*must be writable"):
        model.save(tmp_path / "model.keras")


def test_compile_config_round_trips_through_compile_from_config_and_a_file(tmp_path):
    x, y = _data(n=8)
    model = _model(seed=1)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.05),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], run_eagerly=True)
    assert model.target == "reference" and model.run_eagerly
    config = model.get_compile_config()
    other = _model(seed=1)
    other.compile_from_config(config)
    assert other.run_eagerly and other.target == "reference"
    assert other.loss == "sparse_categorical_crossentropy"
    assert other.optimizer.learning_rate == pytest.approx(0.05)
    np.testing.assert_allclose(other.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0))
    model.save(tmp_path / "eager.keras")
    loaded = load_model(tmp_path / "eager.keras")
    assert loaded.run_eagerly and loaded.target == "reference"
    assert loaded.get_compile_config()["run_eagerly"] is True
    with pytest.raises(TypeError, match="get_compile_config"):
        other.compile_from_config("mse")


@pytest.mark.parametrize("target", TARGETS)
def test_pickle_and_deepcopy_give_a_model_that_trains_on_exactly_like_the_original(target):
    import copy
    import pickle
    rng = np.random.default_rng(4)
    x = rng.random((24, 5), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    set_random_seed(2)
    model = Sequential([Input((5,)), Dense(4, activation="relu"), Dense(3, activation="softmax")])
    model.compile(optimizers.Adam(0.01), "categorical_crossentropy", metrics=["accuracy"],
                  target=target)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    copies = [pickle.loads(pickle.dumps(model)), copy.deepcopy(model)]
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for other in copies:
        assert other is not model and other.compiled and other.loss == "categorical_crossentropy"
        other.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)   # Adam's state came along
        for got, want in zip(other.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(got, want)
    unbuilt = pickle.loads(pickle.dumps(Sequential([Dense(3)])))
    assert not unbuilt.built and unbuilt.layers[0].units == 3


def test_deepcopy_of_a_layer_copies_the_layer_alone():
    """Not its model (which may hold a custom layer the registry does not know): an independent
    layer with the same weights, in no model."""
    import copy

    class Doubles(Layer):
        def call(self, x):
            return x * 2.0

    model = Sequential([Input((4,)), Doubles(), Dense(3)])
    model.compile("adam", "mse", target=TARGETS[-1])
    model.fit(np.ones((8, 4), np.float32), np.ones((8, 3), np.float32), verbose=0)
    dense = model.layers[-1]
    copied = copy.deepcopy(dense)
    for got, want in zip(copied.get_weights(), dense.get_weights()):
        np.testing.assert_array_equal(got, want)
    copied.kernel.assign(np.zeros((4, 3), np.float32))
    assert np.abs(dense.get_weights()[0]).sum() > 0 and len(copied._models) == 0


def test_a_layer_of_a_model_pickles_alone_with_its_weights():
    """As Keras 3's: the unpickled layer holds the same weights and belongs to no model, and a
    new model built around it predicts what the layer computes (numpy)."""
    import pickle
    model = Sequential([Input((4,)), Dense(3, activation="relu"), Dense(2)])
    model.compile("sgd", "mse", target=TARGETS[-1])
    x = np.random.default_rng(0).random((6, 4), dtype=np.float32)
    model.fit(x, np.ones((6, 2), np.float32), verbose=0)
    dense = pickle.loads(pickle.dumps(model.layers[0]))
    kernel, bias = model.layers[0].get_weights()
    for got, want in zip(dense.get_weights(), (kernel, bias)):
        np.testing.assert_array_equal(got, want)
    assert len(dense._models) == 0
    alone = Sequential([Input((4,)), dense])
    np.testing.assert_allclose(alone.predict(x, verbose=0), np.maximum(x @ kernel + bias, 0),
                               rtol=1e-5, atol=1e-6)


def test_a_normalization_over_all_axes_reloads(tmp_path):
    """axis=None saves as axis () and reads back from JSON as []: the same layer (one mean and
    variance for every value, here of 0..11: 5.5 and 143/12)."""
    from kcompile.layers import Normalization
    norm = Normalization(axis=None)
    norm.adapt(np.arange(12, dtype=np.float32).reshape(4, 3))
    model = Sequential([Input((3,)), norm])
    x = np.array([[0.0, 5.5, 11.0]], np.float32)
    want = (x - 5.5) / np.sqrt(143 / 12)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5)
    model.save(tmp_path / "n.keras")
    back = load_model(tmp_path / "n.keras")
    assert back.layers[0].axis == ()
    np.testing.assert_array_equal(back.predict(x, verbose=0), model.predict(x, verbose=0))
    assert Normalization.from_config(_normalized(norm.get_config())).axis == ()


def test_build_config_records_the_input_shape_and_builds_from_it():
    """get_build_config / build_from_config as Keras 3: None before building; the batched input
    shape after (by a model, or by the user calling build); building from it (as read back from
    JSON) gives the weights of that shape."""
    dense = Dense(2)
    assert dense.get_build_config() is None
    dense.build((None, 5))
    assert dense.get_build_config() == {"input_shape": (None, 5)}
    other = Dense(2)
    other.build_from_config(_normalized(dense.get_build_config()))
    assert [w.shape for w in other.get_weights()] == [(5, 2), (2,)]
    model = Sequential([Input((4,)), Dense(3)])
    assert model.get_build_config() == {"input_shape": (None, 4)}
    assert model.layers[0].get_build_config() == {"input_shape": (None, 4)}
    fresh = Sequential([Dense(3)])
    assert fresh.get_build_config() is None
    fresh.build_from_config(_normalized(model.get_build_config()))
    assert fresh.built and fresh.count_params() == 4 * 3 + 3
    fresh.build_from_config(None)                   # nothing recorded: nothing to do
    with pytest.raises(ValueError, match="build_from_config takes the dict get_build_config"):
        Dense(2).build_from_config({"shape": 3})


def test_serialize_keras_object_round_trips_every_kind_through_json():
    """saving.serialize_keras_object / deserialize_keras_object, as Keras 3's: each object comes
    back from JSON as one of its class with its config; a built model comes back built; a loss
    and a metric of one class name are told apart by module; functions by name."""
    from kcompile import activations, initializers, regularizers
    from kcompile.saving import deserialize_keras_object, serialize_keras_object
    objects = [Dense(2, activation="relu"), optimizers.Adam(0.01), losses.MeanSquaredError(),
               metrics.MeanSquaredError(), metrics.AUC(num_thresholds=50),
               initializers.GlorotUniform(seed=3), regularizers.L2(0.1),
               optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)]
    for obj in objects:
        config = _normalized(serialize_keras_object(obj))
        assert config["class_name"] == type(obj).__name__ and config["registered_name"] is None
        back = deserialize_keras_object(config)
        assert type(back) is type(obj) and back.get_config() == obj.get_config()
    assert deserialize_keras_object(serialize_keras_object(activations.relu)) is activations.relu
    assert deserialize_keras_object(serialize_keras_object(losses.mean_squared_error)) \
        is losses.mean_squared_error
    array = deserialize_keras_object(_normalized(serialize_keras_object(np.arange(3, dtype=np.int32))))
    assert array.dtype == np.int32 and array.tolist() == [0, 1, 2]
    assert deserialize_keras_object(serialize_keras_object([1, "relu", None])) == [1, "relu", None]

    model = Sequential([Input((3,)), Dense(2)])
    config = _normalized(serialize_keras_object(model))
    assert config["module"] == "kcompile.models" and config["build_config"] == {"input_shape": [None, 3]}
    back = deserialize_keras_object(config)
    assert isinstance(back, Sequential) and back.built and back.count_params() == 8

    @kcompile.saving.register_keras_serializable(package="test_serialize")
    class Scale(Layer):
        def __init__(self, k=2.0, **kwargs):
            super().__init__(**kwargs)
            self.k = k

        def call(self, x):
            return x * self.k

        def get_config(self):
            return {**super().get_config(), "k": self.k}

    config = serialize_keras_object(Scale(3.0))
    assert config["registered_name"] == "test_serialize>Scale"
    assert deserialize_keras_object(_normalized(config)).k == 3.0

    with pytest.raises(TypeError, match="Could not locate class 'Nope'"):
        deserialize_keras_object({"class_name": "Nope", "config": {}})
    with pytest.raises(TypeError, match="Could not locate function 'nope'"):
        deserialize_keras_object({"module": "builtins", "class_name": "function", "config": "nope"})
    with pytest.raises(TypeError, match="cannot serialize"):
        serialize_keras_object(object())
