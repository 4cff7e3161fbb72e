"""Metrics, as ``keras.metrics``.

A metric here is a function of (y_true, y_pred) giving one value per prediction (1.0 for a correct
row, a squared error, ...).  The traced graphs return the SUM of those values over the batch; the
training loop adds the sums over an epoch and divides by the number of values, which is what Keras's
running mean computes, without any per-step work beyond one addition.

`resolve(identifier, y_true_shape, y_pred_shape)` is Keras's `get_metric`: 'accuracy' (or 'acc')
becomes binary accuracy when predictions have one column, sparse categorical accuracy when the labels
have one axis less than the predictions (or a last axis of 1), categorical accuracy otherwise; the
logged name stays the string the user wrote.

Metric objects also work eagerly on numpy arrays: `update_state(y_true, y_pred)`, `result()`,
`reset_state()`.
"""
from __future__ import annotations

import numpy as np

from ir import Node
from ir import build as B

from kcompile import losses as losses_module
from kcompile.losses import squeeze_or_expand_to_same_rank


def _eager(fn, *arrays, **kwargs):
    from kcompile.layers.layer import call_eagerly
    return call_eagerly(lambda *nodes: fn(*nodes, **kwargs), *arrays)


def _traced(*values):
    return any(isinstance(v, Node) for v in values)


def _float(node: Node, like: Node) -> Node:
    return B.cast(node, like.dtype if like.dtype in ("f32", "f64") else "f32")


def categorical_accuracy(y_true, y_pred):
    """1.0 where argmax(y_true) == argmax(y_pred) over the last axis."""
    if not _traced(y_true, y_pred):
        return _eager(categorical_accuracy, y_true, y_pred)
    if y_true.type.rank != y_pred.type.rank or y_true.shape[:-1] != y_pred.shape[:-1]:
        raise ValueError(f"categorical_accuracy needs y_true and y_pred of one shape; got "
                         f"{y_true.shape} and {y_pred.shape}")
    return _float(B.eq(B.argmax(y_true, -1), B.argmax(y_pred, -1)), y_pred)


def sparse_categorical_accuracy(y_true, y_pred):
    """1.0 where the integer label equals argmax(y_pred) over the last axis."""
    if not _traced(y_true, y_pred):
        return _eager(sparse_categorical_accuracy, y_true, y_pred)
    if y_true.type.rank == y_pred.type.rank and y_true.shape[-1] == 1:
        y_true = B.reshape(y_true, y_true.shape[:-1])
    if y_true.shape != y_pred.shape[:-1]:
        raise ValueError(f"sparse_categorical_accuracy needs labels of shape {y_pred.shape[:-1]}; got "
                         f"{y_true.shape}")
    return _float(B.eq(B.cast(y_true, "i32"), B.argmax(y_pred, -1)), y_pred)


def binary_accuracy(y_true, y_pred, threshold=0.5):
    """The fraction of the last axis where (y_pred > threshold) equals y_true."""
    if not _traced(y_true, y_pred):
        return _eager(binary_accuracy, y_true, y_pred, threshold=threshold)
    y_true = _float(y_true, y_pred)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    predicted = B.cast(B.gt(y_pred, threshold), y_true.dtype)
    matches = _float(B.eq(y_true, predicted), y_pred)
    # As Keras: the mean over the last axis, but never over the batch axis (one value per sample).
    return B.reduce_mean(matches, -1) if matches.type.rank >= 2 else matches


mean_squared_error = mse = losses_module.mean_squared_error


class Metric:
    """Base class: `values(y_true, y_pred)` traces one value per prediction; the mean is the result."""

    def __init__(self, name=None, dtype=None):
        self.name = name or type(self).__name__.lower()
        self.reset_state()

    def values(self, y_true: Node, y_pred: Node) -> Node:
        raise NotImplementedError

    def reset_state(self):
        self._total = 0.0
        self._count = 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise NotImplementedError("sample_weight is not supported yet")
        values = np.asarray(_eager(self.values, y_true, y_pred), dtype=np.float64)
        self._total += float(values.sum())
        self._count += values.size

    def result(self) -> float:
        return self._total / self._count if self._count else 0.0

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


