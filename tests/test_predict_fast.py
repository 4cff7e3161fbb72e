"""predict's short path for one batch of float32 samples, predict_on_batch, and model(x) on arrays:
the same answers as the general path and the reference interpreter, and bad input still refused."""
from __future__ import annotations

import numpy as np
import pytest

from kcompile.layers import Dense, Dropout, Flatten, Input
from kcompile.models import Sequential


def make(target="llvm"):
    model = Sequential([Input(shape=(4, 5)), Flatten(), Dense(16, activation="relu"), Dropout(0.5),
                        Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", target=target)
    return model


@pytest.fixture(scope="module")
def models():
    compiled, reference = make(), make("reference")
    reference.set_weights(compiled.get_weights())
    return compiled, reference


def test_one_sample_and_one_batch_match_the_reference(models):
    compiled, reference = models
    rng = np.random.default_rng(0)
    for rows in (1, 7, 32):
        x = rng.standard_normal((rows, 4, 5)).astype(np.float32)
        expected = reference.predict(x, verbose=0)
        np.testing.assert_allclose(compiled.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compiled.predict_on_batch(x), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compiled(x), expected, rtol=1e-5, atol=1e-6)


def test_results_are_copies_and_follow_new_weights(models):
    compiled, _ = models
    x = np.ones((2, 4, 5), np.float32)
    first = compiled.predict(x, verbose=0)
    second = compiled.predict(2 * x, verbose=0)
    assert not np.shares_memory(first, second)
    assert not np.allclose(first, second)
    weights = compiled.get_weights()
    try:
        compiled.set_weights([np.zeros_like(w) for w in weights])
        # all-zero weights: softmax of zeros is uniform
        np.testing.assert_allclose(compiled.predict(x, verbose=0), np.full((2, 3), 1 / 3), rtol=1e-6)
    finally:
        compiled.set_weights(weights)


def test_other_inputs_take_the_general_path_with_the_same_answers(models):
    compiled, reference = models
    x = np.random.default_rng(1).standard_normal((40, 4, 5))
    # float64, more rows than one batch, a non-contiguous view, a list
    for data in (x, x.astype(np.float32)[:, ::1], np.asfortranarray(x.astype(np.float32)),
                 x[:3].tolist()):
        expected = reference.predict(np.asarray(data, np.float32), verbose=0)
        np.testing.assert_allclose(compiled.predict(data, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_still_refused(models):
    compiled, _ = models
    with pytest.raises(ValueError, match="shape|expected"):
        compiled.predict(np.ones((1, 5, 4), np.float32), verbose=0)
    with pytest.raises(ValueError, match="shape|expected"):
        compiled(np.ones((1, 20), np.float32))


def test_model_call_in_training_mode_applies_dropout(models):
    compiled, _ = models
    x = np.ones((64, 4, 5), np.float32)
    inference = compiled(x)
    training = compiled(x, training=True)
    assert inference.shape == training.shape == (64, 3)
    assert not np.allclose(inference, training)


@pytest.mark.parametrize("target", ["llvm", "reference"])
def test_predict_from_several_python_threads_gives_each_its_own_rows(target):
    """Two threads predicting on one model take turns (the programs keep their bound rows between
    native calls); each gets the serial answer for its own input."""
    import threading
    from kcompile.layers import Dense, Input
    from kcompile.models import Sequential
    model = Sequential([Input(shape=(30,)), Dense(16, activation="relu"), Dense(4)])
    model.compile(optimizer="sgd", loss="mse", target=target)
    rng = np.random.default_rng(0)
    inputs = [rng.random((300, 30)).astype(np.float32), rng.random((7, 30)).astype(np.float32)]
    # predict (batches of 32) and model(x) (one batch) each against its own serial answer: numpy's
    # matmul on the reference target may round a row differently in a product of another height
    expected = [(model.predict(x, verbose=0), np.asarray(model(x))) for x in inputs]
    errors = []

    def work(x, want):
        for _ in range(20):
            errors.append(float(np.abs(model.predict(x, verbose=0) - want[0]).max()))
            errors.append(float(np.abs(model(x) - want[1]).max()))

    threads = [threading.Thread(target=work, args=pair) for pair in zip(inputs, expected)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 80 and max(errors) == 0.0


@pytest.mark.parametrize("target", ["llvm", "reference"])
@pytest.mark.parametrize("inner", ["fast", "general"])
def test_a_callbacks_predict_on_the_same_model_leaves_the_outer_predict_whole(target, inner):
    """A callback that predicts with the model (one float32 row: the short path; a float64 row:
    the general one) runs on runners of its own: the outer predict's bound rows and outputs stay
    its own, as in Keras."""
    from kcompile.callbacks import Callback
    model = make(target)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 4, 5)).astype(np.float32)
    row = rng.standard_normal((1, 4, 5)).astype(np.float32 if inner == "fast" else np.float64)
    seen = []

    class Peek(Callback):
        def on_predict_batch_end(self, batch, logs=None):
            seen.append(self.model.predict(row, verbose=0))

    out = model.predict(x, batch_size=4, verbose=0, callbacks=[Peek()])
    np.testing.assert_array_equal(out, model.predict(x, batch_size=4, verbose=0))
    assert len(seen) == 3
    for inner_out in seen:
        np.testing.assert_array_equal(inner_out, model.predict(row, verbose=0))


@pytest.mark.parametrize("target", ["llvm", "reference"])
def test_a_callbacks_evaluate_inside_evaluate_leaves_the_outer_one_whole(target):
    from kcompile.callbacks import Callback
    model = make(target)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((12, 4, 5)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 12)]

    class Nested(Callback):
        def on_test_batch_end(self, batch, logs=None):
            self.model.evaluate(x[:2], y[:2], verbose=0)

    expected = model.evaluate(x, y, batch_size=4, verbose=0)
    assert model.evaluate(x, y, batch_size=4, verbose=0, callbacks=[Nested()]) == expected


def test_weights_made_nan_during_a_predict_reach_its_later_batches():
    """The program with weights marked finite skips the weight rows of zero inputs; weights that a
    callback sets to NaN mid-predict must switch the later batches to the unmarked program."""
    from kcompile.callbacks import Callback
    model = Sequential([Input(shape=(20,)), Dense(16, activation="relu"), Dense(3)])
    model.compile(optimizer="adam", loss="mse", target="llvm")
    weights = model.get_weights()
    bad = [w.copy() for w in weights]
    bad[0][5, 0] = np.nan                               # the row of input 5, always zero below

    class SetNaN(Callback):
        def on_predict_batch_end(self, batch, logs=None):
            if batch == 0:
                self.model.set_weights(bad)

    x = np.zeros((3, 20), np.float32)
    x[:, 0] = 1.0
    for batch_size in (1, 2):
        model.set_weights(weights)
        out = model.predict(x, batch_size=batch_size, verbose=0, callbacks=[SetNaN()])
        assert not np.isnan(out[:batch_size]).any()
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(out[batch_size:], model.predict(x[batch_size:], verbose=0))
        assert np.isnan(out[batch_size:]).any()


def test_predict_on_batch_of_a_scalar_array_says_so(models):
    compiled, _ = models
    with pytest.raises(ValueError, match="scalar"):
        compiled.predict_on_batch(np.array(1.0, np.float32))


def test_the_short_path_waits_for_a_call_another_thread_is_in():
    """A one-sample predict (the short path, which takes the model's lock without the general
    path's wrapper) waits while another thread is inside a call of the same model, then answers."""
    import threading
    from threads import lock_held_elsewhere
    model = make()
    x = np.ones((1, 4, 5), np.float32)
    want = model.predict(x, verbose=0)           # (the first call makes the lock)
    answers = []
    with lock_held_elsewhere(model):
        predictor = threading.Thread(target=lambda: answers.append(model.predict(x, verbose=0)))
        predictor.start()
        predictor.join(0.3)
        waited = predictor.is_alive() and not answers
    predictor.join(30)
    assert waited, "predict ran while another thread held the model's call lock"
    assert len(answers) == 1
    np.testing.assert_array_equal(answers[0], want)
