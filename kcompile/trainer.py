"""Tracing the predict / eval / train graphs of a model, and the fit / evaluate / predict loops.

The graph contract (the same for every target; `kcompile.backend.make_runner` runs the graphs):

- predict: inputs 'x', then every weight by path ('dense/kernel', 'dense/bias', ...); output 'y_pred'.
- eval: inputs 'x', 'y', ['sample_weight' (f32[?]) in a weighted program], weights; outputs 'loss'
  (the batch's reduced loss, a scalar) and each metric's batch sums (`Metric.trace_sums`): the first
  named as the metric is logged ('accuracy'), others '{name}/{key}' ('precision/fp').  Python adds
  the sums over an epoch and the metric's finisher turns the totals into its result.
- train: inputs 'x', 'y', ['sample_weight'], 'seed' (u32[], random layers' stream key), weights, the
  optimizer's 'optimizer/learning_rate' (f32[]), 'optimizer/iterations' (i32[]) and slots
  ('{weight}/m', ...), and an optimizer's own scalar state ('optimizer/u_product' of Nadam);
  outputs 'loss', the metric sums, then the in-place updates, named like the inputs they replace:
  every trainable weight, every slot, the optimizer's scalar state, 'optimizer/iterations', and
  the non-trainable weights layers update while training (`TraceScope.add_update`:
  BatchNormalization's moving statistics).

Axis 0 of x, y and y_pred is the batch dimension (None), so one graph serves every batch size.  The
train step clips the gradients, applies weight decay and evaluates a learning-rate schedule from
'optimizer/iterations' in the graph (`Optimizer.clip_gradients`, `apply_weight_decay`,
`current_learning_rate`).

With arrays, the loops do all validation and conversion once, before the first step (a bad input
raises with the model untouched); per step they slice or gather a batch into staging buffers, make one
runner call and add a few floats.  Batches from a generator or another batch source
(`kcompile.data_adapters`) are checked and converted one by one.  Callbacks get batch hooks only if
they define them, and progress bars are updated at most every `PROGRESS_INTERVAL` seconds (and at the
last step).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import numbers
import os
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np

import ir
from ir import build as B
from ir import build_seq

from codegen import buffers
from kcompile import backend, data_adapters, losses, metrics as metrics_module, optimizers
from kcompile.errors import DataTypeError
from ir.graph import refuse_truth
from kcompile.layers.embedding import Embedding
from kcompile.layers.layer import TraceScope, format_shape, get_keras_mask, to_snake_case
from kcompile.schedules import FLOAT32_MAX
from kcompile.utils.random import get_generator, next_seed

PROGRESS_INTERVAL = 0.1  # seconds between progress-bar updates during an epoch
DEFAULT_BATCH_SIZE = 32
_FLOAT32 = np.dtype(np.float32)
_PREDICT_KEY = ("predict", None, False)   # the compiled predict program of float32 inputs
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


def _weight_inputs(model, dtype: str, finite: bool = False) -> dict:
    """The weights' graph inputs; `finite`: marked finite=true (see ir.known_finite)."""
    bindings = {}
    seen = set()
    for variable in model.weights:
        if variable.path in seen:
            raise ValueError(f"two weights of model {model.name!r} are named {variable.path!r}; give "
                             "the layers distinct names")
        seen.add(variable.path)
        bindings[variable] = B.arg(variable.path, dtype, variable.shape, finite=finite)
    return bindings


@dataclass(frozen=True)
class MetricReadout:
    """How one logged metric is read: the graph outputs holding its batch sums (by the metric's keys)
    and the finisher `finish(totals by key, samples seen) -> result`."""
    name: str
    outputs: tuple
    keys: tuple
    finish: object


def _masked_sample_weight(reduction, mask, sample_weight, dtype: str):
    """Keras 3's `apply_mask` (losses/loss.py): the mask of y_pred as weights of its steps' losses
    or metric values, times the sample weights.  For a mean loss ('sum_over_batch_size', 'mean')
    the unmasked steps weigh total / valid (0 when every step is masked), so the loss is the mean
    over them; a metric (reduction 'sum') takes the mask as it is."""
    weight = B.cast(mask, dtype)
    if reduction in ("sum_over_batch_size", "mean"):
        total = B.reduced_count(weight, tuple(range(weight.type.rank)))
        valid = B.reduce_sum(weight)
        empty = B.eq(valid, 0.0)
        weight = B.mul(weight, B.select(empty, 0.0, B.div(total, B.select(empty, 1.0, valid))))
    if sample_weight is not None:
        sample_weight = B.cast(sample_weight, dtype)
        missing = weight.type.rank - sample_weight.type.rank
        weight = B.mul(weight, B.reshape(sample_weight, sample_weight.shape + (1,) * missing))
    return weight


def _loss_and_metrics(model, loss, metric_objects, y, y_pred, sample_weight=None, penalty=None,
                      mask=None):
    """The scalar loss, the metric outputs [(graph output name, batch sum)] and a readout per metric.

    `metric_objects` holds (name, metric) or (name, metric, weighted) entries; only weighted ones
    (compile's `weighted_metrics`) see the sample weights, as in Keras.  `mask`: y_pred's Keras
    mask, which weights the loss and the mean metrics as Keras's does."""
    with refuse_truth():     # a user's loss or metric cannot branch on traced values (see ir.graph)
        loss_object = losses.as_loss_object(loss)
        loss_weight = sample_weight
        if mask is not None:
            loss_weight = _masked_sample_weight(loss_object.reduction, mask, sample_weight,
                                                y_pred.dtype)
        loss_value = loss_object(y, y_pred, sample_weight=loss_weight)
        if loss_value.type.rank != 0:
            raise ValueError(f"loss {losses.loss_name(loss)!r} gives shape {loss_value.shape}, not a "
                             "scalar: a loss with reduction='none' cannot be trained on")
        if model.loss_weight != 1.0:
            loss_value = ir.build.mul(loss_value, model.loss_weight)
        if penalty is not None:   # the weights' regularization (Keras adds it in training and evaluation)
            loss_value = ir.build.add(loss_value, penalty)
        return (loss_value,) + _metric_outputs(metric_objects, y, y_pred, sample_weight, mask)


def _metric_outputs(metric_objects, y, y_pred, sample_weight=None, mask=None):
    """The metric outputs [(graph output name, batch sum)] and a readout per metric (see
    _loss_and_metrics); they depend on nothing but the metrics and the types of y, y_pred and the
    sample weights."""
    outputs, readouts = [], []
    for entry in metric_objects:
        name, metric = entry[0], entry[1]
        weighted = len(entry) > 2 and entry[2]
        if not isinstance(metric, metrics_module.Metric):
            metric = metrics_module.MeanMetricWrapper(metric, name=name)
        weight = sample_weight if weighted else None
        if mask is not None:
            # Keras's mean metrics (MeanMetricWrapper: accuracy, mae, ...) weigh the values by
            # y_pred's mask; the others (confusion metrics, a user's update_state) are refused
            if type(metric).trace_sums is not metrics_module.Metric.trace_sums \
                    or metric._is_stateful():
                raise NotImplementedError(
                    f"metric {name!r} on a model output that carries a mask (return_sequences "
                    "after Embedding(mask_zero=True) or Masking) is not supported yet; the mean "
                    "metrics (accuracy, mae, ...) are masked as in Keras")
            weight = _masked_sample_weight("sum", mask, weight, y_pred.dtype)
        sums, finish = metric.trace_sums(y, y_pred, weight)
        names = []
        for key, value in sums.items():
            if value.type.batched:
                raise ValueError(f"metric {name!r}: its sum {key!r} must be reduced over the batch; got "
                                 f"shape {value.shape}")
            if value.dtype not in ("f32", "f64"):
                value = B.cast(value, y_pred.dtype)
            output = name if key == "" else f"{name}/{key}"
            outputs.append((output, value))
            names.append(output)
        readouts.append(MetricReadout(name, tuple(names), tuple(sums), finish))
    return outputs, readouts


def trace_predict(model, dtype: str = "f32", finite_weights: bool = False) -> ir.Graph:
    """The predict graph: x and the weights in, y_pred out.  `finite_weights`: the weights are marked
    finite, which lets one-row products skip the rows of zero inputs (the caller must check it)."""
    x = B.arg("x", dtype, model.input_shape)
    weights = _weight_inputs(model, dtype, finite_weights)
    with TraceScope(weights):
        y_pred = model(x, training=False)
    return ir.verify(ir.Graph("predict", [x, *weights.values()], [("y_pred", y_pred)]))


def _target_input(spec: TargetSpec, dtype: str):
    return B.arg("y", "i32" if spec.dtype == "i32" else dtype, spec.shape)


def _sample_weight_input(weighted: bool, dtype: str):
    return B.arg("sample_weight", dtype, (None,)) if weighted else None


def _plus_added_losses(penalty, scope):
    """The weights' penalties plus the losses layers added in this trace (Layer.add_loss)."""
    for added in scope.added_losses:
        penalty = added if penalty is None else B.add(penalty, B.cast(added, penalty.dtype))
    return penalty


def trace_eval(model, loss, metric_objects, spec: TargetSpec, dtype: str = "f32", weighted=False,
               readouts: list | None = None, y_pred_type: list | None = None) -> ir.Graph:
    """The eval step: loss and metric sums; `readouts` (a list) receives the metrics' readouts, and
    `y_pred_type` (a list) the type of the model's output."""
    x = B.arg("x", dtype, model.input_shape)
    y = _target_input(spec, dtype)
    sample_weight = _sample_weight_input(weighted, dtype)
    weights = _weight_inputs(model, dtype)
    with TraceScope(weights) as scope:
        y_pred = model(x, training=False)
        mask = get_keras_mask(y_pred)
        penalty = _plus_added_losses(model.regularization(), scope)
    loss_value, metric_outputs, metric_readouts = _loss_and_metrics(model, loss, metric_objects, y,
                                                                    y_pred, sample_weight, penalty,
                                                                    mask)
    if readouts is not None:
        readouts.extend(metric_readouts)
    if y_pred_type is not None:
        y_pred_type.append(y_pred.type)
    inputs = [x, y] + ([sample_weight] if weighted else []) + list(weights.values())
    return ir.verify(ir.Graph("eval", inputs, [("loss", loss_value)] + metric_outputs))


def _forward_and_gradients(model, loss, metric_objects, spec: TargetSpec, dtype: str, weighted,
                           readouts, y_pred_type):
    """The forward pass in training mode, the loss and metrics, and the gradients of the loss with
    respect to every trainable weight: (fed inputs, weight inputs by variable, outputs, gradients,
    non-trainable updates)."""
    x = B.arg("x", dtype, model.input_shape)
    y = _target_input(spec, dtype)
    sample_weight = _sample_weight_input(weighted, dtype)
    seed = B.arg("seed", "u32", ())
    weights = _weight_inputs(model, dtype)
    with TraceScope(weights, seed=seed) as scope:
        y_pred = model(x, training=True)
        mask = get_keras_mask(y_pred)
        penalty = _plus_added_losses(model.regularization(), scope)
    loss_value, metric_outputs, metric_readouts = _loss_and_metrics(model, loss, metric_objects, y,
                                                                    y_pred, sample_weight, penalty,
                                                                    mask)
    if readouts is not None:
        readouts.extend(metric_readouts)
    if y_pred_type is not None:
        y_pred_type.append(y_pred.type)
    gradients = ir.gradients(loss_value, [weights[v] for v in model.trainable_weights])
    fed = [x, y] + ([sample_weight] if weighted else []) + [seed]
    outputs = [("loss", loss_value)] + metric_outputs
    # non-trainable state that layers update in training (BatchNormalization's moving statistics)
    updates = [(variable.path, value) for variable, value in scope.updates]
    return fed, weights, outputs, gradients, updates


