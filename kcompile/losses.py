"""Loss functions, as ``keras.losses``: functions, classes, and names, all accepted by `compile`.

A loss function maps (y_true, y_pred) to one value per sample (the last axis reduced); a `Loss`
object then multiplies those by the sample weights, if any, and reduces them to the scalar the
optimizer minimizes: by default 'sum_over_batch_size', the sum divided by the number of values (the
batch size, NOT the sum of the weights: Keras 3's rule; 'mean_with_sample_weight' divides by the
weights' sum).  The formulas are Keras 3's, written in IR primitives:

- categorical_crossentropy: probabilities are renormalized (p / sum p), clipped to
  [1e-7, 1 - 1e-7] and `-sum(y * log p)` taken over the last axis; `from_logits=True` uses
  log_softmax instead; label smoothing mixes y with the uniform distribution;
- sparse_categorical_crossentropy: the same on integer labels, one-hot encoded in the graph
  (`iota` compared with the labels);
- binary_crossentropy: `-(y log p + (1 - y) log(1 - p))` with p clipped to [1e-7, 1 - 1e-7], or
  `-(y log_sigmoid(z) + (1 - y) log_sigmoid(-z))` from logits; the mean over the last axis;
- mean_squared_error, mean_absolute_error, mean_absolute_percentage_error,
  mean_squared_logarithmic_error, huber (delta), log_cosh, hinge, squared_hinge, categorical_hinge,
  poisson, kl_divergence (both arguments clipped to [1e-7, 1]), cosine_similarity.

Called on numpy arrays instead of IR values, every function and object runs eagerly on the reference
interpreter and returns numpy, so `losses.categorical_crossentropy(y, p)` works as in Keras.
"""
from __future__ import annotations

import math

import numpy as np

import ir
from ir import Node
from ir import build as B
from ir.graph import BatchAxisError

from kcompile import activations
from kcompile.layers.layer import format_shape, to_snake_case
from kcompile.schedules import FLOAT32_MAX

EPSILON = 1e-7  # keras.backend.epsilon()

REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", "none", None)


def eager_arrays(y_true, y_pred, sample_weight=None) -> list:
    """The arrays of an eager loss or metric call, float as in Keras whatever their dtype (integer
    lists are common in examples; the sparse functions take float class ids too), with one row per
    sample each: a sample weight of one number weighs every sample.  Rows that disagree are a
    ValueError naming the arguments."""
    arrays = [np.asarray(y_true, np.float32), np.asarray(y_pred, np.float32)]
    rows = [len(a) if a.ndim else None for a in arrays]
    if None not in rows and rows[0] != rows[1]:
        raise ValueError(f"y_true has {rows[0]} rows and y_pred has {rows[1]}: they must have one "
                         "row per sample")
    if sample_weight is None:
        return arrays
    weight = np.asarray(sample_weight, np.float32)
    if rows[1] is not None and weight.size == 1:
        weight = np.full((rows[1],) + weight.shape[1:], weight.reshape(-1)[0], np.float32)
    elif rows[1] is not None and (not weight.ndim or len(weight) != rows[1]):
        raise ValueError(f"sample_weight has shape {weight.shape} but y_pred has {rows[1]} rows: give "
                         "one weight per sample, or one number for all")
    return arrays + [weight]


def _eager(fn, *arrays, **kwargs):
    """`fn` run on numpy arrays (y_true, y_pred[, sample_weight]), as `eager_arrays` makes them."""
    from kcompile.layers.layer import call_eagerly
    return call_eagerly(lambda *nodes: fn(*nodes, **kwargs), *eager_arrays(*arrays))


def _is_traced(*values) -> bool:
    return any(isinstance(v, Node) for v in values)


def squeeze_or_expand_to_same_rank(y_true: Node, y_pred: Node):
    """Make the ranks agree as Keras does before comparing: when one has a trailing axis of size 1
    the other lacks, a rank-1 other gains that axis ((N,) against (N, 1): one value per sample), and
    otherwise the axis is dropped."""
    def fit(longer, shorter):
        if shorter.type.rank == 1:
            return longer, B.reshape(shorter, shorter.shape + (1,))
        return B.reshape(longer, longer.shape[:-1]), shorter

    if y_true.type.rank == y_pred.type.rank - 1 and y_pred.shape[-1] == 1:
        y_pred, y_true = fit(y_pred, y_true)
    elif y_pred.type.rank == y_true.type.rank - 1 and y_true.shape[-1] == 1:
        y_true, y_pred = fit(y_true, y_pred)
    return y_true, y_pred


