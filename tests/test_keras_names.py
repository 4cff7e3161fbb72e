"""Keras names that tutorials use, checked against numpy and Keras's documented formulas: metric and
loss objects called on integer lists, a regularizer on a numpy weight, LeakyReLU, Rescaling,
MaxPool2D/AvgPool2D, utils.normalize, get_layer(index), and attributes kcompile does not have."""
import numpy as np
import pytest

import kcompile
from kcompile import layers, losses, metrics, regularizers, utils
from targets import TARGETS


def test_metrics_and_losses_on_integer_lists_compute_in_float():
    y_true, y_pred = [[0, 1], [0, 0]], [[1, 1], [0, 0]]
    errors = np.array(y_pred, np.float64) - np.array(y_true)
    for metric, want in ((metrics.MeanAbsoluteError(), np.abs(errors).mean()),
                         (metrics.MeanSquaredError(), (errors ** 2).mean()),
                         (metrics.Accuracy(), 0.75),
                         (metrics.LogCoshError(), np.log(np.cosh(errors)).mean())):
        metric.update_state(y_true, y_pred)
        assert metric.result() == pytest.approx(want, rel=1e-6), type(metric).__name__
    np.testing.assert_allclose(losses.mean_squared_error([[0, 1]], [[1, 1]]), [0.5])
    assert losses.MeanSquaredError()([[0, 1]], [[1, 1]]) == pytest.approx(0.5)
    # class ids stay integers for the sparse ones
    accuracy = metrics.SparseCategoricalAccuracy()
    accuracy.update_state([1, 0], [[0.1, 0.9], [0.8, 0.2]])
    assert accuracy.result() == 1.0
    assert losses.SparseCategoricalCrossentropy()([1, 0], [[0.1, 0.9], [0.8, 0.2]]) == \
        pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2, rel=1e-6)


def test_a_regularizer_on_a_numpy_weight_is_its_penalty():
    assert regularizers.l2(0.1)(np.ones((2, 2), np.float32)) == pytest.approx(0.4)
    assert regularizers.L1L2(0.1, 0.2)(np.array([1.0, -2.0])) == pytest.approx(0.3 + 1.0)


@pytest.mark.parametrize("target", TARGETS)
def test_leaky_relu_and_rescaling_layers(target, tmp_path):
    model = kcompile.Sequential([layers.Input(shape=(3,)), layers.Rescaling(1 / 255.0, offset=-0.5),
                                 layers.LeakyReLU(), layers.LeakyReLU(negative_slope=0.1)])
    model.compile(optimizer="sgd", loss="mse", target=target)
    x = np.array([[0, 100, 255], [255, 0, 10]], np.float32)
    scaled = x / 255.0 - 0.5
    want = np.where(scaled > 0, scaled, 0.3 * 0.1 * scaled)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-6, atol=1e-7)
    model.save(tmp_path / "m.keras")
    loaded = kcompile.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="negative_slope"):
        layers.LeakyReLU(negative_slope=-1)
    assert layers.MaxPool2D is layers.MaxPooling2D and layers.AvgPool2D is layers.AveragePooling2D


def test_utils_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    np.testing.assert_allclose(utils.normalize(x), [[0.6, 0.8], [0, 0], [2 ** -0.5, -(2 ** -0.5)]])
    np.testing.assert_allclose(utils.normalize(x, axis=0, order=1)[:, 0], [0.75, 0, 0.25])


def test_model_attributes_keras_has_and_kcompile_lacks_say_so():
    model = kcompile.Sequential([layers.Input(shape=(3,), dtype="int32"), layers.Dense(2)])
    # inputs and outputs: their shapes, dtypes and names, as Keras's symbolic tensors
    (x,), (y,) = model.inputs, model.outputs
    assert x is model.input and x.shape == (None, 3) and x.dtype == "int32"
    assert y.shape == (None, 2) and y.dtype == "float32" and y.name == model.layers[-1].name
    assert model.output.shape == (None, 2)
    deferred = kcompile.Sequential([layers.Dense(4, input_shape=(5,))])
    assert deferred.inputs[0].shape == (None, 5) and deferred.outputs[0].shape == (None, 4)
    unbuilt = kcompile.Sequential([layers.Dense(2)])
    assert not hasattr(unbuilt, "inputs") and not hasattr(unbuilt, "outputs")
    with pytest.raises(AttributeError, match="no input shape yet"):
        unbuilt.inputs
    with pytest.raises(ValueError, match=r"cannot be added to a Sequential.*Input\(shape=\(2,\)\)"):
        kcompile.Sequential([y])
    with pytest.raises(AttributeError, match="functional API"):
        kcompile.Model().inputs
    with pytest.raises(ValueError, match="index 5 but model only has 1 layers"):
        model.get_layer(index=5)
    assert model.get_layer(index=-1) is model.layers[0]
    assert model.trainable_variables == model.trainable_weights and len(model.trainable_variables) == 2
    model.layers[0].trainable = False
    assert model.non_trainable_variables == model.layers[0].weights
    model.reset_metrics()