def _optimizer_step(model, optimizer, weights: dict, gradients: list, dtype: str):
    """The optimizer's update of every trainable weight from its gradient: (inputs: the learning
    rate, the step counter and the slots; outputs: new weights, new slots, the next counter)."""
    learning_rate = B.arg(optimizers.LEARNING_RATE, "f32", ())
    iterations = B.arg(optimizers.ITERATIONS, "i32", ())
    trainable = model.trainable_weights
    optimizer.build(trainable)
    slots = {}
    for variable in trainable:
        for slot in optimizer.slot_names():
            path = optimizer.slot_path(variable, slot)
            slots[path] = B.arg(path, dtype, variable.shape)
    state = {name: B.arg(optimizer.state_path(name), dtype, ()) for name in optimizer.state_names()}
    # Keras 3's order: clip the gradients, decay the weights, then the optimizer's rule (after the
    # optimizer's own scalars, e.g. Nadam's u_product, move on to this step).
    next_iterations = B.add(iterations, 1)
    step = B.cast(next_iterations, dtype)
    rate = B.cast(optimizer.current_learning_rate(learning_rate, iterations), dtype)
    gradients = optimizer.clip_gradients(gradients)
    new_state = optimizer.update_state(step, state) if state else {}
    with_state = {"state": new_state} if state else {}
    weight_updates, slot_updates = [], []
    for variable, gradient in zip(trainable, gradients):
        own_slots = {slot: slots[optimizer.slot_path(variable, slot)] for slot in optimizer.slot_names()}
        value = optimizer.apply_weight_decay(variable, weights[variable], rate)
        new_value, new_slots = optimizer.update_step(gradient, value, rate, step, own_slots,
                                                     **with_state)
        weight_updates.append((variable.path, new_value))
        slot_updates += [(optimizer.slot_path(variable, s), v) for s, v in new_slots.items()]
    inputs = [learning_rate, iterations, *slots.values(), *state.values()]
    state_updates = [(optimizer.state_path(name), value) for name, value in new_state.items()]
    return inputs, (weight_updates + slot_updates + state_updates
                    + [(optimizers.ITERATIONS, next_iterations)])


def trace_train(model, loss, metric_objects, optimizer, spec: TargetSpec,
                dtype: str = "f32", weighted=False, readouts: list | None = None,
                y_pred_type: list | None = None) -> ir.Graph:
    """The train step: forward in training mode, gradients, and the optimizer's update, in one graph
    (the update fuses into the kernels that compute the gradients); `readouts` and `y_pred_type` as
    for trace_eval.  `trace_gradients` and `trace_update` are the same step as two graphs."""
    fed, weights, outputs, gradients, updates = _forward_and_gradients(
        model, loss, metric_objects, spec, dtype, weighted, readouts, y_pred_type)
    step_inputs, step_outputs = _optimizer_step(model, optimizer, weights, gradients, dtype)
    return ir.verify(ir.Graph("train", fed + [*weights.values(), *step_inputs],
                              outputs + step_outputs + updates))


GRADIENTS = "gradients"


def trace_gradients(model, loss, metric_objects, spec: TargetSpec, dtype: str = "f32",
                    weighted=False, readouts: list | None = None) -> ir.Graph:
    """The first half of the train step as a graph of its own: the loss, the metrics, and every
    trainable weight's gradient, flattened and concatenated in `model.trainable_weights` order
    into one output, 'gradients' (f32[total size]): the buffer that data-parallel training sums
    across processes (an MPI Allreduce) before `trace_update` applies it."""
    fed, weights, outputs, gradients, updates = _forward_and_gradients(
        model, loss, metric_objects, spec, dtype, weighted, readouts, None)
    flat = build_seq.concat([B.reshape(g, (int(np.prod(g.shape, dtype=np.int64)),))
                             for g in gradients], axis=0)
    return ir.verify(ir.Graph("gradients", fed + list(weights.values()),
                              outputs + [(GRADIENTS, flat)] + updates))


def trace_update(model, optimizer, dtype: str = "f32") -> ir.Graph:
    """The second half of the train step: the optimizer's update of every trainable weight from
    the 'gradients' input, laid out as `trace_gradients` outputs it."""
    trainable = model.trainable_weights
    sizes = [int(np.prod(v.shape, dtype=np.int64)) for v in trainable]
    flat = B.arg(GRADIENTS, dtype, (sum(sizes),))
    gradients, start = [], 0
    for variable, size in zip(trainable, sizes):
        gradients.append(B.reshape(build_seq.slice(flat, start, start + size, axis=0),
                                   tuple(variable.shape)))
        start += size
    weights = {v: B.arg(v.path, dtype, v.shape) for v in trainable}
    step_inputs, step_outputs = _optimizer_step(model, optimizer, weights, gradients, dtype)
    return ir.verify(ir.Graph("update", [flat, *weights.values(), *step_inputs], step_outputs))


# ----------------------------------------------------------------------------------------------
# Argument and data validation
# ----------------------------------------------------------------------------------------------

class OutputCountError(ValueError, NotImplementedError):
    """compile given several losses or loss weights for a model's one output: the ValueError Keras 3
    raises for a count that does not match the outputs, and the NotImplementedError kcompile raised
    (its models have one output)."""


def _single_loss_weight(loss_weights) -> float:
    """compile's `loss_weights` for the model's one output: a number, or a list of one (Keras takes
    one per output; a dict keyed by the output's name is Trainer._for_the_output's); the loss that
    is reported and trained on is scaled by it."""
    given = loss_weights
    if loss_weights is None:
        return 1.0
    if isinstance(loss_weights, (list, tuple)):
        if len(loss_weights) != 1:
            raise OutputCountError(f"`loss_weights` must match the number of losses, got 1 losses and "
                                   f"{len(loss_weights)} weights: loss_weights={given!r} gives one "
                                   "per output, but kcompile models have one output; give one weight")
        (loss_weights,) = loss_weights
    if isinstance(loss_weights, bool) or not isinstance(loss_weights, numbers.Real) \
            or not abs(float(loss_weights)) <= FLOAT32_MAX:
        raise ValueError(f"loss_weights must be a finite number within float32's range (or a list or "
                         f"dict of one); got {given!r}")
    return float(loss_weights)


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
    if _is_int(verbose) and verbose > 2:
        return 0        # as Keras: its progress bar prints at 1 and 2 only
    raise ValueError(f"verbose must be 'auto', 0 (silent), 1 (progress bar) or 2 (one line per epoch); "
                     f"got verbose={verbose!r}")


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
    # float32, C order (no copy when already so)
    return np.ascontiguousarray(array, dtype=np.float32)


def _fed_as_is(array: np.ndarray) -> bool:
    """Whether the compiled code can read `array` in place (float32, C order).  evaluate and
    predict convert any other input a batch at a time: converting it whole would copy all of it at
    once (a memmap of a big file, a broadcast view, float64 data)."""
    return type(array) is np.ndarray and array.dtype == np.float32 and array.flags.c_contiguous


def _axis_order(given: tuple, expected: tuple) -> tuple | None:
    """The sample axes of `given` in an order that reads `expected` (the earliest unused axis of
    each size: (3, 8, 8) -> (8, 8, 3) gives (1, 2, 0)), or None when it is no permutation."""
    if len(given) != len(expected) or sorted(given) != sorted(expected):
        return None
    unused = list(range(len(given)))
    order = []
    for size in expected:
        axis = next(a for a in unused if given[a] == size)
        unused.remove(axis)
        order.append(axis)
    return tuple(order)


def _layout_hint(argument: str, given: tuple, expected: tuple) -> str:
    """What to do about samples of shape `given` where `expected` is wanted: transpose when the
    axes are the same sizes in another order, reshape when only the element counts agree."""
    if math.prod(given) != math.prod(expected):
        return ""
    reshape = f"{argument}.reshape(-1, {', '.join(map(str, expected))})"
    order = _axis_order(given, expected)
    if order is None:
        return f" Reshape it: {reshape}."
    transpose = f"{argument}.transpose(0, {', '.join(str(a + 1) for a in order)})"
    return (f" Its axes have the model's sizes in another order: if they are the same axes stored "
            f"in another order (channels-first images, (features, steps) sequences), transpose it: "
            f"{transpose}. {reshape} also gives that shape but keeps the values in their stored "
            "order, which scrambles such data; it is the fix only when the values already are in "
            "the model's order (e.g. samples stored flat). Which one keeps the data's meaning "
            "depends on its layout.")


def _one_target(y, x):
    """y itself when given as a one-element list or tuple holding the targets of every sample of x
    ([y], as Keras takes the target of a single-output model)."""
    if isinstance(y, (list, tuple)) and len(y) == 1 and isinstance(y[0], np.ndarray) \
            and y[0].ndim >= 1 and len(y[0]) == len(x) != 1:
        return y[0]
    return y


def _check_lengths(x, y, x_name, y_name):
    if len(x) != len(y):
        raise ValueError(f"`{x_name}` and `{y_name}` must have the same number of samples; got "
                         f"{len(x)} samples in {x_name} (shape {x.shape}) and {len(y)} in {y_name} "
                         f"(shape {y.shape}).")
    if len(x) == 0:
        raise ValueError(f"`{x_name}` has no samples; pass at least one")


def _check_steps(value, argument):
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"{argument} must be a positive integer (a number of batches) or None; got "
                         f"{argument}={value!r}")
    return int(value)


def _validation_epochs(validation_freq):
    """Keras's `validation_freq` as a test of the 1-based epoch number: an int validates every that
    many epochs, a list (or tuple) after the epochs it names."""
    if isinstance(validation_freq, (list, tuple)):
        if not all(_is_int(epoch) and epoch >= 1 for epoch in validation_freq):
            raise ValueError("validation_freq as a list names epochs to validate after, counted from "
                             f"1; got {validation_freq!r}")
        epochs = {int(epoch) for epoch in validation_freq}
        return lambda epoch: epoch in epochs
    if not _is_int(validation_freq) or validation_freq < 1:
        raise ValueError("validation_freq must be a positive integer (validate every that many "
                         "epochs) or a list of the epochs to validate after (counted from 1); got "
                         f"{validation_freq!r}")
    return lambda epoch: epoch % validation_freq == 0


def _unpack_validation_data(validation_data):
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError("validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                         "val_sample_weight), or a generator of such batches; got "
                         f"{type(validation_data).__name__}")
    if len(validation_data) == 3:
        return validation_data[0], validation_data[1], validation_data[2]
    return validation_data[0], validation_data[1], None