def _check_same_shape(y_true: Node, y_pred: Node, function: str):
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{function}: arguments `y_true` and `y_pred` must have the same shape. "
                         f"Received: y_true.shape={format_shape(y_true.shape)}, "
                         f"y_pred.shape={format_shape(y_pred.shape)}")


def _check_axis(axis, function):
    if axis not in (-1,):
        raise NotImplementedError(f"{function} supports axis=-1 only; got axis={axis}")


def _clipped_probabilities(p: Node) -> Node:
    """Predicted class probabilities normalized over the last axis and clipped to [eps, 1 - eps]."""
    return B.clip(B.div(p, B.reduce_sum(p, -1, keepdims=True)), EPSILON, 1.0 - EPSILON)


def _log_probabilities(y_pred: Node, from_logits: bool) -> Node:
    if from_logits:
        return B.log_softmax(y_pred, -1)
    return B.log(_clipped_probabilities(y_pred))


def _smooth_labels(y_true: Node, label_smoothing: float, classes: int | None) -> Node:
    """Keras's label smoothing: y (1 - s) + s / classes (classes = 2 for binary targets; None:
    the length of the last axis at run time, as for one sample given as a vector)."""
    if not label_smoothing:
        return y_true
    if classes is None:
        count = B.dim_size(y_true, y_true.type.rank - 1, dtype=y_true.dtype)
        return B.add(B.mul(y_true, 1.0 - label_smoothing), B.div(label_smoothing, count))
    return B.add(B.mul(y_true, 1.0 - label_smoothing), label_smoothing / classes)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Cross-entropy between one-hot (or soft) targets and predicted probabilities (or logits)."""
    if not _is_traced(y_true, y_pred):
        return _eager(categorical_crossentropy, y_true, y_pred, from_logits=from_logits,
                      label_smoothing=label_smoothing, axis=axis)
    _check_axis(axis, "categorical_crossentropy")
    y_true = B.cast(y_true, y_pred.dtype)
    _check_same_shape(y_true, y_pred, "categorical_crossentropy")
    y_true = _smooth_labels(y_true, label_smoothing, y_pred.shape[-1])
    return B.neg(B.reduce_sum(B.mul(y_true, _log_probabilities(y_pred, from_logits)), -1))


def _refuse_ignore_class(ignore_class, function: str) -> None:
    if ignore_class is not None:
        raise NotImplementedError(
            f"{function}(ignore_class={ignore_class!r}) is not supported: to leave samples out of the "
            "loss, give them sample_weight 0 (and any label in [0, classes)) instead")


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    """Cross-entropy between integer class labels and predicted probabilities (or logits)."""
    if not _is_traced(y_true, y_pred):
        return _eager(sparse_categorical_crossentropy, y_true, y_pred, from_logits=from_logits,
                      ignore_class=ignore_class, axis=axis)
    _check_axis(axis, "sparse_categorical_crossentropy")
    _refuse_ignore_class(ignore_class, "sparse_categorical_crossentropy")
    if y_true.type.rank == y_pred.type.rank and y_true.shape[-1] == 1:
        y_true = B.reshape(y_true, y_true.shape[:-1])
    if y_true.shape != y_pred.shape[:-1]:
        raise ValueError("sparse_categorical_crossentropy: `y_true` must hold one integer label per "
                         f"prediction, of shape {format_shape(y_pred.shape[:-1])} (or with a trailing "
                         f"axis of 1); received y_true.shape={format_shape(y_true.shape)}, "
                         f"y_pred.shape={format_shape(y_pred.shape)}")
    one_hot = one_hot_encode(y_true, y_pred.shape[-1], y_pred.dtype)
    return B.neg(B.reduce_sum(B.mul(one_hot, _log_probabilities(y_pred, from_logits)), -1))


def one_hot_encode(labels: Node, classes: int, dtype: str) -> Node:
    """labels[...] (integers) -> [..., classes] with a 1 at each label (all zeros out of range)."""
    labels = B.cast(labels, "i32")
    shape = labels.shape + (classes,)
    column = B.iota(shape, axis=len(shape) - 1, dtype="i32")
    expanded = B.broadcast(B.reshape(labels, labels.shape + (1,)), shape)
    return B.cast(B.eq(expanded, column), dtype)


def _prepare_dense(y_true: Node, y_pred: Node, function: str):
    """y_true cast to y_pred's dtype, ranks matched as Keras does, shapes checked."""
    y_true = B.cast(y_true, y_pred.dtype)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    _check_same_shape(y_true, y_pred, function)
    return y_true, y_pred


