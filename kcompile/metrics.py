"""Metrics, as ``keras.metrics``.

A metric is traced into the eval and train graphs as a few SUMS over the batch (`trace_sums`), and
read back by a Python finisher that combines the sums added up over an epoch:

- a mean metric (accuracy, mae, a loss used as a metric, ...) is a per-prediction function
  (`MeanMetricWrapper`); its graph output is the sum of its values, and the finisher divides by the
  number of values seen, which is Keras's running mean without any per-step work beyond one addition.
  With sample weights (`compile(weighted_metrics=...)`) it sums values * weights and the weights;
- a ratio metric (Precision, Recall) sums true positives and predicted (or actual) positives, and the
  finisher divides the epoch's totals: the precision of the epoch, not a mean of batch precisions;
- AUC sums the four confusion-matrix counts at each of its thresholds (vector sums) and the finisher
  integrates the curve in numpy, as Keras's `AUC.result`;
- FBetaScore/F1Score sum per-class (or, 'micro', overall) true/false positives and false negatives,
  R2Score per-column sums of y, y^2, squared residuals (and weights), and the IoU metrics a
  (num_classes x num_classes) confusion matrix, flattened to a vector sum; their finishers apply
  Keras's `result` formulas in float64.

`Mean` and `Sum` are Keras's standalone metrics of values (`update_state(values, sample_weight)`),
eager only: Keras's compile() cannot call them with (y_true, y_pred) either, and `check` says so.

`resolve(identifier, y_true_shape, y_pred_shape)` is Keras's `get_metric`: 'accuracy' (or 'acc')
becomes binary accuracy when predictions have one column, sparse categorical accuracy when the labels
have one axis less than the predictions (or a last axis of 1), categorical accuracy otherwise; the
logged name stays the string the user wrote.

Metric objects also work eagerly on numpy arrays: `update_state(y_true, y_pred, sample_weight=None)`,
`result()`, `reset_state()`.
"""
from __future__ import annotations

import numbers

import numpy as np

import ir
from ir import Node
from ir import build as B
from ir.ops import as_traced

from kcompile import losses as losses_module
from kcompile.layers.layer import to_snake_case
from kcompile.losses import squeeze_or_expand_to_same_rank


def _eager(fn, *arrays, **kwargs):
    from kcompile.layers.layer import call_eagerly
    return call_eagerly(lambda *nodes: fn(*nodes, **kwargs), *arrays)


def _traced(*values):
    return any(isinstance(v, Node) for v in values)


def _float(node: Node, like: Node) -> Node:
    return B.cast(node, like.dtype if like.dtype in ("f32", "f64") else "f32")


def _divide_no_nan(numerator, denominator):
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator == 0, 0.0, numerator / np.where(denominator == 0, 1.0, denominator))


# ----------------------------------------------------------------------------------------------
# Per-prediction metric functions
# ----------------------------------------------------------------------------------------------

def accuracy(y_true, y_pred):
    """1.0 where y_true == y_pred exactly, averaged over the last axis."""
    if not _traced(y_true, y_pred):
        return _eager(accuracy, y_true, y_pred)
    # (as Keras 3: y_true in y_pred's dtype; integer predictions compare as integers)
    y_true = y_true if y_true.dtype == y_pred.dtype else B.cast(y_true, y_pred.dtype)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    matches = _float(B.eq(y_true, y_pred), y_pred)
    return B.reduce_mean(matches, -1) if matches.type.rank >= 2 else matches


def categorical_accuracy(y_true, y_pred):
    """1.0 where argmax(y_true) == argmax(y_pred) over the last axis."""
    if not _traced(y_true, y_pred):
        return _eager(categorical_accuracy, y_true, y_pred)
    if y_true.type.rank != y_pred.type.rank or y_true.shape[:-1] != y_pred.shape[:-1]:
        raise ValueError(f"categorical_accuracy needs y_true and y_pred of one shape; got "
                         f"{y_true.shape} and {y_pred.shape}")
    return _float(B.eq(B.argmax(y_true, -1), B.argmax(y_pred, -1)), y_pred)


def _sparse_labels(y_true: Node, y_pred: Node, function: str) -> Node:
    if y_true.type.rank == y_pred.type.rank and y_true.shape[-1] == 1:
        y_true = B.reshape(y_true, y_true.shape[:-1])
    if y_true.shape != y_pred.shape[:-1]:
        raise ValueError(f"{function} needs labels of shape {y_pred.shape[:-1]}; got {y_true.shape}")
    return y_true


def sparse_categorical_accuracy(y_true, y_pred):
    """1.0 where the integer label equals argmax(y_pred) over the last axis."""
    if not _traced(y_true, y_pred):
        return _eager(sparse_categorical_accuracy, y_true, y_pred)
    y_true = _sparse_labels(y_true, y_pred, "sparse_categorical_accuracy")
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


def _in_top_k(one_hot: Node, y_pred: Node, k: int) -> Node:
    """1.0 where the true class's score is among the k largest (Keras's `in_top_k`: its rank is
    1 + the number of strictly larger scores, so ties favour the true class)."""
    true_score = B.reduce_sum(B.select(B.cast(one_hot, "bool"), y_pred, 0.0), -1, keepdims=True)
    larger = B.reduce_sum(_float(B.gt(y_pred, true_score), y_pred), -1)
    return _float(B.lt(larger, float(k)), y_pred)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    """1.0 where argmax(y_true) is among the k highest-scored classes of y_pred."""
    if not _traced(y_true, y_pred):
        return _eager(top_k_categorical_accuracy, y_true, y_pred, k=k)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"top_k_categorical_accuracy needs one-hot y_true shaped like y_pred; got "
                         f"{y_true.shape} and {y_pred.shape}")
    one_hot = losses_module.one_hot_encode(B.argmax(y_true, -1), y_pred.shape[-1], y_pred.dtype)
    return _in_top_k(one_hot, y_pred, k)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5, from_sorted_ids=False):
    """1.0 where the integer label is among the k highest-scored classes of y_pred."""
    if not _traced(y_true, y_pred):
        return _eager(sparse_top_k_categorical_accuracy, y_true, y_pred, k=k,
                      from_sorted_ids=from_sorted_ids)
    if from_sorted_ids:
        raise NotImplementedError("sparse_top_k_categorical_accuracy(from_sorted_ids=True) is not "
                                  "supported")
    y_true = _sparse_labels(y_true, y_pred, "sparse_top_k_categorical_accuracy")
    one_hot = losses_module.one_hot_encode(y_true, y_pred.shape[-1], y_pred.dtype)
    return _in_top_k(one_hot, y_pred, k)


def cosine_similarity(y_true, y_pred, axis=-1):
    """sum(l2_normalize(y_true) * l2_normalize(y_pred)) over the last axis (the loss negates it)."""
    if not _traced(y_true, y_pred):
        return _eager(cosine_similarity, y_true, y_pred, axis=axis)
    return B.neg(losses_module.cosine_similarity(y_true, y_pred, axis=axis))


def log_cosh_error(y_true, y_pred):
    return losses_module.log_cosh(y_true, y_pred)


mean_squared_error = mse = losses_module.mean_squared_error
mean_absolute_error = mae = losses_module.mean_absolute_error
mean_absolute_percentage_error = mape = losses_module.mean_absolute_percentage_error
mean_squared_logarithmic_error = msle = losses_module.mean_squared_logarithmic_error
# As keras.metrics: the loss functions under their own names (the same function objects).
binary_crossentropy = losses_module.binary_crossentropy
categorical_crossentropy = losses_module.categorical_crossentropy
sparse_categorical_crossentropy = losses_module.sparse_categorical_crossentropy
binary_focal_crossentropy = losses_module.binary_focal_crossentropy
categorical_focal_crossentropy = losses_module.categorical_focal_crossentropy
kl_divergence = losses_module.kl_divergence
poisson = losses_module.poisson
hinge = losses_module.hinge
squared_hinge = losses_module.squared_hinge
categorical_hinge = losses_module.categorical_hinge
huber = losses_module.huber
log_cosh = losses_module.log_cosh


# ----------------------------------------------------------------------------------------------
# Metric objects
# ----------------------------------------------------------------------------------------------

