"""The Keras-compatible user surface: names, model construction, summary, weights, configs, output."""
import contextlib
import io
import time
import warnings

import numpy as np
import pytest

import kcompile
from kcompile import layers, losses, metrics, optimizers
from kcompile.layers import Activation, Dense, Dropout, Flatten, Input, InputLayer
from kcompile.models import Sequential
from kcompile.utils import set_random_seed

TARGET = "reference"


def issue_model():
    """The issue's model, built as its script builds it."""
    model = Sequential()
    model.add(Flatten(input_shape=(28, 28)))
    model.add(Dense(512, activation="relu"))
    model.add(Dropout(0.2))
    model.add(Dense(512, activation="relu"))
    model.add(Dropout(0.2))
    model.add(Dense(10))
    model.add(Activation("softmax"))
    return model


def small_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4, 3))
    y = np.eye(5, dtype=np.float32)[rng.integers(0, 5, n)]
    return x, y


def small_model():
    return Sequential([Flatten(input_shape=(4, 3)), Dense(8, activation="relu"), Dropout(0.25),
                       Dense(5, activation="softmax")])


def test_top_level_aliases_are_the_keras_names():
    assert kcompile.Sequential is kcompile.models.Sequential
    assert kcompile.Input is layers.Input
    for name in ["Dense", "Flatten", "Activation", "Dropout", "InputLayer", "Input", "Layer"]:
        assert hasattr(kcompile.layers, name)
    assert kcompile.optimizers.Adam is optimizers.Adam and kcompile.optimizers.SGD is optimizers.SGD
    for name in ["relu", "sigmoid", "tanh", "softmax", "linear", "get"]:
        assert callable(getattr(kcompile.activations, name))
    assert kcompile.losses.categorical_crossentropy is losses.categorical_crossentropy
    assert isinstance(kcompile.metrics.CategoricalAccuracy(), metrics.Metric)


def test_summary_counts_the_issue_model_by_hand():
    model = issue_model()
    # Dense: inputs * units + units.  784*512+512, 512*512+512, 512*10+10.
    expected = (784 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)
    assert expected == 669_706
    assert model.count_params() == expected
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.summary()
    text = out.getvalue()
    assert 'Model: "sequential"' in text
    for row in ["flatten (Flatten)", "(None, 784)", "dense (Dense)", "401,920", "dense_1 (Dense)",
                "262,656", "dense_2 (Dense)", "5,130", "dropout_1 (Dropout)",
                "activation (Activation)", "(None, 10)"]:
        assert row in text, row
    assert "Total params: 669,706 (2.55 MB)" in text
    assert "Trainable params: 669,706 (2.55 MB)" in text
    assert "Non-trainable params: 0 (0.00 B)" in text


def test_one_hidden_layer_mlp_has_keras_407050_params():
    model = Sequential([Flatten(input_shape=(28, 28)), Dense(512, activation="relu"), Dropout(0.2),
                        Dense(10, activation="softmax")])
    assert model.count_params() == 784 * 512 + 512 + 512 * 10 + 10 == 407_050


def test_summary_with_print_fn_and_optimizer_params_after_fit():
    model = small_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", target=TARGET)
    lines = []
    model.summary(print_fn=lines.append)
    assert "Optimizer params" not in lines[0]
    model.fit(*small_data(), verbose=0)
    lines = []
    model.summary(print_fn=lines.append)
    params = 12 * 8 + 8 + 8 * 5 + 5
    # Adam: m and v per weight, plus the iteration counter and the learning rate (as Keras 3).
    assert f"Optimizer params: {2 * params + 2:,}" in lines[0]
    assert f"Total params: {3 * params + 2:,}" in lines[0]


