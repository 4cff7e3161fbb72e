"""Tests for kcompile.callbacks, driven by a small fake model."""

import csv
import io
import math
import os
import re
import types

import numpy as np
import pytest

from kcompile import callbacks as callbacks_module
from kcompile.callbacks import (
    Callback,
    CallbackList,
    CSVLogger,
    EarlyStopping,
    History,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgbarLogger,
    ReduceLROnPlateau,
    TerminateOnNaN,
)


class FakeModel:
    """The parts of a model that callbacks use. Its single weight is the number of epochs trained."""

    def __init__(self, learning_rate=0.1, fail_saving=False):
        self.weights = [np.zeros(2, np.float32)]
        self.stop_training = False
        self.optimizer = types.SimpleNamespace(learning_rate=learning_rate)
        self.fail_saving = fail_saving
        self.saved = []

    def get_weights(self):
        return self.weights  # views on purpose: callbacks must copy

    def set_weights(self, weights):
        for target, source in zip(self.weights, weights):
            target[...] = source

    def _write(self, path, kind):
        with open(path, "w") as file:
            file.write(f"{kind} {self.weights[0][0]:.0f}")
            if self.fail_saving:
                raise OSError("disk full")
        self.saved.append(path)

    def save(self, path):
        self._write(path, "model")

    def save_weights(self, path):
        self._write(path, "weights")


def fit(model, callbacks, epoch_logs, steps=3, verbose=0):
    """Runs a fake training loop; ``epoch_logs[i]`` are epoch i's logs. Returns the epochs run."""
    callback_list = CallbackList(
        callbacks, model=model, add_history=True, epochs=len(epoch_logs), steps=steps, verbose=verbose
    )
    callback_list.on_train_begin()
    epochs_run = 0
    for epoch, logs in enumerate(epoch_logs):
        callback_list.on_epoch_begin(epoch)
        for batch in range(steps):
            callback_list.on_train_batch_begin(batch)
            callback_list.on_train_batch_end(batch, {"loss": logs.get("loss", 1.0)})
        model.weights[0][...] = epoch + 1
        callback_list.on_epoch_end(epoch, dict(logs))
        epochs_run += 1
        if model.stop_training:
            break
    callback_list.on_train_end()
    return epochs_run


def losses(*values):
    return [{"loss": value, "val_loss": value} for value in values]


# --- Callback and CallbackList ---


def test_base_callback_hooks_are_no_ops():
    callback = Callback()
    assert callback.model is None and callback.params == {}
    for name in callbacks_module.HOOK_NAMES:
        hook = getattr(callback, name)
        if "batch" in name or "epoch" in name:
            hook(0, {})
        else:
            hook({})


def test_callback_list_dispatches_every_hook_in_order():
    calls = []

    class Recorder(Callback):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def __getattribute__(self, attribute):
            if attribute.startswith("on_"):
                return lambda *args, **kwargs: calls.append(
                    (object.__getattribute__(self, "name"), attribute, args + tuple(kwargs.values())))
            return object.__getattribute__(self, attribute)

    model = FakeModel()
    first, second = Recorder("first"), Recorder("second")
    callback_list = CallbackList([first, second], model=model, epochs=2, verbose=0)
    assert first.model is model and second.params == {"epochs": 2, "verbose": 0}
    for name in callbacks_module.HOOK_NAMES:
        calls.clear()
        args = (3,) if ("batch" in name or "epoch" in name) else ()
        getattr(callback_list, name)(*args)
        assert calls == [("first", name, args + ({},)), ("second", name, args + ({},))]


def test_callback_list_shares_logs_between_callbacks():
    seen = []
    callback_list = CallbackList(
        [LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(extra=1)),
         LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(dict(logs)))]
    )
    callback_list.on_epoch_end(0, {"loss": 2.0})
    assert seen == [{"loss": 2.0, "extra": 1}]


def test_callback_list_adds_history_and_progbar_once():
    # Keras's order: the user's, History, then ProgbarLogger (whose epoch line shows what the
    # others added to the logs)
    callback_list = CallbackList([], add_history=True, add_progbar=True)
    assert [type(c) for c in callback_list.callbacks] == [History, ProgbarLogger]
    history = History()
    callback_list = CallbackList([history], add_history=True)
    assert callback_list.callbacks == [history]