def _weight_like(sample_weight: Node, values: Node) -> Node:
    return losses_module._weight_like(sample_weight, values)


def _eager_sums(metric, y_true, y_pred, sample_weight) -> tuple[dict, object]:
    """Trace `metric.trace_sums` on numpy arrays and run it on the reference interpreter."""
    arrays = losses_module.eager_arrays(y_true, y_pred, sample_weight)
    feeds = dict(zip(("y_true", "y_pred", "sample_weight"), arrays))
    args = [B.arg(name, "f32", (None,) + array.shape[1:] if array.ndim else ())
            for name, array in feeds.items()]
    sums, finish = metric.trace_sums(*args)
    return ir.run(ir.Graph("eager_metric", args, list(sums.items())), feeds), finish


class Metric:
    """Base class: `trace_sums` traces the batch sums a result needs and returns the finisher.

    `_direction` is 'up' for a metric that improves upward, 'down' for one that improves
    downward, None when unknown: how callbacks with mode='auto' decide, as in Keras."""

    _direction = None

    def __init__(self, name=None, dtype=None):
        self.name = name or to_snake_case(type(self).__name__)
        Metric.reset_state(self)   # (the eager totals; a subclass's own state is not set up yet)

    def add_variable(self, shape=(), initializer="zeros", dtype=None, aggregation="sum", name=None):
        """A state variable, as in Keras 3 (`self.total = self.add_variable(shape=(), ...)`): a
        subclass that defines `update_state` and `result` on such variables is traced into the
        compiled step, where `update_state` may change them with `assign_add` / `assign_sub` only
        (see `StateVariable`)."""
        if aggregation not in ("sum", "mean", "only_first_replica", "none", None):
            raise ValueError(f"add_variable: unknown aggregation={aggregation!r}")
        variables = self.__dict__.setdefault("_state_variables", [])
        variable = StateVariable(shape, initializer, name or f"variable_{len(variables)}", self.name)
        variables.append(variable)
        return variable

    def add_weight(self, shape=(), initializer=None, dtype=None, name=None):
        return self.add_variable(shape, "zeros" if initializer is None else initializer, dtype,
                                 name=name)

    @property
    def variables(self) -> list:
        """The state variables `add_variable` made (Keras's `metric.variables`)."""
        return list(self.__dict__.get("_state_variables", ()))

    def _is_stateful(self) -> bool:
        """A Keras-style metric: its own update_state (with result) instead of `values` or
        `trace_sums`."""
        cls = type(self)
        return cls.update_state is not Metric.update_state and cls.values is Metric.values \
            and cls.trace_sums is Metric.trace_sums

    def _trace_state_sums(self, y_true, y_pred, sample_weight):
        """trace_sums of a Keras-style metric: update_state is traced with every state variable
        recording what it adds (`StateVariable.assign_add`); the step sums those additions over
        the epoch, and the finisher puts the sums in the variables (from zero, as Keras's
        reset_state at the start of an epoch leaves them) and calls result() on them."""
        variables = self.variables
        for variable in variables:
            variable._begin_trace()
        try:
            if sample_weight is None:
                self.update_state(y_true, y_pred)
            else:
                self.update_state(y_true, y_pred, sample_weight=sample_weight)
            sums = {f"state:{i}": B.reshape(v._delta, (v.size,)) if v.shape else v._delta
                    for i, v in enumerate(variables) if v._delta is not None}
        finally:
            for variable in variables:
                variable._end_trace()

        def finish(totals, samples):
            for i, variable in enumerate(variables):
                total = totals.get(f"state:{i}")
                variable._value = (np.zeros(variable.shape, np.float32) if total is None else
                                   np.asarray(total, np.float32).reshape(variable.shape))
            result = np.asarray(self.result())
            if result.size != 1:
                raise ValueError(f"metric {self.name!r}: result() must return one number for fit "
                                 f"and evaluate to log; got {result!r}")
            return float(result.reshape(()))
        return sums, finish

    def values(self, y_true: Node, y_pred: Node) -> Node:
        """One value per prediction, for a metric that is the mean of them (`MeanMetricWrapper`)."""
        raise NotImplementedError(f"metric {type(self).__name__} must define `values(y_true, y_pred)` "
                                  "(a mean metric) or `trace_sums`")

    def trace_sums(self, y_true: Node, y_pred: Node, sample_weight: Node | None = None):
        """({key: scalar or vector sum over the batch}, finish(totals by key, samples) -> result).

        By default the metric is the mean of `values`: the sum of the values (times the weights, and
        the weights' sum), divided at the end by the number of values (or the weights' sum)."""
        if self._is_stateful():
            return self._trace_state_sums(y_true, y_pred, sample_weight)
        values = self.values(y_true, y_pred)
        if not isinstance(values, Node):
            raise TypeError(f"metric {self.name!r} returned {values!r}; a metric function must "
                            "return its per-sample values computed from (y_true, y_pred), the "
                            "traced tensors it is given (operators, kcompile.ops), not numpy "
                            "arrays or Python numbers")
        if values.dtype not in ("f32", "f64"):
            values = B.cast(values, y_pred.dtype)
        # NOTE: every path sums (total, weight), as Keras's Mean keeps (total, count): so a
        # standalone metric may mix weighted and unweighted update_state calls, as Keras's may.
        def finish(totals, samples):
            return self._finish_mean(float(_divide_no_nan(totals[""], totals["weight"])))

        if values.type.rank == 0 and y_pred.type.batched:
            if sample_weight is None:
                # a function that returns one number for the batch (its mean) counts once per
                # batch, as in Keras's MeanMetricWrapper: the epoch's result is the mean of the
                # batches' numbers, whatever their sizes
                return {"": values, "weight": B.const(1.0, values.dtype)}, finish
            # weighted, as Keras: the number is every sample's value, weighed by its weight
            values = B.broadcast(values, (y_pred.shape[0],))
        if not values.type.batched:
            raise ValueError(f"metric {self.name!r} must give one value per sample; got shape "
                             f"{values.shape}")
        if sample_weight is None:
            count = B.mul(B.dim_size(values, 0, dtype=values.dtype), values.type.static_size)
            return {"": B.reduce_sum(values), "weight": count}, finish
        weights = _weight_like(sample_weight, values)
        return {"": B.reduce_sum(B.mul(values, weights)), "weight": B.reduce_sum(weights)}, finish

    def _finish_mean(self, mean: float) -> float:
        return mean

    # -- eager use ------------------------------------------------------------------------------

    def reset_state(self):
        self._totals = None
        self._samples = 0
        self._finish = None
        self._loaded = False
        for variable in self.__dict__.get("_state_variables", ()):
            variable.assign(np.zeros(variable.shape, np.float32))    # (as Keras's, not the initializer)

    def _load_result(self, value: float) -> None:
        """Make result() `value`: a model's compiled step keeps a metric's sums itself and hands
        the objects in `model.metrics` its results (an update_state after it starts afresh).  A
        Keras-style metric's variables already hold them (its finisher put them there)."""
        if self._is_stateful():
            return
        self.reset_state()
        self._totals, self._samples, self._loaded = {}, 1, True
        self._finish = lambda totals, samples: value

    def _start(self):
        """Before an eager update: a result loaded from a model's step is not a running total."""
        if self._loaded:
            self.reset_state()

    def update_state(self, y_true, y_pred, sample_weight=None):
        self._start()
        sums, finish = _eager_sums(self, y_true, y_pred, sample_weight)
        if self._totals is None:
            self._totals = {key: np.zeros(np.shape(value), np.float64) for key, value in sums.items()}
        for key, value in sums.items():
            self._totals[key] += value
        self._samples += len(np.asarray(y_pred))
        self._finish = finish

    def result(self):
        if self._totals is None:
            return self._empty_result()
        return self._finish(self._totals, self._samples)

    def _empty_result(self):
        """result() with nothing accumulated (a new metric, or after reset_state)."""
        return 0.0

    def __call__(self, *args, **kwargs):
        """As Keras's `Metric.__call__`: update the state with this batch, return the result."""
        self.update_state(*args, **kwargs)
        return self.result()

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