def test_ways_to_give_the_input_shape_build_the_same_model():
    set_random_seed(1)
    a = Sequential([Flatten(input_shape=(28, 28)), Dense(10, activation="softmax")])
    set_random_seed(1)
    b = Sequential([Input(shape=(28, 28)), Flatten(), Dense(10, activation="softmax")])
    set_random_seed(1)
    c = Sequential([InputLayer(shape=(28, 28)), Flatten(), Dense(10, activation="softmax")])
    set_random_seed(1)
    d = Sequential([Flatten(), Dense(10, activation="softmax")])
    d.build((None, 28, 28))
    for model in (a, b, c, d):
        assert model.built and model.input_shape == (None, 28, 28)
        assert model.output_shape == (None, 10)
        assert [layer.name for layer in model.layers] == ["flatten", "dense"]
        for w, v in zip(model.get_weights(), a.get_weights()):
            np.testing.assert_array_equal(w, v)


@pytest.mark.parametrize("bad", [(None, 2.5), (None, 0), (None, True), (None, -1), ("a", "b"), 5, ()])
def test_build_refuses_a_shape_that_is_not_positive_integers_and_stays_unbuilt(bad):
    model = Sequential([Dense(8), Dense(3)])
    with pytest.raises(ValueError, match="build takes the batched input shape"):
        model.build(bad)
    assert not model.built and not any(layer.built for layer in model.layers)
    model.build((None, 4))                      # the model is still free to take its real shape
    assert [w.shape for w in model.get_weights()] == [(4, 8), (8,), (8, 3), (3,)]


def test_unbuilt_model_builds_on_first_data_like_keras():
    model = Sequential([Flatten(), Dense(3)])
    assert not model.built and model.get_weights() == []
    model.compile(optimizer="sgd", loss="mse", target=TARGET)
    out = model.predict(np.ones((5, 2, 2)), verbose=0)
    assert out.shape == (5, 3) and model.input_shape == (None, 2, 2)
    assert [w.shape for w in model.get_weights()] == [(4, 3), (3,)]


def test_layer_names_are_unique_like_keras():
    model = issue_model()
    assert [layer.name for layer in model.layers] == [
        "flatten", "dense", "dropout", "dense_1", "dropout_1", "dense_2", "activation"]
    weights = [w.path for w in model.weights]
    assert weights == ["dense/kernel", "dense/bias", "dense_1/kernel", "dense_1/bias",
                       "dense_2/kernel", "dense_2/bias"]
    named = Sequential([Dense(2, input_shape=(3,), name="hidden"), Dense(2)])
    assert [layer.name for layer in named.layers] == ["hidden", "dense"]
    with pytest.raises(ValueError, match="unique names"):
        Sequential([Dense(2, input_shape=(3,), name="same"), Dense(2, name="same")])


def test_get_set_weights_round_trip_in_keras_order():
    model = issue_model()
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(784, 512), (512,), (512, 512), (512,), (512, 10), (10,)]
    assert all(w.dtype == np.float32 for w in weights)
    np.testing.assert_array_equal(weights[1], 0)  # zero bias
    limit = np.sqrt(6 / (784 + 512))  # glorot_uniform
    assert np.abs(weights[0]).max() <= limit and np.abs(weights[0]).max() > 0.9 * limit
    new = [np.random.default_rng(i).random(w.shape) for i, w in enumerate(weights)]  # float64 in
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    got = model.get_weights()
    got[0][...] = 7  # get_weights returns copies
    assert not np.any(model.get_weights()[0] == 7)
    layer = model.layers[1]
    assert [w.shape for w in layer.get_weights()] == [(784, 512), (512,)]
    layer.set_weights([np.zeros((784, 512)), np.ones(512)])
    np.testing.assert_array_equal(model.get_weights()[1], 1)


def test_compile_accepts_strings_objects_functions_and_classes():
    x, y = small_data()
    for optimizer in ["adam", "Adam", "sgd", "SGD", "rmsprop", optimizers.SGD(momentum=0.9)]:
        for loss in ["categorical_crossentropy", losses.categorical_crossentropy,
                     losses.CategoricalCrossentropy(), losses.CategoricalCrossentropy]:
            model = small_model()
            model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], target=TARGET)
            history = model.fit(x, y, epochs=1, verbose=0)
            assert set(history.history) == {"loss", "accuracy"}
    model = small_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", target=TARGET)
    assert model.optimizer.learning_rate == pytest.approx(0.001)
    # Keras 2's positional order (optimizer, loss, metrics) is understood too.
    model.compile("sgd", "categorical_crossentropy", ["accuracy"], target=TARGET)
    assert model.metrics_names == ["loss", "accuracy"]
    assert isinstance(model.optimizer, optimizers.SGD)


