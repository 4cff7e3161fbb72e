"""Tracing the predict / eval / train graphs of a model, and the fit / evaluate / predict loops.

The graph contract (the same for every target; `kcompile.backend.make_runner` runs the graphs):

- predict: inputs 'x', then every weight by path ('dense/kernel', 'dense/bias', ...); output 'y_pred'.
- eval: inputs 'x', 'y', weights; outputs 'loss' (the batch's reduced loss, a scalar) and one scalar
  per metric, named as the metric is logged ('accuracy'): the SUM of its per-prediction values.
- train: inputs 'x', 'y', 'seed' (u32[], random layers' stream key), weights, the optimizer's
  'optimizer/learning_rate' (f32[]), 'optimizer/iterations' (i32[]) and slots ('{weight}/m', ...);
  outputs 'loss', the metric sums, then the in-place updates, named like the inputs they replace:
  every trainable weight, every slot, and 'optimizer/iterations'.

Axis 0 of x, y and y_pred is the batch dimension (None), so one graph serves every batch size.

The loops do all validation and conversion once, before the first step (a bad input raises with the
model untouched); per step they slice or gather a batch into staging buffers, make one runner call and
add a few floats.  Callbacks get batch hooks only if they define them, and progress bars are updated
at most every `PROGRESS_INTERVAL` seconds (and at the last step).
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass

import numpy as np

import ir
from ir import build as B

from kcompile import backend, losses, metrics as metrics_module, optimizers
from kcompile.errors import DataTypeError
from kcompile.layers.layer import TraceScope, format_shape
from kcompile.utils.random import get_generator, next_seed

PROGRESS_INTERVAL = 0.1  # seconds between progress-bar updates during an epoch
DEFAULT_BATCH_SIZE = 32
DTYPES = {"f32": np.float32, "f64": np.float64}


# ----------------------------------------------------------------------------------------------
# Tracing
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetSpec:
    """How targets are fed: IR dtype and batched shape of 'y', and the shape the user gave (which
    decides what 'accuracy' means, as in Keras)."""
    dtype: str
    shape: tuple
    given_shape: tuple


def _weight_inputs(model, dtype: str) -> dict:
    bindings = {}
    seen = set()
    for variable in model.weights:
        if variable.path in seen:
            raise ValueError(f"two weights of model {model.name!r} are named {variable.path!r}; give "
                             "the layers distinct names")
        seen.add(variable.path)
        bindings[variable] = B.arg(variable.path, dtype, variable.shape)
    return bindings


def _loss_and_metrics(model, loss, metric_objects, y, y_pred):
    """The scalar loss and (name, batch sum, values per row) for every metric."""
    loss_object = losses.as_loss_object(loss)
    loss_value = loss_object(y, y_pred)
    if loss_value.type.rank != 0:
        raise ValueError(f"loss {losses.loss_name(loss)!r} gives shape {loss_value.shape}, not a scalar: "
                         "a loss with reduction='none' cannot be trained on")
    results = []
    for name, metric in metric_objects:
        values = metric.values(y, y_pred)
        if values.dtype not in ("f32", "f64"):
            values = B.cast(values, y_pred.dtype)
        per_row = values.type.static_size if values.type.batched else None
        if per_row is None:
            raise ValueError(f"metric {name!r} must give one value per sample; got shape {values.shape}")
        results.append((name, B.reduce_sum(values), per_row))
    return loss_value, results


def trace_predict(model, dtype: str = "f32") -> ir.Graph:
    x = B.arg("x", dtype, model.input_shape)
    weights = _weight_inputs(model, dtype)
    with TraceScope(weights):
        y_pred = model(x, training=False)
    return ir.verify(ir.Graph("predict", [x, *weights.values()], [("y_pred", y_pred)]))


def _target_input(spec: TargetSpec, dtype: str):
    return B.arg("y", "i32" if spec.dtype == "i32" else dtype, spec.shape)


def trace_eval(model, loss, metric_objects, spec: TargetSpec, dtype: str = "f32") -> ir.Graph:
    x = B.arg("x", dtype, model.input_shape)
    y = _target_input(spec, dtype)
    weights = _weight_inputs(model, dtype)
    with TraceScope(weights):
        y_pred = model(x, training=False)
    loss_value, metric_values = _loss_and_metrics(model, loss, metric_objects, y, y_pred)
    outputs = [("loss", loss_value)] + [(name, value) for name, value, _ in metric_values]
    return ir.verify(ir.Graph("eval", [x, y, *weights.values()], outputs))


def trace_train(model, loss, metric_objects, optimizer, spec: TargetSpec,
                dtype: str = "f32") -> ir.Graph:
    """The train step: forward in training mode, gradients, and the optimizer's update, in one graph."""
    x = B.arg("x", dtype, model.input_shape)
    y = _target_input(spec, dtype)
    seed = B.arg("seed", "u32", ())
    weights = _weight_inputs(model, dtype)
    learning_rate = B.arg(optimizers.LEARNING_RATE, "f32", ())
    iterations = B.arg(optimizers.ITERATIONS, "i32", ())
    trainable = model.trainable_weights
    optimizer.build(trainable)
    slots = {}
    for variable in trainable:
        for slot in optimizer.slot_names():
            path = optimizer.slot_path(variable, slot)
            slots[path] = B.arg(path, dtype, variable.shape)

    with TraceScope(weights, seed=seed):
        y_pred = model(x, training=True)
    loss_value, metric_values = _loss_and_metrics(model, loss, metric_objects, y, y_pred)
    gradients = ir.gradients(loss_value, [weights[v] for v in trainable])

    next_iterations = B.add(iterations, 1)
    step = B.cast(next_iterations, dtype)
    rate = B.cast(learning_rate, dtype)
    weight_updates, slot_updates = [], []
    for variable, gradient in zip(trainable, gradients):
        own_slots = {slot: slots[optimizer.slot_path(variable, slot)] for slot in optimizer.slot_names()}
        new_value, new_slots = optimizer.update_step(gradient, weights[variable], rate, step, own_slots)
        weight_updates.append((variable.path, new_value))
        slot_updates += [(optimizer.slot_path(variable, s), v) for s, v in new_slots.items()]

    outputs = [("loss", loss_value)] + [(name, value) for name, value, _ in metric_values]
    outputs += weight_updates + slot_updates + [(optimizers.ITERATIONS, next_iterations)]
    inputs = [x, y, seed, *weights.values(), learning_rate, iterations, *slots.values()]
    return ir.verify(ir.Graph("train", inputs, outputs))


