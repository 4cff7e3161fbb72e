"""Keras-compatible training callbacks.

A callback is told about training events through hook methods (``on_epoch_end(epoch, logs)`` ...); ``fit``,
``evaluate`` and ``predict`` drive them through one ``CallbackList``. The semantics follow
``keras.callbacks``; where kcompile differs, a ``NOTE:`` says why.

Callbacks talk to the model only through ``get_weights``/``set_weights``, ``save``/``save_weights``,
``stop_training`` and ``optimizer.learning_rate``.
"""

import csv
import functools
import inspect
import math
import numbers
import os
import re
import shutil
import sys
import uuid
import warnings

import numpy as np

from kcompile import schedules
from kcompile.progbar import Progbar

HOOK_NAMES = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_begin",
    "on_predict_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
    # Older names; on_train_batch_begin/end call them, as in Keras.
    "on_batch_begin",
    "on_batch_end",
)

# Metric names (without a `val_` prefix) that improve upward, for mode='auto'.
_MAXIMIZED_SUFFIXES = ("acc", "accuracy", "auc", "precision", "recall", "f1_score", "fbeta_score", "iou")


def _print_message(message):
    print(message, file=sys.stdout, flush=True)


def _validate_mode(mode, callback_name):
    if mode not in ("auto", "min", "max"):
        warnings.warn(
            f"{callback_name} mode {mode!r} is unknown; falling back to 'auto'. Use 'auto', 'min' or 'max'.",
            stacklevel=3,
        )
        return "auto"
    return mode


def _is_maximized(monitor, mode, model=None, callback_name="callback"):
    """Whether larger values of ``monitor`` are better, under ``mode`` 'min', 'max' or 'auto'.

    With 'auto', as in Keras: the loss is minimized, and a compiled metric of the model improves
    the way the metric object says (`Metric._direction`); one that cannot say (a user's function)
    is a ValueError, and so is a name that is none of the compiled model's metrics (a typo such as
    'val_acc' for 'val_accuracy' would otherwise never improve or always would).  Without a
    compiled model (a callback being made) the name's suffix decides: accuracy, auc, precision, ...
    are maximized."""
    if mode != "auto":
        return mode == "max"
    name = monitor.removeprefix("val_")
    if name == "loss":
        return False
    if model is None or not getattr(model, "compiled", False) \
            or not hasattr(model, "_metric_direction"):
        return name.endswith(_MAXIMIZED_SUFFIXES)
    found, direction = model._metric_direction(name)
    if not found:
        logged = list(model.metrics_names)
        raise ValueError(
            f"{callback_name} received monitor={monitor!r}, but the model has no metric {name!r}, "
            f"so mode='auto' cannot tell whether it should be maximized or minimized. The model "
            f"logs {', '.join(logged)} (and val_{', val_'.join(logged)} with validation data). "
            "Monitor one of those, or pass mode='max' or mode='min' to monitor another value.")
    if direction is None:
        raise ValueError(
            f"{callback_name} received monitor={monitor!r}, but cannot tell whether the metric "
            f"{name!r} should be maximized or minimized (it is a function of yours). Pass "
            "mode='max' to keep its highest value, or mode='min' to keep its lowest.")
    return direction == "up"


def _missing_metric_warning(callback_name, monitor, logs):
    available = ", ".join(logs) if logs else "none"
    warnings.warn(
        f"{callback_name} is conditioned on metric `{monitor}` which is not available. Available metrics are: "
        f"{available}. Pass monitor= one of those (validation metrics need validation data).",
        stacklevel=3,
    )


class Callback:
    """Base class for callbacks: every hook is a no-op that subclasses override.

    Attributes:
        model: The model being trained, set by ``set_model``.
        params: Training parameters (``epochs``, ``steps``, ``verbose`` ...), set by ``set_params``.
    """

    def __init__(self):
        self.model = None
        self.params = {}

    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self.model = model

    def on_batch_begin(self, batch, logs=None):
        """Older name of ``on_train_batch_begin``, still called by it."""

    def on_batch_end(self, batch, logs=None):
        """Older name of ``on_train_batch_end``, still called by it."""

    def on_epoch_begin(self, epoch, logs=None):
        """Called at the start of an epoch (``epoch`` counts from 0)."""

    def on_epoch_end(self, epoch, logs=None):
        """Called at the end of an epoch with the epoch's training and validation metrics in ``logs``."""

    def on_train_batch_begin(self, batch, logs=None):
        """Called at the start of a training batch."""
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        """Called at the end of a training batch with the running metrics in ``logs``."""
        self.on_batch_end(batch, logs=logs)

    def on_test_batch_begin(self, batch, logs=None):
        """Called at the start of an evaluation batch."""

    def on_test_batch_end(self, batch, logs=None):
        """Called at the end of an evaluation batch."""

    def on_predict_batch_begin(self, batch, logs=None):
        """Called at the start of a prediction batch."""

    def on_predict_batch_end(self, batch, logs=None):
        """Called at the end of a prediction batch."""

    def on_train_begin(self, logs=None):
        """Called at the start of training."""

    def on_train_end(self, logs=None):
        """Called at the end of training."""

    def on_test_begin(self, logs=None):
        """Called at the start of evaluation or validation."""

    def on_test_end(self, logs=None):
        """Called at the end of evaluation or validation."""

    def on_predict_begin(self, logs=None):
        """Called at the start of prediction."""

    def on_predict_end(self, logs=None):
        """Called at the end of prediction."""


