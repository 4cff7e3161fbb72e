"""Keras parity of the convolutional, normalization, reshaping and embedding layers: the same model
built in Keras 3 (JAX backend) and in kcompile, Keras's weights copied over; predictions and the
weights after one SGD step must agree.  Skipped when Keras 3 with JAX is not installed (kcompile never
imports either; they are only the yardstick)."""
import textwrap

import numpy as np
import pytest

from kcompile import optimizers
from kcompile import layers as L
from kcompile.models import Sequential
from keras_subprocess import keras_available, run_keras_models

pytestmark = pytest.mark.skipif(not keras_available(),
                                reason="Keras 3 with the JAX backend is not installed")

# (name, Keras layer expressions (as written in both APIs), input shape, integer inputs)
MODELS = {
    "conv_pool": (["Conv2D(4, 3, activation='relu')", "MaxPooling2D()",
                   "Conv2D(3, (2, 3), strides=2, padding='same')", "AveragePooling2D(2, padding='same')",
                   "Flatten()", "Dense(3)"], (9, 8, 2), False),
    "pool_same": (["MaxPooling2D(3, strides=2, padding='same')", "GlobalAveragePooling2D()",
                   "Dense(2)"], (7, 6, 3), False),
    "batch_norm": (["Conv2D(3, 3, padding='same')", "BatchNormalization(momentum=0.8)", "Flatten()",
                    "Dense(2)", "LayerNormalization()"], (5, 5, 2), False),
    "embedding": (["Embedding(11, 4)", "Reshape((6, 1, 4))", "GlobalAveragePooling2D()", "Dense(2)"],
                  (6,), True),
    # text-classifier pooling; the relu makes whole channels tie at 0 for GlobalMaxPooling
    "global_1d": (["Embedding(11, 4)", "GlobalAveragePooling1D(keepdims=True)", "Dense(5, activation='relu')",
                   "Reshape((5, 1))", "GlobalMaxPooling1D()", "Dense(2)"], (6,), True),
    "global_max_2d": (["Conv2D(4, 3, activation='relu')", "GlobalMaxPooling2D()", "Dense(2)"], (5, 5, 2),
                      False),
    # given statistics (constants; the variance under epsilon^2 is clamped), and an un-adapted
    # Normalization, whose three weights (mean, variance, count) come over from Keras
    "normalization": (["Normalization(mean=[0.5, -1.0, 2.0], variance=[4.0, 0.25, 1e-16])",
                       "Dense(2)", "Normalization(axis=None, mean=0.1, variance=9.0, invert=True)",
                       "Normalization()"], (3,), False),
    "activation_and_shape_layers": (["Dense(5)", "ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2)",
                                     "Dense(4)", "ELU(alpha=0.7)", "RepeatVector(3)",
                                     "Permute((2, 1))", "Softmax(axis=1)", "Flatten()", "Dense(2)"],
                                    (4,), False),
    "bidirectional": (["Bidirectional(LSTM(4, return_sequences=True))",
                       "Bidirectional(GRU(3), merge_mode='ave')", "Dense(2)"], (5, 3), False),
    "bidirectional_rnn": (["Bidirectional(SimpleRNN(3, return_sequences=True), merge_mode='mul')",
                           "Bidirectional(LSTM(2), merge_mode='sum')", "Dense(2)"],
                          (4, 2), False),
    "time_distributed": (["LSTM(4, return_sequences=True)",
                          "TimeDistributed(Dense(3, activation='tanh'))",
                          "TimeDistributed(LayerNormalization())", "TimeDistributed(Dense(2))",
                          "Flatten()", "Dense(2)"], (5, 3), False),
    # sequences: Conv1D and the 1-D poolings (one-row images inside kcompile)
    "conv1d": (["Conv1D(4, 3, activation='relu')", "MaxPooling1D()",
                "Conv1D(3, 2, strides=2, padding='same')", "AveragePooling1D(2, padding='same')",
                "Flatten()", "Dense(3)"], (11, 2), False),
    "conv1d_causal": (["Conv1D(3, 4, padding='causal', activation='tanh')",
                       "MaxPooling1D(3, strides=2, padding='same')",
                       "AveragePooling1D(pool_size=2, strides=1)", "GlobalAveragePooling1D()",
                       "Dense(2)"], (9, 2), False),
}

# Runs in a child process (Keras and JAX stay out of the test process), once for every model.
KERAS_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, keras
    from keras.layers import *
    for spec in sys.argv[1:]:
        exprs, shape, path = eval(spec)
        data = np.load(path)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape)] + [eval(e) for e in exprs])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
        weights = model.get_weights()
        prediction = model.predict(data["x"], verbose=0)
        model.fit(data["x"], data["y"], batch_size=len(data["x"]), epochs=1, shuffle=False,
                  verbose=0)
        np.savez(path, prediction=prediction, after=model.predict(data["x"], verbose=0),
                 **{f"w{i}": w for i, w in enumerate(weights)},
                 **{f"t{i}": w for i, w in enumerate(model.get_weights())})
""")


def _kcompile_model(name):
    exprs, shape, _ = MODELS[name]
    namespace = {k: getattr(L, k) for k in dir(L) if not k.startswith("_")}
    return Sequential([L.Input(shape=shape)] + [eval(e, namespace) for e in exprs])


def _data(name):
    _, shape, integer = MODELS[name]
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 11, (8,) + shape) if integer else rng.standard_normal((8,) + shape))
    y = rng.standard_normal((8,) + _kcompile_model(name).output_shape[1:])
    return x.astype(np.float32), y.astype(np.float32)


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    return run_keras_models(KERAS_SCRIPT, MODELS, _data, tmp_path_factory.mktemp("keras"), fields=2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_layers_agree_with_keras(name, keras_results):
    keras_out = keras_results[name]
    x, y = _data(name)
    model = _kcompile_model(name)
    count = len(model.weights)
    model.set_weights([keras_out[f"w{i}"] for i in range(count)])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target="llvm")
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for i, (variable, got) in enumerate(zip(model.weights, model.get_weights())):
        np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{name}: {variable.path} after one SGD step")
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["after"], rtol=1e-4, atol=1e-5)