# ----------------------------------------------------------------------------------------------
# Argument and data validation
# ----------------------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_batch_size(batch_size) -> int:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if not _is_int(batch_size) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer (the number of samples per step); "
                         f"got batch_size={batch_size!r}")
    return int(batch_size)


def _check_count(value, argument) -> int:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{argument} must be a non-negative integer; got {argument}={value!r}")
    return int(value)


def check_verbose(verbose) -> int:
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool) or (_is_int(verbose) and verbose in (0, 1, 2)):
        return int(verbose)
    raise ValueError(f"verbose must be 'auto', 0 (silent), 1 (progress bar) or 2 (one line per epoch); "
                     f"got verbose={verbose!r}")


def _not_supported(**arguments):
    for name, value in arguments.items():
        if value is not None:
            raise NotImplementedError(f"{name}= is not supported yet")


def numeric_array(data, argument: str) -> np.ndarray:
    """`data` as a numpy array with a batch axis and a numeric dtype, or a clear error."""
    if data is None:
        raise ValueError(f"`{argument}` is None; pass a numpy array")
    if isinstance(data, (dict, str, bytes)):
        raise DataTypeError(f"`{argument}` must be a numeric array; got a {type(data).__name__}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{argument}` could not be converted to an array ({error}); every sample "
                         "must have the same shape") from None
    kind = array.dtype.kind
    if kind in "US":
        raise DataTypeError(f"`{argument}` holds strings (dtype {array.dtype}); models train on numbers. "
                            "Encode the strings as numbers first (class indices, one-hot vectors or "
                            "numeric features).")
    if kind == "O":
        raise DataTypeError(f"`{argument}` has dtype object (Python objects, or samples of different "
                            "shapes); convert it to a numeric array first, e.g. "
                            f"np.asarray({argument}, dtype='float32'), with every sample of one shape.")
    if kind not in "biuf":
        raise DataTypeError(f"`{argument}` has dtype {array.dtype}, which is not a real number type; "
                            "convert it to float32.")
    if array.ndim == 0:
        raise ValueError(f"`{argument}` is a scalar; pass an array whose first axis indexes samples")
    return array


