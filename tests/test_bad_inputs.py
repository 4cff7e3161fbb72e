"""Bad input gets a clear Python exception naming the problem and the fix, raised before the first
step, and leaves the model as it was.  Each test checks the exception type and its message."""
import re

import numpy as np
import pytest

import kcompile
from kcompile import optimizers
from kcompile.errors import DataTypeError
from kcompile.layers import Activation, Dense, Dropout, Flatten, Input
from kcompile.models import Sequential
from kcompile.optimizers import Adam
from kcompile.utils import set_random_seed

TARGET = "reference"


def images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28)), np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]


def mlp(compiled=True, **compile_args):
    model = Sequential([Flatten(input_shape=(28, 28)), Dense(16, activation="relu"), Dropout(0.2),
                        Dense(10, activation="softmax")])
    if compiled:
        args = dict(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"],
                    target=TARGET)
        args.update(compile_args)
        model.compile(**args)
    return model


def snapshot(model):
    state = [w.copy() for w in model.get_weights()]
    iterations = int(model.optimizer.iterations) if model.optimizer is not None else None
    return state, iterations


def assert_untouched(model, before):
    weights, iterations = snapshot(model)
    for a, b in zip(weights, before[0]):
        np.testing.assert_array_equal(a, b)
    assert iterations == before[1]


def test_seed_document_model_without_flatten_names_the_shapes_and_suggests_flatten():
    x, y = images()
    model = Sequential()
    model.add(Dense(512, input_shape=(28, 28), activation="relu"))
    model.add(Dropout(0.2))
    model.add(Dense(512, activation="relu"))
    model.add(Dropout(0.2))
    model.add(Dense(10))
    model.add(Activation("softmax"))
    model.compile(optimizer=Adam(learning_rate=0.001), loss="categorical_crossentropy",
                  metrics=["accuracy"], target=TARGET)
    before = snapshot(model)
    with pytest.raises(ValueError) as error:
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    message = str(error.value)
    assert "(None, 28, 10)" in message and "(None, 10)" in message
    assert "Flatten" in message
    assert_untouched(model, before)
    with pytest.raises(ValueError, match=r"\(None, 28, 10\).*\(None, 10\).*Flatten"):
        model.evaluate(x, y, verbose=0)


def test_x_and_y_of_different_lengths():
    x, y = images(40)
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="same number of samples.*40 samples in x.*10 in y"):
        model.fit(x, y[:10], verbose=0)
    with pytest.raises(ValueError, match="same number of samples"):
        model.evaluate(x[:5], y, verbose=0)
    assert_untouched(model, before)


def test_wrong_feature_shape():
    _, y = images(40)
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"samples of shape \(32, 32\).*expects samples of shape "
                                         r"\(28, 28\)"):
        model.fit(np.zeros((40, 32, 32)), y, verbose=0)
    with pytest.raises(ValueError, match=r"x.reshape\(-1, 28, 28\)"):
        model.fit(np.zeros((40, 784)), y, verbose=0)
    with pytest.raises(ValueError, match=r"expects samples of shape \(28, 28\)"):
        model.predict(np.zeros((3, 28, 27)), verbose=0)
    assert_untouched(model, before)


@pytest.mark.parametrize("bad, what", [
    (np.full((40, 28, 28), "a"), "strings"),
    (np.array([object()] * 40), "dtype object"),
    (np.zeros((40, 28, 28), np.complex64), "not a real number"),
])
def test_non_numeric_inputs(bad, what):
    _, y = images(40)
    model = mlp()
    before = snapshot(model)
    with pytest.raises(DataTypeError, match=what):
        model.fit(bad, y, verbose=0)
    # Both exception types Keras users might catch.
    with pytest.raises(TypeError):
        model.predict(bad, verbose=0)
    with pytest.raises(ValueError):
        model.evaluate(bad, y, verbose=0)
    assert_untouched(model, before)


def test_non_numeric_targets_and_ragged_lists():
    x, _ = images(3)
    model = mlp()
    with pytest.raises(DataTypeError, match="`y` holds strings"):
        model.fit(x, np.array(["cat", "dog", "cat"]), verbose=0)
    with pytest.raises(ValueError, match="same shape"):
        model.fit([[1.0, 2.0], [3.0]], np.zeros((2, 10)), verbose=0)