class MeanMetricWrapper(Metric):
    """The mean of a per-prediction function `fn(y_true, y_pred, **kwargs)`."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        self.fn = fn
        self._fn_kwargs = kwargs
        super().__init__(name=name or getattr(fn, "__name__", "metric"))

    def values(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(self._fn_kwargs)
        return config


class CategoricalAccuracy(MeanMetricWrapper):
    def __init__(self, name="categorical_accuracy", dtype=None):
        super().__init__(categorical_accuracy, name=name)


class SparseCategoricalAccuracy(MeanMetricWrapper):
    def __init__(self, name="sparse_categorical_accuracy", dtype=None):
        super().__init__(sparse_categorical_accuracy, name=name)


class BinaryAccuracy(MeanMetricWrapper):
    def __init__(self, name="binary_accuracy", dtype=None, threshold=0.5):
        super().__init__(binary_accuracy, name=name, threshold=threshold)


class MeanSquaredError(MeanMetricWrapper):
    def __init__(self, name="mean_squared_error", dtype=None):
        super().__init__(mean_squared_error, name=name)


_FUNCTIONS = {
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "binary_accuracy": binary_accuracy,
    "mean_squared_error": mean_squared_error,
    "mse": mean_squared_error,
    "categorical_crossentropy": losses_module.categorical_crossentropy,
    "sparse_categorical_crossentropy": losses_module.sparse_categorical_crossentropy,
}
_CLASSES = {cls.__name__: cls for cls in (CategoricalAccuracy, SparseCategoricalAccuracy,
                                           BinaryAccuracy, MeanSquaredError)}
ACCURACY_NAMES = ("accuracy", "acc")


def get(identifier):
    """A metric function or object from a name, a class, a function or an object."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str):
        if identifier in _FUNCTIONS:
            return _FUNCTIONS[identifier]
        if identifier in _CLASSES:
            return _CLASSES[identifier]()
        known = sorted(set(_FUNCTIONS) | set(_CLASSES) | set(ACCURACY_NAMES))
        raise ValueError(f"Unknown metric function: {identifier!r}. Use one of {known}, a "
                         "kcompile.metrics.Metric instance, or a function (y_true, y_pred).")
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret metric identifier: {identifier!r}")


def check(identifier):
    """Raise now (at compile) for an identifier `resolve` would reject later."""
    if identifier is None or (isinstance(identifier, str) and identifier.lower() in ACCURACY_NAMES):
        return
    get(identifier)


def is_binary_or_sparse_categorical(y_true_shape, y_pred_shape):
    """Keras's rule for what 'accuracy' (and 'crossentropy') mean, from the shapes alone."""
    is_binary = y_pred_shape[-1] == 1
    is_sparse_categorical = (len(y_true_shape) < len(y_pred_shape)
                             or (y_true_shape[-1] == 1 and y_pred_shape[-1] > 1))
    return is_binary, is_sparse_categorical


def resolve(identifier, y_true_shape, y_pred_shape) -> Metric:
    """Keras's `get_metric`: a Metric object named as the user named it."""
    if isinstance(identifier, str) and identifier.lower() in ACCURACY_NAMES:
        is_binary, is_sparse = is_binary_or_sparse_categorical(y_true_shape, y_pred_shape)
        if is_binary:
            return BinaryAccuracy(name=identifier)
        if is_sparse:
            return SparseCategoricalAccuracy(name=identifier)
        return CategoricalAccuracy(name=identifier)
    metric = get(identifier)
    if isinstance(metric, Metric):
        return metric
    name = identifier if isinstance(identifier, str) else getattr(metric, "__name__", "metric")
    return MeanMetricWrapper(metric, name=name)