def _float_array(array: np.ndarray) -> np.ndarray:
    # One conversion per call of fit/evaluate/predict: float32, C order (no copy when already so).
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_lengths(x, y, x_name, y_name):
    if len(x) != len(y):
        raise ValueError(f"`{x_name}` and `{y_name}` must have the same number of samples; got "
                         f"{len(x)} samples in {x_name} (shape {x.shape}) and {len(y)} in {y_name} "
                         f"(shape {y.shape}).")
    if len(x) == 0:
        raise ValueError(f"`{x_name}` has no samples; pass at least one")


def _unpack_validation_data(validation_data):
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError("validation_data must be a tuple (x_val, y_val); got "
                         f"{type(validation_data).__name__}")
    if len(validation_data) == 3:
        if validation_data[2] is not None:
            raise NotImplementedError("validation sample weights are not supported yet")
    return validation_data[0], validation_data[1]


# ----------------------------------------------------------------------------------------------
# Callback dispatch with cheap batch hooks
# ----------------------------------------------------------------------------------------------

def _overrides(callback, name: str) -> bool:
    from kcompile.callbacks import Callback
    if name in vars(callback):  # LambdaCallback sets hooks on the instance
        return True
    return getattr(type(callback), name, None) is not getattr(Callback, name, None)


class _BatchHooks:
    """The callbacks that want a batch hook: most every batch, progress bars throttled."""

    def __init__(self, callback_list, begin: str, end: str, legacy_begin=None, legacy_end=None):
        from kcompile.callbacks import ProgbarLogger
        self.begin_name, self.end_name = begin, end
        callbacks = list(callback_list.callbacks)
        self.begin = [c for c in callbacks
                      if _overrides(c, begin) or (legacy_begin and _overrides(c, legacy_begin))]
        wants_end = [c for c in callbacks
                     if _overrides(c, end) or (legacy_end and _overrides(c, legacy_end))]
        self.every = [c for c in wants_end if not isinstance(c, ProgbarLogger)]
        self.throttled = [c for c in wants_end if isinstance(c, ProgbarLogger)]
        self.last_update = -math.inf
        self._progress_due = False

    def call_begin(self, step):
        for callback in self.begin:
            getattr(callback, self.begin_name)(step, {})

    def end_due(self, step: int, last_step: int) -> bool:
        """Whether to build the logs and call end hooks after this step: every step for callbacks
        that asked for batch hooks, every PROGRESS_INTERVAL seconds (and the last step) for bars."""
        self._progress_due = False
        if self.throttled:
            now = time.perf_counter()
            if step == last_step or now - self.last_update >= PROGRESS_INTERVAL:
                self._progress_due = True
                self.last_update = now
        return self._progress_due or bool(self.every)

    def call_end(self, step: int, logs: dict):
        for callback in self.every:
            getattr(callback, self.end_name)(step, logs)
        if self._progress_due:
            for callback in self.throttled:
                getattr(callback, self.end_name)(step, logs)


def _make_callbacks(model, callbacks, verbose, epochs, steps, add_history=False):
    from kcompile.callbacks import Callback, CallbackList
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    return CallbackList(callbacks, model=model, add_history=add_history, add_progbar=verbose != 0,
                        verbose=verbose, epochs=epochs, steps=steps)


# ----------------------------------------------------------------------------------------------
# Programs: a traced graph and its runner
# ----------------------------------------------------------------------------------------------