class CallbackList:
    """Dispatches every hook to a list of callbacks, in order.

    Args:
        callbacks: Iterable of ``Callback`` instances (or None).
        model: Model given to every callback through ``set_model``.
        add_history: Append a ``History`` callback unless one is already present.
        add_progbar: Add a ``ProgbarLogger`` unless one is already present.
        **params: Training parameters given to every callback through ``set_params``.
    """

    def __init__(self, callbacks=None, model=None, add_history=False, add_progbar=False, **params):
        if callbacks is not None and (isinstance(callbacks, (str, bytes, dict))
                                      or not hasattr(callbacks, "__iter__")):
            raise TypeError(f"`callbacks` must be a list of kcompile.callbacks.Callback objects; got "
                            f"{callbacks!r}")
        self.callbacks = list(callbacks) if callbacks else []
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"Callbacks must be instances of kcompile.callbacks.Callback; got {callback!r}. Subclass "
                    f"Callback or wrap functions in LambdaCallback."
                )
        self._history = next((c for c in self.callbacks if isinstance(c, History)), None)
        self._progbar = next((c for c in self.callbacks if isinstance(c, ProgbarLogger)), None)
        if self._history is None and add_history:
            # Last, so it records entries other callbacks add to the epoch logs (e.g. learning_rate).
            self._history = History()
            self.callbacks.append(self._history)
        if self._progbar is None and add_progbar:
            # Last, as Keras: the epoch's line shows what other callbacks add to the logs (e.g.
            # learning_rate), and their messages start on a new line (a "\n") before it.
            self._progbar = ProgbarLogger()
            self.callbacks.append(self._progbar)
        self.model = None
        self.params = {}
        if model is not None:
            self.set_model(model)
        if params:
            self.set_params(params)

    def append(self, callback):
        self.callbacks.append(callback)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self):
        return len(self.callbacks)

    def set_model(self, model):
        self.model = model
        for callback in self.callbacks:
            callback.set_model(model)

    def set_params(self, params):
        self.params = params
        for callback in self.callbacks:
            callback.set_params(params)

    def _dispatch(self, hook_name, *args, logs=None):
        # One dict shared by all callbacks, so entries a callback adds (e.g. learning_rate) reach the later
        # ones. As Keras 3 passes them: `logs=` by keyword to the batch hooks (a hook written
        # `def on_train_batch_end(self, batch, **kwargs)` gets it), positionally to the others.
        logs = {} if logs is None else logs
        by_keyword = "_batch_" in hook_name
        for callback in self.callbacks:
            if by_keyword:
                getattr(callback, hook_name)(*args, logs=logs)
            else:
                getattr(callback, hook_name)(*args, logs)

    def on_batch_begin(self, batch, logs=None):
        self._dispatch("on_batch_begin", batch, logs=logs)

    def on_batch_end(self, batch, logs=None):
        self._dispatch("on_batch_end", batch, logs=logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._dispatch("on_epoch_begin", epoch, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        self._dispatch("on_epoch_end", epoch, logs=logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._dispatch("on_train_batch_begin", batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self._dispatch("on_train_batch_end", batch, logs=logs)

    def on_test_batch_begin(self, batch, logs=None):
        self._dispatch("on_test_batch_begin", batch, logs=logs)

    def on_test_batch_end(self, batch, logs=None):
        self._dispatch("on_test_batch_end", batch, logs=logs)

    def on_predict_batch_begin(self, batch, logs=None):
        self._dispatch("on_predict_batch_begin", batch, logs=logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._dispatch("on_predict_batch_end", batch, logs=logs)

    def on_train_begin(self, logs=None):
        self._dispatch("on_train_begin", logs=logs)

    def on_train_end(self, logs=None):
        self._dispatch("on_train_end", logs=logs)

    def on_test_begin(self, logs=None):
        self._dispatch("on_test_begin", logs=logs)

    def on_test_end(self, logs=None):
        self._dispatch("on_test_end", logs=logs)

    def on_predict_begin(self, logs=None):
        self._dispatch("on_predict_begin", logs=logs)

    def on_predict_end(self, logs=None):
        self._dispatch("on_predict_end", logs=logs)


class History(Callback):
    """Records the epoch logs; ``fit`` returns it and sets it as ``model.history``.

    Attributes:
        history: Dict mapping each metric name to its list of per-epoch values.
        epoch: List of the epoch indices recorded.
    """

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.epoch.append(epoch)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(schedules.value_now(value))
        # After every epoch, so the model holds the latest history even if training is interrupted.
        if self.model is not None:
            self.model.history = self


class ProgbarLogger(Callback):
    """Prints ``Epoch i/n`` headers and a progress bar per epoch, evaluation and prediction.

    Reads ``epochs``, ``steps`` (None if unknown) and ``verbose`` from ``params``.

    Args:
        stateful_metrics: Names of metrics shown as their last logged value. None means all of them:
            ``fit`` logs running means already (as Keras does), so averaging them again would be wrong.
        stream: File-like object to write to; defaults to ``sys.stdout`` at the time of writing.
    """

    def __init__(self, stateful_metrics=None, stream=None):
        super().__init__()
        self.stateful_metrics = None if stateful_metrics is None else set(stateful_metrics)
        self.stream = stream
        self.progbar = None
        self.seen = 0
        self.target = None
        self.epochs = 1
        self.verbose = 1
        self._called_in_fit = False

    def set_params(self, params):
        super().set_params(params)
        self.verbose = params.get("verbose", 1)
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")

    def _reset_progbar(self):
        self.seen = 0
        self.progbar = None

    def _maybe_init_progbar(self):
        if self.progbar is None:
            self.progbar = Progbar(
                target=self.target,
                verbose=self.verbose,
                stateful_metrics=self.stateful_metrics,
                unit_name="step",
                stream=self.stream,
            )

    def _update_progbar(self, batch, logs, finalize):
        self._maybe_init_progbar()
        logs = dict(logs or {})
        if self.stateful_metrics is None:
            self.progbar.stateful_metrics.update(logs)
        if finalize:
            if self.progbar.target is None:
                self.progbar.target = self.seen
            self.progbar.update(self.progbar.target, list(logs.items()), finalize=True)
        else:
            self.seen = batch + 1  # batch counts from 0
            if self.verbose == 1:
                self.progbar.update(self.seen, list(logs.items()), finalize=False)

    def on_train_begin(self, logs=None):
        # Validation inside fit is silent; its metrics appear on the epoch's line.
        self._called_in_fit = True

    def on_train_end(self, logs=None):
        self._called_in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()
        if self.verbose and self.epochs > 1:
            stream = self.stream if self.stream is not None else sys.stdout
            stream.write(f"Epoch {epoch + 1}/{self.epochs}\n")
            stream.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._update_progbar(batch, logs, finalize=False)

    def on_epoch_end(self, epoch, logs=None):
        self._update_progbar(None, logs, finalize=True)

    def on_test_begin(self, logs=None):
        if not self._called_in_fit:
            self._reset_progbar()
            self._maybe_init_progbar()

    def on_test_batch_end(self, batch, logs=None):
        if not self._called_in_fit:
            self._update_progbar(batch, logs, finalize=False)

    def on_test_end(self, logs=None):
        if not self._called_in_fit:
            self._update_progbar(None, logs, finalize=True)

    def on_predict_begin(self, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()

    def on_predict_batch_end(self, batch, logs=None):
        # Prediction logs hold outputs, not metrics: show progress only.
        self._update_progbar(batch, None, finalize=False)

    def on_predict_end(self, logs=None):
        self._update_progbar(None, None, finalize=True)


class EarlyStopping(Callback):
    """Stops training when a monitored metric has stopped improving.

    Args:
        monitor: Metric to watch, e.g. ``'val_loss'``.
        min_delta: Minimum change that counts as an improvement.
        patience: Epochs without improvement after which training stops.
        verbose: 1 prints a message when stopping and when restoring weights.
        mode: ``'min'``, ``'max'``, or ``'auto'`` (max for accuracy-like names, min otherwise).
        baseline: Value the metric must beat: an epoch that improves on the best so far without beating it
            does not restart the patience count, and training stops at the first epoch that does not
            improve once ``patience`` epochs have passed without beating it (as Keras 3).
        restore_best_weights: Restore the weights of the best epoch at the end of training (if it stopped
            early or ran out of epochs, as Keras 3 does).
        start_from_epoch: Epochs of warm-up before improvement is watched.
    """

    def __init__(
        self,
        monitor="val_loss",
        min_delta=0,
        patience=0,
        verbose=0,
        mode="auto",
        baseline=None,
        restore_best_weights=False,
        start_from_epoch=0,
    ):
        super().__init__()
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        self.patience = patience
        self.verbose = verbose
        self.mode = _validate_mode(mode, "EarlyStopping")
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        self._maximize = _is_maximized(monitor, self.mode)
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_train_begin(self, logs=None):
        self._maximize = _is_maximized(self.monitor, self.mode, self.model, "EarlyStopping")
        # Reset, so an instance can be reused across fit calls.
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def _is_improvement(self, value, reference):
        if reference is None:
            return True
        if self._maximize:
            return value - self.min_delta > reference
        return value + self.min_delta < reference

    def get_monitor_value(self, logs):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            _missing_metric_warning("Early stopping", self.monitor, logs)
        return value

    def on_epoch_end(self, epoch, logs=None):
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        current = float(current)
        if self.restore_best_weights and self.best_weights is None:
            # Until something improves, the current weights are the best seen.
            self.best_weights = _copy_weights(self.model.get_weights())
            self.best_epoch = epoch

        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = _copy_weights(self.model.get_weights())
            # Restart the wait only if the baseline is beaten too.  An improvement never stops training
            # (Keras 3; Keras 2 let one that misses the baseline reach the patience check).
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return

        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            _print_message(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                _print_message(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


def _copy_weights(weights):
    """Copies a list of weight arrays, in case the model returns views of buffers it updates in place."""
    return [np.array(weight, copy=True) for weight in weights]


def _remove_path(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def atomic_save(save_function, filepath):
    """Calls ``save_function(path)`` on a temporary path, then moves the result onto ``filepath``.

    The temporary file sits in the same directory (so the final ``os.replace`` is atomic) and its name ends
    with the whole base name of ``filepath``, so a save function that checks or appends an extension sees
    the same suffix. If the save function appends an extension anyway, the result is moved to ``filepath``
    plus that extension, where a direct save would have put it. If saving fails, the temporary file is
    removed and an existing ``filepath`` is left untouched.

    Returns:
        The path the result was moved to.
    """
    filepath = os.path.realpath(os.fspath(filepath))     # (a symlink's target is replaced)
    directory, base_name = os.path.split(filepath)
    if os.path.isdir(filepath):
        raise IsADirectoryError(f"Checkpoint filepath {filepath} is an existing directory; pass a file path.")
    temporary_prefix = f".tmp-{uuid.uuid4().hex[:8]}-"
    temporary_path = os.path.join(directory, temporary_prefix + base_name)
    try:
        save_function(temporary_path)
        if os.path.lexists(temporary_path):
            written_path, final_path = temporary_path, filepath
        else:
            written = [name for name in os.listdir(directory or ".") if name.startswith(temporary_prefix + base_name)]
            if len(written) != 1:
                raise FileNotFoundError(
                    f"Saving to {temporary_path} did not create that file (found {written or 'nothing'}); the "
                    f"model's save function must write to the path it is given."
                )
            written_path = os.path.join(directory, written[0])
            final_path = os.path.join(directory, written[0][len(temporary_prefix):])
        if os.path.isdir(written_path) and os.path.isdir(final_path):
            # Directories cannot be replaced atomically: move the old one aside first.
            old_path = os.path.join(directory, temporary_prefix + "old")
            os.replace(final_path, old_path)
            try:
                os.replace(written_path, final_path)
            except BaseException:
                os.replace(old_path, final_path)
                raise
            _remove_path(old_path)
        else:
            os.replace(written_path, final_path)
    except BaseException:
        for name in os.listdir(directory or "."):
            # (and a save function's own temporary file for it: '.' + our name + ...)
            if name.startswith((temporary_prefix, "." + temporary_prefix)):
                _remove_path(os.path.join(directory, name))
        raise
    return final_path


class _SaveFrequency:
    """Keras's count of batches between saves, across epochs (ModelCheckpoint's and
    BackupAndRestore's `save_freq`): the callback sets `save_freq`, `_last_batch_seen` and
    `_batches_seen_since_last_saving`."""

    def _should_save_on_batch(self, batch):
        if self.save_freq == "epoch":
            return False
        if batch <= self._last_batch_seen:  # a new epoch started
            added = batch + 1
        else:
            added = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += added
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False


class ModelCheckpoint(_SaveFrequency, Callback):
    """Saves the model or its weights during training.

    Every save is atomic: the model is written to a temporary file in the same directory which then
    replaces ``filepath``, so an error or interruption mid-save never destroys the previous checkpoint.

    Args:
        filepath: Where to save. May hold ``str.format`` fields filled from ``epoch`` (counting from 1),
            ``batch`` (with an integer ``save_freq``) and the logs, e.g. ``'ckpt-{epoch:02d}-{val_loss:.2f}.keras'`` (``.weights.npz``, or Keras 3's ``.weights.h5`` name for the same kcompile file, with save_weights_only).
        monitor: Metric compared by ``save_best_only``.
        verbose: 1 prints a message for every save.
        save_best_only: Save only when ``monitor`` improves on the best value so far.
        save_weights_only: Call ``model.save_weights(path)`` instead of ``model.save(path)``.
        mode: ``'min'``, ``'max'``, or ``'auto'`` (max for accuracy-like names, min otherwise).
        save_freq: ``'epoch'``, or an integer number of batches between saves.
        initial_value_threshold: Initial best value for ``save_best_only``.
    """

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        save_weights_only=False,
        mode="auto",
        save_freq="epoch",
        initial_value_threshold=None,
    ):
        super().__init__()
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, numbers.Integral) or save_freq < 1
        ):
            raise ValueError(f"Unrecognized save_freq={save_freq!r}; pass 'epoch' or a positive number of batches.")
        self.filepath = os.fspath(filepath)
        # As Keras: a path the save would refuse is refused now, not after the first epoch.
        from kcompile import saving
        try:
            if save_weights_only:
                saving._check_weights_suffix(self.filepath, "save")
            else:
                saving._check_model_suffix(self.filepath, "saving")
        except ValueError as error:
            weights = " with save_weights_only=True" if save_weights_only else ""
            raise ValueError(f"ModelCheckpoint{weights}: {error}") from None
        _check_filepath_fields(self.filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.mode = _validate_mode(mode, "ModelCheckpoint")
        self.save_freq = save_freq
        self._maximize = _is_maximized(monitor, self.mode)
        # As Keras 3: None until a first value (or the threshold given) is the best
        self.best = None if initial_value_threshold is None else float(initial_value_threshold)
        self._current_epoch = 0
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = -1

    def on_train_begin(self, logs=None):
        self._maximize = _is_maximized(self.monitor, self.mode, self.model, "ModelCheckpoint")

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model(epoch=self._current_epoch, batch=batch, logs=logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save_model(epoch=epoch, batch=None, logs=logs)

    def _get_file_path(self, epoch, batch, logs):
        fields = dict(logs)
        fields["epoch"] = epoch + 1
        if batch is not None and "batch" not in logs:
            fields["batch"] = batch + 1
        try:
            return self.filepath.format(**fields)
        except KeyError as error:
            raise KeyError(
                f"Failed to format ModelCheckpoint filepath {self.filepath!r}: field {error} is not among the "
                f"available ones ({', '.join(fields)}). Use only those, or monitor a metric the model logs."
            ) from error

    def _save_model(self, epoch, batch, logs):
        logs = logs or {}
        filepath = self._get_file_path(epoch, batch, logs)
        # As Keras 3: a monitor that is not logged, or not a scalar, saves as save_best_only=False
        # would (with a warning), so that training still leaves a checkpoint.
        current = logs.get(self.monitor) if self.save_best_only else None
        if self.save_best_only and current is None:
            _missing_metric_warning("ModelCheckpoint save_best_only (saving every time instead)",
                                    self.monitor, logs)
        elif self.save_best_only and np.ndim(current) > 0:
            warnings.warn(
                f"ModelCheckpoint can save the best model only when `{self.monitor}` is a scalar; got shape "
                f"{np.shape(current)}. Falling back to save_best_only=False.",
                stacklevel=2,
            )
        elif self.save_best_only:
            current = float(current)
            best = "None" if self.best is None else f"{self.best:.5f}"
            improved = self.best is None or (current > self.best if self._maximize
                                             else current < self.best)
            if not improved:
                if self.verbose > 0:
                    _print_message(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}")
                return
            if self.verbose > 0:
                _print_message(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to {current:.5f}, saving "
                    f"model to {filepath}"
                )
            self.best = current
        elif self.verbose > 0:
            _print_message(f"\nEpoch {epoch + 1}: saving model to {filepath}")

        directory = os.path.dirname(filepath)
        if directory:
            os.makedirs(directory, exist_ok=True)
        save_function = self.model.save_weights if self.save_weights_only else self.model.save
        if _saves_atomically(save_function):
            save_function(filepath)     # through a symlink, keeping the file's mode, any name length
        else:
            atomic_save(save_function, filepath)
        if self.verbose > 0:
            _print_message(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")


class BackupAndRestore(_SaveFrequency, Callback):
    """Backs up the training state so that a `fit` interrupted (an exception, a killed process)
    resumes where it stopped, as ``keras.callbacks.BackupAndRestore``.

    At the end of every epoch (or every ``save_freq`` batches) the weights, with the optimizer's
    state, go to ``backup_dir/latest.weights.h5`` (kcompile's weights file under Keras 3's name) and
    the number of epochs done to ``backup_dir/training_metadata.json``. A later `fit` with this
    callback loads them in ``on_train_begin`` and starts at the epoch after the last one backed
    up; a `fit` that ends normally deletes ``backup_dir`` (unless ``delete_checkpoint=False``).

    Args:
        backup_dir: A directory for this callback's files alone.
        save_freq: ``'epoch'``, or an integer number of batches between backups.
        double_checkpoint: Also keep the previous backup (``.bkp``), loaded when the latest one
            cannot be read.
        delete_checkpoint: Delete ``backup_dir`` when training ends.
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, numbers.Integral) or save_freq < 1
        ):
            raise ValueError("Invalid value for argument `save_freq`. "
                             f"Received: save_freq={save_freq!r}. Expected either 'epoch' or an "
                             "integer value.")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = 0
        self._current_epoch = 0
        self._weights_path = os.path.join(self.backup_dir, "latest.weights.h5")
        self._training_metadata_path = os.path.join(self.backup_dir, "training_metadata.json")
        self._prev_weights_path = self._weights_path + ".bkp"
        self._prev_training_metadata_path = self._training_metadata_path + ".bkp"

    def on_train_begin(self, logs=None):
        try:
            self._load_model(self._weights_path, self._training_metadata_path)
        except (OSError, ValueError):
            if not (self.double_checkpoint and os.path.exists(self._prev_weights_path)):
                raise
            # As Keras: the previous backup becomes the latest, and is loaded.
            shutil.copyfile(self._prev_weights_path, self._weights_path)
            if os.path.exists(self._prev_training_metadata_path):
                shutil.copyfile(self._prev_training_metadata_path, self._training_metadata_path)
            elif os.path.exists(self._training_metadata_path):
                os.remove(self._training_metadata_path)
            self._load_model(self._weights_path, self._training_metadata_path)

    def _load_model(self, weights_path, metadata_path):
        import json
        epoch = None
        if os.path.exists(metadata_path):
            with open(metadata_path) as file:
                epoch = json.load(file)["epoch"]
            if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
                raise ValueError(f"BackupAndRestore: {metadata_path} holds epoch={epoch!r}, not a "
                                 "number of epochs")
        if os.path.exists(weights_path):
            self.model.load_weights(weights_path)
        if epoch is not None:
            self.model._initial_epoch = int(epoch)
            self._current_epoch = int(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        if self.save_freq == "epoch":
            self._save_model()

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model()

    def _save_model(self):
        import json
        os.makedirs(self.backup_dir, exist_ok=True)
        if self.double_checkpoint:
            for path, previous in ((self._weights_path, self._prev_weights_path),
                                   (self._training_metadata_path, self._prev_training_metadata_path)):
                if os.path.exists(path):
                    shutil.copyfile(path, previous)
        # Each file replaces the last one whole (a crash mid-save leaves the previous backup).
        save_weights = self.model.save_weights
        if _saves_atomically(save_weights):
            save_weights(self._weights_path)
        else:
            atomic_save(save_weights, self._weights_path)
        metadata = json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen})

        def write_metadata(path):
            with open(path, "w") as file:
                file.write(metadata)
        atomic_save(write_metadata, self._training_metadata_path)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir)


def _check_filepath_fields(filepath: str) -> None:
    """ModelCheckpoint's filepath placeholders formatted once with stand-in values (the epoch and
    batch are integers, logged metrics floats), so that a bad one fails before training starts,
    not after the first epoch."""
    import string
    try:
        fields = list(string.Formatter().parse(filepath))
    except ValueError as error:
        raise ValueError(f"ModelCheckpoint: filepath {filepath!r} is not a valid format string "
                         f"({error}); write a literal brace as '{{{{' or '}}}}'") from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        placeholder = "{" + name + (f"!{conversion}" if conversion else "") + \
            (f":{spec}" if spec else "") + "}"
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not base or base.isdigit():
            raise ValueError(f"ModelCheckpoint: the placeholder {placeholder} in filepath "
                             f"{filepath!r} has no name; name the value, e.g. {{epoch:02d}} or "
                             "{val_loss:.2f}")
        sample = 1 if base in ("epoch", "batch") else 0.5
        try:
            placeholder.format(**{base: sample})
        except (ValueError, TypeError, IndexError, AttributeError, KeyError) as error:
            kind = "an integer" if isinstance(sample, int) else "a float (a logged metric)"
            raise ValueError(f"ModelCheckpoint: the placeholder {placeholder} in filepath "
                             f"{filepath!r} cannot be filled: {error} ({base!r} is {kind}); fix "
                             "its format spec, e.g. {epoch:02d} or {val_loss:.2f}") from None


def _saves_atomically(save_function) -> bool:
    """Is this kcompile's own Model.save or save_weights (which write atomically themselves)?"""
    return getattr(save_function, "writes_atomically", False) is True


def _call_schedule(schedule, epoch, learning_rate):
    """Calls ``schedule(epoch, lr)``, or ``schedule(epoch)`` for one-argument schedules as Keras allows."""
    try:
        parameters = inspect.signature(schedule).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return schedule(epoch, learning_rate)
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    if len(positional) >= 2 or takes_varargs:
        return schedule(epoch, learning_rate)
    return schedule(epoch)


def _get_learning_rate(model, callback_name):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "learning_rate"):
        raise ValueError(f"{callback_name} needs a model compiled with an optimizer that has a `learning_rate`.")
    return float(optimizer.learning_rate)


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate at the start of every epoch.

    Args:
        schedule: Function ``(epoch, lr) -> new_lr`` (epoch counts from 0; ``lr`` is the current rate), or
            ``(epoch) -> new_lr``.
        verbose: 1 prints the new learning rate every epoch.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be a function (epoch, lr) -> new_lr; got {schedule!r}.")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        learning_rate = _call_schedule(self.schedule, epoch, _get_learning_rate(self.model, "LearningRateScheduler"))
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
            raise ValueError(
                f"The schedule function must return a float; it returned {learning_rate!r} for epoch {epoch}."
            )
        learning_rate = float(learning_rate)
        self.model.optimizer.learning_rate = learning_rate
        if self.verbose > 0:
            _print_message(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {learning_rate}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _get_learning_rate(self.model, "LearningRateScheduler")


class CSVLogger(Callback):
    """Streams the epoch logs to a CSV file: a header row, then one row per epoch.

    Args:
        filename: Path of the CSV file.
        separator: Field separator.
        append: Append to an existing file (writing the header only if the file is empty) instead of
            overwriting it.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.separator = separator
        self.append = append
        self.keys = None
        self.writer = None
        self.csv_file = None
        self._append_header = True

    def on_train_begin(self, logs=None):
        self._append_header = True
        if self.append and os.path.exists(self.filename):
            with open(self.filename, newline="") as file:
                self._append_header = not file.readline()
        self.csv_file = open(self.filename, "a" if self.append else "w", newline="")
        self.keys = None
        self.writer = None

    @staticmethod
    def _format_value(value):
        if isinstance(value, str):
            return value
        if isinstance(value, np.ndarray) and value.ndim == 0:
            return value.item()
        if isinstance(value, (list, tuple, np.ndarray)):
            return f"[{', '.join(map(str, value))}]"
        return value

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.csv_file is None:
            self.on_train_begin()
        if self.keys is None:
            self.keys = sorted(logs)
            # as Keras: the first epoch may have no validation (validation_freq > 1); its `val_`
            # columns are reserved, so that every row matches the header
            if not any(key.startswith("val_") for key in self.keys):
                self.keys += ["val_" + key for key in self.keys]
        if self.writer is None:
            self.writer = csv.writer(self.csv_file, delimiter=self.separator)
            if self._append_header:
                self.writer.writerow(["epoch"] + self.keys)
        self.writer.writerow([epoch] + [self._format_value(logs.get(key, "NA")) for key in self.keys])
        self.csv_file.flush()

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
        self.csv_file = None
        self.writer = None


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when a metric has stopped improving.

    Args:
        monitor: Metric to watch.
        factor: Multiplier applied to the learning rate, below 1.
        patience: Epochs without improvement before the rate is reduced.
        verbose: 1 prints a message on every reduction.
        mode: ``'min'``, ``'max'``, or ``'auto'`` (max for accuracy-like names, min otherwise).
        min_delta: Minimum change that counts as an improvement.
        cooldown: Epochs to wait after a reduction before counting patience again.
        min_lr: Lower bound on the learning rate.
    """

    def __init__(
        self,
        monitor="val_loss",
        factor=0.1,
        patience=10,
        verbose=0,
        mode="auto",
        min_delta=1e-4,
        cooldown=0,
        min_lr=0.0,
    ):
        super().__init__()
        factor = factor.item() if getattr(factor, "ndim", None) == 0 else factor
        min_lr = min_lr.item() if getattr(min_lr, "ndim", None) == 0 else min_lr
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0.0 <= factor < 1.0:
            raise ValueError(
                f"ReduceLROnPlateau does not support factor={factor!r}: it multiplies the learning rate, so "
                "pass a number in [0, 1)."
            )
        min_lr = schedules.value_now(min_lr)
        if isinstance(min_lr, bool) or not isinstance(min_lr, numbers.Real) or not 0.0 <= min_lr < math.inf:
            raise ValueError(f"ReduceLROnPlateau min_lr must be a finite number >= 0; got min_lr={min_lr!r}")
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.verbose = verbose
        self.mode = _validate_mode(mode, "ReduceLROnPlateau")
        self.min_delta = abs(min_delta)   # as Keras (and EarlyStopping): a change of this size
        self.cooldown = cooldown
        # (a number: a live learning rate given as the floor is read now)
        self.min_lr = min_lr
        self._maximize = _is_maximized(monitor, self.mode)
        self._reset()

    def _reset(self):
        self.best = None   # as Keras: the first value is the best so far, whatever it is (inf, NaN)
        self.cooldown_counter = 0
        self.wait = 0

    def _is_improvement(self, value):
        if self._maximize:
            return self.best is None or value > self.best + self.min_delta
        return self.best is None or value < self.best - self.min_delta

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_train_begin(self, logs=None):
        self._maximize = _is_maximized(self.monitor, self.mode, self.model, "ReduceLROnPlateau")
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        logs = {} if logs is None else logs
        # The rate this epoch trained with, before any reduction below.
        logs["learning_rate"] = _get_learning_rate(self.model, "ReduceLROnPlateau")
        current = logs.get(self.monitor)
        if current is None:
            _missing_metric_warning("Learning rate reduction", self.monitor, logs)
            return
        current = float(current)
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_learning_rate = _get_learning_rate(self.model, "ReduceLROnPlateau")
                # NOTE: compared in float32, the precision the optimizer stores it in.
                if old_learning_rate > np.float32(self.min_lr):
                    new_learning_rate = max(old_learning_rate * self.factor, self.min_lr)
                    self.model.optimizer.learning_rate = new_learning_rate
                    if self.verbose > 0:
                        _print_message(
                            f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_learning_rate}."
                        )
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


class TerminateOnNaN(Callback):
    """Stops training as soon as a batch's loss is NaN or infinite; with `raise_error=True`, raises
    a RuntimeError there instead (as Keras 3)."""

    def __init__(self, raise_error=False):
        super().__init__()
        self.raise_error = bool(raise_error)

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.all(np.isfinite(loss)):
            if self.raise_error:
                raise RuntimeError(f"NaN or Inf found in the loss ({loss}) at batch {batch}; "
                                   "training stopped (TerminateOnNaN(raise_error=True))")
            _print_message(f"Batch {batch}: Invalid loss, terminating training")
            self.model.stop_training = True


def _positional_logs(function):
    """`function` called with the hook's logs as its last positional argument, however the caller
    passes them, so that a LambdaCallback's `lambda batch, l: ...` names them as it likes."""
    @functools.wraps(function)
    def hook(*args, **logs):
        return function(*args, *logs.values())
    return hook


class LambdaCallback(Callback):
    """Builds a callback from plain functions, one per hook.

    Each keyword is a hook name (``on_epoch_end=lambda epoch, logs: ...``, ``on_train_begin=lambda logs:
    ...``) and its value a function with that hook's arguments.
    """

    def __init__(self, **hooks):
        super().__init__()
        unknown = sorted(set(hooks) - set(HOOK_NAMES))
        if unknown:
            raise TypeError(
                f"LambdaCallback got unknown hook names {', '.join(unknown)}; valid names are {', '.join(HOOK_NAMES)}."
            )
        for name, function in hooks.items():
            if function is None:
                continue
            if not callable(function):
                raise TypeError(f"LambdaCallback {name} must be a function; got {function!r}.")
            setattr(self, name, _positional_logs(function))


# Keras callbacks kcompile does not have: asking for one says so, instead of a bare AttributeError.
_KERAS_ONLY = frozenset({"TensorBoard", "RemoteMonitor", "SwapEMAWeights"})


def __getattr__(name):
    if name in _KERAS_ONLY:
        raise AttributeError(f"kcompile.callbacks has no {name!r}: Keras's {name} is not implemented "
                             "in kcompile (README.md lists the callbacks there are); a Callback "
                             "subclass with Keras's hook names can do what it does")
    raise AttributeError(f"module 'kcompile.callbacks' has no attribute {name!r}")