def test_nan_inputs_train_and_report_nan_loss():
    x, y = images(40)
    x[3, 4, 5] = np.nan
    model = mlp()
    history = model.fit(x, y, epochs=1, verbose=0)
    assert np.isnan(history.history["loss"][0])
    assert np.isnan(model.evaluate(x, y, verbose=0)[0])


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "32", True])
def test_batch_size_must_be_positive_integer(batch_size):
    x, y = images(8)
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.fit(x, y, batch_size=batch_size, verbose=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.evaluate(x, y, batch_size=batch_size, verbose=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.predict(x, batch_size=batch_size, verbose=0)
    assert_untouched(model, before)


def test_unknown_activation_loss_optimizer_metric_and_target_strings():
    with pytest.raises(ValueError, match="Unknown activation function: 'relux'.*'relu'"):
        Dense(3, activation="relux")
    with pytest.raises(ValueError, match="Unknown activation function: 'softmaxx'"):
        Activation("softmaxx")
    model = mlp(compiled=False)
    with pytest.raises(ValueError, match="Unknown loss function: 'categorical_crossentropyy'.*"
                                         "'categorical_crossentropy'"):
        model.compile(optimizer="adam", loss="categorical_crossentropyy")
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier: 'adamm'.*'adam'"):
        model.compile(optimizer="adamm", loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="Unknown metric function: 'acuracy'"):
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["acuracy"])
    with pytest.raises(ValueError, match="Expected `metrics` argument to be a list"):
        model.compile(optimizer="adam", loss="categorical_crossentropy", metrics="accuracy")
    with pytest.raises(ValueError, match="Unknown target 'gpu'"):
        model.compile(optimizer="adam", loss="categorical_crossentropy", target="gpu")
    assert not model.compiled


@pytest.mark.parametrize("rate", [-0.1, 1.0001, 1.5, "0.5", None])
def test_dropout_rate_outside_zero_one(rate):
    with pytest.raises(ValueError, match=r"Expected a float value in \[0, 1\].*rate="):
        Dropout(rate)


def test_set_weights_with_wrong_count_or_shape_changes_nothing():
    model = mlp(compiled=False)
    before = model.get_weights()
    with pytest.raises(ValueError, match="weight list of length 3, but the model was expecting 4"):
        model.set_weights(before[:3])
    wrong = [np.ones_like(w) for w in before]
    wrong[3] = np.ones(11)  # the last one is bad: the first three must not be written either
    with pytest.raises(ValueError, match=r"\(10,\).*not compatible.*\(11,\)"):
        model.set_weights(wrong)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expecting 2 weights"):
        model.layers[1].set_weights([np.ones((784, 16))])
    with pytest.raises(ValueError, match=r"\(784, 16\).*not compatible.*\(16, 784\)"):
        model.layers[1].set_weights([np.ones((16, 784)), np.ones(16)])


def test_fit_and_evaluate_before_compile():
    x, y = images(8)
    model = mlp(compiled=False)
    with pytest.raises(ValueError, match=r"You must call `compile\(\)` before calling `fit\(\)`"):
        model.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=r"You must call `compile\(\)` before calling `evaluate\(\)`"):
        model.evaluate(x, y, verbose=0)
    model.compile(optimizer="adam")  # no loss
    with pytest.raises(ValueError, match="No loss to compute.*pass `loss=`"):
        model.fit(x, y, verbose=0)


def test_models_without_an_input_shape():
    with pytest.raises(ValueError, match="has no layers; add some"):
        Sequential().predict(np.zeros((2, 3)), verbose=0)
    model = Sequential([Flatten(), Dense(4)])
    with pytest.raises(ValueError, match="isn't built.*input shape"):
        model.count_params()
    with pytest.raises(AttributeError, match="no input shape yet"):
        model.input_shape
    with pytest.raises(ValueError, match="has no input shape; call build"):
        model.build()
    # As Keras, prediction on data builds an unbuilt model for the data's shape.
    model.compile(optimizer="sgd", loss="mse", target=TARGET)
    assert model.predict(np.zeros((3, 2, 5)), verbose=0).shape == (3, 4)
    # Samples without a feature axis cannot feed Dense.
    dense_only = Sequential([Dense(4)])
    dense_only.compile(optimizer="sgd", loss="mse", target=TARGET)
    with pytest.raises(ValueError, match=r"needs inputs of shape \(batch, \.\.\., features\).*"
                                         r"reshape x to \(n, 1\)"):
        dense_only.predict(np.zeros(5), verbose=0)