class StateVariable:
    """A state variable of a Keras-style metric (`Metric.add_variable`).

    Outside a trace it is a float32 array: `assign`, `assign_add`, `assign_sub`, `numpy()`, and
    numpy arithmetic for `result()` (`self.total / self.count`).  While `update_state` is traced
    into a compiled step it records what is added to it: `assign_add(x)` / `assign_sub(x)` with x
    of the variable's shape (a sum over the batch, e.g. `ops.sum(...)`), any number of times.
    Reading it or `assign` there is refused: the step only sums the additions, and the running
    total exists only when the epoch's sums are read."""

    def __init__(self, shape, initializer, name: str, metric_name: str):
        from kcompile import initializers
        try:
            self.shape = tuple(int(d) for d in ((shape,) if isinstance(shape, numbers.Integral)
                                                 else shape or ()))
        except (TypeError, ValueError):
            raise ValueError(f"add_variable: shape must be a tuple of integers; got shape={shape!r}")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"add_variable: shape must be a tuple of integers >= 0; got {shape!r}")
        self.name = name
        self.path = f"{metric_name}/{name}"
        self.dtype = "float32"
        self.size = int(np.prod(self.shape, dtype=np.int64))
        value = initializers.get(initializer)(self.shape) if self.shape else \
            initializers.get(initializer)((1,)).reshape(())
        self._value = np.asarray(value, np.float32).reshape(self.shape)
        self._tracing = False
        self._delta = None

    def _begin_trace(self):
        self._tracing, self._delta = True, None

    def _end_trace(self):
        self._tracing = False

    def _refuse_in_trace(self, what: str):
        if self._tracing:
            raise NotImplementedError(
                f"metric variable {self.path!r}: {what} inside update_state is not supported in "
                "kcompile's compiled step, which sums what update_state adds over the epoch: change "
                "the variable with assign_add / assign_sub only, and read it in result()")

    def _add(self, value, sign: float):
        if not self._tracing:
            added = np.broadcast_to(np.asarray(value, np.float32), self.shape)
            self._value = np.asarray(self._value + np.float32(sign) * added, np.float32)
            return self
        node = as_traced(value)
        if not isinstance(node, Node):
            node = B.const(np.asarray(value, np.float32))
        if node.dtype != "f32":
            node = B.cast(node, "f32")
        if None in node.shape or len(node.shape) > len(self.shape):
            raise ValueError(f"metric variable {self.path!r} of shape {self.shape}: assign_add "
                             f"takes a value of that shape (a sum over the batch, e.g. ops.sum(...)); "
                             f"got shape {node.shape}")
        if node.shape != self.shape:
            node = B.broadcast(node, self.shape)
        if sign < 0:
            node = B.neg(node)
        self._delta = node if self._delta is None else B.add(self._delta, node)
        return self

    def assign_add(self, value):
        return self._add(value, 1.0)

    def assign_sub(self, value):
        return self._add(value, -1.0)

    def assign(self, value):
        self._refuse_in_trace("assign")
        self._value = np.array(np.broadcast_to(np.asarray(value, np.float32), self.shape))
        return self

    def numpy(self):
        self._refuse_in_trace("reading the value")
        return np.array(self._value, np.float32)

    @property
    def value(self):
        return self.numpy()

    def __array__(self, dtype=None, copy=None):
        value = self.numpy()
        return value if dtype is None else value.astype(dtype)

    def __float__(self):
        return float(self.numpy())

    def __repr__(self):
        return f"<StateVariable path={self.path}, shape={self.shape}>"

    def _numeric(op, swapped=False):
        def method(self, other):
            other = other.numpy() if isinstance(other, StateVariable) else other
            return op(other, self.numpy()) if swapped else op(self.numpy(), other)
        return method

    __add__, __radd__ = _numeric(np.add), _numeric(np.add, True)
    __sub__, __rsub__ = _numeric(np.subtract), _numeric(np.subtract, True)
    __mul__, __rmul__ = _numeric(np.multiply), _numeric(np.multiply, True)
    __truediv__, __rtruediv__ = _numeric(np.divide), _numeric(np.divide, True)
    __pow__ = _numeric(np.power)
    __lt__, __le__ = _numeric(np.less), _numeric(np.less_equal)
    __gt__, __ge__ = _numeric(np.greater), _numeric(np.greater_equal)
    del _numeric

    def __neg__(self):
        return -self.numpy()