class _Program:
    __slots__ = ("graph", "runner", "metric_names", "metric_counts")

    def __init__(self, graph, runner, metric_names=(), metric_counts=()):
        self.graph = graph
        self.runner = runner
        self.metric_names = tuple(metric_names)
        self.metric_counts = tuple(metric_counts)


def _make_runner(graph, target, state):
    try:
        return backend.make_runner(graph, target, state)
    except ImportError as error:
        raise RuntimeError(f"target={target!r} is not available here ({error}); compile the model "
                           "with target='reference' to run on the numpy interpreter") from error


def _dedupe(names):
    out, counts = [], {}
    for name in names:
        if name in counts:
            counts[name] += 1
            name = f"{name}_{counts[name] - 1}"
        else:
            counts[name] = 1
        out.append(name)
    return out


def _metric_display_name(identifier) -> str:
    if isinstance(identifier, str):
        return identifier
    if isinstance(identifier, metrics_module.Metric):
        return identifier.name
    return getattr(identifier, "__name__", type(identifier).__name__)


def _logs(loss_total, sums, seen, names, counts) -> dict:
    """Running epoch results, sorted by name as Keras 3 logs them."""
    logs = {"loss": loss_total / seen if seen else 0.0}
    for name, total, count in zip(names, sums, counts):
        logs[name] = total / (seen * count) if seen else 0.0
    return dict(sorted(logs.items()))


# ----------------------------------------------------------------------------------------------
# The Trainer: compile / fit / evaluate / predict
# ----------------------------------------------------------------------------------------------