def _mean_last_axis(values: Node) -> Node:
    return B.reduce_mean(values, -1) if values.type.rank >= 1 else values


def _binary_cross_entropy(y_true: Node, p: Node) -> Node:
    """-(y log p + (1 - y) log(1 - p)) of probabilities p, clipped to [eps, 1 - eps] first."""
    p = B.clip(p, EPSILON, 1.0 - EPSILON)
    return B.neg(B.add(B.mul(y_true, B.log(p)), B.mul(B.sub(1.0, y_true), B.log(B.sub(1.0, p)))))


def binary_crossentropy_values(y_true: Node, y_pred: Node, from_logits: bool) -> Node:
    """The binary cross-entropy of each entry (keras.ops.binary_crossentropy; the loss averages
    them over the last axis)."""
    if from_logits:
        # -y log_sigmoid(z) - (1 - y) log_sigmoid(-z), with log_sigmoid(z) = -softplus(-z).
        return B.add(B.mul(y_true, activations.softplus(B.neg(y_pred))),
                     B.mul(B.sub(1.0, y_true), activations.softplus(y_pred)))
    return _binary_cross_entropy(y_true, y_pred)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Cross-entropy of independent binary targets (each entry of the last axis), averaged over it."""
    if not _is_traced(y_true, y_pred):
        return _eager(binary_crossentropy, y_true, y_pred, from_logits=from_logits,
                      label_smoothing=label_smoothing, axis=axis)
    _check_axis(axis, "binary_crossentropy")
    y_true, y_pred = _prepare_dense(y_true, y_pred, "binary_crossentropy")
    y_true = _smooth_labels(y_true, label_smoothing, 2)
    return _mean_last_axis(binary_crossentropy_values(y_true, y_pred, from_logits))


def _power_of_nonnegative(x: Node, gamma: float) -> Node:
    """x ** gamma for x >= 0: repeated products for a whole gamma, else exp(gamma log x) with 0 ** gamma
    = 0 and a zero gradient there (jnp.power's for gamma > 1)."""
    gamma = float(gamma)
    if gamma == int(gamma) and 0 <= gamma <= 8:
        result = B.full_like(x, 1.0)
        for _ in range(int(gamma)):
            result = B.mul(result, x)
        return result
    positive = B.gt(x, 0.0)
    safe = B.select(positive, x, B.full_like(x, 1.0))
    return B.select(positive, B.exp(B.mul(B.log(safe), gamma)), B.zeros_like(x))


def binary_focal_crossentropy(y_true, y_pred, apply_class_balancing=False, alpha=0.25, gamma=2.0,
                              from_logits=False, label_smoothing=0.0, axis=-1):
    """Keras's focal binary cross-entropy (Lin et al.): (1 - p_t) ** gamma times the cross-entropy,
    p_t = y p + (1 - y)(1 - p), optionally weighted alpha / 1 - alpha by class; mean over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(binary_focal_crossentropy, y_true, y_pred,
                      apply_class_balancing=apply_class_balancing, alpha=alpha, gamma=gamma,
                      from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
    _check_axis(axis, "binary_focal_crossentropy")
    y_true, y_pred = _prepare_dense(y_true, y_pred, "binary_focal_crossentropy")
    y_true = _smooth_labels(y_true, label_smoothing, 2)
    p = activations.sigmoid(y_pred) if from_logits else y_pred
    bce = _binary_cross_entropy(y_true, p)
    p_t = B.add(B.mul(y_true, p), B.mul(B.sub(1.0, y_true), B.sub(1.0, p)))
    values = B.mul(_power_of_nonnegative(B.sub(1.0, p_t), gamma), bce)
    if apply_class_balancing:
        values = B.mul(values, B.add(B.mul(y_true, alpha), B.mul(B.sub(1.0, y_true), 1.0 - alpha)))
    return _mean_last_axis(values)


def categorical_focal_crossentropy(y_true, y_pred, alpha=0.25, gamma=2.0, from_logits=False,
                                   label_smoothing=0.0, axis=-1):
    """Keras's focal categorical cross-entropy: sum over classes of
    -alpha (1 - p) ** gamma y log p, p the (clipped, normalized) probabilities."""
    if not _is_traced(y_true, y_pred):
        return _eager(categorical_focal_crossentropy, y_true, y_pred, alpha=alpha, gamma=gamma,
                      from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
    _check_axis(axis, "categorical_focal_crossentropy")
    y_true = B.cast(y_true, y_pred.dtype)
    _check_same_shape(y_true, y_pred, "categorical_focal_crossentropy")
    y_true = _smooth_labels(y_true, label_smoothing, y_pred.shape[-1])
    p = _clipped_probabilities(B.softmax(y_pred, -1) if from_logits else y_pred)
    factor = B.mul(_power_of_nonnegative(B.sub(1.0, p), gamma), float(alpha))
    return B.reduce_sum(B.mul(factor, B.neg(B.mul(y_true, B.log(p)))), -1)


def mean_squared_error(y_true, y_pred):
    """mean((y_true - y_pred)^2) over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(mean_squared_error, y_true, y_pred)
    y_true, y_pred = _prepare_dense(y_true, y_pred, "mean_squared_error")
    difference = B.sub(y_true, y_pred)
    return _mean_last_axis(B.mul(difference, difference))


def mean_absolute_error(y_true, y_pred):
    """mean(|y_true - y_pred|) over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(mean_absolute_error, y_true, y_pred)
    y_true, y_pred = _prepare_dense(y_true, y_pred, "mean_absolute_error")
    return _mean_last_axis(B.abs(B.sub(y_true, y_pred)))


def mean_absolute_percentage_error(y_true, y_pred):
    """100 * mean(|(y_true - y_pred) / max(|y_true|, 1e-7)|) over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(mean_absolute_percentage_error, y_true, y_pred)
    y_true, y_pred = _prepare_dense(y_true, y_pred, "mean_absolute_percentage_error")
    ratio = B.div(B.sub(y_true, y_pred), B.maximum(B.abs(y_true), EPSILON))
    return B.mul(_mean_last_axis(B.abs(ratio)), 100.0)


def mean_squared_logarithmic_error(y_true, y_pred):
    """mean((log(max(p, 1e-7) + 1) - log(max(y, 1e-7) + 1))^2) over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(mean_squared_logarithmic_error, y_true, y_pred)
    y_true, y_pred = _prepare_dense(y_true, y_pred, "mean_squared_logarithmic_error")
    difference = B.sub(B.log(B.add(B.maximum(y_pred, EPSILON), 1.0)),
                       B.log(B.add(B.maximum(y_true, EPSILON), 1.0)))
    return _mean_last_axis(B.mul(difference, difference))


def huber(y_true, y_pred, delta=1.0):
    """mean over the last axis of 0.5 e^2 where |e| <= delta, delta |e| - 0.5 delta^2 elsewhere."""
    if not _is_traced(y_true, y_pred):
        return _eager(huber, y_true, y_pred, delta=delta)
    y_true, y_pred = _prepare_dense(y_true, y_pred, "huber")
    delta = float(delta)
    error = B.sub(y_pred, y_true)
    absolute = B.abs(error)
    values = B.select(B.le(absolute, delta), B.mul(B.mul(error, error), 0.5),
                      B.sub(B.mul(absolute, delta), 0.5 * delta * delta))
    return _mean_last_axis(values)


def log_cosh(y_true, y_pred):
    """mean(log(cosh(y_pred - y_true))) over the last axis, as x + softplus(-2x) - log 2."""
    if not _is_traced(y_true, y_pred):
        return _eager(log_cosh, y_true, y_pred)
    y_true, y_pred = _prepare_dense(y_true, y_pred, "log_cosh")
    x = B.sub(y_pred, y_true)
    return _mean_last_axis(B.sub(B.add(x, activations.softplus(B.mul(x, -2.0))), math.log(2.0)))


def kl_divergence(y_true, y_pred):
    """sum(y log(y / p)) over the last axis, both clipped to [1e-7, 1]."""
    if not _is_traced(y_true, y_pred):
        return _eager(kl_divergence, y_true, y_pred)
    y_true = B.cast(y_true, y_pred.dtype)
    _check_same_shape(y_true, y_pred, "kl_divergence")
    y_true = B.clip(y_true, EPSILON, 1.0)
    y_pred = B.clip(y_pred, EPSILON, 1.0)
    values = B.mul(y_true, B.log(B.div(y_true, y_pred)))
    return B.reduce_sum(values, -1) if values.type.rank >= 1 else values


def poisson(y_true, y_pred):
    """mean(p - y log(p + 1e-7)) over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(poisson, y_true, y_pred)
    y_true = B.cast(y_true, y_pred.dtype)
    _check_same_shape(y_true, y_pred, "poisson")
    return _mean_last_axis(B.sub(y_pred, B.mul(y_true, B.log(B.add(y_pred, EPSILON)))))


def _hinge_labels(y_true: Node) -> Node:
    """Labels in {0, 1} become -1/1; others pass unchanged (Keras decides per batch, as here)."""
    binary = B.add(B.cast(B.eq(y_true, 0.0), y_true.dtype), B.cast(B.eq(y_true, 1.0), y_true.dtype))
    all_binary = B.eq(B.reduce_max(B.sub(1.0, binary)), 0.0)
    return B.select(all_binary, B.sub(B.mul(y_true, 2.0), 1.0), y_true)


def hinge(y_true, y_pred):
    """mean(max(1 - y * p, 0)) over the last axis, 0/1 labels mapped to -1/1."""
    if not _is_traced(y_true, y_pred):
        return _eager(hinge, y_true, y_pred)
    y_true = B.cast(y_true, y_pred.dtype)
    _check_same_shape(y_true, y_pred, "hinge")
    return _mean_last_axis(B.relu(B.sub(1.0, B.mul(_hinge_labels(y_true), y_pred))))


def squared_hinge(y_true, y_pred):
    """mean(max(1 - y * p, 0)^2) over the last axis, 0/1 labels mapped to -1/1."""
    if not _is_traced(y_true, y_pred):
        return _eager(squared_hinge, y_true, y_pred)
    y_true = B.cast(y_true, y_pred.dtype)
    _check_same_shape(y_true, y_pred, "squared_hinge")
    margin = B.relu(B.sub(1.0, B.mul(_hinge_labels(y_true), y_pred)))
    return _mean_last_axis(B.mul(margin, margin))


def categorical_hinge(y_true, y_pred):
    """max(max((1 - y) p) - sum(y p) + 1, 0) over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(categorical_hinge, y_true, y_pred)
    y_true = B.cast(y_true, y_pred.dtype)
    _check_same_shape(y_true, y_pred, "categorical_hinge")
    positive = B.reduce_sum(B.mul(y_true, y_pred), -1)
    negative = B.reduce_max(B.mul(B.sub(1.0, y_true), y_pred), -1)
    return B.relu(B.add(B.sub(negative, positive), 1.0))


def _l2_normalize(x: Node, axis: int) -> Node:
    squares = B.reduce_sum(B.mul(x, x), axis, keepdims=True)
    return B.div(x, B.sqrt(B.maximum(squares, 1e-12)))


def cosine_similarity(y_true, y_pred, axis=-1):
    """-sum(l2_normalize(y) * l2_normalize(p)) over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(cosine_similarity, y_true, y_pred, axis=axis)
    _check_axis(axis, "cosine_similarity")
    y_true, y_pred = _prepare_dense(y_true, y_pred, "cosine_similarity")
    return B.neg(B.reduce_sum(B.mul(_l2_normalize(y_true, -1), _l2_normalize(y_pred, -1)), -1))


# Keras's short names.
mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error
mape = MAPE = mean_absolute_percentage_error
msle = MSLE = mean_squared_logarithmic_error
kld = KLD = kullback_leibler_divergence = kl_divergence
bce = BCE = binary_crossentropy
logcosh = log_cosh


# ----------------------------------------------------------------------------------------------
# Loss objects
# ----------------------------------------------------------------------------------------------

def _weight_like(sample_weight: Node, values: Node) -> Node:
    """Sample weights (one per sample, or shaped like the values) broadcast against `values`."""
    sample_weight = B.cast(sample_weight, values.dtype)
    if sample_weight.type.rank == values.type.rank + 1 and sample_weight.shape[-1] == 1:
        sample_weight = B.reshape(sample_weight, sample_weight.shape[:-1])
    if sample_weight.type.rank < values.type.rank:
        # One weight per sample: trailing axes of 1 (Keras requires ranks that match up to one
        # trailing axis; this is the broadcast it would have done there).
        missing = values.type.rank - sample_weight.type.rank
        sample_weight = B.reshape(sample_weight, sample_weight.shape + (1,) * missing)
    if sample_weight.type.rank != values.type.rank:
        raise ValueError(f"sample_weight of shape {format_shape(sample_weight.shape)} does not fit "
                         f"per-sample losses of shape {format_shape(values.shape)}; pass one weight "
                         "per sample")
    return B.broadcast(sample_weight, values.shape)


class Loss:
    """Base class: `call(y_true, y_pred)` gives per-sample values, `__call__` weights and reduces
    them."""

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction not in REDUCTIONS:
            raise ValueError(f"Invalid value for argument `reduction`: {reduction!r}. Expected one of "
                             f"{list(REDUCTIONS)}")
        self.name = name or to_snake_case(type(self).__name__)
        self.reduction = reduction

    def call(self, y_true, y_pred):
        raise NotImplementedError

    def reduce(self, values: Node, sample_weight: Node | None = None) -> Node:
        """Keras 3's `reduce_weighted_values`: weight, then sum / number of values (or, with
        'mean_with_sample_weight', the sum of the weights as given, before they are broadcast to
        the values: Keras's divisor)."""
        given, expand = sample_weight, False
        if sample_weight is not None:
            if values.type.rank == 0:
                # A loss function that already reduced to a scalar: Keras broadcasts it against the
                # weights, so the batch's loss is the scalar times the weights' mean (for the default
                # reduction) -- one weight per sample as usual (as Metric.trace_sums does).
                values = B.broadcast(values, sample_weight.shape[:1])
            # (Keras's squeeze_or_expand_to_same_rank: one loss per sample against weights of
            # shape (batch, 1) gives unreduced losses of that shape)
            expand = values.type.rank == 1 and sample_weight.type.rank == 2 \
                and sample_weight.shape[-1] == 1
            sample_weight = _weight_like(sample_weight, values)
            values = B.mul(values, sample_weight)
        if self.reduction in ("none", None) or values.type.rank == 0:
            return B.reshape(values, values.shape + (1,)) if expand else values
        if self.reduction == "sum":
            return B.reduce_sum(values)
        if self.reduction == "mean_with_sample_weight" and sample_weight is not None:
            total, weights = B.reduce_sum(values), B.reduce_sum(B.cast(given, values.dtype))
            # divide_no_nan: a batch whose weights sum to 0 has loss 0.
            empty = B.eq(weights, 0.0)
            return B.select(empty, 0.0, B.div(total, B.select(empty, 1.0, weights)))
        return B.reduce_mean(values)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if not _is_traced(y_true, y_pred, sample_weight):
            if sample_weight is None:
                return _eager(lambda t, p: self.__call__(t, p), y_true, y_pred)
            return _eager(lambda t, p, w: self.__call__(t, p, w), y_true, y_pred, sample_weight)
        if y_pred.dtype not in ir.graph.FLOAT_DTYPES:
            raise ValueError(f"loss {self.name!r} needs float predictions, got {y_pred.type}")
        try:
            values = self.call(y_true, y_pred)
        except BatchAxisError as error:
            # (a batch of (N,) against (N, 1) broadcasts to (N, N), a batch axis too many)
            raise ValueError(
                f"loss {self.name!r} could not be computed on y_true of shape "
                f"{format_shape(y_true.shape)} and y_pred of shape {format_shape(y_pred.shape)}: "
                f"{error}.  Give y the model's output shape (for one value per sample, "
                f"y.reshape(-1, 1)), or match the ranks in `call`") from error
        if not isinstance(values, Node):
            raise TypeError(f"loss {self.name!r} returned {values!r}; a loss function must return "
                            "its per-sample losses computed from (y_true, y_pred)")
        return self.reduce(values, sample_weight)

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class LossFunctionWrapper(Loss):
    """A `Loss` around a loss function and its keyword arguments."""

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", "loss"), reduction=reduction)
        for argument, value in kwargs.items():
            # (the loss is computed in float32: a NaN or a number beyond it would poison every step)
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) \
                    and not abs(float(value)) <= FLOAT32_MAX:
                raise ValueError(f"{type(self).__name__}: `{argument}` must be a finite number "
                                 f"within float32's range; got {argument}={value!r}")
        self.fn = fn
        self._fn_kwargs = kwargs

    def call(self, y_true, y_pred):
        # as Keras's wrapper: a user's function gets targets of the predictions' rank ((N,) and
        # (N, 1) would broadcast to (N, N))
        if isinstance(y_true, Node) and isinstance(y_pred, Node):
            y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(self._fn_kwargs)
        return config

    @classmethod
    def from_config(cls, config):
        if cls is LossFunctionWrapper:
            raise NotImplementedError("a bare LossFunctionWrapper cannot be rebuilt from its config")
        return cls(**config)