def test_callback_list_rejects_non_callbacks():
    with pytest.raises(TypeError, match="LambdaCallback"):
        CallbackList([lambda: None])


def test_train_batch_hooks_call_legacy_batch_hooks():
    batches = []
    callback = LambdaCallback(on_batch_end=lambda batch, logs: batches.append(batch))
    callback.on_train_batch_end(4, {})
    assert batches == [4]


# --- History ---


def test_history_records_epochs_and_sets_model_history():
    model = FakeModel()
    history = History()
    fit(model, [history], losses(3.0, 2.0))
    assert history.epoch == [0, 1]
    assert history.history == {"loss": [3.0, 2.0], "val_loss": [3.0, 2.0]}
    assert model.history is history


# --- ProgbarLogger ---


def test_progbar_logger_non_terminal_output():
    stream = io.StringIO()
    model = FakeModel()
    fit(model, [ProgbarLogger(stream=stream)], [{"loss": 0.5012, "accuracy": 0.8213}] * 2, steps=1688, verbose=1)
    output = stream.getvalue()
    assert "\r" not in output
    lines = output.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    # The logs are running means, shown as logged rather than averaged again.
    assert re.fullmatch(r"1688/1688 \[={30}\] - \d+s \d+(s|ms|us)/step - loss: 0\.5012 - accuracy: 0\.8213", lines[1])


def test_progbar_logger_verbose_2_and_unknown_steps():
    stream = io.StringIO()
    fit(FakeModel(), [ProgbarLogger(stream=stream)], losses(0.25), steps=5, verbose=2)
    assert re.fullmatch(r"5/5 - \d+s - \d+(s|ms|us)/step - loss: 0\.2500 - val_loss: 0\.2500\n", stream.getvalue())

    stream = io.StringIO()
    callback_list = CallbackList([ProgbarLogger(stream=stream)], epochs=1, steps=None, verbose=1)
    callback_list.on_train_begin()
    callback_list.on_epoch_begin(0)
    for batch in range(7):
        callback_list.on_train_batch_end(batch, {"loss": 1.0})
    callback_list.on_epoch_end(0, {"loss": 1.0})
    assert stream.getvalue().startswith("7/7 [")


def test_progbar_logger_evaluate_and_predict():
    stream = io.StringIO()
    callback_list = CallbackList([ProgbarLogger(stream=stream)], steps=2, verbose=1)
    callback_list.on_test_begin()
    callback_list.on_test_batch_end(0, {"loss": 1.0})
    callback_list.on_test_batch_end(1, {"loss": 1.0})
    callback_list.on_test_end({"loss": 1.0})
    callback_list.on_predict_begin()
    callback_list.on_predict_batch_end(0, {"outputs": np.zeros(3)})
    callback_list.on_predict_batch_end(1, {"outputs": np.zeros(3)})
    callback_list.on_predict_end()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("loss: 1.0000") and "outputs" not in lines[1]


def test_progbar_logger_verbose_0_prints_nothing(capsys):
    fit(FakeModel(), [ProgbarLogger()], losses(1.0, 0.5), verbose=0)
    assert capsys.readouterr().out == ""


# --- EarlyStopping ---


def test_early_stopping_stops_after_patience():
    model = FakeModel()
    stopper = EarlyStopping(patience=2)
    assert fit(model, [stopper], losses(1.0, 0.5, 0.6, 0.7, 0.4, 0.3)) == 4
    assert model.stop_training and stopper.stopped_epoch == 3 and stopper.best == 0.5


def test_early_stopping_default_patience_keeps_training_while_improving():
    model = FakeModel()
    assert fit(model, [EarlyStopping()], losses(1.0, 0.5, 0.4, 0.6, 0.3)) == 4
    assert model.stop_training


def test_early_stopping_restores_best_weights_when_epochs_run_out():
    model = FakeModel()
    fit(model, [EarlyStopping(patience=5, restore_best_weights=True)], losses(1.0, 0.5, 0.9))
    np.testing.assert_array_equal(model.weights[0], [2, 2])