class Trainer:
    """compile / fit / evaluate / predict for a model that can be traced (mixed into `Model`)."""

    def __init__(self):
        self.compiled = False
        self.optimizer = None
        self.loss = None
        self.stop_training = False
        self.history = None
        self.target = "llvm"
        self._metric_identifiers = []
        self._programs = {}

    # -- compile --------------------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1, jit_compile="auto",
                auto_scale_loss=True, target="llvm"):
        """Configure training: optimizer, loss, metrics, and the target the graphs run on.

        Args:
            optimizer: a name ('adam', 'sgd', 'rmsprop') or an optimizer object.
            loss: a name ('categorical_crossentropy', ...), a loss function or a Loss object.
            metrics: list of metric names ('accuracy', ...), functions or Metric objects.
            target: 'llvm' (native code through LLVM) or 'reference' (the numpy interpreter).
            run_eagerly: True is the same as target='reference'.
        """
        if target not in backend.TARGETS:
            raise ValueError(f"Unknown target {target!r}; use one of {list(backend.TARGETS)}")
        # NOTE: Keras 2 took (optimizer, loss, metrics, ...) and Keras 3 takes (optimizer, loss,
        # loss_weights, metrics, ...); loss weights are numbers, so a third positional list of
        # anything else is the Keras 2 spelling of metrics.
        if metrics is None and isinstance(loss_weights, (list, tuple)) and loss_weights \
                and not any(isinstance(w, numbers.Number) for w in loss_weights):
            metrics, loss_weights = loss_weights, None
        if loss_weights not in (None, 1, 1.0):
            raise NotImplementedError("loss_weights is for models with several outputs, which are not "
                                      "supported yet")
        _not_supported(weighted_metrics=weighted_metrics)
        if steps_per_execution != 1:
            raise NotImplementedError("steps_per_execution other than 1 is not supported yet")
        resolved_optimizer = optimizers.get(optimizer)
        if loss is not None and not (isinstance(loss, str) and loss in losses.AUTO_NAMES):
            loss = losses.get(loss)
        if metrics is None:
            metrics = []
        if not isinstance(metrics, (list, tuple)):
            raise ValueError("Expected `metrics` argument to be a list or tuple, e.g. "
                             f"metrics=['accuracy']. Received instead: metrics={metrics!r}")
        for identifier in metrics:
            metrics_module.check(identifier)
        self.optimizer = resolved_optimizer
        self.loss = loss
        self._metric_identifiers = [m for m in metrics if m is not None]
        self.target = "reference" if run_eagerly else target
        self.compiled = True
        self._on_structure_change()

    @property
    def metrics_names(self) -> list:
        names = _dedupe([_metric_display_name(m) for m in self._metric_identifiers])
        return ["loss"] + names

    def _assert_compiled(self, method: str):
        if not self.compiled:
            raise ValueError(f"You must call `compile()` before calling `{method}()`: e.g. "
                             "model.compile(optimizer='adam', loss='categorical_crossentropy', "
                             "metrics=['accuracy']).")
        if self.loss is None:
            raise ValueError(f"No loss to compute in `{method}()`: pass `loss=` to `compile()`.")

    def _on_structure_change(self):
        """Traced graphs and runners are stale (layers, trainability or compile settings changed)."""
        self._programs = {}

    # -- data -----------------------------------------------------------------------------------

    def _check_inputs(self, x: np.ndarray, argument: str) -> tuple:
        """The batched input shape x implies, checked against the model's (if it has one)."""
        if not self.layers:
            raise ValueError(f"Model {self.name!r} has no layers; add some with model.add(...) first.")
        shape = (None,) + x.shape[1:]
        expected = self._known_input_shape()
        if expected is not None and shape != expected:
            hint = ""
            if math.prod(shape[1:]) == math.prod(expected[1:]):
                hint = f" Reshape it: {argument}.reshape(-1, {', '.join(map(str, expected[1:]))})."
            raise ValueError(f"Input `{argument}` has shape {x.shape}, i.e. samples of shape "
                             f"{format_shape(x.shape[1:])}, but model {self.name!r} expects samples of "
                             f"shape {format_shape(expected[1:])} (input shape "
                             f"{format_shape(expected)}).{hint}")
        if expected is None:
            try:
                self.compute_output_shape(shape)
            except ValueError as error:
                raise ValueError(f"Model {self.name!r} has no input shape yet, and `{argument}` with "
                                 f"samples of shape {format_shape(x.shape[1:])} does not fit it: "
                                 f"{error}") from None
        return shape

    def _resolve_loss(self, given_shape, output_shape):
        if isinstance(self.loss, str) and self.loss in losses.AUTO_NAMES:
            is_binary, is_sparse = metrics_module.is_binary_or_sparse_categorical(given_shape,
                                                                                  output_shape)
            if is_binary:
                raise NotImplementedError("loss='crossentropy' resolves to binary_crossentropy for "
                                          "one output column, which is not supported yet")
            return (losses.sparse_categorical_crossentropy if is_sparse
                    else losses.categorical_crossentropy)
        return self.loss

    def _prepare_targets(self, y: np.ndarray, input_shape: tuple, argument: str):
        """Check y against the model's output for the loss; return (array to feed, TargetSpec, loss)."""
        output_shape = tuple(self.compute_output_shape(input_shape))
        given = (None,) + y.shape[1:]
        loss = self._resolve_loss(given, output_shape)
        kind = losses.target_kind(loss)
        name = losses.loss_name(loss)
        if kind == "sparse":
            labels = output_shape[:-1]
            if given not in (labels, labels + (1,)):
                raise ValueError(f"Loss {name!r} takes integer class labels of shape "
                                 f"{format_shape(labels)} (or {format_shape(labels + (1,))}) for a "
                                 f"model output of shape {format_shape(output_shape)}; got "
                                 f"`{argument}` of shape {format_shape(given)}."
                                 + self._target_hint(given, output_shape, y, name))
            if y.dtype.kind == "f":
                if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                    raise ValueError(f"Loss {name!r} takes integer class labels, but `{argument}` "
                                     "holds non-integer values. For one-hot targets use "
                                     "loss='categorical_crossentropy'.")
            classes = output_shape[-1]
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise ValueError(f"`{argument}` holds class labels in [{int(y.min())}, {int(y.max())}], "
                                 f"but the model outputs {classes} classes (labels 0 to {classes - 1}). "
                                 f"Make the last layer Dense({int(y.max()) + 1}) or fix the labels.")
            return (np.ascontiguousarray(y, dtype=np.int32),
                    TargetSpec("i32", given, given), loss)
        fed = given
        if kind == "dense":
            if given != output_shape:
                if output_shape[-1] == 1 and given == output_shape[:-1]:
                    fed = output_shape  # y of shape (n,) for one output column, as Keras squeezes
                else:
                    raise ValueError(f"The model's output shape {format_shape(output_shape)} does not "
                                     f"match the targets' shape {format_shape(given)} (`{argument}`); "
                                     f"loss {name!r} compares them element by element."
                                     + self._target_hint(given, output_shape, y, name))
        array = _float_array(y)
        if fed != given:
            array = array.reshape((len(array),) + fed[1:])
        return array, TargetSpec("f32", fed, given), loss

    def _target_hint(self, given, output_shape, y, loss_name) -> str:
        input_shape = self._known_input_shape()
        if len(output_shape) > 2 and len(output_shape) > len(given) and input_shape is not None \
                and len(input_shape) > 2:
            return (f" Dense layers act on the last axis only, so the model maps inputs of shape "
                    f"{format_shape(input_shape)} to outputs of shape {format_shape(output_shape)}. "
                    f"Add a Flatten layer before the first Dense layer, e.g. make "
                    f"`Flatten(input_shape={tuple(input_shape[1:])})` the model's first layer.")
        if (len(given) == len(output_shape) - 1 or given[1:] == (1,)) and y.dtype.kind in "iu" \
                and loss_name == "categorical_crossentropy":
            return (" The targets look like integer class labels: use "
                    "loss='sparse_categorical_crossentropy', or one-hot encode them with "
                    f"kcompile.utils.to_categorical(y, {output_shape[-1]}).")
        if len(given) == len(output_shape) and given[-1] != output_shape[-1]:
            return (f" The last layer has {output_shape[-1]} units but the targets have {given[-1]} "
                    f"columns: make it Dense({given[-1]}).")
        return ""

    def _prepare(self, x, y, argument_x, argument_y):
        """Validate and convert one (x, y) pair; nothing about the model changes."""
        x = numeric_array(x, argument_x)
        y = numeric_array(y, argument_y)
        _check_lengths(x, y, argument_x, argument_y)
        input_shape = self._check_inputs(x, argument_x)
        y, spec, loss = self._prepare_targets(y, input_shape, argument_y)
        return _float_array(x), y, spec, loss, input_shape

    # -- programs -------------------------------------------------------------------------------

    def _state(self) -> dict:
        state = {v.path: v.buffer for v in self.weights}
        if self.optimizer is not None:
            state.update(self.optimizer.state())
        return state

    def _metric_objects(self, spec: TargetSpec):
        names = _dedupe([_metric_display_name(m) for m in self._metric_identifiers])
        objects = []
        for name, identifier in zip(names, self._metric_identifiers):
            metric = metrics_module.resolve(identifier, spec.given_shape, self.output_shape)
            objects.append((name, metric))
        return objects

    def _program(self, kind: str, spec: TargetSpec | None = None, loss=None) -> _Program:
        key = (kind, spec)
        program = self._programs.get(key)
        if program is not None:
            return program
        if kind == "predict":
            graph = trace_predict(self)
            names, counts = (), ()
        else:
            metric_objects = self._metric_objects(spec)
            if kind == "eval":
                graph = trace_eval(self, loss, metric_objects, spec)
            else:
                graph = trace_train(self, loss, metric_objects, self.optimizer, spec)
            names = [name for name, _ in metric_objects]
            counts = [self._metric_count(graph, name) for name in names]
        runner = _make_runner(graph, self.target, self._state())
        program = self._programs[key] = _Program(graph, runner, names, counts)
        return program

    @staticmethod
    def _metric_count(graph, name) -> int:
        # Values per sample of a metric: the static size of what its output (a reduce_sum over
        # every axis, made by `_loss_and_metrics`) sums.  Epoch result = total / (samples * this).
        node = graph.output(name)
        return node.operands[0].type.static_size if node.operands else 1

    # -- fit ------------------------------------------------------------------------------------

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Train for `epochs` epochs over (x, y); returns a History of the per-epoch logs."""
        self._assert_compiled("fit")
        _not_supported(class_weight=class_weight, sample_weight=sample_weight,
                       steps_per_epoch=steps_per_epoch, validation_steps=validation_steps)
        batch_size = check_batch_size(batch_size)
        validation_batch_size = (batch_size if validation_batch_size is None
                                 else check_batch_size(validation_batch_size))
        epochs = _check_count(epochs, "epochs")
        initial_epoch = _check_count(initial_epoch, "initial_epoch")
        verbose = check_verbose(verbose)
        if not _is_int(validation_freq) or validation_freq < 1:
            raise ValueError(f"validation_freq must be a positive integer; got {validation_freq!r}")
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0 <= validation_split < 1:
            raise ValueError("validation_split must be a float in [0, 1) (the fraction of the data "
                             f"held out); got validation_split={validation_split!r}")

        x = numeric_array(x, "x")
        y = numeric_array(y, "y")
        _check_lengths(x, y, "x", "y")
        if validation_data is not None:
            val_x, val_y = _unpack_validation_data(validation_data)
        elif validation_split:
            # As Keras: the LAST fraction of the data, before any shuffling.
            split_at = int(math.floor(len(x) * (1.0 - validation_split)))
            if split_at == 0 or split_at == len(x):
                raise ValueError(f"Training data contains {len(x)} samples, which is not sufficient to "
                                 "split it into a validation and training set as specified by "
                                 f"`validation_split={validation_split}`. Either provide more data, or "
                                 "a different value for the `validation_split` argument.")
            x, val_x = x[:split_at], x[split_at:]
            y, val_y = y[:split_at], y[split_at:]
        else:
            val_x = val_y = None
        x, y, spec, loss, input_shape = self._prepare(x, y, "x", "y")
        validation = None
        if val_x is not None:
            val_x, val_y, val_spec, val_loss, _ = self._prepare(val_x, val_y, "validation x",
                                                                "validation y")
        self._ensure_built(input_shape)
        train = self._program("train", spec, loss)
        if val_x is not None:
            validation = (self._program("eval", val_spec, val_loss), val_x, val_y)

        steps = -(-len(x) // batch_size)
        callback_list = _make_callbacks(self, callbacks, verbose, epochs, steps, add_history=True)
        from kcompile.callbacks import History
        history = next(c for c in callback_list.callbacks if isinstance(c, History))
        self.stop_training = False
        self.history = history
        callback_list.on_train_begin()
        epoch_logs = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            epoch_logs = self._train_epoch(train, x, y, batch_size, shuffle, callback_list)
            if validation is not None and (epoch + 1) % validation_freq == 0:
                program, vx, vy = validation
                val_logs = self._evaluate_arrays(program, vx, vy, validation_batch_size,
                                                 callback_list)
                epoch_logs.update({"val_" + k: v for k, v in val_logs.items()})
            callback_list.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        callback_list.on_train_end(logs=epoch_logs)
        self.history = history
        return history

    def _train_epoch(self, program, x, y, batch_size, shuffle, callback_list) -> dict:
        n = len(x)
        steps = -(-n // batch_size)
        last_step = steps - 1
        run = program.runner.run
        names, counts = program.metric_names, program.metric_counts
        sums = [0.0] * len(names)
        loss_total, seen = 0.0, 0
        hooks = _BatchHooks(callback_list, "on_train_batch_begin", "on_train_batch_end",
                            "on_batch_begin", "on_batch_end")
        seed = np.zeros((), np.uint32)
        seed_base = next_seed()
        runner = program.runner
        if shuffle:
            order = get_generator().permutation(n)
            x_stage = np.empty((min(batch_size, n),) + x.shape[1:], x.dtype)
            y_stage = np.empty((min(batch_size, n),) + y.shape[1:], y.dtype)
            runner.bind({"x": x_stage, "y": y_stage, "seed": seed})
        else:
            runner.bind({"x": x, "y": y, "seed": seed})
        call, output = runner.call, runner.output
        for step in range(steps):
            start = step * batch_size
            stop = min(start + batch_size, n)
            rows = stop - start
            if hooks.begin:
                hooks.call_begin(step)
            if shuffle:
                index = order[start:stop]
                np.take(x, index, axis=0, out=x_stage[:rows], mode="clip")
                np.take(y, index, axis=0, out=y_stage[:rows], mode="clip")
                start = 0
            seed[...] = (seed_base + step) & 0xFFFFFFFF
            call(rows, start)
            loss_total += float(output("loss", rows)) * rows
            for i, name in enumerate(names):
                sums[i] += float(output(name, rows))
            seen += rows
            if hooks.end_due(step, last_step):
                hooks.call_end(step, _logs(loss_total, sums, seen, names, counts))
            if self.stop_training:
                break
        return _logs(loss_total, sums, seen, names, counts)

    # -- evaluate -------------------------------------------------------------------------------

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        """Loss and metrics on (x, y): `[loss, *metrics]`, the loss alone without metrics, or a dict."""
        self._assert_compiled("evaluate")
        _not_supported(sample_weight=sample_weight, steps=steps)
        batch_size = check_batch_size(batch_size)
        verbose = check_verbose(verbose)
        x, y, spec, loss, input_shape = self._prepare(x, y, "x", "y")
        self._ensure_built(input_shape)
        program = self._program("eval", spec, loss)
        callback_list = _make_callbacks(self, callbacks, verbose, 1, -(-len(x) // batch_size))
        logs = self._evaluate_arrays(program, x, y, batch_size, callback_list)
        if return_dict:
            return logs
        values = [logs["loss"]] + [logs[name] for name in program.metric_names]
        return values[0] if len(values) == 1 else values

    def _evaluate_arrays(self, program, x, y, batch_size, callback_list) -> dict:
        n = len(x)
        steps = -(-n // batch_size)
        runner = program.runner
        names, counts = program.metric_names, program.metric_counts
        sums = [0.0] * len(names)
        loss_total, seen = 0.0, 0
        hooks = _BatchHooks(callback_list, "on_test_batch_begin", "on_test_batch_end")
        runner.bind({"x": x, "y": y})
        callback_list.on_test_begin()
        for step in range(steps):
            start = step * batch_size
            stop = min(start + batch_size, n)
            if hooks.begin:
                hooks.call_begin(step)
            runner.call(stop - start, start)
            loss_total += float(runner.output("loss", stop - start)) * (stop - start)
            for i, name in enumerate(names):
                sums[i] += float(runner.output(name, stop - start))
            seen += stop - start
            if hooks.end_due(step, steps - 1):
                hooks.call_end(step, _logs(loss_total, sums, seen, names, counts))
        logs = _logs(loss_total, sums, seen, names, counts)
        callback_list.on_test_end(logs)
        return logs

    # -- predict --------------------------------------------------------------------------------

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """The model's outputs for every sample of x, computed `batch_size` samples at a time."""
        _not_supported(steps=steps)
        batch_size = check_batch_size(batch_size)
        verbose = check_verbose(verbose)
        x = numeric_array(x, "x")
        input_shape = self._check_inputs(x, "x")
        x = _float_array(x)
        self._ensure_built(input_shape)
        program = self._program("predict")
        n = len(x)
        steps = -(-n // batch_size)
        outputs = np.empty((n,) + tuple(self.output_shape[1:]), np.float32)
        callback_list = _make_callbacks(self, callbacks, verbose, 1, steps)
        hooks = _BatchHooks(callback_list, "on_predict_batch_begin", "on_predict_batch_end")
        runner = program.runner
        runner.bind({"x": x})
        callback_list.on_predict_begin()
        for step in range(steps):
            start = step * batch_size
            stop = min(start + batch_size, n)
            if hooks.begin:
                hooks.call_begin(step)
            runner.call(stop - start, start)
            batch_out = runner.output("y_pred", stop - start)
            outputs[start:stop] = batch_out
            if hooks.end_due(step, steps - 1):
                hooks.call_end(step, {"outputs": batch_out})
        callback_list.on_predict_end()
        return outputs