# ----------------------------------------------------------------------------------------------
# Callback dispatch with cheap batch hooks
# ----------------------------------------------------------------------------------------------

def _overrides(callback, name: str) -> bool:
    from kcompile.callbacks import Callback
    if name in vars(callback):  # LambdaCallback sets hooks on the instance
        return True
    return getattr(type(callback), name, None) is not getattr(Callback, name, None)


class _BatchHooks:
    """The callbacks that want a batch hook: most every batch, progress bars throttled.

    With compile(steps_per_execution=N) the batch hooks run as Keras 3 calls them: begin with the
    index of an execution's first step, end after its last step (or the epoch's last) with the
    index of its first step + N - 1 (the steps themselves are the same one native call each, so
    the numbers do not depend on N)."""

    def __init__(self, callback_list, begin: str, end: str, legacy_begin=None, legacy_end=None):
        from kcompile.callbacks import ProgbarLogger
        self.begin_name, self.end_name = begin, end
        self.model = getattr(callback_list, "model", None)
        self.stride = getattr(self.model, "steps_per_execution", 1) or 1
        # (a batch-end hook reading model.get_metrics_result() or model.metrics gets the running
        # values, its logs, as in Keras 3)
        self.metric_logs = end in ("on_train_batch_end", "on_test_batch_end") and \
            hasattr(self.model, "_set_metrics_result")
        self._every_due = False
        self._ended = -1     # the last step the every-batch callbacks' end hook covered
        callbacks = list(callback_list.callbacks)
        self.begin = [c for c in callbacks
                      if _overrides(c, begin) or (legacy_begin and _overrides(c, legacy_begin))]
        wants_end = [c for c in callbacks
                     if _overrides(c, end) or (legacy_end and _overrides(c, legacy_end))]
        # (a subclass of the bar that has its own batch hook gets every batch)
        throttled = [c for c in wants_end if isinstance(c, ProgbarLogger)
                     and getattr(type(c), end) is getattr(ProgbarLogger, end)
                     and (legacy_end is None or getattr(type(c), legacy_end, None)
                          is getattr(ProgbarLogger, legacy_end, None))]
        self.every = [c for c in wants_end if not any(c is t for t in throttled)]
        self.throttled = throttled
        self.last_update = -math.inf
        self._progress_due = False
        self._shown = -1    # the last step the throttled bars were shown

    def call_begin(self, step):
        if step % self.stride:
            return
        for callback in self.begin:
            getattr(callback, self.begin_name)(step, logs={})

    def execution_start(self, step: int) -> int:
        """The first step of the execution (steps_per_execution) that `step` belongs to."""
        return step - step % self.stride

    def execution_ends(self, step: int, last_step: int) -> bool:
        """Whether `step` ends its execution (steps_per_execution), where a stop flag a callback
        set is taken: as in Keras 3, a flag set in a begin hook stops after the whole execution.
        `last_step` -1: unknown (a source of unknown length)."""
        return (step + 1) % self.stride == 0 or step == last_step

    def end_due(self, step: int, last_step: int) -> bool:
        """Whether to build the logs and call end hooks after this step: every step for callbacks
        that asked for batch hooks, every PROGRESS_INTERVAL seconds (and the last step) for bars."""
        self._progress_due = False
        if self.throttled:
            now = time.perf_counter()
            if step == last_step or now - self.last_update >= PROGRESS_INTERVAL:
                self._progress_due = True
                self.last_update = now
        self._every_due = bool(self.every) and ((step + 1) % self.stride == 0 or step == last_step)
        return self._progress_due or self._every_due

    def call_end(self, step: int, logs: dict):
        if self._every_due:
            self._ended = step
            index = self.execution_start(step) + self.stride - 1
            if self.metric_logs:
                self.model._set_metrics_result(logs)
            for callback in self.every:
                getattr(callback, self.end_name)(index, logs=logs)
        if self._progress_due:
            self._shown = step
            for callback in self.throttled:
                getattr(callback, self.end_name)(step, logs=logs)

    def finish(self, step: int, logs) -> None:
        """After the epoch's last step: the bars see it even when it was not known to be the last
        (a source of unknown length), as they count the steps from what they are shown.  `logs`:
        the logs, or a function that makes them."""
        if self.every and step >= 0 and self._ended < self.execution_start(step):
            # an execution cut short by the end of a source of unknown length (as Keras: its end
            # hook runs after the steps it had)
            logs = logs() if callable(logs) else logs
            self._every_due, self._progress_due = True, False
            self.call_end(step, logs)
        if self.throttled and step >= 0 and self._shown != step:
            logs = logs() if callable(logs) else logs
            for callback in self.throttled:
                getattr(callback, self.end_name)(step, logs=logs)


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
    __slots__ = ("_graph", "runner", "readouts", "metric_names", "sum_names", "vector_sums",
                 "row_shape", "input_types", "output_types", "finite", "_nested")

    def __init__(self, graph, runner, readouts=(), signature=None):
        """`graph`: the traced graph, or a function that traces it, called when something asks for
        `.graph` (a program loaded from the compile cache was never traced); `signature`: (input
        name -> type, output name -> type) of the traced graph, read from `graph` when not given."""
        self._graph = graph
        self.runner = runner
        self._nested = {}
        self.finite = (-1, False)   # (codegen.buffers.writes() when checked, weights all finite)
        if signature is None:
            signature = ({n.attr("name"): n.type for n in graph.inputs},
                         {name: graph.output(name).type for name in graph.output_names})
        self.input_types, self.output_types = signature
        x = self.input_types.get("x")
        self.row_shape = None if x is None else tuple(x.shape[1:])
        self.readouts = tuple(readouts)
        self.metric_names = tuple(readout.name for readout in self.readouts)
        # Every metric's graph outputs, in order; vector sums (AUC's per-threshold counts) are added
        # as arrays, scalar ones as floats.
        self.sum_names = tuple(name for readout in self.readouts for name in readout.outputs)
        self.vector_sums = tuple(self.output_types[name].rank > 0 for name in self.sum_names)

    @property
    def graph(self) -> ir.Graph:
        if not isinstance(self._graph, ir.Graph):
            self._graph = self._graph()
        return self._graph

    def runner_at(self, depth: int):
        """The runner for a call `depth` levels deep in the model's calls (see
        _one_call_at_a_time): the program's own at the top, a clone of it for each deeper level,
        so that a callback's predict (or evaluate, fit...) inside a loop of calls leaves that
        loop's bindings and outputs alone."""
        if depth <= 1:
            return self.runner
        runner = self._nested.get(depth)
        if runner is None:
            runner = self._nested[depth] = self.runner.clone()
        return runner


class _Totals:
    """Running sums of an epoch or an evaluation: the loss weighted by each batch's rows (Keras's
    loss tracker), the metric sums, and the samples seen."""

    __slots__ = ("program", "loss_total", "seen", "sums")

    def __init__(self, program: _Program):
        self.program = program
        self.loss_total = 0.0
        self.seen = 0
        self.sums = [0.0] * len(program.sum_names)

    def add(self, output, rows: int):
        """Add one step's outputs (`runner.output`) for a batch of `rows` samples."""
        self.loss_total += float(output("loss", rows)) * rows
        sums, vector = self.sums, self.program.vector_sums
        for i, name in enumerate(self.program.sum_names):
            if vector[i]:
                sums[i] = sums[i] + output(name, rows)  # a new array: output buffers are reused
            else:
                sums[i] += float(output(name, rows))
        self.seen += rows

    def accumulate(self) -> list:
        """What runner.bind_epoch should add up over the steps for this program's totals."""
        return [("loss", "mean")] + [(name, "sum") for name in self.program.sum_names]

    def load(self, accumulators: dict, seen: int) -> None:
        """Take the sums a runner accumulated (see accumulate) over `seen` samples."""
        self.loss_total = float(accumulators["loss"][0])
        for i, name in enumerate(self.program.sum_names):
            acc = accumulators[name]
            self.sums[i] = acc.copy() if self.program.vector_sums[i] else float(acc[0])
        self.seen = seen

    def logs(self) -> dict:
        """Running results, sorted by name as Keras 3 logs them."""
        seen = self.seen
        logs = {"loss": self.loss_total / seen if seen else 0.0}
        start = 0
        for readout in self.program.readouts:
            stop = start + len(readout.outputs)
            logs[readout.name] = (readout.finish(dict(zip(readout.keys, self.sums[start:stop])), seen)
                                  if seen else 0.0)
            start = stop
        return dict(sorted(logs.items()))


# Inputs the loops feed (the others are state: weights, optimizer slots, the step counter).
_FED = frozenset({"x", "y", "sample_weight", "seed"})
# the predict programs: with the weights marked finite, and for weights that hold inf or NaN
_PREDICT_KINDS = ("predict", "predict_nonfinite")


def _make_runners(graphs, target, state, alias=None, extra=None):
    try:
        return backend.make_runners(graphs, target, state, alias=alias, extra=extra)
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
    """Keras 3's name for a metric given as `identifier` (compile_utils.get_metric): a string as
    written; else the name of what it resolves to (a class is instantiated): its `name` (a metric,
    a loss object), a function's name in snake case ('<lambda>' -> 'lambda'), or its class's."""
    if isinstance(identifier, str):
        return identifier
    if isinstance(identifier, type):
        try:
            identifier = metrics_module.get(identifier)
        except Exception:        # (compile's own check names what is wrong with it)
            return to_snake_case(identifier.__name__)
    name = getattr(identifier, "name", None)
    if isinstance(name, str):
        return name
    return to_snake_case(getattr(identifier, "__name__", None) or type(identifier).__name__)


def _weighted_metric_names(metric_names, weighted_identifiers):
    """Keras 3's names for `weighted_metrics`: the metric's name, or 'weighted_{name}' when a plain
    metric has it already."""
    used = set(metric_names)
    names = []
    for name in _dedupe([_metric_display_name(m) for m in weighted_identifiers]):
        if name in used:
            name = f"weighted_{name}"
            name = next(n for n in [name] + [f"{name}_{i}" for i in range(1, len(used) + 2)]
                        if n not in used)
        used.add(name)
        names.append(name)
    return names


def _results(logs: dict, metric_names, return_dict: bool):
    """Keras's return convention: a dict, the loss alone without metrics, or [loss, *metrics]."""
    if return_dict:
        return logs
    values = [logs["loss"]] + [logs[name] for name in metric_names]
    return values[0] if len(values) == 1 else values


# ----------------------------------------------------------------------------------------------
# The Trainer: compile / fit / evaluate / predict
# ----------------------------------------------------------------------------------------------

_LOCK_CREATION = threading.Lock()
_FORKS = [0]   # forks this process descends through (see _one_call_at_a_time)


def _after_fork_in_child() -> None:
    global _LOCK_CREATION
    _LOCK_CREATION = threading.Lock()
    _FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _one_float32_batch(x, batch_size: int) -> bool:
    """Is x a float32 C-contiguous array of 1 to batch_size samples (predict's fast path)?"""
    if type(x) is not np.ndarray or x.dtype != _FLOAT32 or not x.ndim:
        return False
    return 0 < len(x) <= batch_size and x.flags.c_contiguous