class CategoricalCrossentropy(LossFunctionWrapper):
    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_crossentropy", dtype=None):
        super().__init__(categorical_crossentropy, reduction=reduction, name=name,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


class SparseCategoricalCrossentropy(LossFunctionWrapper):
    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 name="sparse_categorical_crossentropy", dtype=None):
        # (refused here rather than at the first fit, where labels equal to ignore_class would
        # first be refused as out of range)
        _refuse_ignore_class(ignore_class, "SparseCategoricalCrossentropy")
        super().__init__(sparse_categorical_crossentropy, reduction=reduction, name=name,
                         from_logits=from_logits, ignore_class=ignore_class)
        self.from_logits, self.ignore_class = from_logits, ignore_class


class BinaryCrossentropy(LossFunctionWrapper):
    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="binary_crossentropy", dtype=None):
        super().__init__(binary_crossentropy, reduction=reduction, name=name,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)
        self.from_logits, self.label_smoothing, self.axis = from_logits, label_smoothing, axis


class BinaryFocalCrossentropy(LossFunctionWrapper):
    def __init__(self, apply_class_balancing=False, alpha=0.25, gamma=2.0, from_logits=False,
                 label_smoothing=0.0, axis=-1, reduction="sum_over_batch_size",
                 name="binary_focal_crossentropy", dtype=None):
        super().__init__(binary_focal_crossentropy, reduction=reduction, name=name,
                         apply_class_balancing=apply_class_balancing, alpha=alpha, gamma=gamma,
                         from_logits=from_logits, label_smoothing=label_smoothing, axis=axis)