def test_adam_lr_is_accepted_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="learning_rate"):
        optimizer = optimizers.Adam(lr=0.01)
    assert optimizer.learning_rate == pytest.approx(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert optimizers.Adam(learning_rate=0.002).learning_rate == pytest.approx(0.002)
    adam = optimizers.Adam()
    assert (adam.beta_1, adam.beta_2, adam.epsilon) == (0.9, 0.999, 1e-07)
    sgd = optimizers.SGD()
    assert (sgd.learning_rate, sgd.momentum, sgd.nesterov) == (pytest.approx(0.01), 0.0, False)


def test_fit_evaluate_predict_return_values():
    x, y = small_data(50)
    model = small_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  target=TARGET)
    history = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.2, verbose=0)
    assert history is model.history
    assert list(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2]
    result = model.evaluate(x, y, verbose=0)
    assert isinstance(result, list) and len(result) == 2
    loss, accuracy = result
    assert isinstance(loss, float) and 0 <= accuracy <= 1
    as_dict = model.evaluate(x, y, verbose=0, return_dict=True)
    assert as_dict == {"accuracy": accuracy, "loss": loss}
    probabilities = model.predict(x[:5], verbose=0)
    assert probabilities.shape == (5, 5) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    # evaluate without metrics returns a scalar; predict serves any number of rows.
    model.compile(optimizer="adam", loss="categorical_crossentropy", target=TARGET)
    assert isinstance(model.evaluate(x, y, verbose=0), float)
    assert model.predict(x[:1], verbose=0).shape == (1, 5)
    assert model.predict(x, batch_size=7, verbose=0).shape == (50, 5)


def test_model_call_on_arrays_matches_predict():
    x, _ = small_data()
    model = small_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", target=TARGET)
    np.testing.assert_allclose(model(x), model.predict(x, verbose=0), rtol=1e-6)


def test_non_tty_output_has_no_carriage_returns_and_verbose_0_is_silent():
    x, y = small_data()
    model = small_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  target=TARGET)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.fit(x, y, epochs=2, batch_size=8, validation_split=0.25)
        model.evaluate(x, y)
        model.predict(x)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2"
    assert lines[1].startswith("5/5 [") and " - loss: " in lines[1] and " - val_accuracy: " in lines[1]
    assert len(lines) == 6  # 2 epochs x (header + line), evaluate, predict
    silent = io.StringIO()
    with contextlib.redirect_stdout(silent):
        model.fit(x, y, epochs=2, verbose=0)
        model.evaluate(x, y, verbose=0)
        model.predict(x, verbose=0)
        model.fit(x, y, epochs=2, verbose=3)    # as Keras: its bar prints at 1 and 2 only
    assert silent.getvalue() == ""


def test_verbose_2_prints_one_line_per_epoch():
    x, y = small_data()
    model = small_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", target=TARGET)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model.fit(x, y, epochs=2, verbose=2)
    assert "\r" not in out.getvalue()
    assert [line for line in out.getvalue().splitlines() if "loss:" in line].__len__() == 2


def test_layer_and_model_configs_round_trip():
    model = issue_model()
    config = model.get_config()
    clone = Sequential.from_config(config)
    assert [type(layer) for layer in clone.layers] == [type(layer) for layer in model.layers]
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert clone.count_params() == model.count_params()
    dense = Dense(7, activation="tanh", use_bias=False, name="d")
    again = Dense.from_config(dense.get_config())
    assert (again.units, again.use_bias, again.name) == (7, False, "d")
    assert again.activation is kcompile.activations.tanh
    assert Dropout.from_config(Dropout(0.3).get_config()).rate == 0.3


