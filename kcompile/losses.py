"""Loss functions, as ``keras.losses``: functions, classes, and names, all accepted by `compile`.

A loss function maps (y_true, y_pred) to one value per sample (the last axis reduced); a `Loss`
object then reduces those to the scalar the optimizer minimizes, by default 'sum_over_batch_size'
(the mean over every per-sample value).  The formulas are Keras 3's, written in IR primitives:

- categorical_crossentropy: probabilities are renormalized (p / sum p), clipped to
  [1e-7, 1 - 1e-7] and `-sum(y * log p)` taken over the last axis; `from_logits=True` uses
  log_softmax instead;
- sparse_categorical_crossentropy: the same on integer labels, one-hot encoded in the graph
  (`iota` compared with the labels);
- mean_squared_error: `mean((y - p)^2)` over the last axis.

Called on numpy arrays instead of IR values, every function and object runs eagerly on the reference
interpreter and returns numpy, so `losses.categorical_crossentropy(y, p)` works as in Keras.
"""
from __future__ import annotations

import ir
from ir import Node
from ir import build as B

from kcompile.layers.layer import format_shape

EPSILON = 1e-7  # keras.backend.epsilon()

REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "none", None)


def _eager(fn, *arrays, **kwargs):
    from kcompile.layers.layer import call_eagerly
    return call_eagerly(lambda *nodes: fn(*nodes, **kwargs), *arrays)


def _is_traced(*values) -> bool:
    return any(isinstance(v, Node) for v in values)


def squeeze_or_expand_to_same_rank(y_true: Node, y_pred: Node):
    """Drop a trailing axis of size 1 so the ranks agree, as Keras does before comparing."""
    if y_true.type.rank == y_pred.type.rank - 1 and y_pred.shape[-1] == 1:
        y_pred = B.reshape(y_pred, y_pred.shape[:-1])
    elif y_pred.type.rank == y_true.type.rank - 1 and y_true.shape[-1] == 1:
        y_true = B.reshape(y_true, y_true.shape[:-1])
    return y_true, y_pred


def _check_same_shape(y_true: Node, y_pred: Node, function: str):
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{function}: arguments `y_true` and `y_pred` must have the same shape. "
                         f"Received: y_true.shape={format_shape(y_true.shape)}, "
                         f"y_pred.shape={format_shape(y_pred.shape)}")


def _check_axis(axis, function):
    if axis not in (-1,):
        raise NotImplementedError(f"{function} supports axis=-1 only; got axis={axis}")