def test_early_stopping_min_delta_and_max_mode():
    model = FakeModel()
    stopper = EarlyStopping(monitor="val_accuracy", min_delta=0.05, patience=1)
    logs = [{"val_accuracy": value} for value in (0.5, 0.52, 0.9)]
    assert fit(model, [stopper], logs) == 2


def test_early_stopping_restores_best_weights(capsys):
    model = FakeModel()
    stopper = EarlyStopping(patience=2, restore_best_weights=True, verbose=1)
    fit(model, [stopper], losses(1.0, 0.5, 0.6, 0.7, 0.8))
    np.testing.assert_array_equal(model.weights[0], [2, 2])  # weights after epoch index 1
    output = capsys.readouterr().out
    assert "Epoch 4: early stopping" in output and "best epoch: 2." in output


def test_early_stopping_baseline():
    """Expected epoch counts are those of Keras 3.15's EarlyStopping driven with the same losses."""
    model = FakeModel()
    # Keras 3: an epoch that improves never stops training, even without beating the baseline ...
    assert fit(model, [EarlyStopping(patience=2, baseline=0.1)], losses(1.0, 0.5, 0.4, 0.3)) == 4
    # ... but it does not restart the wait: the first epoch that does not improve stops it.
    model = FakeModel()
    assert fit(model, [EarlyStopping(patience=2, baseline=0.1)], losses(1.0, 0.5, 0.6, 0.3)) == 3
    model = FakeModel()
    assert fit(model, [EarlyStopping(patience=2, baseline=0.45)], losses(1.0, 0.5, 0.6, 0.3)) == 3
    model = FakeModel()
    assert fit(model, [EarlyStopping(patience=2, baseline=0.45)], losses(1.0, 0.4, 0.3, 0.2)) == 4


def test_early_stopping_start_from_epoch():
    model = FakeModel()
    assert fit(model, [EarlyStopping(patience=0, start_from_epoch=2)], losses(1, 2, 3, 4, 5)) == 4


def test_early_stopping_missing_metric_warns_with_available_keys():
    model = FakeModel()
    with pytest.warns(UserWarning, match="`val_accuracy` which is not available.*loss, val_loss"):
        fit(model, [EarlyStopping(monitor="val_accuracy")], losses(1.0))
    assert not model.stop_training


def test_early_stopping_unknown_mode_warns():
    with pytest.warns(UserWarning, match="falling back to 'auto'"):
        assert EarlyStopping(mode="biggest").mode == "auto"


# --- ModelCheckpoint ---


def test_checkpoint_formats_filepath_every_epoch(tmp_path):
    model = FakeModel()
    pattern = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.2f}.keras")
    fit(model, [ModelCheckpoint(pattern)], losses(0.5, 0.25))
    assert sorted(os.listdir(tmp_path)) == ["ckpt-01-0.50.keras", "ckpt-02-0.25.keras"]
    assert (tmp_path / "ckpt-02-0.25.keras").read_text() == "model 2"


def test_checkpoint_save_best_only_weights(tmp_path, capsys):
    model = FakeModel()
    path = tmp_path / "best.weights.npz"
    fit(model, [ModelCheckpoint(path, save_best_only=True, save_weights_only=True, verbose=1)], losses(1.0, 0.5, 0.7))
    assert path.read_text() == "weights 2"
    assert os.listdir(tmp_path) == ["best.weights.npz"]
    output = capsys.readouterr().out
    # Keras 3's messages: no best before the first value, each on a line of its own
    assert "\nEpoch 1: val_loss improved from None to 1.00000" in output
    assert "\nEpoch 1: finished saving model to " in output
    assert "\nEpoch 3: val_loss did not improve from 0.50000" in output


