"""Normalization, as `keras.layers.Normalization`: inputs shifted and scaled by a mean and variance
given to the constructor or computed from data by `adapt`.

    normalizer = Normalization(axis=-1)
    normalizer.adapt(x_train)               # per-feature mean and variance, numpy, before training
    model = Sequential([normalizer, Dense(64, activation="relu"), Dense(1)])

`call` is (x - mean) / max(sqrt(variance), epsilon) (x * that + mean with `invert=True`), as Keras
computes it; adapted statistics are non-trainable weights `mean`, `variance` and `count`, so they are
saved with the model and read by the compiled code from their buffers (adapting again after compiling
takes effect at the next call).
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ir import build as B

from kcompile import backend
from kcompile.layers.layer import Layer, format_shape
from kcompile.layers.normalization import _axes, _resolve_axes
from kcompile.schedules import FLOAT32_MAX


def _batches(data):
    """(first batch, every batch) of adapt's data: one array, or an iterable of batches ((x, y) pairs
    give x), as Keras reads them."""
    def x_of(batch):
        return batch[0] if isinstance(batch, tuple) else batch

    if isinstance(data, np.ndarray) or (hasattr(data, "__array__") and not hasattr(data, "__next__")
                                         and not isinstance(data, (list, tuple))):
        array = np.asarray(data)
        return array, [array]
    if isinstance(data, (list, tuple)) and data and np.ndim(data[0]) == 0:
        array = np.asarray(data)          # a flat list of numbers: one batch
        return array, [array]
    if not hasattr(data, "__iter__"):
        raise TypeError(f"Normalization.adapt takes an array or an iterable of batches; got "
                        f"{type(data).__name__}")
    iterator = iter(data)
    first = next(iterator, None)
    if first is None:
        raise ValueError("adapt() received an empty iterable (no batches). Pass an array, or batches "
                         "of arrays, e.g. layer.adapt(x_train).")
    first = np.asarray(x_of(first))
    return first, itertools.chain([first], (np.asarray(x_of(b)) for b in iterator))


class Normalization(Layer):
    """Feature-wise normalization: (x - mean) / sqrt(variance), the statistics taken over every axis
    but `axis` (default -1, the features) by `adapt(data)`, or given as `mean=` and `variance=`.

    Args:
        axis: the axis (or axes) with one mean and variance per index; None: one for all values.
        mean, variance: fixed statistics (scalars or arrays broadcasting over the kept axes) instead
            of adapting; both or neither.
        invert: map normalized values back (x * sqrt(variance) + mean).
    """

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kwargs):
        super().__init__(**kwargs)
        # None (or an empty list or tuple, as get_config's () reads back from JSON): one mean and
        # variance for all values
        empty = isinstance(axis, (list, tuple)) and len(axis) == 0
        axis = () if axis is None or empty else _axes(axis, "Normalization")
        self.axis = axis
        if (mean is None) != (variance is None):
            raise ValueError("When setting values directly, both `mean` and `variance` must be set. "
                             f"Received: mean={mean} and variance={variance}")
        if mean is not None:
            if np.shape(mean) != np.shape(variance):
                raise ValueError("When setting values directly, `mean` and `variance` must have the "
                                 f"same shape. Received: mean shape {np.shape(mean)} and variance "
                                 f"shape {np.shape(variance)}")
            if np.ndim(mean) > len(self.axis):
                raise ValueError("The rank of `mean` must be less than or equal to the number of axes "
                                 f"({len(self.axis)}). Received: mean shape {np.shape(mean)} for "
                                 f"axis {self.axis}")
            for name, value in (("mean", mean), ("variance", variance)):
                array = np.asarray(value, np.float64) if np.asarray(value).dtype.kind in "fiu" \
                    else None
                low = 0.0 if name == "variance" else -FLOAT32_MAX
                if array is None or not ((array >= low) & (array <= FLOAT32_MAX)).all():
                    bound = " >= 0" if name == "variance" else ""
                    raise ValueError(f"Normalization: `{name}` must hold finite numbers{bound} within "
                                     f"float32's range; got {name}={value!r}")
        self.input_mean = mean
        self.input_variance = variance
        self.invert = bool(invert)
        self.adapt_mean = self.adapt_variance = self.count = None
        self._keep = self._fixed = self._statistics = self._broadcast = None

    # -- shapes -----------------------------------------------------------------------------------

    def _kept_axes(self, input_shape) -> tuple:
        return _resolve_axes(self.axis, input_shape, "Normalization", self.name)

    def _statistics_shape(self, input_shape) -> tuple:
        return tuple(input_shape[a] for a in self._kept_axes(input_shape))

    def compute_output_shape(self, input_shape):
        self._kept_axes(input_shape)
        if self._keep is not None and self._statistics_shape(input_shape) != self._statistics:
            raise ValueError(f"Normalization layer {self.name!r} holds statistics of shape "
                             f"{format_shape(self._statistics)}; inputs of shape "
                             f"{format_shape(input_shape)} do not match them")
        return tuple(input_shape)

    def build(self, input_shape):
        input_shape = (None,) + tuple(input_shape)[1:]
        keep = self._kept_axes(input_shape)
        shape = self._statistics_shape(input_shape)
        if any(d is None for d in shape):
            raise ValueError(f"Normalization layer {self.name!r}: the kept axes {keep} must have known "
                             f"sizes; got inputs of shape {format_shape(input_shape)}")
        if self.input_mean is not None:
            # given statistics are constants of the code, and the layer has no weights (as Keras's)
            try:
                self._fixed = tuple(np.ascontiguousarray(np.broadcast_to(
                    np.asarray(value, np.float32), shape)) for value in (self.input_mean,
                                                                         self.input_variance))
            except ValueError:
                raise ValueError(f"Normalization layer {self.name!r}: mean and variance of shape "
                                 f"{np.shape(self.input_mean)} do not broadcast to the kept axes' "
                                 f"shape {shape}") from None
        else:
            self.adapt_mean = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                              name="mean")
            self.adapt_variance = self.add_weight(shape=shape, initializer="ones", trainable=False,
                                                  name="variance")
            # Keras's third weight, the number of values adapted over (an integer there; kcompile's
            # weights are all float32)
            self.count = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                         name="count")
        self._statistics = shape
        self._keep = keep
        # the statistics' shape against whole inputs: kept axes in place, 1 elsewhere
        self._broadcast = tuple(input_shape[a] if a in keep else 1 for a in range(len(input_shape)))
        self.built = True

    def _statistic(self, which: int):
        """Keras's `layer.mean` / `layer.variance`: the statistics shaped to broadcast against the
        inputs (kept axes in place, 1 elsewhere: (1, features) for axis=-1), or None unbuilt."""
        if self._keep is None:
            return None
        value = (self._fixed[which] if self._fixed is not None
                 else (self.adapt_mean, self.adapt_variance)[which].numpy())
        return np.reshape(value, self._broadcast)

    @property
    def mean(self):
        return self._statistic(0)

    @property
    def variance(self):
        return self._statistic(1)

    # -- adapt ------------------------------------------------------------------------------------

    def adapt(self, data, batch_size=None, steps=None):
        """Compute the mean and variance of `data` (an array, or an iterable of batches) over every
        axis but `axis`, in float64, and keep them as the layer's statistics."""
        if self.input_mean is not None:
            raise ValueError(f"Normalization layer {self.name!r} was given mean= and variance=; "
                             "adapt() would not be used")
        first, batches = _batches(data)
        if first.ndim == 0 or first.dtype.kind not in "biuf":
            raise ValueError(f"Normalization.adapt needs numeric arrays with a batch axis; got "
                             f"{first.dtype} of shape {first.shape}")
        if not self.built:
            self.build(first.shape)
        total_mean = total_variance = None
        total_count = 0
        for index, batch in enumerate(batches):
            if steps is not None and index >= steps:
                break
            if batch.ndim != len(self._broadcast) or self._statistics_shape(batch.shape) != self._statistics:
                raise ValueError(f"Normalization layer {self.name!r} holds statistics of shape "
                                 f"{format_shape(self._statistics)}; adapt() got a batch of shape "
                                 f"{format_shape(batch.shape)}")
            batch = batch.astype(np.float64)
            reduce = tuple(a for a in range(batch.ndim) if a not in self._keep)
            count = math.prod(batch.shape[a] for a in reduce)
            if count == 0:
                continue
            mean = batch.mean(axis=reduce)
            variance = batch.var(axis=reduce)
            if total_mean is None:
                total_mean, total_variance, total_count = mean, variance, count
                continue
            # Chan et al.'s merge of two groups' means and (population) variances
            new_count = total_count + count
            delta = mean - total_mean
            merged_mean = total_mean + delta * (count / new_count)
            total_variance = (total_variance * total_count + variance * count
                              + delta ** 2 * (total_count * count / new_count)) / new_count
            total_mean, total_count = merged_mean, new_count
        if total_mean is None:
            raise ValueError(f"Normalization layer {self.name!r}: adapt() got no samples")
        if not (np.isfinite(total_mean).all() and np.isfinite(total_variance).all()):
            raise ValueError(f"Normalization layer {self.name!r}: adapt() data holds inf or NaN")
        self.adapt_mean.assign(total_mean.astype(np.float32))
        self.adapt_variance.assign(total_variance.astype(np.float32))
        self.count.assign(np.float32(total_count))

    # -- the computation --------------------------------------------------------------------------

    def call(self, inputs):
        shape = self._broadcast[1:]
        if self._fixed is not None:
            mean, variance = (B.const(value.reshape(shape), inputs.dtype) for value in self._fixed)
        else:
            mean, variance = (B.reshape(v.value, shape) for v in (self.adapt_mean,
                                                                  self.adapt_variance))
        scale = B.maximum(B.sqrt(variance), backend.epsilon())
        if self.invert:
            return B.add(mean, B.mul(inputs, scale))
        return B.div(B.sub(inputs, mean), scale)

    def get_config(self):
        config = super().get_config()
        config.update({
            "axis": self.axis,
            "invert": self.invert,
            "mean": None if self.input_mean is None else np.asarray(self.input_mean).tolist(),
            "variance": (None if self.input_variance is None
                         else np.asarray(self.input_variance).tolist()),
        })
        return config