class CategoricalFocalCrossentropy(LossFunctionWrapper):
    def __init__(self, alpha=0.25, gamma=2.0, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_focal_crossentropy", dtype=None):
        super().__init__(categorical_focal_crossentropy, reduction=reduction, name=name, alpha=alpha,
                         gamma=gamma, from_logits=from_logits, label_smoothing=label_smoothing,
                         axis=axis)


class Huber(LossFunctionWrapper):
    def __init__(self, delta=1.0, reduction="sum_over_batch_size", name="huber_loss", dtype=None):
        super().__init__(huber, reduction=reduction, name=name, delta=delta)
        self.delta = delta


class CosineSimilarity(LossFunctionWrapper):
    def __init__(self, axis=-1, reduction="sum_over_batch_size", name="cosine_similarity",
                 dtype=None):
        super().__init__(cosine_similarity, reduction=reduction, name=name, axis=axis)
        self.axis = axis


def _plain_wrapper(class_name: str, fn, default_name: str):
    """A Loss class around `fn`, which takes no options (MeanSquaredError, ...)."""
    def __init__(self, reduction="sum_over_batch_size", name=default_name, dtype=None):
        LossFunctionWrapper.__init__(self, fn, reduction=reduction, name=name)
    return type(class_name, (LossFunctionWrapper,),
                {"__init__": __init__, "__module__": __name__,
                 "__doc__": f"The `Loss` form of `{fn.__name__}`."})


MeanSquaredError = _plain_wrapper("MeanSquaredError", mean_squared_error, "mean_squared_error")
MeanAbsoluteError = _plain_wrapper("MeanAbsoluteError", mean_absolute_error, "mean_absolute_error")
MeanAbsolutePercentageError = _plain_wrapper("MeanAbsolutePercentageError",
                                             mean_absolute_percentage_error,
                                             "mean_absolute_percentage_error")
MeanSquaredLogarithmicError = _plain_wrapper("MeanSquaredLogarithmicError",
                                             mean_squared_logarithmic_error,
                                             "mean_squared_logarithmic_error")
LogCosh = _plain_wrapper("LogCosh", log_cosh, "log_cosh")
KLDivergence = _plain_wrapper("KLDivergence", kl_divergence, "kl_divergence")
Poisson = _plain_wrapper("Poisson", poisson, "poisson")
Hinge = _plain_wrapper("Hinge", hinge, "hinge")
SquaredHinge = _plain_wrapper("SquaredHinge", squared_hinge, "squared_hinge")
CategoricalHinge = _plain_wrapper("CategoricalHinge", categorical_hinge, "categorical_hinge")


_FUNCTIONS = {fn.__name__: fn for fn in (
    categorical_crossentropy, sparse_categorical_crossentropy, binary_crossentropy,
    mean_squared_error, mean_absolute_error, mean_absolute_percentage_error,
    mean_squared_logarithmic_error, huber, log_cosh, kl_divergence, poisson, hinge, squared_hinge,
    categorical_hinge, cosine_similarity, binary_focal_crossentropy, categorical_focal_crossentropy)}
_FUNCTIONS.update({"mse": mse, "MSE": mse, "mae": mae, "MAE": mae, "mape": mape, "MAPE": mape,
                   "msle": msle, "MSLE": msle, "kld": kld, "KLD": kld, "bce": bce, "BCE": bce,
                   "kullback_leibler_divergence": kl_divergence, "logcosh": log_cosh})
_CLASSES = {cls.__name__: cls for cls in (
    CategoricalCrossentropy, SparseCategoricalCrossentropy, BinaryCrossentropy, MeanSquaredError,
    MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredLogarithmicError, Huber, LogCosh,
    KLDivergence, Poisson, Hinge, SquaredHinge, CategoricalHinge, CosineSimilarity,
    BinaryFocalCrossentropy, CategoricalFocalCrossentropy)}

# Names Keras resolves from the targets' and predictions' shapes (trainer: `resolve`).
AUTO_NAMES = ("crossentropy", "ce")

# Losses whose targets are shaped like the predictions (the trainer checks and reshapes them).
_DENSE_TARGETS = frozenset(fn for name, fn in _FUNCTIONS.items()
                           if fn is not sparse_categorical_crossentropy)


def target_kind(loss) -> str | None:
    """'sparse' (integer labels), 'dense' (targets shaped like the predictions) or None (unknown)."""
    fn = loss.fn if isinstance(loss, LossFunctionWrapper) else loss
    if fn is sparse_categorical_crossentropy:
        return "sparse"
    if fn in _DENSE_TARGETS:
        return "dense"
    return None


def loss_name(loss) -> str:
    return getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__)