class MeanMetricWrapper(Metric):
    """The mean of a per-prediction function `fn(y_true, y_pred, **kwargs)`."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        self.fn = fn
        self._fn_kwargs = kwargs
        if type(self)._direction is None:
            self._direction = _function_direction(fn)
        super().__init__(name=name or getattr(fn, "__name__", "metric"))

    def values(self, y_true, y_pred):
        # targets of the predictions' rank, as a loss function gets them ((N,) and (N, 1) would
        # broadcast to (N, N); Keras 2 matched them here too)
        if isinstance(y_true, Node) and isinstance(y_pred, Node):
            y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        return self.fn(y_true, y_pred, **self._fn_kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(self._fn_kwargs)
        return config


def _mean_metric(class_name: str, fn, default_name: str, **defaults):
    """A MeanMetricWrapper class around `fn` taking the keyword options `defaults`."""
    def __init__(self, name=default_name, dtype=None, **kwargs):
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            raise TypeError(f"{class_name} got unexpected keyword arguments {unknown}")
        options = dict(defaults)
        options.update(kwargs)
        MeanMetricWrapper.__init__(self, fn, name=name, **options)
    return type(class_name, (MeanMetricWrapper,),
                {"__init__": __init__, "__module__": __name__,
                 "__doc__": f"The mean of `{fn.__name__}` over every prediction."})


Accuracy = _mean_metric("Accuracy", accuracy, "accuracy")
CategoricalAccuracy = _mean_metric("CategoricalAccuracy", categorical_accuracy, "categorical_accuracy")
SparseCategoricalAccuracy = _mean_metric("SparseCategoricalAccuracy", sparse_categorical_accuracy,
                                         "sparse_categorical_accuracy")
BinaryAccuracy = _mean_metric("BinaryAccuracy", binary_accuracy, "binary_accuracy", threshold=0.5)
TopKCategoricalAccuracy = _mean_metric("TopKCategoricalAccuracy", top_k_categorical_accuracy,
                                       "top_k_categorical_accuracy", k=5)
SparseTopKCategoricalAccuracy = _mean_metric("SparseTopKCategoricalAccuracy",
                                             sparse_top_k_categorical_accuracy,
                                             "sparse_top_k_categorical_accuracy", k=5,
                                             from_sorted_ids=False)
MeanSquaredError = _mean_metric("MeanSquaredError", mean_squared_error, "mean_squared_error")
MeanAbsoluteError = _mean_metric("MeanAbsoluteError", mean_absolute_error, "mean_absolute_error")
MeanAbsolutePercentageError = _mean_metric("MeanAbsolutePercentageError",
                                           mean_absolute_percentage_error,
                                           "mean_absolute_percentage_error")
MeanSquaredLogarithmicError = _mean_metric("MeanSquaredLogarithmicError",
                                           mean_squared_logarithmic_error,
                                           "mean_squared_logarithmic_error")
CosineSimilarity = _mean_metric("CosineSimilarity", cosine_similarity, "cosine_similarity", axis=-1)
LogCoshError = _mean_metric("LogCoshError", log_cosh_error, "logcosh")
BinaryCrossentropy = _mean_metric("BinaryCrossentropy", losses_module.binary_crossentropy,
                                  "binary_crossentropy", from_logits=False, label_smoothing=0.0)
CategoricalCrossentropy = _mean_metric("CategoricalCrossentropy",
                                       losses_module.categorical_crossentropy,
                                       "categorical_crossentropy", from_logits=False,
                                       label_smoothing=0.0, axis=-1)
SparseCategoricalCrossentropy = _mean_metric("SparseCategoricalCrossentropy",
                                             losses_module.sparse_categorical_crossentropy,
                                             "sparse_categorical_crossentropy", from_logits=False,
                                             axis=-1)
KLDivergence = _mean_metric("KLDivergence", losses_module.kl_divergence, "kl_divergence")
Poisson = _mean_metric("Poisson", losses_module.poisson, "poisson")
Hinge = _mean_metric("Hinge", losses_module.hinge, "hinge")
SquaredHinge = _mean_metric("SquaredHinge", losses_module.squared_hinge, "squared_hinge")
CategoricalHinge = _mean_metric("CategoricalHinge", losses_module.categorical_hinge,
                                "categorical_hinge")


def _squared_error(y_true, y_pred):
    y_true = B.cast(y_true, y_pred.dtype)
    y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
    difference = B.sub(y_pred, y_true)
    return B.mul(difference, difference)


class RootMeanSquaredError(MeanMetricWrapper):
    """sqrt of the mean squared error over the epoch (not a mean of batch roots)."""

    _direction = "down"

    def __init__(self, name="root_mean_squared_error", dtype=None):
        super().__init__(_squared_error, name=name)

    def _finish_mean(self, mean):
        return float(np.sqrt(mean))


# -- confusion-matrix metrics ---------------------------------------------------------------------

def _thresholds(thresholds, default=0.5) -> list:
    if thresholds is None:
        return [default]
    values = [thresholds] if np.ndim(thresholds) == 0 else list(np.asarray(thresholds).ravel())
    for value in values:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"Threshold values must be in [0, 1]. Received: {thresholds}")
    return [float(v) for v in values]


class _ConfusionMetric(Metric):
    """Sums of true/false positives/negatives at fixed thresholds (y_pred > threshold is positive;
    y_true != 0 is positive), every entry of every sample counted, as Keras's
    `update_confusion_matrix_variables`."""

    COUNTS = ()  # which of 'tp', 'fp', 'tn', 'fn' the result needs

    def __init__(self, thresholds=None, class_id=None, name=None, dtype=None, default_threshold=0.5):
        self.init_thresholds = thresholds
        self.thresholds = _thresholds(thresholds, default_threshold)
        self.class_id = class_id
        super().__init__(name=name, dtype=dtype)

    def _column(self, x: Node) -> Node:
        """x[..., class_id] (a one-hot mask summed over the last axis: slicing is not a primitive)."""
        classes = x.shape[-1]
        if not 0 <= self.class_id < classes:
            raise ValueError(f"class_id={self.class_id} is out of range for {classes} classes")
        mask = np.zeros(classes, np.float32)
        mask[self.class_id] = 1.0
        return B.reduce_sum(B.mul(x, B.const(mask, x.dtype)), -1)

    def _prepare(self, y_true, y_pred):
        y_true = _float(y_true, y_pred)
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{self.name}: y_true and y_pred must have the same shape; got "
                             f"{y_true.shape} and {y_pred.shape}")
        if self.class_id is not None:
            y_true, y_pred = self._column(y_true), self._column(y_pred)
        return y_true, y_pred

    def _counts(self, y_true, y_pred, sample_weight) -> dict:
        """{count: sum over the batch, shape (thresholds,)}."""
        y_true, y_pred = self._prepare(y_true, y_pred)
        count = len(self.thresholds)
        shape = y_pred.shape + (count,)
        thresholds = B.broadcast(B.const(np.asarray(self.thresholds, np.float32), y_pred.dtype), shape)
        predicted = _float(B.gt(B.broadcast(B.reshape(y_pred, y_pred.shape + (1,)), shape),
                                thresholds), y_pred)
        actual = B.broadcast(B.reshape(_float(B.ne(y_true, 0.0), y_pred), y_pred.shape + (1,)), shape)
        if sample_weight is not None:
            weights = _weight_like(sample_weight, y_pred)
            weights = B.broadcast(B.reshape(weights, weights.shape + (1,)), shape)
        axes = list(range(len(shape) - 1))
        factors = {"tp": (predicted, actual), "fp": (predicted, B.sub(1.0, actual)),
                   "fn": (B.sub(1.0, predicted), actual),
                   "tn": (B.sub(1.0, predicted), B.sub(1.0, actual))}
        sums = {}
        for key in self.COUNTS:
            a, b = factors[key]
            product = B.mul(a, b)
            if sample_weight is not None:
                product = B.mul(product, weights)
            sums[key] = B.reduce_sum(product, axes)
        return sums

    def trace_sums(self, y_true, y_pred, sample_weight=None):
        return self._counts(y_true, y_pred, sample_weight), \
            lambda totals, samples: self._result(totals)

    def _result(self, totals):
        raise NotImplementedError

    def _empty_result(self):
        # (as Keras's: a list of thresholds gives a list, of zeros, before any update too)
        return self._result({key: np.zeros(len(self.thresholds)) for key in self.COUNTS})

    @staticmethod
    def _scalar_or_list(values):
        values = np.asarray(values, np.float64)
        # a list as Keras's (float32), and a copy: never the live totals the next update adds to
        return float(values[0]) if values.size == 1 else values.astype(np.float32)

    def get_config(self):
        return {"name": self.name, "thresholds": self.init_thresholds, "class_id": self.class_id}


class Precision(_ConfusionMetric):
    """true positives / predicted positives, accumulated over the epoch."""

    COUNTS = ("tp", "fp")
    _direction = "up"

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        if top_k is not None:
            raise NotImplementedError("Precision(top_k=...) is not supported")
        super().__init__(thresholds=thresholds, class_id=class_id, name=name, dtype=dtype)
        self.top_k = None

    def _result(self, totals):
        return self._scalar_or_list(_divide_no_nan(totals["tp"], totals["tp"] + totals["fp"]))

    def get_config(self):
        return {**super().get_config(), "top_k": self.top_k}


class Recall(_ConfusionMetric):
    """true positives / actual positives, accumulated over the epoch."""

    COUNTS = ("tp", "fn")
    _direction = "up"

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        if top_k is not None:
            raise NotImplementedError("Recall(top_k=...) is not supported")
        super().__init__(thresholds=thresholds, class_id=class_id, name=name, dtype=dtype)
        self.top_k = None

    def _result(self, totals):
        return self._scalar_or_list(_divide_no_nan(totals["tp"], totals["tp"] + totals["fn"]))

    def get_config(self):
        return {**super().get_config(), "top_k": self.top_k}


def _count_metric(class_name: str, key: str):
    def __init__(self, thresholds=None, name=None, dtype=None):
        _ConfusionMetric.__init__(self, thresholds=thresholds, name=name, dtype=dtype)

    def _result(self, totals):
        return self._scalar_or_list(totals[key])

    def get_config(self):
        return {"name": self.name, "thresholds": self.init_thresholds}
    return type(class_name, (_ConfusionMetric,),
                {"__init__": __init__, "_result": _result, "get_config": get_config, "COUNTS": (key,),
                 "__module__": __name__, "__doc__": f"The number (sum of weights) of {class_name}."})


TruePositives = _count_metric("TruePositives", "tp")
FalsePositives = _count_metric("FalsePositives", "fp")
TrueNegatives = _count_metric("TrueNegatives", "tn")
FalseNegatives = _count_metric("FalseNegatives", "fn")


class AUC(_ConfusionMetric):
    """Area under the ROC (or PR) curve, from confusion counts at `num_thresholds` thresholds
    (Keras's: evenly spaced in (0, 1) plus -1e-7 and 1 + 1e-7), integrated as Keras's `AUC.result`.
    Single-label only: every entry of every sample is one (prediction, label) pair."""

    _direction = "up"

    COUNTS = ("tp", "fp", "tn", "fn")

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation", name=None,
                 dtype=None, thresholds=None, multi_label=False, num_labels=None, label_weights=None,
                 from_logits=False):
        if multi_label or label_weights is not None:
            raise NotImplementedError("AUC(multi_label=True / label_weights=...) is not supported")
        curve = str(curve).upper()
        if curve not in ("ROC", "PR"):
            raise ValueError(f"AUC curve must be 'ROC' or 'PR'; got {curve!r}")
        if summation_method not in ("interpolation", "minoring", "majoring"):
            raise ValueError("summation_method must be 'interpolation', 'minoring' or 'majoring'; got "
                             f"{summation_method!r}")
        if thresholds is not None:
            inner = sorted(_thresholds(thresholds))
            self.num_thresholds = len(inner) + 2
        else:
            if num_thresholds <= 1:
                raise ValueError(f"Argument `num_thresholds` must be an integer > 1. Received: "
                                 f"num_thresholds={num_thresholds}")
            self.num_thresholds = num_thresholds
            inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
        epsilon = losses_module.EPSILON
        self.curve, self.summation_method = curve, summation_method
        self.from_logits = from_logits
        self._init = {"num_thresholds": num_thresholds, "thresholds": thresholds}
        super().__init__(thresholds=None, name=name, dtype=dtype)
        self.thresholds = [0.0 - epsilon] + inner + [1.0 + epsilon]

    def trace_sums(self, y_true, y_pred, sample_weight=None):
        if self.from_logits:
            from kcompile.activations import sigmoid
            y_pred = sigmoid(y_pred)
        # as Keras: scores are counted clipped to [0, 1] (a linear output's scores below 0 would
        # otherwise lie under every threshold, and the curve never reach (1, 1))
        return super().trace_sums(y_true, B.clip(y_pred, 0.0, 1.0), sample_weight)

    def _result(self, totals):
        tp, fp, tn, fn = (np.asarray(totals[k], np.float64) for k in ("tp", "fp", "tn", "fn"))
        if self.curve == "PR" and self.summation_method == "interpolation":
            return self._interpolate_pr_auc(tp, fp, fn)
        recall = _divide_no_nan(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _divide_no_nan(fp, fp + tn), recall
        else:
            x, y = recall, _divide_no_nan(tp, tp + fp)
        if self.summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2.0
        elif self.summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        else:
            heights = np.maximum(y[:-1], y[1:])
        return float(np.sum((x[:-1] - x[1:]) * heights))

    @staticmethod
    def _interpolate_pr_auc(tp, fp, fn):
        # Keras's `AUC.interpolate_pr_auc` (Davis & Goadrich 2006), in numpy.
        dtp = tp[:-1] - tp[1:]
        p = tp + fp
        dp = p[:-1] - p[1:]
        slope = _divide_no_nan(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - slope * p[1:]
        both = (p[:-1] > 0) & (p[1:] > 0)
        ratio = np.where(both, _divide_no_nan(p[:-1], np.maximum(p[1:], 0)), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(np.where(ratio > 0, ratio, 1.0))
        increments = _divide_no_nan(slope * (dtp + intercept * logs), np.maximum(tp[1:] + fn[1:], 0))
        return float(np.sum(increments))

    def get_config(self):
        return {"name": self.name, "num_thresholds": self._init["num_thresholds"], "curve": self.curve,
                "summation_method": self.summation_method, "thresholds": self._init["thresholds"],
                "multi_label": False, "from_logits": self.from_logits}


class _AtConstraint(_ConfusionMetric):
    """Keras's SensitivitySpecificityBase: confusion counts at `num_thresholds` thresholds evenly
    spaced in [0, 1] (0.5 alone for one), and the largest value of one rate among the thresholds
    where another reaches `value` (0 where none does)."""

    COUNTS = ("tp", "fp", "tn", "fn")
    _direction = "up"
    _CONSTRAINT = ""   # the constructor argument naming `value`

    def __init__(self, value, num_thresholds=200, class_id=None, name=None, dtype=None):
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, numbers.Integral) \
                or num_thresholds <= 0:
            raise ValueError("Argument `num_thresholds` must be an integer > 0. Received: "
                             f"num_thresholds={num_thresholds!r}")
        if not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise ValueError(f"Argument `{self._CONSTRAINT}` must be in the range [0, 1]. Received: "
                             f"{self._CONSTRAINT}={value!r}")
        super().__init__(thresholds=None, class_id=class_id, name=name, dtype=dtype)
        self.value = float(value)
        self.num_thresholds = int(num_thresholds)
        if num_thresholds == 1:
            self.thresholds = [0.5]
        else:
            self.thresholds = [0.0] + [(i + 1) * 1.0 / (num_thresholds - 1)
                                       for i in range(num_thresholds - 2)] + [1.0]

    def _rates(self, totals) -> dict:
        tp, fp, tn, fn = (np.asarray(totals[k], np.float64) for k in ("tp", "fp", "tn", "fn"))
        return {"sensitivity": _divide_no_nan(tp, tp + fn), "recall": _divide_no_nan(tp, tp + fn),
                "specificity": _divide_no_nan(tn, tn + fp), "precision": _divide_no_nan(tp, tp + fp)}

    def _max_under_constraint(self, constrained, dependent) -> float:
        feasible = constrained >= self.value
        return float(np.max(dependent[feasible])) if feasible.any() else 0.0

    def get_config(self):
        return {"name": self.name, "class_id": self.class_id, "num_thresholds": self.num_thresholds,
                self._CONSTRAINT: self.value}


class SensitivityAtSpecificity(_AtConstraint):
    """The best sensitivity (recall) among the thresholds where the specificity is >= `specificity`."""

    _CONSTRAINT = "specificity"

    def __init__(self, specificity, num_thresholds=200, class_id=None, name=None, dtype=None):
        super().__init__(specificity, num_thresholds, class_id, name, dtype)

    def _result(self, totals):
        rates = self._rates(totals)
        return self._max_under_constraint(rates["specificity"], rates["sensitivity"])


class SpecificityAtSensitivity(_AtConstraint):
    """The best specificity among the thresholds where the sensitivity is >= `sensitivity`."""

    _CONSTRAINT = "sensitivity"

    def __init__(self, sensitivity, num_thresholds=200, class_id=None, name=None, dtype=None):
        super().__init__(sensitivity, num_thresholds, class_id, name, dtype)

    def _result(self, totals):
        rates = self._rates(totals)
        return self._max_under_constraint(rates["sensitivity"], rates["specificity"])


class PrecisionAtRecall(_AtConstraint):
    """The best precision among the thresholds where the recall is >= `recall`."""

    _CONSTRAINT = "recall"

    def __init__(self, recall, num_thresholds=200, class_id=None, name=None, dtype=None):
        super().__init__(recall, num_thresholds, class_id, name, dtype)

    def _result(self, totals):
        rates = self._rates(totals)
        return self._max_under_constraint(rates["recall"], rates["precision"])


class RecallAtPrecision(_AtConstraint):
    """The best recall among the thresholds where the precision is >= `precision`."""

    _CONSTRAINT = "precision"

    def __init__(self, precision, num_thresholds=200, class_id=None, name=None, dtype=None):
        super().__init__(precision, num_thresholds, class_id, name, dtype)

    def _result(self, totals):
        rates = self._rates(totals)
        return self._max_under_constraint(rates["precision"], rates["recall"])

# -- F-scores -------------------------------------------------------------------------------------

class FBetaScore(Metric):
    """The F-beta score, (1 + b^2) * precision * recall / (b^2 * precision + recall), from true
    positives, false positives and false negatives summed over the epoch per class (or over every
    entry, average='micro'), as Keras's `FBetaScore`.  A prediction is positive where it is the
    sample's largest score (every tie counts; a score within 1e-9 of 0 never does), or where it
    exceeds `threshold`.  average=None gives one score per class; 'macro' their mean; 'weighted'
    their mean weighed by each class's (weighted) number of true instances."""

    _direction = "up"
    COUNTS = ("tp", "fp", "fn", "support")

    def __init__(self, average=None, beta=1.0, threshold=None, name="fbeta_score", dtype=None):
        if average not in (None, "micro", "macro", "weighted"):
            raise ValueError("Invalid `average` argument value. Expected one of: {None, 'micro', "
                             f"'macro', 'weighted'}}. Received: average={average}")
        if not isinstance(beta, float):
            raise ValueError("Invalid `beta` argument value. It should be a Python float. "
                             f"Received: beta={beta} of type '{type(beta)}'")
        if beta <= 0.0:
            raise ValueError(f"Invalid `beta` argument value. It should be > 0. Received: beta={beta}")
        if threshold is not None:
            if not isinstance(threshold, float):
                raise ValueError("Invalid `threshold` argument value. It should be a Python float. "
                                 f"Received: threshold={threshold} of type '{type(threshold)}'")
            if threshold > 1.0 or threshold <= 0.0:
                raise ValueError("Invalid `threshold` argument value. It should verify 0 < threshold "
                                 f"<= 1. Received: threshold={threshold}")
        self.average, self.beta, self.threshold = average, beta, threshold
        self.dtype = dtype or "float32"
        super().__init__(name=name, dtype=dtype)

    def trace_sums(self, y_true, y_pred, sample_weight=None):
        if y_true.type.rank != 2 or y_pred.type.rank != 2:
            raise ValueError(f"{type(self).__name__} expects 2D inputs with shape (batch_size, "
                             f"output_dim). Received input shapes: y_pred.shape={y_pred.shape} and "
                             f"y_true.shape={y_true.shape}.")
        y_pred = B.cast(y_pred, y_pred.dtype if y_pred.dtype in ("f32", "f64") else "f32")
        y_true = _float(y_true, y_pred)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{self.name}: y_true and y_pred must have the same shape; got "
                             f"{y_true.shape} and {y_pred.shape}")
        if self.threshold is None:
            # Keras's: every score equal to the sample's largest, unless it is (about) zero
            top = B.reduce_max(y_pred, -1, keepdims=True)
            predicted = B.mul(_float(B.ge(y_pred, top), y_pred),
                              _float(B.gt(B.abs(y_pred), 1e-9), y_pred))
        else:
            predicted = _float(B.gt(y_pred, self.threshold), y_pred)
        if sample_weight is not None:
            weights = _weight_like(sample_weight, y_pred)
        axes = None if self.average == "micro" else 0

        def total(value):
            if sample_weight is not None:
                value = B.mul(value, weights)
            return B.reduce_sum(value, axes)

        missed, wrong = B.sub(1.0, predicted), B.sub(1.0, y_true)
        sums = {"tp": total(B.mul(predicted, y_true)), "fp": total(B.mul(predicted, wrong)),
                "fn": total(B.mul(missed, y_true)), "support": total(y_true)}
        return sums, lambda totals, samples: self._result(totals)

    def reset_state(self):
        # (Keras's keeps its per-class variables through reset_state: average=None then gives
        # zeros per class; recorded here, not while tracing, so that a process that loads its
        # programs from the compile cache describes this metric as one that traced them)
        totals = self.__dict__.get("_totals")
        if totals and "tp" in totals:
            self._classes = int(np.size(totals["tp"]))
        super().reset_state()

    def _empty_result(self):
        classes = self.__dict__.get("_classes")
        return np.zeros(classes, np.float32) if self.average is None and classes else 0.0

    def _result(self, totals):
        epsilon = losses_module.EPSILON
        tp, fp, fn, support = (np.asarray(totals[k], np.float64) for k in self.COUNTS)
        precision = tp / (tp + fp + epsilon)
        recall = tp / (tp + fn + epsilon)
        beta2 = self.beta ** 2
        score = precision * recall / (beta2 * precision + recall + epsilon) * (1 + beta2)
        if self.average == "weighted":
            return float(np.sum(score * support / (np.sum(support) + epsilon)))
        if self.average is not None:
            return float(np.mean(score))
        return score.astype(np.float32)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "average": self.average, "beta": self.beta,
                "threshold": self.threshold}