def test_float64_integer_and_non_contiguous_inputs_are_accepted():
    x, y = images(24)
    set_random_seed(0)
    reference = mlp()
    reference.fit(x.astype(np.float32), y, shuffle=False, batch_size=8, verbose=0)
    expected = reference.predict(x.astype(np.float32), verbose=0)
    variants = {
        "float64": x,
        "fortran": np.asfortranarray(x),
        "strided": np.stack([x, x], axis=-1)[..., 0],
        "reversed-twice": x[::-1][::-1],
    }
    for name, data in variants.items():
        set_random_seed(0)
        model = mlp()
        model.fit(data, y.astype(np.int64), shuffle=False, batch_size=8, verbose=0)
        np.testing.assert_allclose(model.predict(data, verbose=0), expected, rtol=1e-5, err_msg=name)
    pixels = (x * 255).astype(np.uint8)
    model = mlp()
    model.fit(pixels, y, verbose=0)
    assert model.predict(pixels[:3].tolist(), verbose=0).shape == (3, 10)


def test_class_labels_that_do_not_fit_the_model():
    x, y = images(20)
    labels = y.argmax(1)
    model = mlp(loss="sparse_categorical_crossentropy")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"class labels in \[5, 14\].*outputs 10 classes.*"
                                         r"make the last layer Dense\(15\)"):
        model.fit(x, labels + 5, verbose=0)
    with pytest.raises(ValueError, match=r"class labels in \[-1, .*never negative"):
        model.fit(x, labels - 1, verbose=0)
    with pytest.raises(ValueError, match="non-integer values"):
        model.fit(x, labels + 0.5, verbose=0)
    with pytest.raises(ValueError, match=r"integer class labels of shape \(None,\)"):
        model.fit(x, y, verbose=0)  # one-hot targets with the sparse loss
    assert_untouched(model, before)
    categorical = mlp()
    with pytest.raises(ValueError, match="look like integer class labels.*sparse_categorical_crossentropy"
                                         r".*to_categorical\(y, 10\)"):
        categorical.fit(x, labels, verbose=0)
    with pytest.raises(ValueError, match=r"last layer has 10 units but the targets have 3 columns: "
                                         r"make it Dense\(3\)"):
        categorical.fit(x, y[:, :3], verbose=0)


def test_bad_validation_data_fails_before_training():
    x, y = images(40)
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"validation x.*samples of shape \(27, 28\)"):
        model.fit(x, y, validation_data=(x[:, :27], y), verbose=0)
    with pytest.raises(ValueError, match="validation_data must be a tuple"):
        model.fit(x, y, validation_data=x, verbose=0)
    with pytest.raises(ValueError, match=r"validation_split must be a float in \[0, 1\)"):
        model.fit(x, y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="not sufficient to split"):
        model.fit(x[:1], y[:1], validation_split=0.5, verbose=0)
    assert_untouched(model, before)


def test_bad_fit_arguments():
    x, y = images(8)
    model = mlp()
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        model.fit(x, y, epochs=-1, verbose=0)
    with pytest.raises(ValueError, match="verbose must be 'auto', 0"):
        model.fit(x, y, verbose=-1)
    with pytest.raises(ValueError, match="has no samples"):
        model.fit(x[:0], y[:0], verbose=0)
    with pytest.raises(ValueError, match=r"one weight per sample \(8 of them"):
        model.fit(x, y, sample_weight=np.ones(7), verbose=0)
    with pytest.raises(ValueError, match="`sample_weight` and `class_weight` cannot be specified"):
        model.fit(x, y, sample_weight=np.ones(8), class_weight={0: 2.0}, verbose=0)


@pytest.mark.parametrize("weight", [np.nan, np.inf, -np.inf])
def test_class_weight_that_is_not_finite_is_refused_before_training(weight):
    x, y = images(8)
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="NaN or infinite weight .* for class 3"):
        model.fit(x, y, class_weight={0: 1.0, 3: weight}, verbose=0)
    with pytest.raises(ValueError, match="NaN or infinite weight .* for class 3"):
        model.train_on_batch(x, y, class_weight={3: weight})
    assert_untouched(model, before)