def serialize(loss) -> str | dict:
    """A loss object's {"class_name", "config"}, or a built-in loss function's name."""
    from kcompile import registry
    return registry.serialize_builtin(loss, Loss, _FUNCTIONS, "loss")


def deserialize(config):
    return get(config)


def get(identifier):
    """A loss function or object from a name, a config dict, a class, a function or an object."""
    if identifier is None:
        return None
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        if identifier in _FUNCTIONS:
            return _FUNCTIONS[identifier]
        if identifier in _CLASSES:
            return _CLASSES[identifier]()
        known = sorted(set(_FUNCTIONS) | set(_CLASSES) | set(AUTO_NAMES))
        raise ValueError(f"Unknown loss function: {identifier!r}. Use one of {known}, a "
                         "kcompile.losses.Loss instance, or a function (y_true, y_pred) -> "
                         "per-sample losses written with arithmetic operators and kcompile.losses functions.")
    if isinstance(identifier, dict):
        cls = _CLASSES.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"Unknown loss class in config {identifier!r}")
        return cls.from_config(identifier.get("config", {}))
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret loss identifier: {identifier!r}")


def as_loss_object(loss, name=None) -> Loss:
    """Wrap a function as a `Loss` with the default reduction (objects pass through)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):   # (a model's `loss` is the name compile() was given)
        return as_loss_object(get(loss), name=name)
    return LossFunctionWrapper(loss, name=name or getattr(loss, "__name__", "loss"))