class F1Score(FBetaScore):
    """The F-1 score, 2 * precision * recall / (precision + recall): FBetaScore with beta=1."""

    def __init__(self, average=None, threshold=None, name="f1_score", dtype=None):
        super().__init__(average=average, beta=1.0, threshold=threshold, name=name, dtype=dtype)

    def get_config(self):
        config = super().get_config()
        del config["beta"]
        return config


# -- R2 -------------------------------------------------------------------------------------------

class R2Score(Metric):
    """The coefficient of determination 1 - sum((y_true - y_pred)^2) / sum((y_true - mean)^2) per
    output column over the epoch (from the column sums of y, y^2, the squared residuals and the
    weights), as Keras's `R2Score`: aggregated by class_aggregation (None: one score per column,
    'uniform_average': their mean, 'variance_weighted_average': weighed by each column's total sum
    of squares); num_regressors > 0 gives the adjusted R2 with Keras's n, the number of entries of
    y_true seen (samples times columns)."""

    _direction = "up"

    def _empty_result(self):
        return float("nan")     # (as Keras's: no sums, 0 / 0)

    def __init__(self, class_aggregation="uniform_average", num_regressors=0, name="r2_score",
                 dtype=None):
        valid = (None, "uniform_average", "variance_weighted_average")
        if class_aggregation not in valid:
            raise ValueError(f"Invalid value for argument `class_aggregation`. Expected one of "
                             f"{valid}. Received: class_aggregation={class_aggregation}")
        if num_regressors < 0:
            raise ValueError("Invalid value for argument `num_regressors`. Expected a value >= 0. "
                             f"Received: num_regressors={num_regressors}")
        self.class_aggregation, self.num_regressors = class_aggregation, num_regressors
        self.dtype = dtype or "float32"
        super().__init__(name=name, dtype=dtype)

    def trace_sums(self, y_true, y_pred, sample_weight=None):
        y_pred = B.cast(y_pred, y_pred.dtype if y_pred.dtype in ("f32", "f64") else "f32")
        y_true = _float(y_true, y_pred)
        y_true, y_pred = squeeze_or_expand_to_same_rank(y_true, y_pred)
        if y_true.type.rank != 2 or y_pred.type.rank != 2:
            raise ValueError("R2Score expects 2D inputs with shape (batch_size, output_dim). Received "
                             f"input shapes: y_pred.shape={y_pred.shape} and "
                             f"y_true.shape={y_true.shape}.")
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{self.name}: y_true and y_pred must have the same shape; got "
                             f"{y_true.shape} and {y_pred.shape}")
        residual = B.sub(y_true, y_pred)
        residual = B.mul(residual, residual)
        weighted_y = y_true
        sums = {}
        if sample_weight is not None:
            weights = _weight_like(sample_weight, y_true)
            weighted_y, residual = B.mul(y_true, weights), B.mul(residual, weights)
            sums["count"] = B.reduce_sum(weights, 0)
        else:
            # (counted either way: a standalone metric may mix weighted and unweighted updates)
            sums["count"] = B.broadcast(B.dim_size(y_true, 0, dtype=y_true.dtype),
                                        (y_true.shape[-1],))
        sums.update({"sum": B.reduce_sum(weighted_y, 0),
                     "squared_sum": B.reduce_sum(B.mul(y_true, weighted_y), 0),
                     "residual": B.reduce_sum(residual, 0)})
        columns = y_true.shape[-1]
        return sums, lambda totals, samples: self._result(totals, samples, columns)

    def _result(self, totals, samples, columns):
        import warnings
        total_sum, squares, residual = (np.asarray(totals[k], np.float64)
                                        for k in ("sum", "squared_sum", "residual"))
        count = np.asarray(totals["count"], np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total_sum / count
            total = squares - total_sum * mean
            scores = 1.0 - residual / total
        scores = np.where(np.isinf(scores), 0.0, scores)
        if self.class_aggregation == "uniform_average":
            score = float(np.mean(scores))
        elif self.class_aggregation == "variance_weighted_average":
            with np.errstate(divide="ignore", invalid="ignore"):
                score = float(np.sum(total * scores) / np.sum(total))
        else:
            score = scores
        if self.num_regressors != 0:
            n, p = samples * columns, self.num_regressors
            if p > n - 1:
                warnings.warn("More independent predictors than datapoints in adjusted R2 score. "
                              "Falling back to standard R2 score.", stacklevel=2)
            elif p == n - 1:
                warnings.warn("Division by zero in Adjusted R2 score. Falling back to standard R2 "
                              "score.", stacklevel=2)
            else:
                score = 1.0 - (1.0 - score) * (n - 1.0) / (n - p - 1.0)
        return score

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "class_aggregation": self.class_aggregation,
                "num_regressors": self.num_regressors}


