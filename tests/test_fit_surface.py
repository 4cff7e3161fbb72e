"""The training surface around fit: generators and other batch sources, class and sample weights
against hand-computed weighted losses and updates, validation data with weights and frequency,
train/test/predict_on_batch, and callbacks end to end with real training."""
import csv
import warnings

import numpy as np
import pytest

from kcompile import callbacks, metrics, optimizers
from kcompile.layers import Dense, Input
from kcompile.models import Sequential, load_model
from targets import TARGETS


def linear_model(target="reference", learning_rate=0.1, seed=0, loss="mse", metrics_=None,
                 optimizer=None, **compile_args):
    rng = np.random.default_rng(seed)
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.set_weights([rng.standard_normal((4, 3)), rng.standard_normal(3)])
    model.compile(optimizer=optimizer or optimizers.SGD(learning_rate=learning_rate), loss=loss,
                  metrics=metrics_ or [], target=target, **compile_args)
    return model


def data(rows=24, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, 4)).astype(np.float32),
            rng.standard_normal((rows, 3)).astype(np.float32))


def np_weighted_mse_step(kernel, bias, x, y, w, learning_rate):
    """One SGD step on Keras's weighted MSE: sum_i w_i mean_j (p - y)^2 / batch size."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    d = 2 * w[:, None] * (x @ kernel + bias - y) / (len(x) * y.shape[1])
    return kernel - learning_rate * x.T @ d, bias - learning_rate * d.sum(0)


def np_weighted_mse(kernel, bias, x, y, w):
    return float((w * ((x @ kernel + bias - y) ** 2).mean(-1)).sum() / len(x))


def batches(x, y, size, weights=None):
    for start in range(0, len(x), size):
        stop = start + size
        if weights is None:
            yield x[start:stop], y[start:stop]
        else:
            yield x[start:stop], y[start:stop], weights[start:stop]


# ----------------------------------------------------------------------------------------------
# Batch sources
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_a_generator_trains_like_the_same_batches_from_arrays(target):
    x, y = data()
    from_arrays = linear_model(target)
    from_arrays.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)

    def forever():
        while True:
            yield from batches(x, y, 8)

    from_generator = linear_model(target)
    history = from_generator.fit(forever(), steps_per_epoch=3, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    for got, want in zip(from_generator.get_weights(), from_arrays.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert int(from_generator.optimizer.iterations.buffer) == 6
    # evaluate and predict take batch sources too.
    evaluated = from_generator.evaluate(batches(x, y, 5), verbose=0)
    assert evaluated == pytest.approx(from_generator.evaluate(x, y, verbose=0), rel=1e-6)
    np.testing.assert_allclose(from_generator.predict(batches(x, y, 7), verbose=0),
                               from_generator.predict(x, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(from_generator.predict((b for b, _ in batches(x, y, 7)), steps=2,
                                                      verbose=0),
                               from_generator.predict(x[:14], verbose=0), rtol=1e-6)


def test_steps_per_epoch_continues_the_generator_and_running_out_stops_training():
    x, y = data()
    seen = []

    def finite():
        for index, batch in enumerate(batches(x, y, 4)):  # 6 batches
            seen.append(index)
            yield batch

    model = linear_model()
    with pytest.warns(UserWarning, match="ran out of data"):
        history = model.fit(finite(), steps_per_epoch=4, epochs=5, verbose=0)
    # Epoch 1: batches 0-3; epoch 2: batches 4-5, then the generator is exhausted: training stops.
    assert seen == [0, 1, 2, 3, 4, 5]
    assert len(history.history["loss"]) == 2
    assert int(model.optimizer.iterations.buffer) == 6

    model = linear_model()
    with pytest.warns(UserWarning, match="ran out of data"):
        history = model.fit(batches(x, y, 4), epochs=3, verbose=0)  # one pass, then nothing
    assert len(history.history["loss"]) == 1


class Sequence:
    """Keras's PyDataset protocol: len, getitem, on_epoch_end."""

    def __init__(self, x, y, size, weights=None):
        self.x, self.y, self.size, self.weights = x, y, size, weights
        self.epochs_ended = 0

    def __len__(self):
        return -(-len(self.x) // self.size)

    def __getitem__(self, index):
        rows = slice(index * self.size, (index + 1) * self.size)
        if self.weights is None:
            return self.x[rows], self.y[rows]
        return self.x[rows], self.y[rows], self.weights[rows]

    def on_epoch_end(self):
        self.epochs_ended += 1


class Reiterable:
    def __init__(self, x, y, size):
        self.x, self.y, self.size = x, y, size

    def __iter__(self):
        return batches(self.x, self.y, self.size)


def test_sequences_and_reiterables_give_a_full_pass_every_epoch():
    x, y = data(20)
    from_arrays = linear_model()
    from_arrays.fit(x, y, batch_size=6, epochs=3, shuffle=False, verbose=0)
    sequence = Sequence(x, y, 6)
    from_sequence = linear_model()
    history = from_sequence.fit(sequence, epochs=3, shuffle=False, verbose=0)
    assert sequence.epochs_ended == 3 and len(history.history["loss"]) == 3
    from_iterable = linear_model()
    from_iterable.fit(Reiterable(x, y, 6), epochs=3, verbose=0)
    for model in (from_sequence, from_iterable):
        for got, want in zip(model.get_weights(), from_arrays.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    shuffled = linear_model()
    shuffled.fit(Sequence(x, y, 6), epochs=1, shuffle=True, verbose=0)  # batch order shuffled
    assert int(shuffled.optimizer.iterations.buffer) == 4


class ReadLog(Sequence):
    """A sequence that records which batches are read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = []

    def __getitem__(self, index):
        self.read.append(index)
        return super().__getitem__(index)


def test_a_sequence_shorter_than_the_steps_asked_is_read_once_per_epoch():
    """As Keras's EpochIterator: steps beyond a sequence's batches end the epoch with a warning
    (a wrap-around read batches twice: 64 predictions for 40 samples)."""
    x, y = data(20)
    model = linear_model()
    sequence = ReadLog(x, y, 6)      # 4 batches
    with pytest.warns(UserWarning, match="ran out of data"):
        assert model.predict(sequence, steps=7, verbose=0).shape == (20, 3)
    with pytest.warns(UserWarning, match="ran out of data"):
        assert model.evaluate(sequence, steps=7, verbose=0) == pytest.approx(
            model.evaluate(sequence, verbose=0))
    with pytest.warns(UserWarning, match="ran out of data"):
        history = model.fit(sequence, steps_per_epoch=7, epochs=2, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 2 and int(model.optimizer.iterations.buffer) == 8
    sequence.read.clear()
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(sequence, steps_per_epoch=3, epochs=2, shuffle=False, verbose=0)
    # (after the first batch, read once for its shape) the second epoch ends early, at the end of
    # the pass
    assert sequence.read == [0, 0, 1, 2, 3]


def test_validation_steps_of_a_sequence_evaluate_the_same_batches_every_epoch():
    x, y = data(20)
    model = linear_model(learning_rate=0.0)
    validation = ReadLog(x, y, 6)
    history = model.fit(x, y, epochs=3, verbose=0, validation_data=validation, validation_steps=2)
    assert validation.read[-6:] == [0, 1] * 3
    losses = history.history["val_loss"]
    assert losses[0] == losses[1] == losses[2]


def test_validation_steps_of_an_endless_generator_evaluate_its_first_batches_every_epoch():
    """As Keras 3: the first validation_steps batches of a generator that never ends are read
    once, in the first epoch, and evaluated again after every epoch (a learning rate of 0 keeps
    the weights, so every epoch's val_loss is the loss of those two batches)."""
    x, y = data(40)
    model = linear_model(learning_rate=0.0)
    read = []

    def endless():
        while True:
            for start in range(0, 40, 8):
                read.append(start)
                yield x[start:start + 8], y[start:start + 8]

    history = model.fit(x, y, epochs=3, verbose=0, validation_data=endless(), validation_steps=2)
    assert read == [0, 8]
    losses = history.history["val_loss"]
    assert losses[0] == losses[1] == losses[2] == pytest.approx(
        model.evaluate(x[:16], y[:16], batch_size=8, verbose=0), rel=1e-6)


def test_an_endless_py_dataset_reads_batches_by_index_across_epochs(capsys):
    """num_batches None (Keras's infinite PyDataset): read 0, 1, 2, ... with steps_per_epoch;
    and a source of unknown length shows its real step count in the progress line."""
    from kcompile.utils import PyDataset
    x, y = data(20)

    class Endless(PyDataset):
        read = []

        @property
        def num_batches(self):
            return None

        def __getitem__(self, index):
            self.read.append(index)
            return x[index % 4 * 5:index % 4 * 5 + 5], y[index % 4 * 5:index % 4 * 5 + 5]

    model = linear_model()
    model.fit(Endless(), steps_per_epoch=3, epochs=2, verbose=0)
    assert Endless.read == [0, 1, 2, 3, 4, 5]
    assert model.predict(Endless(), steps=2, verbose=0).shape == (10, 3)
    model.evaluate(batches(x, y, 5), verbose=2)
    assert capsys.readouterr().out.startswith("4/4 ")


def test_a_keras_style_py_dataset_trains_like_the_same_batches_from_arrays():
    from kcompile.utils import PyDataset
    x, y = data(20)

    class Rows(PyDataset):
        def __init__(self, size, **kwargs):
            super().__init__(**kwargs)
            self.size, self.events = size, []

        def __getitem__(self, index):
            return x[index * self.size:(index + 1) * self.size], y[index * self.size:(index + 1) * self.size]

        def on_epoch_begin(self):
            self.events.append("begin")

        def on_epoch_end(self):
            self.events.append("end")

    class Batches(Rows):
        def __len__(self):
            return -(-len(x) // self.size)

    class Counted(Rows):      # num_batches instead of __len__, as Keras 3 also allows
        @property
        def num_batches(self):
            return -(-len(x) // self.size)

    from_arrays = linear_model()
    from_arrays.fit(x, y, batch_size=6, epochs=2, shuffle=False, verbose=0)
    for source in (Batches(6, workers=2, use_multiprocessing=False), Counted(6, max_queue_size=4)):
        model = linear_model()
        history = model.fit(source, epochs=2, shuffle=False, verbose=0)
        assert len(history.history["loss"]) == 2 and source.events == ["begin", "end"] * 2
        for got, want in zip(model.get_weights(), from_arrays.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert model.evaluate(source, verbose=0) == pytest.approx(
            from_arrays.evaluate(x, y, verbose=0), rel=1e-5)
    assert Batches(6, workers=3).workers == 3


def test_weighted_batches_validation_generators_and_logs():
    x, y = data(16)
    w = np.linspace(0.5, 2.0, 16).astype(np.float32)
    model = linear_model(learning_rate=0.0, metrics_=["mae"])
    kernel, bias = (v.astype(np.float64) for v in model.get_weights())
    history = model.fit(Sequence(x, y, 5, w), epochs=1, shuffle=False, verbose=0,
                        validation_data=batches(x, y, 3, w), validation_steps=6).history
    expected = np_weighted_mse(kernel, bias, x, y, w)
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert history["val_loss"][0] == pytest.approx(expected, rel=1e-5)
    assert history["mae"][0] == pytest.approx(np.abs(x @ kernel + bias - y).mean(), rel=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_a_validation_generator_is_evaluated_after_every_epoch(target):
    """A generator cannot restart: its batches are kept from the first epoch, so every epoch logs
    val_loss (as Keras does), each the loss of the whole validation set under that epoch's weights
    (and a generator refilling one buffer is copied, not aliased)."""
    x, y = data(24)
    val_x, val_y = data(9, seed=2)

    def refilling(size):
        buffer_x, buffer_y = np.empty((size, 4), np.float32), np.empty((size, 3), np.float32)
        for start in range(0, len(val_x), size):
            rows = len(val_x[start:start + size])
            buffer_x[:rows], buffer_y[:rows] = val_x[start:start + size], val_y[start:start + size]
            yield buffer_x[:rows], buffer_y[:rows]

    model = linear_model(target)
    weights = []
    record = callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(
        [w.astype(np.float64) for w in model.get_weights()]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no "ran out of data"
        history = model.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0,
                            validation_data=refilling(4), callbacks=[record]).history
    assert len(history["val_loss"]) == 3
    for (kernel, bias), got in zip(weights, history["val_loss"]):
        assert got == pytest.approx(float(((val_x @ kernel + bias - val_y) ** 2).mean()), rel=1e-5)


def test_compile_takes_kerass_per_output_spellings_for_the_one_output():
    x, y = data(16)
    model = linear_model()
    output = model.layers[-1].name
    for spelling in (dict(loss=["mse"], metrics=[["mae"]]),
                     dict(loss={output: "mse"}, metrics={output: ["mae"]}),
                     dict(loss="mse", metrics={output: "mae"}, weighted_metrics=[["mse"]])):
        model.compile(optimizers.SGD(0.0), **spelling)
        logs = model.evaluate(x, y, verbose=0, return_dict=True)
        assert logs["mae"] == pytest.approx(np.abs(model.predict(x, verbose=0) - y).mean(), rel=1e-5)
        assert logs["loss"] == pytest.approx(((model.predict(x, verbose=0) - y) ** 2).mean(), rel=1e-5)
    model.compile(optimizers.SGD(0.0), loss="mse", metrics=["mae"])
    with pytest.raises(ValueError, match=repr(output)):
        model.compile("sgd", loss={"another": "mse"})
    with pytest.raises(NotImplementedError, match="one output"):
        model.compile("sgd", loss=["mse", "mae"])
    with pytest.raises(NotImplementedError, match="one output"):
        model.compile("sgd", loss="mse", metrics=[["mae"], ["mse"]])
    assert model.metrics_names == ["loss", "mae"]   # the refused compiles changed nothing


def test_batch_source_errors():
    x, y = data(8)
    model = linear_model()
    with pytest.raises(ValueError, match="`y` and `sample_weight` must not be given"):
        model.fit(batches(x, y, 4), y, verbose=0)
    with pytest.raises(ValueError, match="batch without targets"):
        model.fit((b for b, _ in batches(x, y, 4)), verbose=0)
    with pytest.raises(ValueError, match="must be x, \\(x,\\), \\(x, y\\)"):
        model.fit(iter([(x, y, None, None)]), verbose=0)
    with pytest.raises(ValueError, match="validation_split` is only supported for arrays"):
        model.fit(batches(x, y, 4), validation_split=0.5, verbose=0)
    with pytest.raises(ValueError, match="yielded no batches"):
        model.fit(iter([]), verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive integer"):
        model.fit(batches(x, y, 4), steps_per_epoch=0, verbose=0)
    # a bad batch later in the stream is named as a variable, with a hint that reads as code
    # (of (4, 4, 1) as much as of (4, 1, 4): Keras 3 drops a last axis of 1, and so does kcompile)
    bad = [(x[:4], y[:4]), (x[4:8, None, :], y[4:8])]
    with pytest.raises(ValueError, match=r"Input `batch_x` has shape \(4, 1, 4\).*batch_x\.reshape"):
        model.fit(iter(bad), verbose=0)
    with pytest.raises(ValueError, match="`validation_data_batch_x` and `validation_data_batch_y`"):
        model.fit(x, y, validation_data=iter([(x[:3], y[:4])]), verbose=0)
    with pytest.raises(ValueError, match="first batch"):
        model.fit(iter([(x[:4], y[:4]), (x[4:], y[4:], np.ones(4, np.float32))]), verbose=0)


# ----------------------------------------------------------------------------------------------
# Class and sample weights
# ----------------------------------------------------------------------------------------------

def test_loss_weights_are_part_of_the_compile_cache_key(cache_on, tmp_path, monkeypatch):
    """The same model compiled again with other loss_weights must not reuse the cached program."""
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path / "cache"))
    x, y = data(rows=8)
    model = linear_model("llvm", learning_rate=0.1)
    plain = model.evaluate(x, y, verbose=0)
    for weight in (5.0, 0.5, None):
        model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", loss_weights=weight,
                      target="llvm")
        assert model.evaluate(x, y, verbose=0) == pytest.approx((weight or 1.0) * plain, rel=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_loss_weights_of_the_one_output_scale_the_loss_and_its_gradient(target, tmp_path):
    x, y = data(rows=8)
    plain = linear_model(target, learning_rate=0.2)
    for weights in (2.0, [2.0], {"dense": 2.0}):
        weighted = linear_model(target, learning_rate=0.1, loss_weights=weights,
                                weighted_metrics=["mae"])
        assert weighted.evaluate(x, y, verbose=0)[0] == pytest.approx(
            2 * plain.evaluate(x, y, verbose=0), rel=1e-6)
    # twice the loss at half the rate: the same SGD step
    assert weighted.train_on_batch(x, y)[0] == pytest.approx(2 * plain.train_on_batch(x, y), rel=1e-6)
    for got, want in zip(weighted.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    weighted.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.loss_weight == 2.0 and loaded.metrics_names == weighted.metrics_names
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), weighted.evaluate(x, y, verbose=0),
                               rtol=1e-6)
    # Keras 3's ValueError for a count that does not match the outputs (and the
    # NotImplementedError kcompile raised)
    for expected in (ValueError, NotImplementedError):
        with pytest.raises(expected, match="got 1 losses and 2 weights"):
            linear_model(target, loss_weights=[1.0, 2.0])
        with pytest.raises(expected, match="gives 2 losses, one per output"):
            linear_model(target, loss=["mse", "mae"])
    with pytest.raises(ValueError, match="finite number"):
        linear_model(target, loss_weights=float("nan"))


@pytest.mark.parametrize("target", TARGETS)
def test_train_on_batch_from_a_callback_between_the_steps_of_fit(target):
    """A callback's train_on_batch runs between two steps of the epoch and leaves the epoch's own
    batches, order and logs alone: the same as the steps taken one by one."""
    x, y = data(rows=12)
    extra_x, extra_y = x[:5] * 0.5, y[:5]

    class Nested(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.train_on_batch(extra_x, extra_y)

    model = linear_model(target)
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, callbacks=[Nested()], verbose=0)
    by_hand = linear_model(target)
    losses = []
    for start in range(0, 12, 4):
        losses.append(by_hand.train_on_batch(x[start:start + 4], y[start:start + 4]))
        by_hand.train_on_batch(extra_x, extra_y)
    for got, want in zip(model.get_weights(), by_hand.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"][0], np.mean(losses), rtol=1e-5)


def test_compile_from_a_callback_is_refused_and_changes_nothing():
    """compile() inside fit, evaluate or predict of the same model: a clear error, the model keeps
    its compile settings and trains on afterwards (the running call could not use the new ones)."""
    x, y = data(rows=8)

    class Recompile(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.compile(optimizer="adam", loss="mae")

        on_test_batch_end = on_predict_batch_end = on_epoch_end

    model = linear_model("llvm")
    optimizer = model.optimizer
    for call in (lambda: model.fit(x, y, epochs=2, callbacks=[Recompile()], verbose=0),
                 lambda: model.evaluate(x, y, callbacks=[Recompile()], verbose=0),
                 lambda: model.predict(x, callbacks=[Recompile()], verbose=0)):
        with pytest.raises(RuntimeError, match="compile.. was called from inside fit"):
            call()
        assert model.loss == "mse" and model.optimizer is optimizer
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=1, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before

    # ... but from the last hook of a call, as Keras allows: nothing of that call is left to run
    class CompileAtTheEnd(callbacks.Callback):
        def on_train_end(self, logs=None):
            self.model.compile(optimizer="sgd", loss="mae")

        def on_test_end(self, logs=None):
            self.model.compile(optimizer="sgd", loss="mse")

    model.fit(x, y, epochs=1, callbacks=[CompileAtTheEnd()], verbose=0)
    assert model.loss == "mae"
    model.evaluate(x, y, callbacks=[CompileAtTheEnd()], verbose=0)
    assert model.loss == "mse"
    # a validation's end inside fit is not the end of the call
    with pytest.raises(RuntimeError, match="compile.. was called from inside fit"):
        model.fit(x, y, validation_data=(x, y), callbacks=[CompileAtTheEnd()], verbose=0)


def test_batch_hooks_of_fit_evaluate_and_predict_get_logs_by_keyword_as_in_keras_3():
    x, y = data(rows=8)
    seen = []

    class KeywordOnly(callbacks.Callback):
        def on_train_batch_end(self, batch, **kwargs):
            seen.append(("train", batch, sorted(kwargs["logs"])))

        def on_test_batch_begin(self, batch, **kwargs):
            seen.append(("test", batch, kwargs["logs"]))

        def on_predict_batch_end(self, batch, **kwargs):
            seen.append(("predict", batch, sorted(kwargs["logs"])))

    model = linear_model("llvm")
    model.fit(x, y, batch_size=4, callbacks=[KeywordOnly()], verbose=0)
    model.evaluate(x, y, batch_size=8, callbacks=[KeywordOnly()], verbose=0)
    model.predict(x, batch_size=8, callbacks=[KeywordOnly()], verbose=0)
    assert seen == [("train", 0, ["loss"]), ("train", 1, ["loss"]), ("test", 0, {}),
                    ("predict", 0, ["outputs"])]


@pytest.mark.parametrize("target", TARGETS)
def test_sample_weights_scale_the_loss_and_the_update_like_keras(target):
    x, y = data(10)
    w = np.random.default_rng(2).random(10).astype(np.float32)
    model = linear_model(target, learning_rate=0.1)
    kernel, bias = (v.astype(np.float64) for v in model.get_weights())
    loss = model.train_on_batch(x, y, sample_weight=w)
    assert loss == pytest.approx(np_weighted_mse(kernel, bias, x, y, w), rel=1e-5)
    for got, want in zip(model.get_weights(), np_weighted_mse_step(kernel, bias, x, y, w, 0.1)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # In fit, with a partial last batch: every batch's loss is divided by its own size.
    model = linear_model(target, learning_rate=0.1)
    model.fit(x, y, sample_weight=w, batch_size=4, epochs=1, shuffle=False, verbose=0)
    for start in range(0, 10, 4):
        rows = slice(start, start + 4)
        kernel, bias = np_weighted_mse_step(kernel, bias, x[rows], y[rows], w[rows], 0.1)
    for got, want in zip(model.get_weights(), (kernel, bias)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def scalar_mse(y_true, y_pred):
    """A custom loss that reduces to a scalar itself, as many tutorials write it."""
    from kcompile import ops
    return ops.mean(ops.square(y_true - y_pred))


@pytest.mark.parametrize("target", TARGETS)
def test_a_scalar_custom_loss_is_scaled_by_the_mean_weight_of_each_batch(target):
    # Keras broadcasts the scalar against the batch's weights and divides by the batch size: the
    # batch's loss is mean((p - y)^2) * mean(w); the epoch's loss averages the batches by size.
    x, y = data(10)
    w = np.random.default_rng(2).random(10).astype(np.float32) * 2
    model = linear_model(target, learning_rate=0.0, loss=scalar_mse)
    kernel, bias = (v.astype(np.float64) for v in model.get_weights())
    squares = (x @ kernel + bias - y) ** 2

    def expected(weights, size):
        parts = [(squares[s:s + size].mean() * weights[s:s + size].mean(), len(weights[s:s + size]))
                 for s in range(0, 10, size)]
        return sum(loss * n for loss, n in parts) / 10

    assert model.evaluate(x, y, sample_weight=w, batch_size=4, verbose=0) == pytest.approx(
        expected(w, 4), rel=1e-5)
    history = model.fit(x, y, sample_weight=w, batch_size=4, shuffle=False, verbose=0).history
    assert history["loss"][0] == pytest.approx(expected(w, 4), rel=1e-5)
    labels = np.argmax(y, axis=1)
    class_weight = {0: 1.0, 1: 2.0, 2: 0.5}
    by_class = np.array([class_weight[int(c)] for c in labels])
    history = model.fit(x, y, class_weight=class_weight, batch_size=3, shuffle=False,
                        verbose=0).history
    assert history["loss"][0] == pytest.approx(expected(by_class, 3), rel=1e-5)
    # and the gradient is the scalar loss's, scaled by the batch's mean weight
    model = linear_model(target, learning_rate=0.1, loss=scalar_mse)
    model.train_on_batch(x, y, sample_weight=w)
    d = 2 * (x @ kernel + bias - y) * w.mean() / y.size
    np.testing.assert_allclose(model.get_weights()[0], kernel - 0.1 * x.T @ d, rtol=1e-5, atol=1e-6)


def test_class_weight_equals_the_sample_weights_of_each_class():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    class_weight = {0: 0.5, 1: 2.0}  # class 2 is missing: weight 1
    w = np.array([class_weight.get(int(c), 1.0) for c in labels], np.float32)
    for loss, y in (("sparse_categorical_crossentropy", labels),
                    ("categorical_crossentropy", np.eye(3, dtype=np.float32)[labels])):
        with_classes = linear_model(loss=loss, learning_rate=0.2)
        history = with_classes.fit(x, y, class_weight=class_weight, batch_size=5, epochs=2,
                                   shuffle=False, verbose=0).history
        with_samples = linear_model(loss=loss, learning_rate=0.2)
        expected = with_samples.fit(x, y, sample_weight=w, batch_size=5, epochs=2, shuffle=False,
                                    verbose=0).history
        assert history["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        for got, want in zip(with_classes.get_weights(), with_samples.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-6)
        # train_on_batch and generators take class_weight too.
        first = linear_model(loss=loss)
        first.train_on_batch(x, y, class_weight=class_weight)
        second = linear_model(loss=loss)
        second.train_on_batch(x, y, sample_weight=w)
        np.testing.assert_allclose(first.get_weights()[0], second.get_weights()[0], rtol=1e-6)
        from_generator = linear_model(loss=loss, learning_rate=0.2)
        from_generator.fit(batches(x, y, 5), class_weight=class_weight, epochs=1, verbose=0)
        from_arrays = linear_model(loss=loss, learning_rate=0.2)
        from_arrays.fit(x, y, sample_weight=w, batch_size=5, epochs=1, shuffle=False, verbose=0)
        np.testing.assert_allclose(from_generator.get_weights()[0], from_arrays.get_weights()[0],
                                   rtol=1e-6)


def test_binary_class_weight_and_weighted_validation():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = rng.integers(0, 2, (20, 1)).astype(np.float32)
    model = Sequential([Input(shape=(4,)), Dense(1, activation="sigmoid")])
    model.compile(optimizer=optimizers.SGD(0.0), loss="binary_crossentropy", target="reference")
    p = model.predict(x, verbose=0).astype(np.float64)[:, 0]
    per_sample = -(y[:, 0] * np.log(p) + (1 - y[:, 0]) * np.log(1 - p))
    w = np.where(y[:, 0] == 1, 3.0, 1.0)
    history = model.fit(x, y, class_weight={1: 3.0}, batch_size=20, verbose=0,
                        validation_data=(x, y, w)).history
    assert history["loss"][0] == pytest.approx((per_sample * w).mean(), rel=1e-5)
    assert history["val_loss"][0] == pytest.approx((per_sample * w).mean(), rel=1e-5)
    # validation_split keeps the last samples' weights with them.
    history = model.fit(x, y, sample_weight=w, validation_split=0.25, batch_size=20,
                        verbose=0).history
    assert history["val_loss"][0] == pytest.approx((per_sample * w)[15:].mean(), rel=1e-5)
    assert history["loss"][0] == pytest.approx((per_sample * w)[:15].mean(), rel=1e-5)


def test_validation_freq_and_steps_per_epoch_on_arrays():
    x, y = data(20)
    model = linear_model()
    history = model.fit(x, y, batch_size=5, epochs=4, validation_data=(x, y), validation_freq=2,
                        verbose=0).history
    assert len(history["loss"]) == 4 and len(history["val_loss"]) == 2
    # a list names the epochs to validate after, counted from 1 (Keras's `epoch + 1 in list`)
    seen = []

    class Record(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, "val_loss" in logs))

    model = linear_model(learning_rate=0.0)
    kernel, bias = (v.astype(np.float64) for v in model.get_weights())
    history = model.fit(x, y, batch_size=5, epochs=4, validation_data=(x[:8], y[:8]),
                        validation_freq=[1, 3], callbacks=[Record()], verbose=0).history
    assert seen == [(0, True), (1, False), (2, True), (3, False)]
    expected = float((((x[:8] @ kernel + bias) - y[:8]) ** 2).mean())
    assert history["val_loss"] == pytest.approx([expected, expected], rel=1e-5)
    with pytest.raises(ValueError, match="counted from 1"):
        model.fit(x, y, validation_data=(x, y), validation_freq=[0, 2], verbose=0)
    model = linear_model()
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(x, y, batch_size=5, epochs=3, steps_per_epoch=3, shuffle=False, verbose=0)
    # Keras's EpochIterator: 3 batches, then the pass's last one (warned), then 3 of a new pass.
    assert int(model.optimizer.iterations.buffer) == 7


def test_validation_steps_take_the_first_batches_of_validation_arrays_every_epoch():
    # Keras 3 evaluates the first validation_steps batches of array validation data each epoch.
    x, y = data(20)
    val_x, val_y = data(20, seed=5)
    model = linear_model(learning_rate=0.0)
    kernel, bias = (v.astype(np.float64) for v in model.get_weights())
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(val_x, val_y),
                        validation_batch_size=5, validation_steps=3, verbose=0).history
    expected = float((((val_x[:15] @ kernel + bias) - val_y[:15]) ** 2).mean())
    assert history["val_loss"] == pytest.approx([expected, expected], rel=1e-5)
    # more steps than batches: the whole array once
    history = model.fit(x, y, batch_size=8, validation_data=(val_x, val_y), validation_batch_size=5,
                        validation_steps=9, verbose=0).history
    assert history["val_loss"][0] == pytest.approx(
        float((((val_x @ kernel + bias) - val_y) ** 2).mean()), rel=1e-5)


def test_steps_per_execution_spaces_the_batch_hooks_as_keras_and_changes_no_number():
    x, y = data(20)

    class Record(callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_train_batch_begin(self, batch, logs=None):
            self.calls.append(("begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            self.calls.append(("end", batch, logs["loss"]))

        def on_test_batch_end(self, batch, logs=None):
            self.calls.append(("test", batch))

        def on_predict_batch_end(self, batch, logs=None):
            self.calls.append(("predict", batch, len(logs["outputs"])))

    runs = {}
    for n in (1, 3):
        model = linear_model(steps_per_execution=n)
        assert model.steps_per_execution == n
        record = Record()
        history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                            validation_data=(x[:12], y[:12]), callbacks=[record]).history
        model.predict(x, batch_size=4, verbose=0, callbacks=[record])
        model.fit(batches(x, y, 5), epochs=1, verbose=0, callbacks=[record])   # unknown length
        runs[n] = history, model.get_weights(), record.calls
    (history1, weights1, calls1), (history3, weights3, calls3) = runs[1], runs[3]
    assert history3 == history1
    for a, b in zip(weights1, weights3):
        np.testing.assert_array_equal(a, b)
    # Keras 3.15: begin(first step of the execution), end(first step + N - 1) after its last batch
    # (5 batches: steps 0-2 and 3-4), the logs as they stand then.
    losses = [call[2] for call in calls1 if call[0] == "end"]   # 5 + 5 + 4 batches

    def epoch(k):
        return [("begin", 0), ("end", 2, losses[5 * k + 2]), ("begin", 3),
                ("end", 5, losses[5 * k + 4]), ("test", 2)]

    predict = [("predict", 2, 12), ("predict", 5, 8)]
    # a generator of 4 batches: the second execution is cut short by its end
    generator = [("begin", 0), ("end", 2, losses[12]), ("begin", 3), ("end", 5, losses[13])]
    assert calls3 == epoch(0) + epoch(1) + predict + generator
    with pytest.raises(ValueError, match="steps_per_execution"):
        linear_model(steps_per_execution=0)


@pytest.mark.parametrize("target", TARGETS)
def test_a_stop_flag_set_in_a_begin_hook_stops_after_the_whole_execution(target):
    """Keras 3 runs an execution (steps_per_execution) whole: a flag set in a begin hook stops
    fit, evaluate and predict after its last step, its end hook called; kcompile had stopped
    after the first step, without the end hook (arrays), or with it after one step (a generator).
    Expected: the same run with steps_per_execution=1 stopped in the end hook of step 2."""
    x, y = data(24)

    class Stop(callbacks.Callback):
        def __init__(self, hook):
            super().__init__()
            self.calls = []
            flag = {"train": "stop_training", "test": "stop_evaluating",
                    "predict": "stop_predicting"}[hook]

            def begin(batch, logs=None):
                self.calls.append(("begin", batch))
                setattr(self.model, flag, True)

            def end(batch, logs=None):
                self.calls.append(("end", batch))
            setattr(self, f"on_{hook}_batch_begin", begin)
            setattr(self, f"on_{hook}_batch_end", end)

    class StopAtEnd(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    reference = linear_model(target=target)
    reference.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[StopAtEnd()])
    for source in ("arrays", "generator"):
        model = linear_model(target=target, steps_per_execution=2)
        stop = Stop("train")
        model.fit(x if source == "arrays" else batches(x, y, 4), y if source == "arrays" else None,
                  batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[stop])
        assert stop.calls == [("begin", 0), ("end", 1)], source
        assert int(model.optimizer.iterations.numpy()) == 2, source
        for got, want in zip(model.get_weights(), reference.get_weights()):
            np.testing.assert_array_equal(got, want)
    model = linear_model(target=target, steps_per_execution=2)
    stop = Stop("test")
    loss = model.evaluate(x, y, batch_size=4, verbose=0, callbacks=[stop])
    assert stop.calls == [("begin", 0), ("end", 1)]
    assert loss == pytest.approx(float(((model.predict(x[:8], verbose=0) - y[:8]) ** 2).mean()),
                                 rel=1e-6)
    stop = Stop("predict")
    assert model.predict(x, batch_size=4, verbose=0, callbacks=[stop]).shape == (8, 3)
    assert stop.calls == [("begin", 0), ("end", 1)]


def test_metrics_read_in_a_batch_end_hook_are_the_running_values():
    """Keras 3: in on_train_batch_end and on_test_batch_end, model.get_metrics_result() and the
    objects in model.metrics give the running values, the hook's logs; kcompile gave the last
    epoch's ({} in the first)."""
    x, y = data(24)
    seen = []

    class Read(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((dict(logs), self.model.get_metrics_result(),
                         {m.name: float(m.result()) for m in self.model.metrics}))

        on_test_batch_end = on_train_batch_end

    model = linear_model(metrics_=["mae"])
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_data=(x, y),
              callbacks=[Read()])
    model.evaluate(x, y, batch_size=5, verbose=0, callbacks=[Read()])
    assert len(seen) == 2 * (3 + 3) + 5
    for logs, result, objects in seen:
        assert result == logs == objects, (logs, result, objects)


def test_steps_per_execution_is_saved_with_the_compile_arguments(tmp_path):
    model = linear_model(steps_per_execution=4)
    model.save(tmp_path / "m.keras")
    assert load_model(tmp_path / "m.keras").steps_per_execution == 4


# ----------------------------------------------------------------------------------------------
# Single batches
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_on_batch_methods_follow_keras_return_conventions(target):
    x, y = data(6)
    model = linear_model(target)
    loss = model.train_on_batch(x, y)
    assert isinstance(loss, float)
    before = model.get_weights()
    assert isinstance(model.test_on_batch(x, y), float)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # test_on_batch does not train
    prediction = model.predict_on_batch(x)
    assert isinstance(prediction, np.ndarray) and prediction.shape == (6, 3)
    np.testing.assert_allclose(prediction, model.predict(x, verbose=0), rtol=1e-6)

    model = linear_model(target, metrics_=["mae", metrics.RootMeanSquaredError()])
    values = model.train_on_batch(x, y)
    assert isinstance(values, list) and len(values) == 3
    logs = model.test_on_batch(x[:3], y[:3], return_dict=True)
    assert set(logs) == {"loss", "mae", "root_mean_squared_error"}
    # Metrics of this batch alone (Keras resets them on every call).
    p = model.predict(x[:3], verbose=0)
    assert logs["mae"] == pytest.approx(np.abs(p - y[:3]).mean(), rel=1e-5)
    assert logs["root_mean_squared_error"] == pytest.approx(np.sqrt(((p - y[:3]) ** 2).mean()),
                                                            rel=1e-5)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert sorted(logs) == ["loss", "mae", "root_mean_squared_error"]


# ----------------------------------------------------------------------------------------------
# Callbacks, end to end
# ----------------------------------------------------------------------------------------------

class Recorder(callbacks.Callback):
    """Keras hook names, recorded with the weights at each epoch's start and end."""

    def __init__(self):
        super().__init__()
        self.events = []
        self.weights_at_begin, self.weights_at_end = [], []
        self.learning_rates = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")
        self.weights_at_begin.append([w.astype(np.float64) for w in self.model.get_weights()])
        self.learning_rates.append(float(self.model.optimizer.learning_rate))

    def on_train_batch_begin(self, batch, logs=None):
        self.events.append(f"batch_begin {batch}")

    def on_train_batch_end(self, batch, logs=None):
        assert "loss" in logs
        self.events.append(f"batch_end {batch}")

    def on_test_begin(self, logs=None):
        self.events.append("test_begin")

    def on_test_end(self, logs=None):
        self.events.append("test_end")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch}")
        self.weights_at_end.append([w.astype(np.float64) for w in self.model.get_weights()])

    def on_train_end(self, logs=None):
        self.events.append("train_end")


def diverging_validation(model, x, seed=5):
    """Training targets p0 + d and validation targets p0 - d around the model's first predictions:
    small SGD steps move the predictions towards p0 + d, so val_loss rises every epoch."""
    p0 = model.predict(x, verbose=0).astype(np.float64)
    d = np.random.default_rng(seed).standard_normal(p0.shape)
    return p0 + d, p0 - d


def mse_gradient(weights, x, y):
    kernel, bias = weights
    d = 2 * (x @ kernel + bias - y) / y.size
    return [x.T @ d, d.sum(0)]


@pytest.mark.parametrize("target", TARGETS)
def test_learning_rate_callbacks_change_the_compiled_step_without_recompiling(target):
    x = data(8)[0].astype(np.float64)
    model = linear_model(target, learning_rate=0.1)
    y, y_validation = diverging_validation(model, x)
    recorder = Recorder()
    plateau = callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=0.0)
    scheduler = callbacks.LearningRateScheduler(lambda epoch, lr: 0.0 if epoch == 3 else lr)
    programs = {}

    def snapshot(epoch, logs):
        programs[epoch] = dict(model._programs)

    history = model.fit(x, y, batch_size=8, epochs=5, verbose=0, validation_data=(x, y_validation),
                        callbacks=[scheduler, recorder, plateau,
                                   callbacks.LambdaCallback(on_epoch_end=snapshot)]).history
    assert np.all(np.diff(history["val_loss"][:3]) > 0)
    # Epoch 1 does not improve on epoch 0: halved for epoch 2, and again for epoch 3, where the
    # scheduler (first in the list) sets 0; the plateau cannot reduce 0 further.
    rates = recorder.learning_rates
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.0, 0.0])
    assert history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05, 0.0, 0.0])
    for epoch in range(5):
        # One batch per epoch: the step is exactly w - lr * g(w) with the rate set by the callbacks.
        expected = [w - rates[epoch] * g for w, g in zip(
            recorder.weights_at_begin[epoch], mse_gradient(recorder.weights_at_begin[epoch], x, y))]
        for got, want in zip(recorder.weights_at_end[epoch], expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert all(programs[epoch] == programs[0] for epoch in programs)  # never retraced


def test_early_stopping_restores_the_best_weights():
    x = data(8)[0]
    model = linear_model(learning_rate=0.05)
    y, y_validation = diverging_validation(model, x)
    recorder = Recorder()
    stopper = callbacks.EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    history = model.fit(x, y, batch_size=8, epochs=10, verbose=0, validation_data=(x, y_validation),
                        callbacks=[recorder, stopper]).history
    # val_loss rises from the first epoch on: the best is epoch 0, and patience 2 stops after epoch 2.
    assert len(history["val_loss"]) == 3 and stopper.stopped_epoch == 2
    assert np.argmin(history["val_loss"]) == 0
    for got, want in zip(model.get_weights(), recorder.weights_at_end[0]):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_callback_hooks_run_in_keras_order_with_a_generator_and_csv_logger(tmp_path):
    x, y = data(12)
    model = linear_model(metrics_=["mae"])
    recorder = Recorder()
    log_file = tmp_path / "log.csv"
    history = model.fit(batches(x, y, 4), epochs=1, verbose=0, validation_data=(x, y),
                        callbacks=[recorder, callbacks.CSVLogger(str(log_file))]).history
    assert recorder.events == ["train_begin", "epoch_begin 0", "batch_begin 0", "batch_end 0",
                               "batch_begin 1", "batch_end 1", "batch_begin 2", "batch_end 2",
                               "test_begin", "test_end", "epoch_end 0", "train_end"]
    assert recorder.model is model and recorder.params["epochs"] == 1
    with open(log_file, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    for key in ("loss", "mae", "val_loss", "val_mae"):
        assert float(rows[0][key]) == pytest.approx(history[key][0], rel=1e-6)


def test_a_callback_can_stop_training_mid_epoch_and_progress_bars_handle_unknown_steps(capsys):
    x, y = data(20)

    class StopAfterTwoBatches(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                self.model.stop_training = True

    model = linear_model()
    model.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=[StopAfterTwoBatches()])
    assert int(model.optimizer.iterations.buffer) == 2

    def generator():
        yield from batches(x, y, 4)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        linear_model().fit(generator(), epochs=1, verbose=1)
    assert "loss" in capsys.readouterr().out


def test_the_epoch_line_shows_what_callbacks_add_and_logs_are_in_keras_order(capsys):
    """As Keras: the progress bar runs after the user's callbacks and History, so the epoch's
    line shows a key a callback added (and History records it); the epoch logs hold every key in
    sorted order, validation's among them (weighted_accuracy after val_*)."""
    rng = np.random.default_rng(0)
    x = rng.random((40, 3), dtype=np.float32)
    y = (x.sum(axis=1, keepdims=True) > 1.5).astype(np.float32)
    model = Sequential([Input((3,)), Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy", metrics=["accuracy"],
                  weighted_metrics=["accuracy"], target=TARGETS[-1])
    seen = []

    def add_extra(epoch, logs):
        seen.append(list(logs))
        logs["extra"] = 1.5

    history = model.fit(x, y, epochs=1, batch_size=8, validation_split=0.25, verbose=2,
                        callbacks=[callbacks.LambdaCallback(on_epoch_end=add_extra)])
    keys = ["accuracy", "loss", "val_accuracy", "val_loss", "val_weighted_accuracy",
            "weighted_accuracy"]
    assert seen == [keys]
    assert list(history.history) == keys + ["extra"] and history.history["extra"] == [1.5]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("4/4 - ") and line.endswith(" - extra: 1.5000"), line


def test_fit_and_evaluate_take_the_dataset_as_one_tuple_of_arrays():
    """The seed document's `model.fit(train_data)` / `model.evaluate(test_data)` with the data an
    (x, y) or (x, y, sample_weight) tuple: the same as passing them apart (shuffle off: the same
    weights, bit for bit); a tuple of same-shaped arrays stays x (and its missing y is named)."""
    rng = np.random.default_rng(3)
    x = rng.random((24, 4), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    weights = rng.random(24).astype(np.float32)
    results = []
    for args, kwargs in [(((x, y),), {}), ((x, y), {}), (((x, y, weights),), {}),
                         ((x, y), {"sample_weight": weights})]:
        model = Sequential([Input((4,)), Dense(3, activation="softmax")])
        model.compile(optimizers.SGD(0.1), "categorical_crossentropy", target=TARGETS[-1])
        model.set_weights([np.full((4, 3), 0.1, np.float32), np.zeros(3, np.float32)])
        model.fit(*args, **kwargs, batch_size=8, shuffle=False, verbose=0)
        results.append((model.get_weights()[0], model.evaluate(*args, **kwargs, verbose=0)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[2][0], results[3][0])
    assert not np.array_equal(results[0][0], results[2][0])        # the weights were used
    assert results[0][1] == results[1][1] and results[2][1] == results[3][1]
    with pytest.raises(ValueError, match="`y` is None"):
        model.fit((x, x), verbose=0)


@pytest.mark.parametrize("target", TARGETS)
def test_an_input_missing_or_adding_a_last_axis_of_one_is_adjusted_as_keras_3_does(target):
    """Keras 3 adds a last axis of 1 that x lacks (x of shape (n,) for Input((1,)), (n, 4, 4) for
    Input((4, 4, 1))) and drops one x has in excess: fit, evaluate, predict, the batch methods
    and model(x) give exactly what the explicitly reshaped input gives."""
    from kcompile.layers import Flatten
    from kcompile.utils import set_random_seed
    rng = np.random.default_rng(0)
    cases = [((1,), rng.standard_normal(20).astype(np.float32), lambda x: x[:, None]),
             ((4, 4, 1), rng.standard_normal((20, 4, 4)).astype(np.float32), lambda x: x[..., None]),
             ((3,), rng.standard_normal((20, 3, 1)).astype(np.float32), lambda x: x[..., 0])]
    y = rng.standard_normal((20, 1)).astype(np.float32)
    for shape, x, reshape in cases:
        results = []
        for given in (x, reshape(x)):
            set_random_seed(1)
            model = Sequential([Input(shape), Flatten(), Dense(1)])
            model.compile(optimizer="sgd", loss="mse", target=target)
            history = model.fit(given, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
            results.append([history.history["loss"], model.evaluate(given, y, verbose=0),
                            model.predict(given, verbose=0), model.train_on_batch(given, y),
                            model.test_on_batch(given, y), model.predict_on_batch(given),
                            np.asarray(model(given))])
        for got, want in zip(*results):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(shape))
    # any other shape is still refused, naming the model's
    model = Sequential([Input((4, 4, 1)), Flatten(), Dense(1)])
    model.compile(optimizer="sgd", loss="mse", target=target)
    with pytest.raises(ValueError, match=r"expects samples of shape \(4, 4, 1\)"):
        model.predict(np.zeros((2, 4, 5), np.float32), verbose=0)
