"""The layer-test harness of the convolutional, normalization, reshaping and embedding layers
(Keras's `run_layer_test`): output shape, weight counts, config round trip (also through JSON, as
`model.save` writes it), and one training step on the compiled target and on the reference
interpreter, which must agree.
"""
from __future__ import annotations

import json

import numpy as np

from kcompile import optimizers
from kcompile.layers import Input, Layer
from kcompile.models import Sequential
from kcompile.utils import set_random_seed

TARGETS = ("reference", "llvm")


class Offset(Layer):
    """x + w, w of the per-sample shape and zero at first: after one SGD step of learning rate lr on
    the whole batch, -w / lr is the batch's summed gradient with respect to the next layer's input."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=tuple(input_shape[1:]), initializer="zeros", name="w")

    def call(self, x):
        return x + self.w


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


def _standard_inputs(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def run_layer_test(make_layer, input_shape, expected_output_shape, expected_weights, *,
                   expected_trainable=None, state_updates=False, inputs=_standard_inputs,
                   batch=6, rtol=1e-4, atol=1e-5):
    """Check one layer type; `make_layer()` makes a fresh instance.

    expected_weights / expected_trainable: counts of all / trainable weights once built.
    state_updates: the training step must change the non-trainable weights too (moving statistics).
    inputs: inputs(rng, shape) -> a float32 batch of that shape (integer ids for Embedding).
    """
    layer = make_layer()
    input_shape, expected_output_shape = tuple(input_shape), tuple(expected_output_shape)
    assert layer.compute_output_shape((None,) + input_shape) == (None,) + expected_output_shape
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    through_json = type(layer).from_config(json.loads(json.dumps(config)))
    assert json.dumps(through_json.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)

    rng = np.random.default_rng(0)
    x = inputs(rng, (batch,) + input_shape)
    y = rng.standard_normal((batch,) + expected_output_shape).astype(np.float32)
    results = {}
    for target in TARGETS:
        set_random_seed(3)
        model = Sequential([Input(shape=input_shape), make_layer()])
        built = model.layers[0]
        assert len(built.weights) == expected_weights
        if expected_trainable is not None:
            assert len(built.trainable_weights) == expected_trainable
        assert model.output_shape == (None,) + expected_output_shape
        model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=target)
        before = model.get_weights()
        prediction = model.predict(x, verbose=0)
        assert prediction.shape == (batch,) + expected_output_shape
        history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        after = model.get_weights()
        for variable, old, new in zip(built.weights, before, after):
            if variable.trainable or state_updates:
                assert not np.array_equal(old, new), f"{variable.path} did not change in training"
            else:
                np.testing.assert_array_equal(old, new, err_msg=f"{variable.path} changed")
        # inference after the step uses the updated weights (and moving statistics)
        results[target] = (prediction, after, model.predict(x, verbose=0))
    reference = results["reference"]
    for target, result in results.items():
        for got, want in zip(result[1], reference[1]):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{target} weights")
        for index in (0, 2):
            np.testing.assert_allclose(result[index], reference[index], rtol=rtol, atol=atol,
                                       err_msg=f"{target} predictions")
    return results


def check_fit_matches_reference(make_model, rows=12, outputs=2):
    """Two epochs of Adam on `make_model()` (a fresh model of one input and `outputs` regression
    outputs), compiled and on the reference interpreter from the same seed: the weights must change
    and every target's losses, weights and predictions must agree with the reference's."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((rows,) + make_model().input_shape[1:]).astype(np.float32)
    y = rng.standard_normal((rows, outputs)).astype(np.float32)
    results = {}
    for target in TARGETS:
        set_random_seed(5)
        model = make_model()
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