# -- intersection over union ----------------------------------------------------------------------

class _IoUBase(Metric):
    """A (num_classes x num_classes) confusion matrix summed over the epoch, rows the true classes
    and columns the predicted ones, as Keras's `_IoUBase`.  Class ids are every entry of y_true and
    y_pred (or their argmax over `axis` when not sparse), truncated toward zero as Keras's cast to
    int; an entry whose id is out of [0, num_classes), or whose true id is `ignore_class`, counts
    nothing.  As in Keras the default dtype is an integer one, so sample weights are truncated to
    integers too (0.5 counts 0); give dtype='float32' to count fractional weights."""

    _direction = "up"

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None, sparse_y_true=True,
                 sparse_y_pred=True, axis=-1):
        self.num_classes = int(num_classes)
        self.ignore_class = ignore_class
        self.sparse_y_true, self.sparse_y_pred = sparse_y_true, sparse_y_pred
        self.axis = axis
        self.dtype = dtype or "int32"
        super().__init__(name=name, dtype=dtype)

    def _class_ids(self, y: Node, sparse: bool) -> Node:
        if not sparse:
            return B.argmax(y, self.axis)
        ids = B.cast(y, "i32")   # (truncates toward zero, as Keras's cast to int)
        if not self._integer and y.dtype in ("f32", "f64"):
            # NOTE: Keras with a float dtype checks the bounds before the cast, so an id in (-1, 0)
            # counts nothing there, where the integer cast makes it class 0.
            ids = B.select(B.lt(y, 0.0), -1, ids)
        return ids

    @property
    def _integer(self) -> bool:
        return "int" in str(self.dtype)

    def trace_sums(self, y_true, y_pred, sample_weight=None):
        float_dtype = y_pred.dtype if y_pred.dtype in ("f32", "f64") else "f32"
        raw_true = y_true
        y_true = self._class_ids(y_true, self.sparse_y_true)
        y_pred = self._class_ids(y_pred, self.sparse_y_pred)
        # Every entry is one (true, predicted) pair: (batch, entries) for the pairs of a sample.
        def flat(y):
            return B.reshape(y, (y.shape[0], int(np.prod(y.shape[1:], dtype=np.int64))))
        y_true, y_pred = flat(y_true), flat(y_pred)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"{self.name}: y_true and y_pred give {y_true.shape[1]} and "
                             f"{y_pred.shape[1]} class ids per sample; they must give the same "
                             "number")
        true_hot = losses_module.one_hot_encode(y_true, self.num_classes, float_dtype)
        predicted_hot = losses_module.one_hot_encode(y_pred, self.num_classes, float_dtype)
        weights = None
        if sample_weight is not None:
            weights = B.cast(sample_weight, float_dtype)
            if weights.type.rank == 1:
                weights = B.reshape(weights, weights.shape + (1,))
            weights = B.broadcast(flat(weights) if weights.type.rank > 2 else weights, y_true.shape)
            if self._integer:
                weights = B.cast(B.cast(weights, "i32"), float_dtype)
        if self.ignore_class is not None:
            # (Keras compares the ids as its dtype holds them: a float 2.5 is not class 2 there)
            compared = y_true
            if self.sparse_y_true and not self._integer and raw_true.dtype in ("f32", "f64"):
                compared = flat(raw_true)
            keep = _float(B.ne(compared, float(self.ignore_class) if compared.dtype != "i32"
                               else int(self.ignore_class)), true_hot)
            weights = keep if weights is None else B.mul(weights, keep)
        if weights is not None:
            predicted_hot = B.mul(predicted_hot, B.reshape(weights, weights.shape + (1,)))
        # sum over every entry of true_hot[e, i] * predicted_hot[e, j] (an out-of-range id has an
        # all-zero one-hot row, so it counts nothing, as Keras's bounds mask)
        matrix = B.matmul(true_hot, predicted_hot, transpose_a=True)
        classes = self.num_classes
        return {"confusion_matrix": B.reshape(matrix, (classes * classes,))}, \
            lambda totals, samples: self._result(
                np.asarray(totals["confusion_matrix"], np.float64).reshape(classes, classes))

    def _result(self, matrix):
        raise NotImplementedError

    def _mean_iou(self, matrix, class_ids):
        """Keras's `IoU.result`: the mean over `class_ids` that occur (as a true or a predicted
        class) of true positives / (predicted + actual - true positives)."""
        true_positives = np.diag(matrix)
        denominator = (matrix.sum(0) + matrix.sum(1) - true_positives)[class_ids]
        true_positives = true_positives[class_ids]
        valid = denominator > 1e-9
        iou = np.where(valid, true_positives / (denominator + losses_module.EPSILON), 0.0)
        return float(np.sum(iou) / (np.sum(valid) + losses_module.EPSILON))

    def confusion_matrix(self):
        """The confusion matrix accumulated so far (eager use; rows true, columns predicted)."""
        if self._totals is None:
            return np.zeros((self.num_classes, self.num_classes))
        return np.asarray(self._totals["confusion_matrix"]).reshape(self.num_classes,
                                                                    self.num_classes)