def test_checkpoint_takes_kerass_weights_h5_name_and_saves_kcompiles_weights_there(tmp_path):
    from kcompile.layers import Dense, Input
    from kcompile.models import Sequential
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 1)).astype(np.float32)
    model = Sequential([Input(shape=(3,)), Dense(1)])
    model.compile(optimizer="sgd", loss="mse", target="reference")
    path = tmp_path / "best.weights.h5"
    model.fit(x, y, epochs=2, verbose=0, validation_data=(x, y),
              callbacks=[ModelCheckpoint(path, save_weights_only=True)])
    assert os.listdir(tmp_path) == ["best.weights.h5"]
    copy = Sequential([Input(shape=(3,)), Dense(1)])
    copy.load_weights(path)
    for a, b in zip(model.get_weights(), copy.get_weights()):   # (the last epoch's)
        np.testing.assert_array_equal(a, b)


def test_checkpoint_temporary_file_keeps_suffix(tmp_path):
    model = FakeModel()
    fit(model, [ModelCheckpoint(tmp_path / "model.weights.npz", save_weights_only=True)], losses(1.0))
    assert model.saved[0].endswith("model.weights.npz") and os.path.dirname(model.saved[0]) == str(tmp_path)
    assert model.saved[0] != str(tmp_path / "model.weights.npz")


def test_checkpoint_failed_save_keeps_previous_file(tmp_path):
    model = FakeModel()
    path = tmp_path / "model.keras"
    checkpoint = ModelCheckpoint(path)
    fit(model, [checkpoint], losses(1.0))
    model.fail_saving = True
    with pytest.raises(OSError, match="disk full"):
        fit(model, [checkpoint], losses(1.0))
    assert path.read_text() == "model 1"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_checkpoint_follows_appended_extension(tmp_path):
    model = FakeModel()
    model.save = lambda path: open(path + ".npz", "w").close()
    fit(model, [ModelCheckpoint(tmp_path / "ckpt.keras")], losses(1.0))
    assert os.listdir(tmp_path) == ["ckpt.keras.npz"]


def test_checkpoint_integer_save_freq(tmp_path):
    model = FakeModel()
    pattern = str(tmp_path / "ckpt-{epoch}-{batch}.keras")
    fit(model, [ModelCheckpoint(pattern, save_freq=2)], losses(1.0, 1.0), steps=3)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-1-2.keras", "ckpt-2-1.keras", "ckpt-2-3.keras"]


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="save_freq"):
        ModelCheckpoint(tmp_path / "x", save_freq="batch")
    with pytest.raises(KeyError, match="val_accuracy"):
        fit(FakeModel(), [ModelCheckpoint(str(tmp_path / "{val_accuracy}.keras"))], losses(1.0))
    (tmp_path / "d.keras").mkdir()
    with pytest.raises(IsADirectoryError, match="existing directory"):
        fit(FakeModel(), [ModelCheckpoint(tmp_path / "d.keras")], losses(1.0))
    # as Keras 3: a monitor that is not logged saves every time (with a warning), not never
    with pytest.warns(UserWarning, match="val_accuracy"):
        fit(FakeModel(), [ModelCheckpoint(tmp_path / "m.keras", monitor="val_accuracy", save_best_only=True)], losses(1.0))
    assert (tmp_path / "m.keras").read_text() == "model 1"


# --- learning rate callbacks ---


def test_learning_rate_scheduler():
    model = FakeModel(learning_rate=1.0)
    history = History()
    seen = []
    scheduler = LearningRateScheduler(lambda epoch, lr: seen.append(lr) or lr * 0.5)
    fit(model, [scheduler, history], losses(1, 1, 1))
    assert seen == [1.0, 0.5, 0.25] and model.optimizer.learning_rate == 0.125
    assert history.history["learning_rate"] == [0.5, 0.25, 0.125]


def test_learning_rate_scheduler_one_argument_schedule_and_errors(capsys):
    model = FakeModel()
    fit(model, [LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1), verbose=1)], losses(1, 1))
    assert model.optimizer.learning_rate == pytest.approx(0.02)
    assert "Epoch 2: LearningRateScheduler setting learning rate to 0.02." in capsys.readouterr().out
    with pytest.raises(ValueError, match="must return a float"):
        fit(FakeModel(), [LearningRateScheduler(lambda epoch, lr: "fast")], losses(1))
    model = FakeModel()
    del model.optimizer
    with pytest.raises(ValueError, match="learning_rate"):
        fit(model, [LearningRateScheduler(lambda epoch, lr: lr)], losses(1))