def test_a_model_built_by_build_or_by_data_copies_built_from_its_config():
    for build in (lambda m: m.build((None, 4)), lambda m: m.predict(np.ones((2, 4)), verbose=0)):
        model = Sequential([Dense(3), Dense(2)])
        model.compile(optimizer="sgd", loss="mse", target=TARGET)
        build(model)
        config = model.get_config()
        assert tuple(config["build_input_shape"]) == (None, 4)
        copy = Sequential.from_config(config)
        assert copy.built and copy.count_params() == 3 * 4 + 3 + 2 * 3 + 2 == 23
        copy.set_weights(model.get_weights())
    assert "build_input_shape" not in issue_model().get_config()   # its Input layer says it


def test_get_layer_needs_exactly_one_of_name_and_index():
    model = Sequential([Dense(2, input_shape=(3,), name="a"), Dense(1, name="b")])
    assert model.get_layer("b") is model.get_layer(index=1) is model.layers[-1]
    with pytest.raises(ValueError, match="either a layer name or layer index"):
        model.get_layer()
    with pytest.raises(ValueError, match="only a layer name or a layer index"):
        model.get_layer(name="a", index=1)


def test_callbacks_see_keras_hooks_and_can_stop_training():
    x, y = small_data()
    seen = []

    class Recorder(kcompile.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(("batch", batch, sorted(logs)))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("epoch", epoch, sorted(logs)))
            if epoch == 1:
                self.model.stop_training = True

    model = small_model()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                  target=TARGET)
    history = model.fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[Recorder()])
    assert len(history.epoch) == 2
    assert seen[:3] == [("batch", 0, ["accuracy", "loss"]), ("batch", 1, ["accuracy", "loss"]),
                        ("batch", 2, ["accuracy", "loss"])]
    assert seen[3] == ("epoch", 0, ["accuracy", "loss"])


def test_learning_rate_changes_without_recompiling():
    x, y = small_data()
    model = small_model()
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy",
                  target=TARGET)
    model.fit(x, y, epochs=1, verbose=0)
    programs = dict(model._programs)
    model.optimizer.learning_rate = 0.0
    before = model.get_weights()
    model.fit(x, y, epochs=1, verbose=0)
    assert model._programs == programs  # same traced graphs and runners
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_live_progress_bar_is_throttled():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    rng = np.random.default_rng(0)
    x, y = rng.random((400, 3)), rng.random((400, 2))
    model = Sequential([Input(shape=(3,)), Dense(2)])
    model.compile(optimizer="sgd", loss="mse", target=TARGET)
    model.fit(x[:1], y[:1], verbose=0)  # trace outside the timed fit
    terminal = Terminal()
    start = time.perf_counter()
    model.fit(x, y, batch_size=1, epochs=1, verbose=1,
              callbacks=[kcompile.callbacks.ProgbarLogger(stream=terminal)])
    elapsed = time.perf_counter() - start
    redraws = terminal.getvalue().count("\r")
    # 400 steps; the bar redraws at the first step, at most every 0.1 s after it, at the last step,
    # and once more when the epoch ends.
    assert 1 <= redraws <= elapsed / 0.1 + 3
    assert "400/400 [" in terminal.getvalue().rsplit("\r", 1)[1]


# ----------------------------------------------------------------------------------------------
# Keras 3's model attributes around compile
# ----------------------------------------------------------------------------------------------