def _log_probabilities(y_pred: Node, from_logits: bool) -> Node:
    if from_logits:
        return B.log_softmax(y_pred, -1)
    probabilities = B.div(y_pred, B.reduce_sum(y_pred, -1, keepdims=True))
    return B.log(B.clip(probabilities, EPSILON, 1.0 - EPSILON))


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Cross-entropy between one-hot (or soft) targets and predicted probabilities (or logits)."""
    if not _is_traced(y_true, y_pred):
        return _eager(categorical_crossentropy, y_true, y_pred, from_logits=from_logits,
                      label_smoothing=label_smoothing, axis=axis)
    _check_axis(axis, "categorical_crossentropy")
    y_true = B.cast(y_true, y_pred.dtype)
    _check_same_shape(y_true, y_pred, "categorical_crossentropy")
    if label_smoothing:
        classes = y_pred.shape[-1]
        y_true = B.add(B.mul(y_true, 1.0 - label_smoothing), label_smoothing / classes)
    return B.neg(B.reduce_sum(B.mul(y_true, _log_probabilities(y_pred, from_logits)), -1))


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None, axis=-1):
    """Cross-entropy between integer class labels and predicted probabilities (or logits)."""
    if not _is_traced(y_true, y_pred):
        return _eager(sparse_categorical_crossentropy, y_true, y_pred, from_logits=from_logits,
                      ignore_class=ignore_class, axis=axis)
    _check_axis(axis, "sparse_categorical_crossentropy")
    if ignore_class is not None:
        raise NotImplementedError("sparse_categorical_crossentropy(ignore_class=...) is not supported")
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


def mean_squared_error(y_true, y_pred):
    """mean((y_true - y_pred)^2) over the last axis."""
    if not _is_traced(y_true, y_pred):
        return _eager(mean_squared_error, y_true, y_pred)
    y_true = B.cast(y_true, y_pred.dtype)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    _check_same_shape(y_true, y_pred, "mean_squared_error")
    difference = B.sub(y_true, y_pred)
    squared = B.mul(difference, difference)
    return B.reduce_mean(squared, -1) if squared.type.rank >= 1 else squared


mse = MSE = mean_squared_error


# ----------------------------------------------------------------------------------------------
# Loss objects
# ----------------------------------------------------------------------------------------------

class Loss:
    """Base class: `call(y_true, y_pred)` gives per-sample values, `__call__` reduces them."""

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction not in REDUCTIONS:
            raise ValueError(f"Invalid value for argument `reduction`: {reduction!r}. Expected one of "
                             f"{list(REDUCTIONS)}")
        self.name = name or type(self).__name__.lower()
        self.reduction = reduction

    def call(self, y_true, y_pred):
        raise NotImplementedError

    def reduce(self, values: Node) -> Node:
        if self.reduction in ("none", None):
            return values
        if values.type.rank == 0:
            return values
        if self.reduction == "sum":
            return B.reduce_sum(values)
        return B.reduce_mean(values)

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise NotImplementedError("sample_weight is not supported yet")
        if not _is_traced(y_true, y_pred):
            return _eager(self.__call__, y_true, y_pred)
        if y_pred.dtype not in ir.graph.FLOAT_DTYPES:
            raise ValueError(f"loss {self.name!r} needs float predictions, got {y_pred.type}")
        return self.reduce(self.call(y_true, y_pred))

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class LossFunctionWrapper(Loss):
    """A `Loss` around a loss function and its keyword arguments."""

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, **kwargs):
        super().__init__(name=name or getattr(fn, "__name__", "loss"), reduction=reduction)
        self.fn = fn
        self._fn_kwargs = kwargs

    def call(self, y_true, y_pred):
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
        super().__init__(sparse_categorical_crossentropy, reduction=reduction, name=name,
                         from_logits=from_logits, ignore_class=ignore_class)
        self.from_logits, self.ignore_class = from_logits, ignore_class


class MeanSquaredError(LossFunctionWrapper):
    def __init__(self, reduction="sum_over_batch_size", name="mean_squared_error", dtype=None):
        super().__init__(mean_squared_error, reduction=reduction, name=name)


_FUNCTIONS = {
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "mean_squared_error": mean_squared_error,
    "mse": mean_squared_error,
    "MSE": mean_squared_error,
}
_CLASSES = {cls.__name__: cls for cls in (CategoricalCrossentropy, SparseCategoricalCrossentropy,
                                           MeanSquaredError)}

# Names Keras resolves from the targets' and predictions' shapes (trainer: `resolve`).
AUTO_NAMES = ("crossentropy", "ce")


def target_kind(loss) -> str | None:
    """'sparse' (integer labels), 'dense' (targets shaped like the predictions) or None (unknown)."""
    fn = loss.fn if isinstance(loss, LossFunctionWrapper) else loss
    if fn is sparse_categorical_crossentropy:
        return "sparse"
    if fn in (categorical_crossentropy, mean_squared_error):
        return "dense"
    return None


def loss_name(loss) -> str:
    return getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__)


def serialize(loss) -> str | dict:
    if isinstance(loss, Loss):
        return {"class_name": type(loss).__name__, "config": loss.get_config()}
    for name, fn in _FUNCTIONS.items():
        if fn is loss:
            return name
    raise ValueError(f"cannot serialize loss {loss!r}")


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
                         "per-sample losses written with kcompile.losses functions.")
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
    return LossFunctionWrapper(loss, name=name or getattr(loss, "__name__", "loss"))