def test_reduce_lr_on_plateau_with_cooldown_and_min_lr():
    model = FakeModel(learning_rate=1.0)
    history = History()
    reducer = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=1, min_lr=0.3)
    fit(model, [reducer, history], losses(1.0, 1.0, 1.0, 1.0, 1.0, 1.0))
    # Logged: the rate each epoch trained with. Reduced after epochs 1 and 2 (Keras counts the cooldown down
    # before checking it, so cooldown=1 only resets the wait), then held at the min_lr floor.
    assert history.history["learning_rate"] == [1.0, 1.0, 0.5, 0.3, 0.3, 0.3]
    assert model.optimizer.learning_rate == 0.3


def test_reduce_lr_on_plateau_improvement_resets_wait_and_rejects_factor():
    model = FakeModel(learning_rate=1.0)
    fit(model, [ReduceLROnPlateau(patience=2)], losses(1.0, 0.9, 0.8, 0.7))
    assert model.optimizer.learning_rate == 1.0
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=1.5)
    with pytest.warns(UserWarning, match="Available metrics are: loss, val_loss"):
        fit(FakeModel(), [ReduceLROnPlateau(monitor="val_auc")], losses(1.0))


# --- CSVLogger ---


def test_csv_logger_writes_and_appends(tmp_path):
    path = tmp_path / "log.csv"
    fit(FakeModel(), [CSVLogger(path)], losses(1.0, 0.5))
    fit(FakeModel(), [CSVLogger(path, append=True)], losses(0.25))
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    assert rows == [["epoch", "loss", "val_loss"], ["0", "1.0", "1.0"], ["1", "0.5", "0.5"], ["0", "0.25", "0.25"]]
    fit(FakeModel(), [CSVLogger(path, separator=";")], [{"loss": 1.0, "per_class": [1, 2]}])
    # (as Keras: a run whose first epoch has no validation reserves its columns)
    assert path.read_text().splitlines() == ["epoch;loss;per_class;val_loss;val_per_class",
                                             "0;1.0;[1, 2];NA;NA"]


# --- TerminateOnNaN and LambdaCallback ---


def test_terminate_on_nan(capsys):
    model = FakeModel()
    fit(model, [TerminateOnNaN()], [{"loss": 1.0}, {"loss": math.nan}, {"loss": 1.0}])
    assert model.stop_training
    assert "Batch 0: Invalid loss, terminating training" in capsys.readouterr().out


def test_lambda_callback():
    events = []
    callback = LambdaCallback(
        on_train_begin=lambda logs: events.append("begin"),
        on_epoch_end=lambda epoch, logs: events.append((epoch, logs["loss"])),
        on_train_end=lambda logs: events.append("end"),
    )
    fit(FakeModel(), [callback], losses(3.0, 2.0))
    assert events == ["begin", (0, 3.0), (1, 2.0), "end"]
    with pytest.raises(TypeError, match="unknown hook names on_epoch_finish"):
        LambdaCallback(on_epoch_finish=print)


def test_batch_hooks_get_logs_by_keyword_and_the_others_positionally_as_in_keras_3():
    calls = []

    class Spy(Callback):
        def on_train_batch_end(self, batch, **kwargs):           # Keras 3 passes logs=logs
            calls.append(("batch", batch, kwargs["logs"]["loss"]))

        def on_batch_begin(self, batch, **kwargs):               # via Callback.on_train_batch_begin
            calls.append(("old name", batch, kwargs["logs"]))

        def on_epoch_end(self, epoch, *args):                    # ... and logs positionally here
            calls.append(("epoch", epoch, args[0]["loss"]))

    lambdas = []
    named_freely = LambdaCallback(on_train_batch_end=lambda b, l: lambdas.append((b, l["loss"])))
    fit(FakeModel(), [Spy(), named_freely], losses(3.0), steps=2)
    assert calls == [("old name", 0, {}), ("batch", 0, 3.0), ("old name", 1, {}), ("batch", 1, 3.0),
                     ("epoch", 0, 3.0)]
    assert lambdas == [(0, 3.0), (1, 3.0)]