def test_model_loss_is_what_compile_was_given_and_training_still_uses_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = np.arange(8) % 2
    model = Sequential([Input(shape=(4,)), Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", target=TARGET)
    assert model.loss == "sparse_categorical_crossentropy"
    p = model.predict(x, verbose=0).astype(np.float64)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(
        -np.log(p[np.arange(8), y]).mean(), rel=1e-5)
    loss = losses.MeanSquaredError()
    model.compile(optimizer="sgd", loss=loss, target=TARGET)
    assert model.loss is loss
    model.compile(optimizer="sgd", loss={model.layers[-1].name: "mse"}, target=TARGET)
    assert model.loss == {model.layers[-1].name: "mse"}
    assert model.evaluate(x, np.eye(2)[y], verbose=0) == pytest.approx(
        ((p - np.eye(2)[y]) ** 2).mean(), rel=1e-5)


def test_metrics_results_compile_config_and_run_eagerly():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 4)).astype(np.float32)
    y = np.arange(12) % 2
    model = Sequential([Input(shape=(4,)), Dense(2, activation="softmax")])
    assert model.metrics == [] and model.get_metrics_result() == {}
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", metrics.SparseCategoricalAccuracy(name="sca")],
                  steps_per_execution=2, target=TARGET)
    # Keras: the loss tracker first, then the compiled metrics
    assert [m.name for m in model.metrics] == ["loss", "accuracy", "sca"]
    assert isinstance(model.metrics[0], metrics.Mean)
    history = model.fit(x, y, batch_size=4, verbose=0, validation_data=(x[:6], y[:6])).history
    # after fit the metrics hold the last validation's state, as Keras's do
    result = model.get_metrics_result()
    assert result == pytest.approx({"loss": history["val_loss"][0],
                                    "accuracy": history["val_accuracy"][0],
                                    "sca": history["val_sca"][0]})
    # ... and so do the objects in model.metrics (the ones listed before fit too)
    listed = model.metrics
    assert {m.name: m.result() for m in listed} == result
    p = model.predict(x, verbose=0)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    expected = {"loss": float(-np.log(p[np.arange(12), y].astype(np.float64)).mean()),
                "accuracy": float((p.argmax(1) == y).mean())}
    assert model.get_metrics_result() == logs
    assert {m.name: m.result() for m in listed} == logs
    assert logs["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert logs["accuracy"] == pytest.approx(expected["accuracy"])
    config = model.get_compile_config()
    assert {"optimizer", "loss", "loss_weights", "metrics", "weighted_metrics", "run_eagerly",
            "steps_per_execution", "jit_compile"} <= set(config)
    assert config["loss"] == "sparse_categorical_crossentropy"
    assert config["steps_per_execution"] == 2 and config["run_eagerly"] is False
    assert Sequential([Input(shape=(4,)), Dense(1)]).get_compile_config() is None
    # an eager update after that starts afresh, as after reset_state
    listed[2].update_state(y[:4], p[:4])
    assert listed[2].result() == pytest.approx(float((p[:4].argmax(1) == y[:4]).mean()))
    listed[0].update_state([10.0])
    assert listed[0].result() == pytest.approx(10.0)
    # reset_metrics: the results and the objects read zero, as Keras's
    model.reset_metrics()
    assert [m.result() for m in listed] == [0.0, 0.0, 0.0]
    assert set(model.get_metrics_result().values()) == {0.0}
    model.compile(optimizer="sgd", loss="mse", target="llvm")
    assert model.run_eagerly is False
    model.run_eagerly = True
    assert model.run_eagerly is True and model.target == "reference"
    model.run_eagerly = False
    assert model.target == "llvm"


def test_metric_objects_get_the_values_logged_under_their_own_names():
    """A weighted twin and a second metric of the same name are logged as weighted_accuracy and
    a_1: each object gives its own value, not its namesake's."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    y = (rng.random((30, 1)) > 0.5).astype(np.float32)
    w = rng.uniform(0.1, 3.0, 30).astype(np.float32)
    model = Sequential([Input(shape=(4,)), Dense(1, activation="sigmoid")])
    model.set_weights([np.array([[3.0], [0.0], [0.0], [0.0]], np.float32), np.zeros(1, np.float32)])
    model.compile(optimizer="sgd", loss="binary_crossentropy",
                  metrics=["accuracy", metrics.BinaryAccuracy(name="a"),
                           metrics.BinaryAccuracy(name="a", threshold=0.9)],
                  weighted_metrics=["accuracy"], target=TARGET)
    logs = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    assert {"accuracy", "a", "a_1", "weighted_accuracy"} <= set(logs)
    assert logs["weighted_accuracy"] != logs["accuracy"] and logs["a"] != logs["a_1"]
    assert [m.result() for m in model.metrics[1:]] == pytest.approx(
        [logs["accuracy"], logs["a"], logs["a_1"], logs["weighted_accuracy"]])


def test_losses_are_the_regularization_penalties_now():
    from kcompile import regularizers
    model = Sequential([Input(shape=(4,)),
                        Dense(3, kernel_regularizer="l2", bias_regularizer=regularizers.L1(0.1)),
                        Dense(1, kernel_regularizer=regularizers.L1L2(l1=0.01, l2=0.02)),
                        Dense(1)])
    rng = np.random.default_rng(2)
    model.set_weights([rng.standard_normal(w.shape) for w in model.get_weights()])
    k1, b1, k2 = (w.astype(np.float64) for w in model.get_weights()[:3])
    expected = [0.01 * (k1 ** 2).sum(), 0.1 * np.abs(b1).sum(),
                0.01 * np.abs(k2).sum() + 0.02 * (k2 ** 2).sum()]
    assert model.layers[0].losses == pytest.approx(expected[:2], rel=1e-5)
    assert model.layers[2].losses == []
    assert model.losses == pytest.approx(expected, rel=1e-5)
    assert all(isinstance(v, np.float32) for v in model.losses)
    # what evaluate adds to the loss
    x = rng.standard_normal((5, 4)).astype(np.float32)
    model.compile(optimizer="sgd", loss="mse", target=TARGET)
    y = np.zeros((5, 1), np.float32)
    p = model.predict(x, verbose=0).astype(np.float64)
    assert model.evaluate(x, y, verbose=0) == pytest.approx((p ** 2).mean() + sum(expected),
                                                            rel=1e-5)


def test_layers_and_models_report_their_float32_dtype():
    from kcompile.layers import Conv2D
    model = Sequential([Input(shape=(8, 8, 1)), Conv2D(2, 3), Flatten(), Dense(2)])
    for obj in [model, *model.layers, Dense(3, dtype="float32")]:
        assert (obj.dtype, obj.compute_dtype, obj.variable_dtype) == ("float32",) * 3
    assert all(w.dtype == "float32" for w in model.weights)


def test_reset_metrics_zeroes_the_last_result():
    model = Sequential([Dense(1, input_shape=(2,))])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"], target=TARGET)
    x, y = np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32)
    model.set_weights([np.ones((2, 1), np.float32), np.zeros(1, np.float32)])
    model.evaluate(x, y, verbose=0)
    assert model.get_metrics_result() == {"loss": 4.0, "mae": 2.0}     # (1 + 1 - 0) per sample
    model.reset_metrics()
    assert model.get_metrics_result() == {"loss": 0.0, "mae": 0.0}


def test_a_sequential_inside_a_sequential_adds_its_layers_sharing_the_weights():
    # Keras's tutorials wrap a trained model: Sequential([model, Softmax()])
    from kcompile.layers import Softmax
    rng = np.random.default_rng(4)
    inner = Sequential([Input(shape=(3,)), Dense(4, activation="relu"), Dense(2)])
    inner.compile(optimizer="sgd", loss="mse", target=TARGET)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    logits = inner.predict(x, verbose=0)
    outer = Sequential([inner, Softmax()])
    assert outer.layers[:2] == inner.layers and outer.input_shape == (None, 3)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(outer.predict(x, verbose=0), e / e.sum(axis=1, keepdims=True),
                               rtol=1e-6)
    inner.layers[1].kernel.assign(np.zeros((4, 2), np.float32))      # one set of weights
    np.testing.assert_allclose(outer.predict(x, verbose=0), np.full((5, 2), 0.5), rtol=1e-6)
    # a nested model that does not fit leaves the outer model as it was
    with pytest.raises(ValueError):
        outer.add(Sequential([Dense(3, input_shape=(5,))]))
    assert len(outer.layers) == 3 and outer.output_shape == (None, 2)