def test_assign_of_a_value_that_does_not_convert_leaves_the_variable_unchanged():
    model = mlp()
    bias = model.layers[1].bias
    before = bias.numpy()
    bad = np.array([1.0, 2.0, "x"] + [0.0] * (before.size - 3), dtype=object)
    with pytest.raises(ValueError, match="does not convert to float32"):
        bias.assign(bad)
    np.testing.assert_array_equal(bias.numpy(), before)
    good = np.arange(before.size, dtype=np.float64)
    bias.assign(good)
    np.testing.assert_array_equal(bias.numpy(), good.astype(np.float32))


def test_bad_layer_and_model_construction():
    with pytest.raises(ValueError, match="expected a positive integer. Received: units=0"):
        Dense(0)
    with pytest.raises(ValueError, match="Unrecognized keyword arguments passed to Dense"):
        Dense(3, input_shap=(4,))
    with pytest.raises(ValueError, match=r"input_shape must be a tuple of dimensions, e.g. "
                                         r"input_shape=\(784,\)"):
        Dense(3, input_shape=784)
    with pytest.raises(ValueError, match="every dimension but the batch dimension known"):
        Dense(3, input_shape=(None, 4))
    with pytest.raises(ValueError, match="Only instances of kcompile.layers.Layer can be added"):
        Sequential([np.zeros(3)])
    with pytest.raises(ValueError, match="Input or InputLayer can only be its first element"):
        Sequential([Dense(2, input_shape=(3,)), Input(shape=(3,))])
    with pytest.raises(NotImplementedError, match="functional API"):
        kcompile.Model(inputs=Input(shape=(3,)), outputs=None)
    with pytest.raises(ValueError, match="momentum must be"):
        optimizers.SGD(momentum=2.0)
    with pytest.raises(ValueError, match="learning_rate must be a finite number within float32.s range"):
        optimizers.Adam(learning_rate=float("nan"))


def test_adding_a_layer_that_does_not_fit_leaves_the_model_usable():
    model = Sequential([Input(shape=(4,))])
    model.add(Dense(3))
    bad = Dense(2)
    bad.build((None, 7))
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 7"):
        model.add(bad)
    assert [layer.name for layer in model.layers] == ["dense"]
    model.compile(optimizer="sgd", loss="mse", target=TARGET)
    assert model.predict(np.zeros((2, 4)), verbose=0).shape == (2, 3)


@pytest.mark.parametrize("dtype", ["float16", "float64", "mixed_float16", "bfloat16",
                                   "mixed_bfloat16", object()])
def test_a_layer_dtype_other_than_float32_is_refused_by_name(dtype):
    """Keras dtype policies ('mixed_float16') are not numpy dtypes: the same ValueError, not
    numpy's TypeError."""
    with pytest.raises(ValueError, match="compute in float32"):
        Dense(2, dtype=dtype)
    assert Dense(2, dtype="float32").units == 2
    assert Dense(2, dtype=np.float32).units == 2


@pytest.mark.parametrize("model_shape, stored_axes", [
    ((8, 6, 3), (2, 0, 1)),      # channels-first images (3, 8, 6) for a channels-last model
    ((10, 3), (1, 0)),           # (features, steps) sequences for a (steps, features) model
    ((4, 4, 2), (2, 0, 1)),      # repeated sizes: the axes of one size keep their order
])
def test_a_shape_that_is_a_permutation_suggests_the_transpose(model_shape, stored_axes):
    """Samples whose axes are the model's in another order: the error suggests the transpose that
    restores them (evaluated here, it gives the samples in the model's layout, which reshape does
    not), mentions the reshape and says that the layout decides; a shape that is no permutation
    keeps the plain reshape hint."""
    rng = np.random.default_rng(0)
    wanted = rng.random((5,) + model_shape).astype(np.float32)
    x = np.ascontiguousarray(wanted.transpose((0,) + tuple(a + 1 for a in stored_axes)))
    model = Sequential([Input(model_shape), Flatten(), Dense(2)])
    model.compile(optimizer="sgd", loss="mse", target="reference")
    with pytest.raises(ValueError) as info:
        model.predict(x, verbose=0)
    message = str(info.value)
    transpose = re.search(r"transpose it: (x\.transpose\([0-9, ]+\))", message).group(1)
    np.testing.assert_array_equal(eval(transpose, {"x": x}), wanted)
    assert f"x.reshape(-1, {', '.join(map(str, model_shape))})" in message
    assert not np.array_equal(x.reshape((-1,) + model_shape), wanted)
    assert "depends on its layout" in message
    flat = x.reshape(5, -1)
    with pytest.raises(ValueError, match=r"Reshape it: x\.reshape\(-1, ") as info:
        model.predict(flat, verbose=0)
    assert "transpose" not in str(info.value)