def _one_call_at_a_time(method, name: str | None = None):
    """A model's programs keep their bound inputs and outputs between the native calls of one fit,
    evaluate or predict: calls from several Python threads take turns (each may still use every
    core), where they would read each other's rows.  `name`: the call's name for compile()'s
    checks (default: the method's)."""
    name = name or method.__name__

    @functools.wraps(method)
    def serialized(self, *args, **kwargs):
        with _model_lock(self, "_call_lock"):
            # (the depth of this call in the model's calls: a callback's call runs one deeper,
            # on runners of its own, see _Program.runner_at)
            depth = self.__dict__.get("_call_depth", 0)
            self.__dict__["_call_depth"] = depth + 1
            if depth == 0:     # (the outermost call: its thread and name, see compile())
                self.__dict__["_outer_call"] = (threading.get_ident(), name)
            try:
                return method(self, *args, **kwargs)
            finally:
                self.__dict__["_call_depth"] = depth
    return serialized


def _model_lock(model, key: str):
    """The model's RLock stored as `key` in its __dict__, made on first use.  NOTE: keyed by
    process (a count of forks, cheaper than os.getpid() on a one-sample predict): a child forked
    while another thread held the lock gets its own (the inherited one would stay held forever)."""
    owner = model.__dict__.get(key)
    if owner is None or owner[0] != _FORKS[0]:
        with _LOCK_CREATION:
            owner = model.__dict__.get(key)
            if owner is None or owner[0] != _FORKS[0]:
                owner = model.__dict__[key] = (_FORKS[0], threading.RLock())
    return owner[1]


def _state_lock(model):
    """The lock held around each native training step, which writes the model's weights and
    optimizer state in place, and by whatever reads or writes them from Python (`_holding_state`:
    get_weights, set_weights, save, pickling): a copy taken from another thread while the model
    trains falls between two steps."""
    return _model_lock(model, "_state_lock")


def _holding_state(method):
    """`method` with the model's state lock held (see _state_lock)."""
    @functools.wraps(method)
    def holding(self, *args, **kwargs):
        with _state_lock(self):
            return method(self, *args, **kwargs)
    return holding