# --- which way a monitored metric improves (mode='auto'), from the model's metric objects ---


def _compiled_model(metrics):
    import kcompile
    model = kcompile.Sequential([kcompile.Input((3,)), kcompile.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy", metrics=metrics)
    return model


def _waits(callback, model, values):
    """callback.wait after epochs logging `values` of its monitor (EarlyStopping)."""
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {callback.monitor: value})
    return callback.wait


def test_auto_mode_asks_the_metric_object_which_way_is_better():
    import kcompile
    model = _compiled_model([kcompile.metrics.Precision(thresholds=0.3), kcompile.metrics.AUC(name="roc"),
                             kcompile.metrics.CosineSimilarity(), "mae", "accuracy"])
    # rising values improve these (Keras: Precision, AUC and CosineSimilarity have direction 'up')
    for monitor in ("val_precision", "val_roc", "cosine_similarity", "val_accuracy"):
        assert _waits(EarlyStopping(monitor=monitor), model, [0.5, 0.7]) == 0, monitor
        assert _waits(EarlyStopping(monitor=monitor), model, [0.7, 0.5]) == 1, monitor
    assert _waits(EarlyStopping(monitor="val_mae"), model, [0.7, 0.5]) == 0
    assert _waits(EarlyStopping(monitor="loss"), model, [0.7, 0.5]) == 0
    # the other two callbacks that compare
    assert _waits(ReduceLROnPlateau(monitor="val_roc", patience=5), model, [0.5, 0.7]) == 0
    assert _waits(ReduceLROnPlateau(monitor="val_roc", patience=5), model, [0.7, 0.5]) == 1
    checkpoint = ModelCheckpoint("best.keras", monitor="val_roc", save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    assert checkpoint.best is None and checkpoint._maximize    # (None until a first value, as Keras)
    # mode given: as given (also for a name none of the metrics has)
    assert _waits(EarlyStopping(monitor="val_roc", mode="min"), model, [0.5, 0.7]) == 1
    assert _waits(EarlyStopping(monitor="val_auc", mode="max"), model, [0.5, 0.7]) == 0


def test_auto_mode_refuses_a_name_that_is_none_of_the_models_metrics_before_training():
    """As Keras 3 (which refuses it after the first epoch): monitor='val_acc' on a model compiled
    with metrics=['accuracy'] cannot be told apart from a value to minimize; fit refuses it before
    any step, naming what the model logs, and the weights stay as they were."""
    import kcompile
    model = _compiled_model(["accuracy"])
    for callback in (EarlyStopping(monitor="val_acc"), ReduceLROnPlateau(monitor="val_acc"),
                     ModelCheckpoint("m.keras", monitor="val_acc", save_best_only=True),
                     ModelCheckpoint("m.keras", monitor="val_acc")):
        callback.set_model(model)
        with pytest.raises(ValueError, match=r"no metric 'acc'.*loss, accuracy.*val_accuracy"):
            callback.on_train_begin()
    net = kcompile.Sequential([kcompile.Input((3,)), kcompile.layers.Dense(2, activation="softmax")])
    net.compile("sgd", "categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 3)).astype(np.float32), np.eye(2, dtype=np.float32)[np.arange(8) % 2]
    before = net.get_weights()
    with pytest.raises(ValueError, match="mode='max' or mode='min'"):
        net.fit(x, y, epochs=2, validation_split=0.25, verbose=0,
                callbacks=[EarlyStopping(monitor="val_acc")])
    for old, new in zip(before, net.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_auto_mode_refuses_a_metric_function_of_unknown_direction():
    def mean_prediction(y_true, y_pred):
        return y_pred
    model = _compiled_model([mean_prediction])
    for callback in (EarlyStopping(monitor="val_mean_prediction"),
                     ReduceLROnPlateau(monitor="mean_prediction"),
                     ModelCheckpoint("m.keras", monitor="mean_prediction", save_best_only=True)):
        callback.set_model(model)
        with pytest.raises(ValueError, match="mode='max'"):
            callback.on_train_begin()
    assert _waits(EarlyStopping(monitor="mean_prediction", mode="max"), model, [0.5, 0.7]) == 0


@pytest.mark.parametrize("path,weights_only,match", [
    ("ckpt/noext", False, "`.keras`"), ("model.h5", False, "HDF5"),
    ("w.h5", True, "HDF5"), ("model.keras", True, "weights.npz"),
    ("w.weights.npz", False, "weights file name")])
def test_checkpoint_refuses_a_path_its_save_would_refuse_before_training(path, weights_only, match):
    with pytest.raises(ValueError, match=match) as caught:
        ModelCheckpoint(path, save_weights_only=weights_only)
    assert path in str(caught.value) and ".tmp-" not in str(caught.value)


# --- as Keras 3 (found by a callback parity campaign) ---


def _rates(callback, values):
    """The learning rate after each epoch logging `values` of its monitor (ReduceLROnPlateau)."""
    model = FakeModel(learning_rate=0.01)
    fit(model, [callback], [{callback.monitor: value} for value in values])
    return model.optimizer.learning_rate


def test_reduce_lr_takes_the_size_of_min_delta_and_any_first_value_as_the_best():
    # a worsening val_loss with patience 1: halved after epochs 2, 3, 4 and 5 (Keras: abs(min_delta))
    rlr = ReduceLROnPlateau(patience=1, min_delta=-0.05, factor=0.5)
    assert _rates(rlr, [1.0, 1.02, 1.04, 1.06, 1.08]) == pytest.approx(0.000625)
    # an infinite first value is the best so far, not a reason to reduce
    assert _rates(ReduceLROnPlateau(patience=1, factor=0.5), [math.inf, 5.0, 4.0, 3.0]) == 0.01


def test_csv_logger_reserves_validation_columns(tmp_path):
    path = tmp_path / "log.csv"
    logger = CSVLogger(path)
    fit(FakeModel(), [logger], [{"loss": 1.0}, {"loss": 0.5, "val_loss": 0.7}])
    rows = list(csv.reader(open(path)))
    assert rows == [["epoch", "loss", "val_loss"], ["0", "1.0", "NA"], ["1", "0.5", "0.7"]]


def test_terminate_on_nan_can_raise():
    with pytest.raises(RuntimeError, match="NaN or Inf found in the loss"):
        fit(FakeModel(), [TerminateOnNaN(raise_error=True)], [{"loss": math.nan}])
    assert fit(FakeModel(), [TerminateOnNaN()], [{"loss": math.nan}, {"loss": 1.0}]) == 1


def test_real_models_stop_evaluating_and_predicting_and_keep_each_batch_of_outputs():
    import kcompile
    model = _compiled_model([])
    x = np.random.default_rng(0).random((24, 3)).astype(np.float32)
    y = (x.sum(1, keepdims=True) > 1.5).astype(np.float32)
    kept, seen = [], []

    class Keep(Callback):
        def on_predict_batch_end(self, batch, logs=None):
            kept.append(logs["outputs"])

    predicted = model.predict(x, batch_size=8, verbose=0, callbacks=[Keep()])
    np.testing.assert_array_equal(np.concatenate(kept), predicted)   # not the last batch 3 times

    class StopAfterOne(Callback):
        def on_test_batch_end(self, batch, logs=None):
            seen.append(("test", batch))
            self.model.stop_evaluating = True

        def on_predict_batch_end(self, batch, logs=None):
            seen.append(("predict", batch))
            self.model.stop_predicting = True

    model.evaluate(x, y, batch_size=8, verbose=0, callbacks=[StopAfterOne()])
    assert model.predict(x, batch_size=8, verbose=0, callbacks=[StopAfterOne()]).shape == (8, 1)
    assert seen == [("test", 0), ("predict", 0)]
    assert model.predict(x, batch_size=8, verbose=0).shape == (24, 1)   # the flags start False

    class Counting(kcompile.callbacks.ProgbarLogger):
        calls = 0

        def on_train_batch_end(self, batch, logs=None):
            Counting.calls += 1

    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[Counting()])
    assert Counting.calls == 24    # a subclass of the bar with its own hook is not throttled
