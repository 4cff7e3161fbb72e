"""UnitNormalization and GroupNormalization, as in `keras.layers`.

Composites of reductions and elementwise ops, as BatchNormalization and LayerNormalization are
(normalization.py, whose per-feature multiply-add they share): autodiff gives their gradients.
"""
from __future__ import annotations

import numbers

from ir import build as B

from kcompile import initializers, regularizers
from kcompile.layers.layer import Layer, format_shape, refuse_unsupported
from kcompile.layers.normalization import _check_epsilon, _normalized, _resolve_axes


def _integer(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral)


class UnitNormalization(Layer):
    """Scales each sample to an L2 norm of 1 across `axis`: x / max(||x||, 1e-12), computed as Keras
    computes it, x * min(1 / sqrt(sum(x^2)), 1e12).

    Args:
        axis: an integer or list of integers, the axes whose norm is 1 (default -1, the features).
    """

    _EPSILON = 1e-12     # (Keras's, fixed)

    def __init__(self, axis=-1, **kwargs):
        if isinstance(axis, (list, tuple)) and axis and all(_integer(a) for a in axis):
            axis = [int(a) for a in axis]
        elif _integer(axis):
            axis = int(axis)
        else:
            raise TypeError("Invalid value for `axis` argument: expected an int or a list/tuple of "
                            f"ints (the axes to normalize across, e.g. -1). Received: axis={axis!r}")
        super().__init__(**kwargs)
        self.axis = axis

    def _axes(self, input_shape) -> tuple:
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        return _resolve_axes(axes, input_shape, "UnitNormalization", self.name, batch_axis=True)

    def compute_output_shape(self, input_shape):
        self._axes(input_shape)
        return tuple(input_shape)

    def call(self, inputs):
        squares = B.reduce_sum(B.mul(inputs, inputs), self._axes(inputs.shape), keepdims=True)
        # NOTE: min(1 / sqrt(s), 1 / eps) is 1 / sqrt(max(s, eps^2)); the clamp before the root
        # keeps a zero sample's gradient finite (the root's derivative at 0 is infinite)
        inverse_norm = B.div(1.0, B.sqrt(B.maximum(squares, self._EPSILON ** 2)))
        return B.mul(inputs, inverse_norm)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class GroupNormalization(Layer):
    """Normalizes each sample's channels in `groups` groups: the channels along `axis` are split into
    `groups` consecutive groups, and each group is normalized by its mean and (biased) variance over
    every other axis of the sample, then scaled by `gamma` and shifted by `beta` per channel.

    Args:
        groups: the number of groups, dividing the number of channels (default 32); -1: one group per
            channel (instance normalization).
        axis: the channels axis (default -1).
        epsilon: added to the variance (default 1e-3).
        center, scale: learn `beta` / `gamma`.
        beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer: of the weights.
    """

    def __init__(self, groups=32, axis=-1, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None, **kwargs):
        if not _integer(groups) or (groups <= 0 and groups != -1):
            raise ValueError("Received an invalid value for argument `groups`, expected a positive "
                             f"integer (or `-1` for instance normalization). Received: groups={groups!r}")
        if not _integer(axis):
            raise ValueError(f"GroupNormalization: `axis` must be an integer, the channels axis "
                             f"(e.g. -1); got axis={axis!r}")
        refuse_unsupported("GroupNormalization", {"beta_constraint": beta_constraint,
                                                  "gamma_constraint": gamma_constraint})
        super().__init__(**kwargs)
        self.groups = int(groups)
        self.axis = int(axis)
        self.epsilon = _check_epsilon(epsilon, "GroupNormalization")
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.gamma = self.beta = None

    def _channels_axis(self, input_shape) -> int:
        (axis,) = _resolve_axes([self.axis], input_shape, "GroupNormalization", self.name)
        return axis

    def _groups(self, channels: int) -> int:
        groups = channels if self.groups == -1 else self.groups
        if channels < groups:
            raise ValueError(f"GroupNormalization layer {self.name!r}: the number of groups "
                             f"({groups}) cannot be more than the number of channels ({channels}); "
                             "give groups= a divisor of the channels")
        if channels % groups:
            raise ValueError(f"GroupNormalization layer {self.name!r}: the number of channels "
                             f"({channels}) must be a multiple of the number of groups ({groups}); "
                             "give groups= a divisor of the channels")
        return groups

    def compute_output_shape(self, input_shape):
        axis = self._channels_axis(input_shape)
        self._groups(input_shape[axis])
        if self.gamma is not None or self.beta is not None:
            built_for = (self.gamma if self.gamma is not None else self.beta).shape[0]
            if input_shape[axis] != built_for:
                raise ValueError(f"Input of layer {self.name!r} is incompatible with the layer: "
                                 f"expected axis {self.axis} of input shape to have value "
                                 f"{built_for}, but received input with shape "
                                 f"{format_shape(input_shape)}")
        return tuple(input_shape)

    def build(self, input_shape):
        axis = self._channels_axis(input_shape)
        channels = input_shape[axis]
        self.groups = self._groups(channels)     # -1 becomes the channel count, as in Keras
        if self.scale:
            self.gamma = self.add_weight((channels,), self.gamma_initializer, name="gamma",
                                         regularizer=self.gamma_regularizer)
        if self.center:
            self.beta = self.add_weight((channels,), self.beta_initializer, name="beta",
                                        regularizer=self.beta_regularizer)
        self.built = True

    def call(self, inputs):
        shape = inputs.shape
        axis = self._channels_axis(shape)
        channels = shape[axis]
        groups = self._groups(channels)
        # (batch, ..., groups, channels per group, ...): a group's statistics reduce every axis of
        # the sample but the group axis
        grouped = shape[:axis] + (groups, channels // groups) + shape[axis + 1:]
        x = B.reshape(inputs, grouped)
        reduced = tuple(i for i in range(1, len(grouped)) if i != axis)
        mean = B.reduce_mean(x, reduced, keepdims=True)
        centered = B.sub(x, mean)
        variance = B.reduce_mean(B.mul(centered, centered), reduced, keepdims=True)
        per_channel = tuple(grouped[i] if i in (axis, axis + 1) else 1
                            for i in range(1, len(grouped)))

        def weight(variable):
            return None if variable is None else B.reshape(variable.value, per_channel)
        out = _normalized(x, mean, variance, self.epsilon, weight(self.gamma), weight(self.beta))
        return B.reshape(out, shape)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "axis": self.axis,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": None, "gamma_constraint": None}