def test_a_checkpoint_placeholder_that_cannot_be_filled_fails_before_training(tmp_path):
    """A bad format spec in ModelCheckpoint's filepath is refused when the callback is made (so
    before the first step, not after an epoch of training), naming the placeholder; good ones
    still fill in."""
    from kcompile.callbacks import ModelCheckpoint
    for path, placeholder in [("m_{epoch:q}.keras", r"\{epoch:q\}"),
                              ("m_{val_loss:d}.keras", r"\{val_loss:d\}"),
                              ("m_{}.keras", r"\{\}"),
                              ("m_{epoch.keras", "not a valid format string")]:
        with pytest.raises(ValueError, match=placeholder):
            ModelCheckpoint(str(tmp_path / path))
    x, y = images(8)
    model = mlp()
    model.fit(x, y, epochs=2, verbose=0,
              callbacks=[ModelCheckpoint(str(tmp_path / "m_{epoch:02d}_{loss:.1f}.keras"))])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n[:5] for n in names] == ["m_01_", "m_02_"] and all(n.endswith(".keras") for n in names)


def test_a_one_element_list_holds_the_single_input_as_keras_reads_it():
    """fit/evaluate/predict/*_on_batch([x], [y]) use x and y (Keras unwraps the list for a model
    with one input and one output); a list of one sample stays one sample."""
    x, y = images(8)
    results = {}
    for wrapped in (False, True):
        set_random_seed(4)
        model = mlp()
        xs, ys = ([x], [y]) if wrapped else (x, y)
        history = model.fit(xs, ys, batch_size=4, shuffle=False, verbose=0,
                            validation_data=(xs, ys))
        results[wrapped] = (history.history, model.evaluate(xs, ys, verbose=0),
                            model.predict(xs, verbose=0), model.train_on_batch(xs, ys),
                            model.test_on_batch(xs, ys), model.predict_on_batch(xs))
        assert results[wrapped][2].shape == (8, 10)
    for got, want in zip(results[True], results[False]):
        if isinstance(want, dict):
            assert got == want
        else:
            np.testing.assert_array_equal(got, want)
    model = mlp()
    assert model.predict([x[0]], verbose=0).shape == (1, 10)     # one sample in a list