class Trainer:
    """compile / fit / evaluate / predict for a model that can be traced (mixed into `Model`)."""

    def __init__(self):
        self.compiled = False
        self.optimizer = None
        self.loss = None          # as compile() was given it (Keras's `model.loss`)
        self._loss = None         # what it resolves to: a function, a Loss or an AUTO_NAMES name
        self.loss_weight = 1.0
        self._run_eagerly = False
        self._compiled_target = "llvm"
        self._metrics_result = {}
        # (spec, [loss tracker, metric objects], their logged names) for `metrics`
        self._metric_list = None
        self._last_spec = None
        self.stop_training = False
        self.stop_evaluating = False
        self.stop_predicting = False
        self.history = None
        self.steps_per_execution = 1
        self._metric_identifiers = []
        self._weighted_metric_identifiers = []
        self._programs = {}
        #: Seconds this model has spent making its compiled functions (tracing, passes, code
        #: generation, or loading them from the compile cache); the benchmark reports it.
        self.compile_seconds = 0.0

    # -- compile --------------------------------------------------------------------------------

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1, jit_compile="auto",
                auto_scale_loss=True, target="llvm"):
        """Configure training: optimizer, loss, metrics, and the target the graphs run on.

        Args:
            optimizer: a name ('adam', 'adamw', 'sgd', 'rmsprop', 'adagrad') or an optimizer object.
            loss: a name ('categorical_crossentropy', ...), a loss function or a Loss object.
            metrics: list of metric names ('accuracy', ...), functions or Metric objects.
            weighted_metrics: metrics that are weighted by `sample_weight` (or `class_weight`) in
                fit and evaluate; plain `metrics` ignore the weights, as in Keras.
            target: 'llvm' (native code through LLVM) or 'reference' (the numpy interpreter).
            run_eagerly: True is the same as target='reference'.
            steps_per_execution: callbacks' batch hooks run once per that many batches, with
                Keras 3's indices; training itself is the same (one native call per batch).
        """
        depth = self.__dict__.get("_call_depth", 0)
        if depth and self.__dict__["_outer_call"][0] == threading.get_ident() \
                and not (depth == 1 and self.__dict__.get("_compile_ok")):
            raise RuntimeError(
                "compile() was called from inside fit, evaluate or predict on the same model (a "
                "callback?): the running call keeps the loss, optimizer and metrics it started "
                "with, so the model is left as it was; call compile() after that call returns "
                "(or from on_train_end, on_test_end or on_predict_end)")
        if target not in backend.TARGETS:
            raise ValueError(f"Unknown target {target!r}; use one of {list(backend.TARGETS)}")
        # NOTE: Keras 2 took (optimizer, loss, metrics, ...) and Keras 3 takes (optimizer, loss,
        # loss_weights, metrics, ...); loss weights are numbers, so a third positional list of
        # anything else is the Keras 2 spelling of metrics.
        if metrics is None and isinstance(loss_weights, (list, tuple)) and loss_weights \
                and not any(isinstance(w, numbers.Number) for w in loss_weights):
            metrics, loss_weights = loss_weights, None
        loss_weight = _single_loss_weight(self._for_the_output(loss_weights, "loss_weights"))
        if not _is_int(steps_per_execution) or steps_per_execution < 1:
            raise ValueError("steps_per_execution must be a positive integer (the number of batches "
                             f"between batch hooks); got {steps_per_execution!r}")
        resolved_optimizer = optimizers.get(optimizer)
        given_loss = loss
        loss = self._for_the_output(loss, "loss")
        if isinstance(loss, (list, tuple)):
            if len(loss) != 1:
                raise OutputCountError(f"loss={loss!r} gives {len(loss)} losses, one per output, "
                                       "but kcompile models have one output: give one loss")
            (loss,) = loss
        if loss is not None and not (isinstance(loss, str) and loss in losses.AUTO_NAMES):
            loss = losses.get(loss)
        metrics = self._for_the_output(metrics, "metrics", nested=True)
        weighted_metrics = self._for_the_output(weighted_metrics, "weighted_metrics", nested=True)
        if metrics is None:
            metrics = []
        if not isinstance(metrics, (list, tuple)):
            raise ValueError("Expected `metrics` argument to be a list or tuple, e.g. "
                             f"metrics=['accuracy']. Received instead: metrics={metrics!r}")
        if weighted_metrics is None:
            weighted_metrics = []
        if not isinstance(weighted_metrics, (list, tuple)):
            raise ValueError("Expected `weighted_metrics` argument to be a list or tuple. Received "
                             f"instead: weighted_metrics={weighted_metrics!r}")
        for identifier in list(metrics) + list(weighted_metrics):
            metrics_module.check(identifier)
        self.optimizer = resolved_optimizer
        self.loss = given_loss
        self._loss = loss
        self.loss_weight = loss_weight
        self._metric_identifiers = [m for m in metrics if m is not None]
        self._weighted_metric_identifiers = [m for m in weighted_metrics if m is not None]
        self._run_eagerly = bool(run_eagerly)
        # Keras's flag (every graph here is compiled whatever it says): 'auto' is True, and False
        # with run_eagerly
        self._jit_compile = (not self._run_eagerly) if jit_compile == "auto" \
            else bool(jit_compile) and not self._run_eagerly
        self._compiled_target = target
        self._metrics_result = {}
        self._metric_list = None
        self._last_spec = None
        # NOTE: every step is one native call whatever steps_per_execution is; it only spaces the
        # batch hooks as Keras 3 does (see _BatchHooks), so the numbers equal those with 1.
        self.steps_per_execution = int(steps_per_execution)
        self.compiled = True
        self._on_structure_change()

    def _metric_names(self) -> tuple:
        """(names of `metrics`, names of `weighted_metrics`), as they are logged."""
        names = _dedupe([_metric_display_name(m) for m in self._metric_identifiers])
        return names, _weighted_metric_names(names, self._weighted_metric_identifiers)

    def _for_the_output(self, value, argument: str, nested: bool = False):
        """Keras's per-output spellings of a compile argument, for the model's one output: a dict
        keyed by the output's name, and (`nested`, metrics) a list holding one list."""
        if isinstance(value, dict):
            output = self.layers[-1].name if getattr(self, "layers", None) else None
            if len(value) != 1 or (output is not None and next(iter(value)) != output):
                raise ValueError(f"`{argument}` as a dict takes one entry, keyed by the name of the "
                                 f"model's one output ({output!r}); got the keys {list(value)}")
            value = next(iter(value.values()))
            if nested and value is not None and not isinstance(value, (list, tuple)):
                value = [value]
        elif nested and isinstance(value, (list, tuple)) and value \
                and all(isinstance(v, (list, tuple)) for v in value):
            if len(value) != 1:
                raise NotImplementedError(f"{argument}={value!r} gives {len(value)} lists, one per "
                                          "output, but kcompile models have one output")
            (value,) = value
        return value

    def _metric_direction(self, name: str) -> tuple:
        """(found, 'up' / 'down' / None) for the compiled metric logged as `name`."""
        if not getattr(self, "compiled", False):
            return False, None
        names, weighted_names = self._metric_names()
        for logged, identifier in [*zip(names, self._metric_identifiers),
                                   *zip(weighted_names, self._weighted_metric_identifiers)]:
            if logged == name:
                return True, metrics_module.direction(identifier)
        return False, None

    @property
    def metrics_names(self) -> list:
        names, weighted = self._metric_names()
        return ["loss"] + names + weighted

    @property
    def target(self) -> str:
        """What runs the graphs: the target compile() was given, or 'reference' with run_eagerly."""
        return "reference" if self._run_eagerly else self._compiled_target

    @property
    def run_eagerly(self) -> bool:
        """Keras's flag; True runs the graphs in the reference interpreter (target='reference')."""
        return self._run_eagerly

    @run_eagerly.setter
    def run_eagerly(self, value):
        value = bool(value)
        if value != self._run_eagerly:
            self._run_eagerly = value
            self._on_structure_change()

    @property
    def jit_compile(self) -> bool:
        """Keras's flag, as compile() left it: True unless compile(jit_compile=False) or
        run_eagerly (the graphs are compiled either way unless run_eagerly)."""
        return self.__dict__.get("_jit_compile", True) and not self._run_eagerly

    @jit_compile.setter
    def jit_compile(self, value):
        self._jit_compile = bool(value)

    @property
    def metrics(self) -> list:
        """Keras's `model.metrics`: [] before compile, then the loss tracker (a Mean named 'loss')
        and one object per compiled metric, named as logged.  Keras 3 lists its compiled metrics
        inside one 'compile_metrics' container; here they are listed themselves.  Their state is
        not the fit's (the compiled step keeps the sums), but each one's result() is its value
        after the last fit epoch, evaluation or batch call, as `get_metrics_result()` has them."""
        if not self.compiled:
            return []
        spec = self._last_spec
        if self._metric_list is None or self._metric_list[0] != spec:
            if spec is None:   # no targets seen yet: resolve names as for targets like the outputs
                shape = self.output_shape if self.built else (None, 2)
                spec = TargetSpec("f32", shape, shape)
            tracker = metrics_module.Mean(name="loss")
            entries = self._metric_objects(spec)
            # (objects, and the names they are logged under: a weighted twin or a second metric
            # of one name is logged as weighted_accuracy, a_1, ...)
            self._metric_list = (self._last_spec, [tracker] + [entry[1] for entry in entries],
                                 ["loss"] + [entry[0] for entry in entries])
            self._load_metric_results()
        return list(self._metric_list[1])

    def _set_metrics_result(self, logs) -> None:
        """The results of the last epoch, evaluation or batch call: what get_metrics_result()
        returns and, by logged name, what the objects in `metrics` give as their result()."""
        self._metrics_result = dict(logs)
        self._load_metric_results()

    def _load_metric_results(self) -> None:
        if self._metric_list is None:
            return
        for metric, name in zip(*self._metric_list[1:]):
            value = self._metrics_result.get(name)
            if isinstance(value, numbers.Real):
                metric._load_result(float(value))

    def _reset_metric_objects(self) -> None:
        """reset_metrics(): every object in `metrics` back to its initial state."""
        if self._metric_list is not None:
            for metric in self._metric_list[1]:
                metric.reset_state()

    def get_metrics_result(self) -> dict:
        """The loss and metrics of the last fit epoch, evaluation (validation included, as the
        metrics' state in Keras) or train/test_on_batch, by name as floats; {} before any.  In a
        callback's on_train_batch_end or on_test_batch_end: the running values, its logs."""
        return dict(self._metrics_result)

    def compile_from_config(self, config: dict) -> None:
        """compile() with the arguments `get_compile_config()` gave (Keras's counterpart)."""
        from kcompile import saving
        if not isinstance(config, dict):
            raise TypeError(f"compile_from_config takes the dict get_compile_config() returns; got "
                            f"{type(config).__name__}")
        saving.compile_from_config(self, config)

    def get_compile_config(self) -> dict | None:
        """The compile() arguments, as saved in a `.keras` file (Keras's keys plus `target`);
        None before compile."""
        from kcompile import saving
        config = saving._compile_config(self)
        if config is not None:
            config["jit_compile"] = self.jit_compile
        return config

    def _assert_compiled(self, method: str):
        if not self.compiled:
            raise ValueError(f"You must call `compile()` before calling `{method}()`: e.g. "
                             "model.compile(optimizer='adam', loss='categorical_crossentropy', "
                             "metrics=['accuracy']).")
        if self._loss is None:
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
            hint = _layout_hint(argument, shape[1:], expected[1:])
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
        self._check_embedding_ids(x, argument)
        return shape

    def _one_input(self, x):
        """x itself when given as a one-element list or tuple ([x]), as Keras takes the input of a
        single-input model; a list holding one sample (an array of one sample's rank) stays a batch
        of that one sample."""
        if isinstance(x, (list, tuple)) and len(x) == 1 and isinstance(x[0], np.ndarray) \
                and x[0].ndim >= 1:
            expected = self._known_input_shape()
            if expected is None or x[0].ndim == len(expected):
                return x[0]
        return x

    def _input_array(self, x, argument: str) -> np.ndarray:
        """x as the model's input array: `_one_input`, `numeric_array`, and as Keras 3 adjusts an
        input's rank (Functional._adjust_input_rank), a last axis of 1 added when the model's
        input ends in one that x lacks ((n,) for Input((1,)), (n, 28, 28) for Input((28, 28, 1)))
        or dropped when x has one more."""
        x = numeric_array(self._one_input(x), argument)
        expected = self._known_input_shape()
        if expected is None or x.ndim == 0:
            return x
        if x.ndim == len(expected) - 1 and expected[-1] == 1 and x.shape[1:] == expected[1:-1]:
            return x[..., None]
        if x.ndim == len(expected) + 1 and x.shape[-1] == 1 and x.shape[1:-1] == expected[1:]:
            return x[..., 0]
        return x

    def _check_embedding_ids(self, x: np.ndarray, argument: str) -> None:
        """Ids straight from the user's data (the input feeds an Embedding) must lie in
        [0, input_dim): checked here, as sparse labels are, before any step runs (inside the model
        an id out of range would only be clamped)."""
        # NOTE: on the one-sample predict path: no import or list copy here (each cost ~1 us)
        embedding = self._input_embedding()
        if embedding is not None:
            embedding.check_ids(x, argument)

    def _input_embedding(self):
        """The Embedding layer the model's input feeds directly (its ids), or None."""
        first = self._layers[0] if getattr(self, "_layers", None) else None
        return first if isinstance(first, Embedding) else None

    def _resolve_loss(self, given_shape, output_shape):
        if isinstance(self._loss, str) and self._loss in losses.AUTO_NAMES:
            is_binary, is_sparse = metrics_module.is_binary_or_sparse_categorical(given_shape,
                                                                                  output_shape)
            if is_binary:
                return losses.binary_crossentropy
            return (losses.sparse_categorical_crossentropy if is_sparse
                    else losses.categorical_crossentropy)
        return self._loss

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
                fix = ("class labels are never negative: map them to 0, 1, ... first"
                       if y.min() < 0 else
                       f"make the last layer Dense({int(y.max()) + 1}) or fix the labels")
                raise ValueError(f"`{argument}` holds class labels in [{int(y.min())}, {int(y.max())}], "
                                 f"but the model outputs {classes} classes (labels 0 to {classes - 1}): "
                                 f"{fix}.")
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

    def _prepare(self, x, y, argument_x, argument_y, convert_x=True):
        """Validate and convert one (x, y) pair; nothing about the model changes.  Without
        `convert_x`, x is validated but returned as given (evaluate converts it batch by batch)."""
        x = self._input_array(x, argument_x)
        y = numeric_array(_one_target(y, x), argument_y)
        _check_lengths(x, y, argument_x, argument_y)
        input_shape = self._check_inputs(x, argument_x)
        y, spec, loss = self._prepare_targets(y, input_shape, argument_y)
        return (_float_array(x) if convert_x else x), y, spec, loss, input_shape

    # -- programs -------------------------------------------------------------------------------

    def _state(self) -> dict:
        state = {v.path: v.buffer for v in self.weights}
        if self.optimizer is not None:
            state.update(self.optimizer.state())
        return state

    def _metric_objects(self, spec: TargetSpec):
        """(name, metric, weighted) for every compiled metric, resolved for these targets."""
        names, weighted_names = self._metric_names()
        objects = []
        for name, identifier in zip(names, self._metric_identifiers):
            objects.append((name, metrics_module.resolve(identifier, spec.given_shape,
                                                         self.output_shape), False))
        for name, identifier in zip(weighted_names, self._weighted_metric_identifiers):
            objects.append((name, metrics_module.resolve(identifier, spec.given_shape,
                                                         self.output_shape), True))
        return objects

    def _program_key(self, kind: str, spec, weighted: bool) -> tuple:
        key = (kind, spec, weighted)
        if kind == "train":
            key += (self.optimizer.trace_signature(),)
        return key

    def _trace(self, kind: str, spec, loss, weighted: bool):
        """(graph, readouts, type of y_pred or None) of the 'predict', 'eval' or 'train' program."""
        readouts: list = []
        y_pred_type: list = []
        if kind in _PREDICT_KINDS:
            # NOTE: "predict" takes its weights as finite: a compiled one-sample predict then reads
            # only the weight rows of nonzero inputs (half of a Fashion-MNIST image, most of a ReLU
            # layer's outputs).  _predict_program checks the promise and takes "predict_nonfinite"
            # when a weight holds inf or NaN, so that 0 * inf is NaN as numpy and Keras have it.
            return trace_predict(self, finite_weights=kind == "predict"), readouts, None
        metric_objects = self._metric_objects(spec)
        if kind == "eval":
            graph = trace_eval(self, loss, metric_objects, spec, weighted=weighted, readouts=readouts,
                               y_pred_type=y_pred_type)
        else:
            graph = trace_train(self, loss, metric_objects, self.optimizer, spec, weighted=weighted,
                                readouts=readouts, y_pred_type=y_pred_type)
        return graph, readouts, y_pred_type[0]

    def _program(self, kind: str, spec: TargetSpec | None = None, loss=None,
                 weighted: bool = False) -> _Program:
        """The traced graph and runner for 'predict', 'eval' or 'train' (weighted: with a
        'sample_weight' input), cached until the model, compile settings or optimizer change."""
        if spec is not None:
            self._last_spec = spec    # (which objects `metrics` lists)
        key = self._program_key(kind, spec, weighted)
        program = self._programs.get(key)
        if program is not None:
            return program
        started = time.perf_counter()
        try:
            return self._new_program(kind, spec, loss, weighted, key)
        finally:
            self.compile_seconds += time.perf_counter() - started

    def _new_program(self, kind, spec, loss, weighted, key) -> _Program:
        wanted = [(kind, spec, weighted)]
        if self.target == "llvm":
            # NOTE: compiled into one module, train, evaluate and predict share their GEMMs and most
            # kernels, and the three cost about half of what they cost one by one; so the first
            # program compiled brings along the cheaper ones a Keras user calls next.
            siblings = {"train": [("eval", spec, False), ("predict", None, False)],
                        "eval": [("predict", None, False)]}.get(kind, [])
            wanted += [s for s in siblings if self._program_key(*s) not in self._programs]
        names = {w: f"{w[0]}_weighted" if w[2] else w[0] for w in wanted}
        # A warm process finds the compiled programs by a description of the model and compile
        # settings, without tracing (kcompile.describe); else it traces, and the compile cache still
        # finds the machine code by the traced graphs.
        alias = self._describe_programs(wanted, loss)
        programs = None if alias is None else self._load_programs(alias, wanted, names, loss)
        if programs is None:
            programs = self._trace_and_compile(wanted, names, loss, alias)
        for w, program in programs.items():
            self._programs[self._program_key(*w)] = program
        return self._programs[key]

    def _trace_and_compile(self, wanted, names, loss, alias) -> dict:
        traced = {}
        for i, (k, s, w) in enumerate(wanted):
            try:
                traced[(k, s, w)] = self._trace(k, s, loss, w)
            except Exception:
                if i == 0:
                    raise
                # a sibling is only an optimization: it is traced again (and fails loudly) when asked for
        # what a process that loads these programs cannot read from the compiled signatures (the
        # passes keep a graph's inputs and outputs): the type of y_pred, for the metrics' readouts
        extra = {names[w]: None if y_pred_type is None else y_pred_type.to_json()
                 for w, (_, _, y_pred_type) in traced.items()}
        runners = _make_runners({names[w]: graph for w, (graph, _, _) in traced.items()}, self.target,
                                self._state(), alias=alias if len(traced) == len(wanted) else None,
                                extra=extra)
        return {w: _Program(graph, runners[names[w]], readouts)
                for w, (graph, readouts, _) in traced.items()}

    def _describe_programs(self, wanted, loss) -> str | None:
        """Everything the traced graphs of `wanted` are made from, as text (kcompile.describe), or None
        when that cannot be vouched for (a user's own layer, loss or metric code, another target)."""
        if self.target != "llvm":
            return None
        from kcompile.describe import Undescribable, describe, source_fingerprint
        try:
            parts = {
                "source": source_fingerprint(), "model": describe(type(self)),
                "input_shape": describe(tuple(self.input_shape)), "layers": describe(list(self.layers)),
                "weights": describe(list(self.weights)),
                "trainable": [v.path for v in self.trainable_weights],
                "loss": describe(loss), "loss_weight": describe(self.loss_weight),
                # what the losses' clipping traced (kcompile.backend.set_epsilon)
                "epsilon": losses.EPSILON,
                "optimizer": describe(self.optimizer),
                "metric_names": describe(self._metric_names()),
                "wanted": [[k, describe(s), w,
                            None if k in _PREDICT_KINDS else describe(self._metric_objects(s))]
                           for k, s, w in wanted]}
        except (Undescribable, RecursionError):     # (a structure too deep to walk: trace it)
            return None
        return json.dumps(parts, sort_keys=True)

    def _load_programs(self, alias, wanted, names, loss) -> dict | None:
        """The programs of `wanted` from the compile cache (filed under `alias` by a process that
        traced them), or None.  Nothing is traced: the runners' signatures come from the cache (the
        passes keep the traced graphs' inputs and outputs), and the metrics' readouts are traced on
        stand-ins for y and y_pred of the stored types."""
        if any(k == "train" for k, _, _ in wanted):
            self.optimizer.build(self.trainable_weights)   # the slots, as tracing would make them
        state = self._state()
        traces = {names[w]: (lambda w=w: self._trace(w[0], w[1], loss, w[2])[0]) for w in wanted}
        programs = {}
        try:
            # NOTE: a runner checks the state arrays against the stored signature; a mismatch (which
            # the description should rule out) means tracing, not an error
            found = backend.load_runners(alias, traces, state)
            if found is None:
                return None
            runners, extra = found
            for w in wanted:
                kind, spec, weighted = w
                runner = runners[names[w]]
                if not set(runner.feed_index) <= _FED:
                    return None
                readouts = []
                if kind not in _PREDICT_KINDS:
                    stored = ir.TensorType.from_json(extra[names[w]])
                    y_pred = B.arg("y_pred", stored.dtype, stored.shape)
                    _, readouts = _metric_outputs(self._metric_objects(spec), _target_input(spec, "f32"),
                                                  y_pred, _sample_weight_input(weighted, "f32"))
                    if any(name not in runner.result_types for r in readouts for name in r.outputs):
                        return None
                programs[w] = _Program(traces[names[w]], runner, readouts,
                                       (runner.input_types, runner.result_types))
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        return programs

    def _prepare_batch(self, batch, class_weight, weighted, argument: str):
        """One batch of a batch source, checked and converted: (x, y, sample_weight or None, spec,
        loss, input shape).  `weighted`: the program has a 'sample_weight' input (missing weights
        are ones)."""
        x, y, sample_weight = data_adapters.unpack_batch(batch, argument)
        if y is None:
            raise ValueError(f"Each batch of `{argument}` must be (x, y) or (x, y, sample_weight) to "
                             "compute a loss; got a batch without targets")
        # (named as variables, for the messages' hints: batch_x, validation_data_batch_x, ...)
        prefix = "" if argument == "x" else f"{argument}_"
        x_name, y_name = f"{prefix}batch_x", f"{prefix}batch_y"
        x = self._input_array(x, x_name)
        y = numeric_array(_one_target(y, x), y_name)
        _check_lengths(x, y, x_name, y_name)
        if class_weight is not None:
            if sample_weight is not None:
                raise ValueError("Arguments `sample_weight` and `class_weight` cannot be specified "
                                 "at the same time: a batch holds sample weights and fit was given "
                                 "class_weight.")
            sample_weight = data_adapters.class_weight_to_sample_weights(y, class_weight)
        if sample_weight is not None:
            if not weighted:
                raise ValueError(f"A batch of `{argument}` holds sample weights but the first batch "
                                 "did not; give every batch sample weights, or none")
            sample_weight = data_adapters.check_sample_weight(sample_weight, len(x),
                                                              f"{prefix}batch_sample_weight")
        elif weighted:
            sample_weight = np.ones(len(x), np.float32)      # (as Keras: no weights, weights of one)
        x, y, spec, loss, input_shape = self._prepare(x, y, x_name, y_name)
        return x, y, sample_weight, spec, loss, input_shape

    def _array_weights(self, y, sample_weight, class_weight, samples, argument="sample_weight"):
        """Per-sample weights for arrays: given, derived from class_weight, or None."""
        if class_weight is not None:
            if sample_weight is not None:
                raise ValueError("Arguments `sample_weight` and `class_weight` cannot be specified "
                                 "at the same time.")
            return data_adapters.class_weight_to_sample_weights(y, class_weight)
        if sample_weight is not None:
            return data_adapters.check_sample_weight(sample_weight, samples, argument)
        return None

    # -- fit ------------------------------------------------------------------------------------

    @_one_call_at_a_time
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Train for `epochs` epochs; returns a History of the per-epoch logs.

        `x` is an array of samples, with targets `y` and optional per-sample `sample_weight`, or a
        batch source: a generator, iterable or PyDataset-like sequence of (x, y) or
        (x, y, sample_weight) batches (`kcompile.data_adapters`), with optional `steps_per_epoch`.
        `class_weight` ({class index: weight}) weights every sample by its class.
        `validation_data` is (x, y), (x, y, sample_weight) or a batch source; `validation_steps`
        evaluates only its first that many batches (as Keras, the same ones every epoch). It is
        evaluated every `validation_freq` epochs, or after the epochs a list `validation_freq` names
        (counted from 1).
        """
        self._assert_compiled("fit")
        x, y, sample_weight = data_adapters.unpack_dataset(x, y, sample_weight)
        batch_size = check_batch_size(batch_size)
        validation_batch_size = (batch_size if validation_batch_size is None
                                 else check_batch_size(validation_batch_size))
        epochs = _check_count(epochs, "epochs")
        initial_epoch = _check_count(initial_epoch, "initial_epoch")
        verbose = check_verbose(verbose)
        steps_per_epoch = _check_steps(steps_per_epoch, "steps_per_epoch")
        validation_steps = _check_steps(validation_steps, "validation_steps")
        class_weight = data_adapters.check_class_weight(class_weight)
        if class_weight is not None and sample_weight is not None:
            raise ValueError("Arguments `sample_weight` and `class_weight` cannot be specified at the "
                             "same time.")
        validate_after = _validation_epochs(validation_freq)
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0 <= validation_split < 1:
            raise ValueError("validation_split must be a float in [0, 1) (the fraction of the data "
                             f"held out); got validation_split={validation_split!r}")

        if data_adapters.is_batch_source(x):
            if y is not None or sample_weight is not None:
                raise ValueError("When `x` is a generator (or another source of batches), `y` and "
                                 "`sample_weight` must not be given: each batch is an (x, y) or "
                                 "(x, y, sample_weight) tuple.")
            if validation_split:
                raise ValueError("`validation_split` is only supported for arrays; with a generator "
                                 "pass `validation_data`.")
            stream = data_adapters.BatchStream(x, steps_per_epoch, shuffle, "x")
            first = stream.peek()
            weighted = class_weight is not None or data_adapters.unpack_batch(first, "x")[2] is not None
            _, _, _, spec, loss, input_shape = self._prepare_batch(first, class_weight, weighted, "x")
            steps = stream.steps

            def train_epoch(callback_list):
                return self._train_stream(stream, class_weight, weighted, callback_list)
        else:
            x = self._input_array(x, "x")
            y = numeric_array(_one_target(y, x), "y")
            _check_lengths(x, y, "x", "y")
            if sample_weight is not None:
                sample_weight = data_adapters.check_sample_weight(sample_weight, len(x))
            if validation_data is None and validation_split:
                # As Keras: the LAST fraction of the data (and of the sample weights), before any
                # shuffling.
                split_at = int(math.floor(len(x) * (1.0 - validation_split)))
                if split_at == 0 or split_at == len(x):
                    raise ValueError(f"Training data contains {len(x)} samples, which is not sufficient "
                                     "to split it into a validation and training set as specified by "
                                     f"`validation_split={validation_split}`. Either provide more data, "
                                     "or a different value for the `validation_split` argument.")
                validation_data = (x[split_at:], y[split_at:],
                                   None if sample_weight is None else sample_weight[split_at:])
                x, y = x[:split_at], y[:split_at]
                if sample_weight is not None:
                    sample_weight = sample_weight[:split_at]
            sample_weight = self._array_weights(y, sample_weight, class_weight, len(x))
            x, y, spec, loss, input_shape = self._prepare(x, y, "x", "y")
            weighted = sample_weight is not None
            plan = _ArrayEpochs(len(x), batch_size, shuffle, steps_per_epoch)
            steps = plan.steps

            def train_epoch(callback_list):
                return self._train_epoch(train, x, y, sample_weight, plan, callback_list)
        validation = self._prepare_validation(validation_data, validation_steps)
        self._ensure_built(input_shape)
        train = self._program("train", spec, loss, weighted)
        run_validation = self._validation_runner(validation, validation_batch_size)

        callback_list = _make_callbacks(self, callbacks, verbose, epochs, steps, add_history=True)
        from kcompile.callbacks import History
        history = next(c for c in callback_list.callbacks if isinstance(c, History))
        self.stop_training = False
        self.history = history
        self._initial_epoch = None
        callback_list.on_train_begin()
        # (a callback that restored a backup, BackupAndRestore, says where training resumes)
        if self._initial_epoch is not None:
            initial_epoch = self._initial_epoch
            self._initial_epoch = None
        epoch_logs = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            logs = train_epoch(callback_list)
            if logs is None:  # a generator that ran out of batches (warned)
                break
            self._set_metrics_result(logs)
            epoch_logs = logs
            if run_validation is not None and validate_after(epoch + 1):
                val_logs = run_validation(callback_list)
                epoch_logs.update({"val_" + k: v for k, v in val_logs.items()})
                # every key in order, validation's among them, as Keras on JAX logs them
                epoch_logs = dict(sorted(epoch_logs.items()))
            callback_list.on_epoch_end(epoch, epoch_logs)
            if self.stop_training:
                break
        with self._ending("fit"):
            callback_list.on_train_end(logs=epoch_logs)
        self.history = history
        return history

    @contextlib.contextmanager
    def _ending(self, call: str):
        """Around the last hook of `call` ('fit', 'evaluate', 'predict'): compile() is allowed
        there when that call is the outermost one (not a validation inside fit, nor a callback's
        call), as nothing of it is left to run."""
        previous = self.__dict__.get("_compile_ok", False)
        self.__dict__["_compile_ok"] = self.__dict__.get("_outer_call", (None, None))[1] == call
        try:
            yield
        finally:
            self.__dict__["_compile_ok"] = previous

    def _prepare_validation(self, validation_data, validation_steps):
        """Validation data checked and converted (nothing about the model changes), or None."""
        if validation_data is None:
            return None
        if data_adapters.is_batch_source(validation_data):
            stream = data_adapters.BatchStream(validation_data, validation_steps, False,
                                               "validation_data", replay=True)
            first = stream.peek()
            weighted = data_adapters.unpack_batch(first, "validation_data")[2] is not None
            _, _, _, spec, loss, _ = self._prepare_batch(first, None, weighted, "validation_data")
            return "stream", stream, weighted, spec, loss
        val_x, val_y, val_weight = _unpack_validation_data(validation_data)
        val_x, val_y, spec, loss, _ = self._prepare(val_x, val_y, "validation x", "validation y")
        if val_weight is not None:
            val_weight = data_adapters.check_sample_weight(val_weight, len(val_x),
                                                           "validation sample_weight")
        return "arrays", (val_x, val_y, val_weight, validation_steps), val_weight is not None, spec, loss

    def _validation_runner(self, validation, batch_size):
        """A function (callback_list) -> validation logs, its eval program compiled now."""
        if validation is None:
            return None
        kind, data, weighted, spec, loss = validation
        program = self._program("eval", spec, loss, weighted)
        if kind == "stream":
            def evaluate_stream(callback_list):
                data.rewind()   # the same batches every epoch, when the source can start over
                return self._evaluate_stream(data, weighted, callback_list, "validation_data")
            return evaluate_stream
        # As Keras: `validation_steps` takes the first that many batches of the arrays, every epoch.
        val_x, val_y, val_weight, validation_steps = data
        return lambda callback_list: self._evaluate_arrays(program, val_x, val_y, val_weight,
                                                           batch_size, callback_list, validation_steps)

    def _train_epoch(self, program, x, y, sample_weight, plan, callback_list) -> dict:
        order, first_batch, steps = plan.epoch()
        n, batch_size = len(x), plan.batch_size
        totals = _Totals(program)
        hooks = _BatchHooks(callback_list, "on_train_batch_begin", "on_train_batch_end",
                            "on_batch_begin", "on_batch_end")
        # NOTE: one native call per step does everything per step: gathers the batch through the
        # epoch's order, bumps the dropout seed, adds the loss and metric sums (codegen/step.py).
        seed = np.full((), next_seed() & 0xFFFFFFFF, np.uint32)
        runner = self._runner(program)
        feeds = {"x": x, "y": y, "seed": seed}
        if sample_weight is not None:
            feeds["sample_weight"] = sample_weight
        accumulators = runner.bind_epoch(feeds, index=order, max_rows=min(batch_size, n),
                                         counters=("seed",), accumulate=totals.accumulate())
        return self._run_steps(runner, totals, accumulators, hooks, steps, first_batch, batch_size,
                               n, stoppable="stop_training")

    def _run_steps(self, runner, totals, accumulators, hooks, steps, first_batch, batch_size, n,
                   stoppable) -> dict:
        """The steps of an epoch bound with runner.bind_epoch: one native call each, the logs read
        from the accumulators only when a hook wants them.  `stoppable`: the model's flag that ends
        the loop early when a callback sets it ('stop_training', 'stop_evaluating')."""
        step_fn = runner.step
        state = _state_lock(self)
        seen = 0
        with self._governed() as tick:
            for step in range(steps):
                start = (first_batch + step) * batch_size
                rows = min(start + batch_size, n) - start
                if hooks.begin:
                    hooks.call_begin(step)
                with state:
                    step_fn(rows, start)
                tick(rows)
                seen += rows
                if hooks.end_due(step, steps - 1):
                    totals.load(accumulators, seen)
                    hooks.call_end(step, totals.logs())
                if getattr(self, stoppable) and hooks.execution_ends(step, steps - 1):
                    break
        totals.load(accumulators, seen)
        return totals.logs()

    def _governed(self):
        """The thread count adapted over a loop's steps (codegen.governor), for compiled code."""
        from codegen import governor
        return governor.governed(self.target == "llvm")

    def _train_stream(self, stream, class_weight, weighted, callback_list) -> dict | None:
        """One epoch over a batch source; None when it had no batch left."""
        totals = None
        hooks = _BatchHooks(callback_list, "on_train_batch_begin", "on_train_batch_end",
                            "on_batch_begin", "on_batch_end")
        last_step = stream.steps - 1 if stream.steps else -1
        seed = np.zeros((), np.uint32)
        seed_base = next_seed()
        for step, batch in enumerate(stream.epoch()):
            if hooks.begin:
                hooks.call_begin(step)
            x, y, sample_weight, spec, loss, _ = self._prepare_batch(batch, class_weight, weighted, "x")
            program = self._program("train", spec, loss, weighted)
            if totals is None:
                totals = _Totals(program)
            feeds = {"x": x, "y": y, "seed": seed}
            if weighted:
                feeds["sample_weight"] = sample_weight
            seed[...] = (seed_base + step) & 0xFFFFFFFF
            runner = self._runner(program)
            runner.bind(feeds)
            with _state_lock(self):
                runner.call(len(x), 0)
            totals.add(runner.output, len(x))
            if hooks.end_due(step, last_step):
                hooks.call_end(step, totals.logs())
            if self.stop_training and hooks.execution_ends(step, last_step):
                break
        if totals is not None:
            hooks.finish(step, totals.logs)
        if stream.ran_out:
            self.stop_training = True
        return None if totals is None else totals.logs()

    # -- single batches -------------------------------------------------------------------------

    def _batch_inputs(self, x, y, sample_weight, class_weight):
        x = self._input_array(x, "x")
        y = numeric_array(_one_target(y, x), "y")
        _check_lengths(x, y, "x", "y")
        sample_weight = self._array_weights(y, sample_weight, data_adapters.check_class_weight(
            class_weight), len(x))
        x, y, spec, loss, input_shape = self._prepare(x, y, "x", "y")
        self._ensure_built(input_shape)
        feeds = {"x": x, "y": y}
        if sample_weight is not None:
            feeds["sample_weight"] = sample_weight
        return feeds, spec, loss, len(x)

    @_one_call_at_a_time
    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        """One optimizer step on this batch; its loss (and metrics, for this batch alone)."""
        self._assert_compiled("train_on_batch")
        feeds, spec, loss, rows = self._batch_inputs(x, y, sample_weight, class_weight)
        program = self._program("train", spec, loss, "sample_weight" in feeds)
        feeds["seed"] = np.asarray(next_seed() & 0xFFFFFFFF, np.uint32)
        runner = self._runner(program)
        runner.bind(feeds)
        with _state_lock(self):
            runner.call(rows, 0)
        totals = _Totals(program)
        totals.add(runner.output, rows)
        logs = totals.logs()
        self._set_metrics_result(logs)
        return _results(logs, program.metric_names, return_dict)

    @_one_call_at_a_time
    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """The loss (and metrics) of this batch, without training."""
        self._assert_compiled("test_on_batch")
        feeds, spec, loss, rows = self._batch_inputs(x, y, sample_weight, None)
        program = self._program("eval", spec, loss, "sample_weight" in feeds)
        runner = self._runner(program)
        runner.bind(feeds)
        runner.call(rows, 0)
        totals = _Totals(program)
        totals.add(runner.output, rows)
        logs = totals.logs()
        self._set_metrics_result(logs)
        return _results(logs, program.metric_names, return_dict)

    def _predict_fast(self, x, batch_size: int = DEFAULT_BATCH_SIZE):
        """predict's answer for a float32 C-contiguous array of at most one batch whose samples have
        the shape the compiled predict function takes, without the general path's conversions and
        callbacks (what it costs next to the native call is most of a one-sample predict); None for
        anything else, which the general path then handles (and checks).

        It takes the model's call lock itself (see _one_call_at_a_time), without the decorator's
        frame and bookkeeping: nothing it runs calls back into Python, so no call can start inside
        it.  A call made inside another one (a callback's predict) is left to the general path,
        whose runner is its own.  NOTE: a one-sample predict's Python (a tiny model, best of 40
        windows of 1000 calls, throwaway /tmp/kc14/proto2.py): 6.5 us when predict was all
        wrapped, 5.2-5.4 us so; of it the native call is 0.9 us."""
        if not _one_float32_batch(x, batch_size):
            return None
        owner = self.__dict__.get("_call_lock")
        if owner is None or owner[0] != _FORKS[0]:
            return None    # (the general path makes the lock)
        with owner[1]:
            if self.__dict__.get("_call_depth"):
                return None
            return self._predict_batch_now(x)

    def _predict_batch_now(self, x):
        """The compiled predict program's outputs for x (a float32 C-contiguous array of one
        batch; the call lock held), or None when that program cannot take x."""
        program = self._programs.get(_PREDICT_KEY)
        if program is None or x.shape[1:] != program.row_shape or not self._weights_finite(program):
            return None
        self._check_embedding_ids(x, "x")
        return self._runner(program).call_on_copy("x", x, "y_pred")

    def _runner(self, program: _Program):
        """The runner of `program` for the call in progress (see _Program.runner_at)."""
        return program.runner_at(self.__dict__.get("_call_depth", 0))

    def _predict_program(self) -> _Program:
        """The predict program for the weights as they are now (see _trace and _weights_finite)."""
        program = self._program("predict")
        return program if self._weights_finite(program) else self._program("predict_nonfinite")

    def _weights_finite(self, program: _Program) -> bool:
        """Whether the weights hold no inf or NaN, as `program` (traced with its weights marked
        finite) needs; checked again only after a write to a persistent buffer (a train step of
        either target, an assign: codegen.buffers.writes)."""
        now = buffers.writes()
        checked, finite = program.finite
        if checked != now:
            # NOTE: a float sum is finite only if every term is (an inf or NaN term makes it inf or
            # NaN): one pass over each weight, 0.12 ms for W1's 2.7 MB (median of 200 in a
            # throwaway script).  A sum that overflows on finite terms only sends predict to the
            # unmarked program, which is exact for any weights.
            finite = all(np.isfinite(np.add.reduce(w.buffer, axis=None)) for w in self.weights)
            program.finite = (now, finite)
        return finite

    def predict_on_batch(self, x):
        """The model's outputs for x, in one call."""
        out = self._predict_fast(x, len(x) if getattr(x, "ndim", 1) and hasattr(x, "__len__") else 0)
        return self._predict_on_batch(x) if out is None else out

    def _predict_on_batch(self, x):
        x = self._input_array(x, "x")
        input_shape = self._check_inputs(x, "x")
        x = _float_array(x)
        self._ensure_built(input_shape)
        runner = self._runner(self._predict_program())
        runner.bind({"x": x})
        runner.call(len(x), 0)
        return np.array(runner.output("y_pred", len(x)), dtype=np.float32, copy=True)

    _predict_on_batch = _one_call_at_a_time(_predict_on_batch, "predict_on_batch")

    # -- evaluate -------------------------------------------------------------------------------

    @_one_call_at_a_time
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False):
        """Loss and metrics on (x, y) (or a batch source's (x, y[, sample_weight]) batches, `steps`
        of them): `[loss, *metrics]`, the loss alone without metrics, or a dict."""
        self._assert_compiled("evaluate")
        x, y, sample_weight = data_adapters.unpack_dataset(x, y, sample_weight)
        batch_size = check_batch_size(batch_size)
        verbose = check_verbose(verbose)
        steps = _check_steps(steps, "steps")
        if data_adapters.is_batch_source(x):
            if y is not None or sample_weight is not None:
                raise ValueError("When `x` is a generator (or another source of batches), `y` and "
                                 "`sample_weight` must not be given: each batch is an (x, y) or "
                                 "(x, y, sample_weight) tuple.")
            stream = data_adapters.BatchStream(x, steps, False, "x")
            first = stream.peek()
            weighted = data_adapters.unpack_batch(first, "x")[2] is not None
            _, _, _, spec, loss, input_shape = self._prepare_batch(first, None, weighted, "x")
            self._ensure_built(input_shape)
            program = self._program("eval", spec, loss, weighted)
            callback_list = _make_callbacks(self, callbacks, verbose, 1, stream.steps)
            logs = self._evaluate_stream(stream, weighted, callback_list, "x")
        else:
            x, y, spec, loss, input_shape = self._prepare(x, y, "x", "y", convert_x=False)
            if sample_weight is not None:
                sample_weight = data_adapters.check_sample_weight(sample_weight, len(x))
            self._ensure_built(input_shape)
            program = self._program("eval", spec, loss, sample_weight is not None)
            total_steps = -(-len(x) // batch_size)
            callback_list = _make_callbacks(self, callbacks, verbose, 1,
                                            total_steps if steps is None else min(steps, total_steps))
            logs = self._evaluate_arrays(program, x, y, sample_weight, batch_size, callback_list,
                                         steps)
        return _results(logs, program.metric_names, return_dict)

    def _evaluate_arrays(self, program, x, y, sample_weight, batch_size, callback_list,
                         max_steps=None) -> dict:
        n = len(x)
        steps = -(-n // batch_size)
        if max_steps is not None:
            steps = min(steps, max_steps)
        runner = self._runner(program)
        totals = _Totals(program)
        hooks = _BatchHooks(callback_list, "on_test_batch_begin", "on_test_batch_end")
        self.stop_evaluating = False   # (a callback may set it, as in Keras 3)
        callback_list.on_test_begin()
        if _fed_as_is(x):
            feeds = {"x": x, "y": y}
            if sample_weight is not None:
                feeds["sample_weight"] = sample_weight
            accumulators = runner.bind_epoch(feeds, accumulate=totals.accumulate())
            logs = self._run_steps(runner, totals, accumulators, hooks, steps, 0, batch_size, n,
                                   stoppable="stop_evaluating")
        else:
            for step in range(steps):
                start = step * batch_size
                stop = min(start + batch_size, n)
                if hooks.begin:
                    hooks.call_begin(step)
                feeds = {"x": _float_array(x[start:stop]), "y": np.ascontiguousarray(y[start:stop])}
                if sample_weight is not None:
                    feeds["sample_weight"] = np.ascontiguousarray(sample_weight[start:stop])
                runner.bind(feeds)
                runner.call(stop - start, 0)
                totals.add(runner.output, stop - start)
                if hooks.end_due(step, steps - 1):
                    hooks.call_end(step, totals.logs())
                if self.stop_evaluating and hooks.execution_ends(step, steps - 1):
                    break
            logs = totals.logs()
        with self._ending("evaluate"):
            callback_list.on_test_end(logs)
        self._set_metrics_result(logs)
        return logs

    def _evaluate_stream(self, stream, weighted, callback_list, argument) -> dict:
        totals = None
        hooks = _BatchHooks(callback_list, "on_test_batch_begin", "on_test_batch_end")
        last_step = stream.steps - 1 if stream.steps else -1
        self.stop_evaluating = False   # (a callback may set it, as in Keras 3)
        callback_list.on_test_begin()
        for step, batch in enumerate(stream.epoch()):
            if hooks.begin:
                hooks.call_begin(step)
            x, y, sample_weight, spec, loss, _ = self._prepare_batch(batch, None, weighted, argument)
            program = self._program("eval", spec, loss, weighted)
            if totals is None:
                totals = _Totals(program)
            feeds = {"x": x, "y": y}
            if weighted:
                feeds["sample_weight"] = sample_weight
            runner = self._runner(program)
            runner.bind(feeds)
            runner.call(len(x), 0)
            totals.add(runner.output, len(x))
            if hooks.end_due(step, last_step):
                hooks.call_end(step, totals.logs())
            if self.stop_evaluating and hooks.execution_ends(step, last_step):
                break
        if totals is not None:
            hooks.finish(step, totals.logs)
        logs = {} if totals is None else totals.logs()
        with self._ending("evaluate"):
            callback_list.on_test_end(logs)
        self._set_metrics_result(logs)
        return logs

    # -- predict --------------------------------------------------------------------------------

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """The model's outputs for every sample of x, computed `batch_size` samples at a time (or for
        every batch of a batch source, `steps` of them)."""
        # NOTE: the one-sample predict's Python is most of what it costs next to its native call:
        # the common arguments (verbose=0, an int or no batch_size, nothing else) are recognized
        # before the general checks (~1 us of a ~15 us call).
        if callbacks is None and steps is None and verbose == 0 and type(verbose) is int \
                and (batch_size is None or type(batch_size) is int and batch_size > 0):
            out = self._predict_fast(x, DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
            if out is not None:
                return out
        return self._predict(x, batch_size, verbose, steps, callbacks)

    def _predict(self, x, batch_size, verbose, steps, callbacks):
        batch_size = check_batch_size(batch_size)
        verbose = check_verbose(verbose)
        steps = _check_steps(steps, "steps")
        if callbacks is None and steps is None and verbose == 0 and _one_float32_batch(x, batch_size):
            out = self._predict_batch_now(x)
            if out is not None:
                return out
        if data_adapters.is_batch_source(x):
            return self._predict_stream(data_adapters.BatchStream(x, steps, False, "x"), verbose,
                                        callbacks)
        x = self._input_array(x, "x")
        input_shape = self._check_inputs(x, "x")
        self._ensure_built(input_shape)
        program = self._predict_program()
        n = len(x) if steps is None else min(len(x), steps * batch_size)
        steps = -(-n // batch_size)
        outputs = np.empty((n,) + tuple(self.output_shape[1:]), np.float32)
        callback_list = _make_callbacks(self, callbacks, verbose, 1, steps)
        hooks = _BatchHooks(callback_list, "on_predict_batch_begin", "on_predict_batch_end")
        runner = self._runner(program)
        in_place = _fed_as_is(x)
        if in_place:
            runner.bind({"x": x})
        writes = buffers.writes()
        self.stop_predicting = False   # (a callback may set it, as in Keras 3)
        callback_list.on_predict_begin()
        with self._governed() as tick:
            for step in range(steps):
                start = step * batch_size
                stop = min(start + batch_size, n)
                if hooks.begin:
                    hooks.call_begin(step)
                if buffers.writes() != writes:
                    # a callback changed the weights: the program for them (one with weights marked
                    # finite skips rows that an inf or NaN would have made NaN)
                    program, writes = self._predict_program(), buffers.writes()
                    runner = self._runner(program)
                    if in_place:
                        runner.bind({"x": x})
                if in_place:
                    runner.call(stop - start, start)
                else:
                    runner.bind({"x": _float_array(x[start:stop])})
                    runner.call(stop - start, 0)
                tick(stop - start)
                batch_out = runner.output("y_pred", stop - start)
                outputs[start:stop] = batch_out
                if hooks.end_due(step, steps - 1):
                    # (the batch's own rows of the result, not the program's output buffer, which the
                    # next batch overwrites: a callback may keep them)
                    first = hooks.execution_start(step) * batch_size   # (the execution's rows)
                    hooks.call_end(step, {"outputs": outputs[first:stop]})
                if self.stop_predicting and hooks.execution_ends(step, steps - 1):
                    outputs = outputs[:stop]
                    break
        with self._ending("predict"):
            callback_list.on_predict_end()
        return outputs

    _predict = _one_call_at_a_time(_predict, "predict")

    def _predict_stream(self, stream, verbose, callbacks):
        first = data_adapters.unpack_batch(stream.peek(), "x")[0]
        self._ensure_built(self._check_inputs(self._input_array(first, "x (a batch)"), "x (a batch)"))
        runner, writes = self._runner(self._predict_program()), buffers.writes()
        callback_list = _make_callbacks(self, callbacks, verbose, 1, stream.steps)
        hooks = _BatchHooks(callback_list, "on_predict_batch_begin", "on_predict_batch_end")
        last_step = stream.steps - 1 if stream.steps else -1
        outputs = []
        self.stop_predicting = False   # (a callback may set it, as in Keras 3)
        callback_list.on_predict_begin()
        for step, batch in enumerate(stream.epoch()):
            if hooks.begin:
                hooks.call_begin(step)
            x = self._input_array(data_adapters.unpack_batch(batch, "x")[0], "x (a batch)")
            self._check_inputs(x, "x (a batch)")
            x = _float_array(x)
            if buffers.writes() != writes:   # (a callback changed the weights: see predict)
                runner, writes = self._runner(self._predict_program()), buffers.writes()
            runner.bind({"x": x})
            runner.call(len(x), 0)
            batch_out = np.array(runner.output("y_pred", len(x)), dtype=np.float32, copy=True)
            outputs.append(batch_out)
            if hooks.end_due(step, last_step):
                executed = outputs[hooks.execution_start(step):]
                hooks.call_end(step, {"outputs": np.concatenate(executed)})
            if self.stop_predicting and hooks.execution_ends(step, last_step):
                break
        if outputs:
            last = len(outputs) - 1
            hooks.finish(last, lambda: {"outputs":
                                        np.concatenate(outputs[hooks.execution_start(last):])})
        with self._ending("predict"):
            callback_list.on_predict_end()
        if not outputs:
            return np.empty((0,) + tuple(self.output_shape[1:]), np.float32)
        return np.concatenate(outputs)


class _ArrayEpochs:
    """Which batches of an array each epoch trains on.  Without `steps_per_epoch`, a full pass per
    epoch (reshuffled).  With it, as Keras 3's EpochIterator: an epoch takes that many batches and
    the next one continues where it stopped; an epoch ends early (with a warning) at the end of a
    pass, and the next starts a new pass."""

    def __init__(self, samples: int, batch_size: int, shuffle: bool, steps_per_epoch=None):
        self.samples = samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.steps_per_epoch = steps_per_epoch
        self.batches = -(-samples // batch_size)
        self.order = None
        self.next_batch = self.batches  # the first epoch starts a pass

    @property
    def steps(self) -> int:
        return self.batches if self.steps_per_epoch is None else self.steps_per_epoch

    def epoch(self):
        """(row order or None for in-place rows, first batch index, number of batches)."""
        if self.next_batch >= self.batches:
            self.order = get_generator().permutation(self.samples) if self.shuffle else None
            self.next_batch = 0
        count = self.batches - self.next_batch
        if self.steps_per_epoch is not None:
            if self.steps_per_epoch > count:
                warnings.warn("Your input ran out of data; interrupting training. Make sure that your "
                              "dataset or generator can generate at least `steps_per_epoch * epochs` "
                              "batches.", stacklevel=3)
            count = min(count, self.steps_per_epoch)
        first = self.next_batch
        self.next_batch += count
        return self.order, first, count