class IoU(_IoUBase):
    """Intersection over union averaged over `target_class_ids`, as Keras's `IoU`."""

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None, ignore_class=None,
                 sparse_y_true=True, sparse_y_pred=True, axis=-1):
        super().__init__(num_classes=num_classes, name=name, dtype=dtype, ignore_class=ignore_class,
                         sparse_y_true=sparse_y_true, sparse_y_pred=sparse_y_pred, axis=axis)
        if max(target_class_ids) >= num_classes:
            raise ValueError(f"Target class id {max(target_class_ids)} is out of range, which is "
                             f"[0, {num_classes}).")
        self.target_class_ids = [int(i) for i in target_class_ids]

    def _result(self, matrix):
        return self._mean_iou(matrix, self.target_class_ids)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.num_classes,
                "target_class_ids": self.target_class_ids, "ignore_class": self.ignore_class,
                "sparse_y_true": self.sparse_y_true, "sparse_y_pred": self.sparse_y_pred,
                "axis": self.axis}


class MeanIoU(IoU):
    """Intersection over union averaged over every class (that occurs), as Keras's `MeanIoU`."""

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None, sparse_y_true=True,
                 sparse_y_pred=True, axis=-1):
        super().__init__(num_classes=num_classes, target_class_ids=list(range(num_classes)),
                         name=name, dtype=dtype, ignore_class=ignore_class,
                         sparse_y_true=sparse_y_true, sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["target_class_ids"]      # every class
        return config


class OneHotIoU(IoU):
    """IoU with one-hot y_true (and, unless sparse_y_pred, scores y_pred), as Keras's `OneHotIoU`."""

    def __init__(self, num_classes, target_class_ids, name=None, dtype=None, ignore_class=None,
                 sparse_y_pred=False, axis=-1):
        super().__init__(num_classes=num_classes, target_class_ids=target_class_ids, name=name,
                         dtype=dtype, ignore_class=ignore_class, sparse_y_true=False,
                         sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["sparse_y_true"]         # one-hot
        return config


class OneHotMeanIoU(MeanIoU):
    """MeanIoU with one-hot y_true (and, unless sparse_y_pred, scores y_pred), as Keras's
    `OneHotMeanIoU`."""

    def __init__(self, num_classes, name=None, dtype=None, ignore_class=None, sparse_y_pred=False,
                 axis=-1):
        super().__init__(num_classes=num_classes, name=name, dtype=dtype, ignore_class=ignore_class,
                         sparse_y_true=False, sparse_y_pred=sparse_y_pred, axis=axis)

    def get_config(self):
        config = super().get_config()
        del config["sparse_y_true"]         # one-hot
        return config


# -- standalone streaming metrics -----------------------------------------------------------------

def _samplewise(values, sample_weight, reduce):
    """Keras's `reduce_to_samplewise_values`, in float64: the values (times the weights, whose rank
    they are reduced to first) reduced to one per sample, and the weights reduced likewise."""
    values = np.asarray(values, np.float64)
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, np.float64)
        if values.ndim == sample_weight.ndim + 1 and values.shape[-1] == 1:
            if sample_weight.ndim == 1:
                sample_weight = sample_weight[..., None]
            else:
                values = values[..., 0]
        elif sample_weight.ndim == values.ndim + 1 and sample_weight.shape[-1] == 1:
            if values.ndim == 1:
                values = values[..., None]
            else:
                sample_weight = sample_weight[..., 0]
        if values.ndim > sample_weight.ndim:
            values = reduce(values, axis=tuple(range(sample_weight.ndim, values.ndim)))
        sample_weight = np.broadcast_to(sample_weight, values.shape)
        values = values * sample_weight
        if sample_weight.ndim > 1:
            sample_weight = reduce(sample_weight, axis=tuple(range(1, sample_weight.ndim)))
    if values.ndim > 1:
        values = reduce(values, axis=tuple(range(1, values.ndim)))
    return values, sample_weight


class _Standalone(Metric):
    """A metric of values rather than of (y_true, y_pred): `update_state(values, sample_weight=None)`
    in Python, as Keras's `Sum` and `Mean`.  Keras's compile() cannot use them either (its
    update_state(y_true, y_pred, sample_weight=...) call fails), so `check` refuses them there."""

    def __init__(self, name=None, dtype=None):
        self.dtype = dtype or "float32"
        super().__init__(name=name, dtype=dtype)
        self.reset_state()

    def reset_state(self):
        self.total, self.count, self._loaded = 0.0, 0.0, False

    def _load_result(self, value: float) -> None:
        # (an eager update after it starts afresh, as for the other metrics)
        self.total, self.count, self._loaded = value, 1.0, True

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


class Sum(_Standalone):
    """The sum of every value given (times its weight), as Keras's `Sum`."""

    def __init__(self, name="sum", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, values, sample_weight=None):
        self._start()
        values, _ = _samplewise(values, sample_weight, np.sum)
        self.total += float(np.sum(values))

    def result(self):
        return self.total


class Mean(_Standalone):
    """The (weighted) mean of the values given, as Keras's `Mean`: a value of several entries is
    first averaged to one per sample (per leading index), so each sample counts once."""

    def __init__(self, name="mean", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, values, sample_weight=None):
        self._start()
        values, sample_weight = _samplewise(values, sample_weight, np.mean)
        self.total += float(np.sum(values))
        if sample_weight is not None:
            self.count += float(np.sum(sample_weight))
        else:
            self.count += values.size       # (one value per sample, or a scalar)

    def result(self):
        return float(_divide_no_nan(self.total, self.count))


# ----------------------------------------------------------------------------------------------
# Lookup
# ----------------------------------------------------------------------------------------------

_FUNCTIONS = {fn.__name__: fn for fn in (
    accuracy, categorical_accuracy, sparse_categorical_accuracy, binary_accuracy,
    top_k_categorical_accuracy, sparse_top_k_categorical_accuracy, mean_squared_error,
    mean_absolute_error, mean_absolute_percentage_error, mean_squared_logarithmic_error,
    cosine_similarity, log_cosh_error,
    losses_module.categorical_crossentropy, losses_module.sparse_categorical_crossentropy,
    losses_module.binary_crossentropy, losses_module.kl_divergence, losses_module.poisson,
    losses_module.hinge, losses_module.squared_hinge, losses_module.categorical_hinge,
    losses_module.huber, losses_module.log_cosh, losses_module.binary_focal_crossentropy,
    losses_module.categorical_focal_crossentropy)}
_FUNCTIONS.update({"mse": mse, "MSE": mse, "mae": mae, "MAE": mae, "mape": mape, "MAPE": mape,
                   "msle": msle, "MSLE": msle, "bce": losses_module.binary_crossentropy,
                   "BCE": losses_module.binary_crossentropy, "logcosh": log_cosh_error})
_CLASS_LIST = (Accuracy, CategoricalAccuracy, SparseCategoricalAccuracy, BinaryAccuracy,
               TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy, MeanSquaredError,
               MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredLogarithmicError,
               RootMeanSquaredError, CosineSimilarity, LogCoshError, BinaryCrossentropy,
               CategoricalCrossentropy, SparseCategoricalCrossentropy, KLDivergence, Poisson, Hinge,
               SquaredHinge, CategoricalHinge, Precision, Recall, AUC, TruePositives, FalsePositives,
               TrueNegatives, FalseNegatives, FBetaScore, F1Score, R2Score, IoU, MeanIoU, OneHotIoU,
               OneHotMeanIoU, Sum, Mean, SensitivityAtSpecificity, SpecificityAtSensitivity,
               PrecisionAtRecall, RecallAtPrecision)
_CLASSES = {cls.__name__: cls for cls in _CLASS_LIST}
# As Keras: snake_case class names ('precision', 'auc', 'root_mean_squared_error') name classes too.
_CLASSES.update({to_snake_case(cls.__name__): cls for cls in _CLASS_LIST
                 if to_snake_case(cls.__name__) not in _FUNCTIONS})
ACCURACY_NAMES = ("accuracy", "acc")
# Functions whose larger values are better (every other named function is an error or a loss).
_UPWARD = (accuracy, categorical_accuracy, sparse_categorical_accuracy, binary_accuracy,
           top_k_categorical_accuracy, sparse_top_k_categorical_accuracy, cosine_similarity)


def _function_direction(fn):
    if fn in _UPWARD:
        return "up"
    return "down" if fn in _FUNCTIONS.values() else None


def direction(identifier):
    """'up', 'down' or None (unknown, a user's function): which way the metric `identifier` (as
    `compile(metrics=...)` takes it) improves."""
    if isinstance(identifier, str) and identifier.lower() in ACCURACY_NAMES:
        return "up"
    if isinstance(identifier, str) and identifier.lower() in ("crossentropy", "ce"):
        return "down"
    metric = get(identifier)
    return metric._direction if isinstance(metric, Metric) else _function_direction(metric)


def serialize(metric) -> str | dict:
    """A metric object's {"class_name", "config"}, or a built-in metric function's name."""
    from kcompile import registry
    return registry.serialize_builtin(metric, Metric, _FUNCTIONS, "metric")


def deserialize(config, custom_objects=None):
    """The metric `serialize` described (a name or a config dict); a name of `custom_objects`
    ({name: class or function}), of a custom_object_scope or registered, is the user's."""
    from kcompile import registry
    name = config.get("class_name") if isinstance(config, dict) else config
    found = registry.get_registered_object(name, custom_objects) if isinstance(name, str) else None
    if found is None:
        return get(config)
    if isinstance(found, type) and isinstance(config, dict):
        return found.from_config(config.get("config") or {})
    return found


def get(identifier):
    """A metric function or object from a name, a config dict, a class, a function or an object."""
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
    if isinstance(identifier, dict):
        cls = _CLASSES.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"Unknown metric class in config {identifier!r}")
        return cls.from_config(identifier.get("config") or {})
    if isinstance(identifier, type):
        # (as Keras: a class, a metric's or a loss's, stands for an instance made with its defaults)
        return identifier()
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret metric identifier: {identifier!r}")