def test_custom_objects_that_is_not_a_dict_is_named(tmp_path):
    model = mlp()
    path = str(tmp_path / "m.keras")
    model.save(path)
    for bad, match in [(5, "must be a dict of names.*got 5 \\(of type int\\)"),
                       ([Dense], "must be a dict of names"),
                       ({Dense: Dense}, "keys of `custom_objects` must be the names")]:
        with pytest.raises(TypeError, match=match):
            kcompile.load_model(path, custom_objects=bad)
        with pytest.raises(TypeError, match=match):
            kcompile.models.model_from_json(model.to_json(), custom_objects=bad)
    for got, want in zip(kcompile.load_model(path, custom_objects={}).get_weights(),
                         model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_per_time_step_sample_weights_are_refused_as_not_supported_yet():
    """sample_weight of shape (samples, timesteps) for a sequence output (Keras takes it): a
    ValueError saying that kcompile does not support it yet, before any step; per-sample weights,
    (n,) or (n, 1), weight each sample's loss (checked against numpy)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5, 3)).astype(np.float32)
    y = rng.standard_normal((8, 5, 2)).astype(np.float32)
    model = Sequential([Input((5, 3)), Dense(2)])
    model.compile(optimizer="sgd", loss="mse", target=TARGET)
    before = snapshot(model)
    per_step = np.ones((8, 5), np.float32)
    for call in (lambda: model.fit(x, y, sample_weight=per_step, verbose=0),
                 lambda: model.evaluate(x, y, sample_weight=per_step, verbose=0),
                 lambda: model.train_on_batch(x, y, sample_weight=per_step),
                 lambda: model.fit(iter([(x, y, per_step)]), verbose=0)):
        with pytest.raises(ValueError, match=r"shape \(8, 5\): one weight per sample and time step "
                                             r".*does not support yet.*shape \(8,\)"):
            call()
    assert_untouched(model, before)
    weights = rng.random(8).astype(np.float32)
    per_sample = ((model.predict(x, verbose=0) - y) ** 2).mean(axis=(1, 2))
    for given in (weights, weights[:, None]):
        np.testing.assert_allclose(model.evaluate(x, y, sample_weight=given, verbose=0),
                                   np.sum(weights * per_sample) / 8, rtol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: kcompile.optimizers.SGD(clipnorm=1e39),
    lambda: kcompile.optimizers.SGD(global_clipnorm=1e39),
    lambda: kcompile.optimizers.AdamW(weight_decay=1e39),
    lambda: kcompile.regularizers.L2(1e39),
    lambda: kcompile.losses.Huber(delta=1e39),
    lambda: kcompile.losses.CategoricalFocalCrossentropy(gamma=float("nan")),
    lambda: kcompile.layers.Rescaling(1e39),
    lambda: kcompile.layers.Normalization(mean=1e39, variance=1.0),
    lambda: kcompile.layers.Normalization(mean=0.0, variance=-1.0),
    lambda: kcompile.layers.Normalization(mean=0.0, variance=float("nan")),
])
def test_settings_beyond_float32_are_refused_where_they_are_given(make):
    """The compiled step computes in float32: a setting that passes as a Python float but is
    infinite there (1e39), or NaN, or a negative variance, would turn every weight or prediction
    into NaN or inf; each is a ValueError naming the argument when it is given."""
    with pytest.raises(ValueError, match="must (be a finite number|hold finite numbers).*within float32.s range"):
        make()


def test_class_weights_and_loss_weights_beyond_float32_are_refused_before_any_step():
    x, y = images(8)
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="NaN or infinite weight .or one beyond float32.s range"):
        model.fit(x, y, class_weight={0: 1e39}, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    with pytest.raises(ValueError, match="loss_weights must be a finite number within float32.s range"):
        model.compile(optimizer="sgd", loss="categorical_crossentropy", loss_weights=1e39)


def test_calling_a_model_on_what_is_no_array_says_what_it_got():
    model = mlp()
    with pytest.raises(ValueError, match=r"layer 'sequential' \(Sequential\): `inputs` is None"):
        model(None)
    with pytest.raises(TypeError, match="`inputs` must be a numeric array; got a dict"):
        model({"a": 1})
    with pytest.raises(ValueError, match="`inputs` could not be converted to an array"):
        model([[1, 2, 3], [1, 2]])
    with pytest.raises(TypeError, match="set_weights takes a list of arrays, one per weight of model"):
        model.set_weights(None)
    with pytest.raises(TypeError, match="set_weights takes a list of arrays, one per weight of layer"):
        model.layers[-1].set_weights(None)
    x, y = images(8)
    with pytest.raises(TypeError, match="`callbacks` must be a list of kcompile.callbacks.Callback"):
        model.fit(x, y, callbacks=5, verbose=0)


@pytest.mark.parametrize("target", ["llvm", "reference"])
def test_calling_the_model_checks_the_input_shape_on_every_path(target):
    """model(x) checked x's shape only in inference mode on an array with the llvm target; with
    training=True, on a list, or with the reference target a wrong shape ran ((1, 2, 4) for
    Input((4,)) gave (1, 2, 2)) or failed in the IR ("matmul contraction mismatch").  And [x] is x,
    as predict and Keras 3 take it (it had given (1, 16, 2))."""
    model = Sequential([Input((4,)), Dense(2)])
    model.compile(optimizer="sgd", loss="mse", target=target)
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    for training in (None, False, True):
        for bad in (np.zeros((1, 2, 4), np.float32), np.zeros((2, 5), np.float32),
                    [[0.0] * 5, [1.0] * 5], np.zeros(4, np.float32)):
            with pytest.raises(ValueError, match=r"Input `inputs` has shape .* expects samples of "
                                                 r"shape \(4,\)"):
                model(bad, training=training)
        for given in ([x], (x,), x.tolist()):
            np.testing.assert_allclose(np.asarray(model(given, training=training)),
                                       model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