def test_a_keras_layer_kcompile_lacks_says_so():
    from kcompile import layers
    assert not hasattr(layers, "Concatenate")
    with pytest.raises(AttributeError, match="Keras's Concatenate is not implemented in kcompile"):
        layers.Concatenate
    with pytest.raises(AttributeError, match="has no attribute 'Dense2'"):
        layers.Dense2
    from kcompile import callbacks
    with pytest.raises(AttributeError, match="Keras's TensorBoard is not implemented in kcompile"):
        callbacks.TensorBoard
    with pytest.raises(AttributeError, match="has no attribute 'EarlyStop'"):
        callbacks.EarlyStop


def test_a_variable_shows_its_value_as_keras_3s_does():
    model = kcompile.Sequential([layers.Input((2,)), layers.Dense(1, name="dense")])
    model.compile("sgd", "mse", target=TARGETS[-1])
    model.fit(np.ones((4, 2), np.float32), np.ones((4, 1), np.float32), batch_size=2, verbose=0)
    assert repr(model.optimizer.iterations) == \
        "<Variable path=iterations, shape=(), dtype=int32, value=2>"
    assert repr(model.layers[0].bias).startswith("<Variable path=dense/bias, shape=(1,), "
                                                  "dtype=float32, value=[")


def test_metrics_given_as_loss_objects_classes_and_functions_get_keras_names():
    """History keys as Keras 3 names them (compile_utils.get_metric; the list below is what Keras
    3.15 printed for this compile): a loss object's `name` (given or default), a class's instance's
    name, a function's name in snake case ('<lambda>' -> 'lambda'), a string as written.  The
    values are the metrics' own, against numpy: a function's mean over the samples, a loss
    object's mean of its batch values (evaluate's batches of 32 and 8 rows), as in Keras."""
    class MyLoss(losses.Loss):
        def call(self, y_true, y_pred):
            return kcompile.ops.mean(kcompile.ops.abs(y_true - y_pred), axis=-1)

    def myMetricFn(y_true, y_pred):   # noqa: N802 (a camel-case name, as users write them)
        return kcompile.ops.mean(kcompile.ops.abs(y_true - y_pred), axis=-1)

    rng = np.random.default_rng(0)
    x, y = rng.random((40, 4), np.float32), rng.random((40, 3), np.float32)
    model = kcompile.Sequential([layers.Input((4,)), layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse",
                  metrics=[losses.MeanSquaredError(), losses.Huber(delta=0.5, name="hub"),
                           metrics.MeanAbsoluteError, lambda a, b: kcompile.ops.abs(a - b),
                           losses.LogCosh, MyLoss(), myMetricFn, "mae"])
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert sorted(logs) == ["hub", "lambda", "log_cosh", "loss", "mae", "mean_absolute_error",
                            "mean_squared_error", "my_loss", "my_metric_fn"]
    errors = np.abs(model.predict(x, verbose=0).astype(np.float64) - y)
    for name in ("mean_absolute_error", "lambda", "my_metric_fn", "mae"):
        assert logs[name] == pytest.approx(errors.mean(), rel=1e-5), name
    batch_means = (errors[:32].mean() + errors[32:].mean()) / 2
    assert logs["my_loss"] == pytest.approx(batch_means, rel=1e-5)
    assert MyLoss().name == "my_loss" and losses.Huber().name == "huber_loss"


def test_keras_config_regularizer_and_initializer_helpers():
    """keras.config's settings, regularizers.deserialize and the None defaults, Constant of an
    array broadcast to the weight, an initializer's clone() and dtype=None: as Keras 3's."""
    assert kcompile.config.floatx() == "float32" and kcompile.config.image_data_format() == \
        "channels_last" and kcompile.config.epsilon() == kcompile.backend.epsilon()
    restored = regularizers.deserialize({"class_name": "L2", "config": {"l2": 0.5}})
    assert isinstance(restored, regularizers.L2) and restored.l2 == 0.5
    assert regularizers.L2(None).l2 == 0.01 and regularizers.L1(None).l1 == 0.01

    @kcompile.saving.register_keras_serializable(package="test_helpers")
    class Half(regularizers.Regularizer):
        def __call__(self, x):
            return 0.5 * regularizers.L1(1.0)(x)

        def get_config(self):
            return {}

    found = regularizers.deserialize({"class_name": "test_helpers>Half", "config": {}})
    assert isinstance(found, Half)                 # a registered class, with no custom_objects
    inits = kcompile.initializers
    dense = layers.Dense(3, kernel_initializer=None,
                         bias_initializer=inits.Constant(np.array([1.0, 2.0, 3.0])))
    dense.build((None, 4))
    np.testing.assert_array_equal(dense.bias.numpy(), [1.0, 2.0, 3.0])
    limit = np.sqrt(6 / (4 + 3))                   # None: glorot_uniform, as Keras's add_weight
    assert np.all(np.abs(dense.kernel.numpy()) <= limit)
    np.testing.assert_array_equal(inits.Constant([1.0, 2.0])((2, 2)), [[1, 2], [1, 2]])
    assert inits.Constant([1.0, 2.0]).get_config() == {"value": [1.0, 2.0]}
    with pytest.raises(ValueError, match=r"shape \(3,\) does not broadcast to the weight's shape"):
        inits.Constant([1.0, 2.0, 3.0])((2, 2))
    with pytest.raises(ValueError, match="float32's range"):
        inits.Constant(1e39)
    np.testing.assert_array_equal(inits.Ones()((2,), dtype=None), np.ones(2, np.float32))
    seeded = inits.GlorotUniform(seed=3)
    twin = seeded.clone()
    assert twin is not seeded and type(twin) is type(seeded)
    np.testing.assert_array_equal(twin((5, 4)), seeded((5, 4)))


def test_keras_datasets_and_utils_kcompile_lacks_say_so():
    from kcompile.datasets import cifar10
    with pytest.raises(NotImplementedError, match="never downloads.*fashion_mnist and mnist"):
        cifar10.load_data()
    with pytest.raises(NotImplementedError, match="imdb"):
        kcompile.datasets.imdb.load_data(num_words=100)
    with pytest.raises(AttributeError, match="has no 'get_file'.*never downloads"):
        utils.get_file("x", "http://example.com/x")
    with pytest.raises(AttributeError, match="has no 'plot_model'.*model.plot"):
        utils.plot_model


def test_a_frozen_layers_weights_say_so_and_input_reports_its_dtype():
    """As Keras 3: layer.trainable = False makes its variables' trainable False (a wrapped layer's
    too), training skips them, unfreezing restores them; Input(dtype='int32').dtype is int32."""
    assert kcompile.Input(shape=(3,), dtype="int32").dtype == "int32"
    assert kcompile.Input(shape=(3,)).dtype == "float32"
    model = kcompile.Sequential([kcompile.Input((4, 3)), layers.Bidirectional(layers.LSTM(2)),
                                 layers.Dense(3), layers.BatchNormalization(), layers.Dense(1)])
    model.compile("sgd", "mse")
    flags = [v.trainable for v in model.weights]
    assert flags.count(False) == 2                      # BatchNormalization's moving statistics
    model.layers[0].trainable = False
    model.layers[1].trainable = False
    frozen = {v.path for v in model.layers[0].weights + model.layers[1].weights}
    assert frozen <= {v.path for v in model.weights if not v.trainable}
    before = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 4, 3), dtype=np.float32), rng.random((8, 1), dtype=np.float32),
              verbose=0)
    for variable, old in zip(model.weights, before):
        if variable.path in frozen:
            np.testing.assert_array_equal(variable.numpy(), old)
    assert not np.array_equal(model.layers[-1].kernel.numpy(), before[-2])   # the rest trained
    model.layers[0].trainable = True
    model.layers[1].trainable = True
    assert [v.trainable for v in model.weights] == flags


def test_keras_3_15_arguments_at_their_defaults_are_taken_and_others_refused():
    """Keras 3.15 writes these into every config at their defaults; kcompile takes the defaults
    and refuses what it does not implement, naming it."""
    from kcompile import initializers
    layers.Input((4,), ragged=False)
    layers.Dense(3, quantization_config=None)
    layers.Embedding(5, 2, quantization_config=None)
    layers.BatchNormalization(renorm=False, renorm_clipping=None, renorm_momentum=0.99)
    layers.LSTM(2, zero_output_for_mask=True)
    initializers.GlorotUniform(seed=1, input_axes=None, output_axes=None)
    initializers.VarianceScaling(input_axes=None, output_axes=None)
    for make, what in [(lambda: layers.Input((4,), ragged=True), "ragged inputs"),
                       (lambda: layers.Dense(3, quantization_config={"mode": "int8"}),
                        "quantization_config"),
                       (lambda: layers.BatchNormalization(renorm=True), "renorm=True"),
                       (lambda: initializers.HeNormal(input_axes=[0]), "input_axes")]:
        with pytest.raises(NotImplementedError, match=what):
            make()