_STATEFUL_METRIC = (
    "it defines none of `update_state` (Keras's way, with add_variable and result), "
    "`values(self, y_true, y_pred)` returning one value per sample (written with kcompile.ops; the "
    "result is their mean over the epoch) or `trace_sums`; define one, or pass a metric function")


def check(identifier):
    """Raise now (at compile) for an identifier `resolve` would reject later."""
    if identifier is None or (isinstance(identifier, str)
                              and identifier.lower() in ACCURACY_NAMES + ("crossentropy", "ce")):
        return
    metric = get(identifier)
    cls = type(metric)
    if isinstance(metric, _Standalone):
        raise TypeError(f"metric {metric.name!r} ({cls.__name__}) is a standalone metric: its "
                        "update_state takes (values, sample_weight), not (y_true, y_pred), so "
                        "compile() cannot use it (Keras's fails on it too). Use it eagerly, or pass "
                        "compile a function of (y_true, y_pred) or MeanMetricWrapper(fn)")
    if isinstance(metric, Metric) and cls.values is Metric.values \
            and cls.trace_sums is Metric.trace_sums and cls.update_state is Metric.update_state:
        raise NotImplementedError(f"metric {metric.name!r} ({cls.__name__}): {_STATEFUL_METRIC}")


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
    if isinstance(identifier, str) and identifier.lower() in ("crossentropy", "ce"):
        is_binary, is_sparse = is_binary_or_sparse_categorical(y_true_shape, y_pred_shape)
        cls = (BinaryCrossentropy if is_binary else SparseCategoricalCrossentropy if is_sparse
               else CategoricalCrossentropy)
        return cls(name=identifier)
    metric = get(identifier)
    if isinstance(metric, Metric):
        if isinstance(identifier, str):
            metric.name = identifier  # a fresh object: logged under the name the user wrote
        return metric
    name = identifier if isinstance(identifier, str) else getattr(metric, "__name__", "metric")
    return MeanMetricWrapper(metric, name=name)
