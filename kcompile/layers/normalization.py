"""BatchNormalization and LayerNormalization, as in `keras.layers`.

Both are composites of reductions and elementwise ops: the compiler needs no rule of its own for
them, and their gradients come from autodiff.  Variances are the biased (population) variances, in
normalization and in BatchNormalization's moving average, as Keras computes them.
"""
from __future__ import annotations

import numbers

from ir import build as B

from kcompile import initializers, regularizers
from kcompile.layers.layer import Layer, current_scope, format_shape, refuse_unsupported


def _check_epsilon(epsilon, layer) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon > 0:
        raise ValueError(f"{layer}: `epsilon` must be a positive number; got epsilon={epsilon!r}")
    return float(epsilon)


def _axes(axis, layer) -> tuple:
    values = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    if not values or any(isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in values):
        raise ValueError(f"{layer}: `axis` must be an integer or a list of integers; got axis={axis!r}")
    return tuple(int(a) for a in values)


def _resolve_axes(axes, input_shape, layer, name, batch_axis: bool = False) -> tuple:
    """`axes` as sorted non-negative axes of `input_shape`, or a ValueError naming the layer (an
    axis out of range or repeated; the batch axis 0 unless `batch_axis`)."""
    rank = len(input_shape)
    resolved = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(f"{layer} layer {name!r}: axis {a} is out of range for inputs of shape "
                             f"{format_shape(input_shape)}")
        resolved.append(a % rank)
    if 0 in resolved and not batch_axis:
        raise ValueError(f"{layer} layer {name!r} cannot normalize along the batch axis 0; give an axis "
                         f"of the samples (e.g. axis=-1 for features) for inputs of shape "
                         f"{format_shape(input_shape)}")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{layer} layer {name!r}: repeated axis in axis={list(axes)}")
    return tuple(sorted(resolved))


def _normalized(x, mean, variance, epsilon, gamma, beta):
    """gamma * (x - mean) / sqrt(variance + epsilon) + beta, as one multiply-add per element:
    x * s + (beta - mean * s) with s = gamma / sqrt(variance + epsilon) computed per feature."""
    scale = B.div(1.0, B.sqrt(B.add(variance, epsilon)))
    if gamma is not None:
        scale = B.mul(scale, gamma)
    shift = B.neg(B.mul(mean, scale))
    if beta is not None:
        shift = B.add(shift, beta)
    return B.add(B.mul(x, scale), shift)


class BatchNormalization(Layer):
    """Normalizes each feature along `axis` by batch statistics in training and by moving averages of
    them in inference, then scales by `gamma` and shifts by `beta`.

    Args:
        axis: the feature axis (default -1, channels last); statistics reduce every other axis.
        momentum: moving_average = momentum * moving_average + (1 - momentum) * batch statistic.
        epsilon: added to the variance.
        center, scale: learn `beta` / `gamma`.
        beta_regularizer, gamma_regularizer: penalties of `beta` / `gamma`, added to the loss.

    Weights, in Keras's order: gamma, beta (trainable), moving_mean, moving_variance (updated inside
    the compiled train step, in place).  A frozen layer (`trainable = False`) runs in inference mode
    in training too, as in Keras.  Called on an array with `training=True` (the layer, or a model
    holding it), the layer normalizes by the batch's statistics and updates the moving averages
    once, as Keras does.
    """

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, synchronized=False, renorm=False,
                 renorm_clipping=None, renorm_momentum=0.99, **kwargs):
        if renorm:
            # (Keras 3.15's batch renormalization; its configs hold renorm=False)
            raise NotImplementedError("BatchNormalization(renorm=True) is not supported yet")
        refuse_unsupported("BatchNormalization", {"beta_constraint": beta_constraint,
                                                  "gamma_constraint": gamma_constraint})
        if synchronized:
            raise NotImplementedError("BatchNormalization(synchronized=True) is for several devices; "
                                      "kcompile trains on one")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
            raise ValueError(f"BatchNormalization: `momentum` must be in [0, 1]; got momentum={momentum!r}")
        super().__init__(**kwargs)
        self.axis = axis if isinstance(axis, numbers.Integral) else list(axis)
        self._axes = _axes(axis, "BatchNormalization")
        self.momentum = float(momentum)
        self.epsilon = _check_epsilon(epsilon, "BatchNormalization")
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        # (inert without renorm; kept so that configs round-trip)
        self.renorm_clipping, self.renorm_momentum = renorm_clipping, renorm_momentum
        self.gamma = self.beta = self.moving_mean = self.moving_variance = None

    def compute_output_shape(self, input_shape):
        _resolve_axes(self._axes, input_shape, "BatchNormalization", self.name)
        return tuple(input_shape)

    def build(self, input_shape):
        axes = _resolve_axes(self._axes, input_shape, "BatchNormalization", self.name)
        shape = tuple(input_shape[a] for a in axes)
        if self.scale:
            self.gamma = self.add_weight(shape, self.gamma_initializer, name="gamma",
                                         regularizer=self.gamma_regularizer)
        if self.center:
            self.beta = self.add_weight(shape, self.beta_initializer, name="beta",
                                        regularizer=self.beta_regularizer)
        self.moving_mean = self.add_weight(shape, self.moving_mean_initializer, trainable=False,
                                           name="moving_mean")
        self.moving_variance = self.add_weight(shape, self.moving_variance_initializer,
                                               trainable=False, name="moving_variance")
        self.built = True

    def call(self, inputs, training=False, mask=None):
        if mask is not None and training and self.trainable:
            # (Keras computes the batch statistics over the unmasked steps only)
            raise NotImplementedError(f"BatchNormalization layer {self.name!r} trained on masked "
                                      "inputs (statistics over the unmasked timesteps) is not "
                                      "supported yet; use LayerNormalization, which acts on each "
                                      "timestep alone")
        axes = _resolve_axes(self._axes, inputs.shape, "BatchNormalization", self.name)
        # per-feature values are reshaped to broadcast against the inputs (axis 0 is never one)
        shape = tuple(d if i in axes else 1 for i, d in enumerate(inputs.shape))[1:]

        def per_feature(variable):
            return None if variable is None else B.reshape(variable.value, shape)
        gamma, beta = per_feature(self.gamma), per_feature(self.beta)
        if not (training and self.trainable):
            return _normalized(inputs, per_feature(self.moving_mean),
                               per_feature(self.moving_variance), self.epsilon, gamma, beta)
        reduced = tuple(i for i in range(inputs.type.rank) if i not in axes)
        mean = B.reduce_mean(inputs, reduced, keepdims=True)
        centered = B.sub(inputs, mean)
        variance = B.reduce_mean(B.mul(centered, centered), reduced, keepdims=True)
        scope = current_scope()
        if scope is not None:
            for variable, statistic in ((self.moving_mean, mean), (self.moving_variance, variance)):
                batch_value = B.reshape(statistic, variable.shape)
                scope.add_update(variable, B.add(B.mul(variable.value, self.momentum),
                                                 B.mul(batch_value, 1.0 - self.momentum)))
        return _normalized(inputs, mean, variance, self.epsilon, gamma, beta)

    def get_config(self):
        config = super().get_config()
        config.update({
            "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
            "center": self.center, "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
            "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": None,
            "gamma_constraint": None,
            # (Keras 3.15's keys at the only values kcompile takes: see __init__)
            "synchronized": False,
            "renorm": False,
            "renorm_clipping": self.renorm_clipping,
            "renorm_momentum": self.renorm_momentum,
        })
        return config


class LayerNormalization(Layer):
    """Normalizes each sample over `axis` (default the last), then scales by `gamma` and shifts by
    `beta` (per feature of `axis`).

    Args:
        axis: an int or list of ints, the axes to normalize over.
        epsilon: added to the variance (default 1e-3, as Keras).
        center, scale: learn `beta` / `gamma`.
        beta_regularizer, gamma_regularizer: penalties of `beta` / `gamma`, added to the loss.
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None, **kwargs):
        refuse_unsupported("LayerNormalization", {"beta_constraint": beta_constraint,
                                                  "gamma_constraint": gamma_constraint})
        if rms_scaling:
            raise NotImplementedError("LayerNormalization(rms_scaling=True) is not supported yet")
        super().__init__(**kwargs)
        self.axis = axis if isinstance(axis, numbers.Integral) else list(axis)
        self._axes = _axes(axis, "LayerNormalization")
        self.epsilon = _check_epsilon(epsilon, "LayerNormalization")
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.gamma = self.beta = None

    def compute_output_shape(self, input_shape):
        _resolve_axes(self._axes, input_shape, "LayerNormalization", self.name)
        return tuple(input_shape)

    def build(self, input_shape):
        axes = _resolve_axes(self._axes, input_shape, "LayerNormalization", self.name)
        shape = tuple(input_shape[a] for a in axes)
        if self.scale:
            self.gamma = self.add_weight(shape, self.gamma_initializer, name="gamma",
                                         regularizer=self.gamma_regularizer)
        if self.center:
            self.beta = self.add_weight(shape, self.beta_initializer, name="beta",
                                        regularizer=self.beta_regularizer)
        self.built = True

    def call(self, inputs):
        axes = _resolve_axes(self._axes, inputs.shape, "LayerNormalization", self.name)
        shape = tuple(d if i in axes else 1 for i, d in enumerate(inputs.shape))[1:]

        def per_feature(variable):
            return None if variable is None else B.reshape(variable.value, shape)
        mean = B.reduce_mean(inputs, axes, keepdims=True)
        centered = B.sub(inputs, mean)
        variance = B.reduce_mean(B.mul(centered, centered), axes, keepdims=True)
        scale = B.div(1.0, B.sqrt(B.add(variance, self.epsilon)))
        out = B.mul(centered, scale)
        if self.gamma is not None:
            out = B.mul(out, per_feature(self.gamma))
        if self.beta is not None:
            out = B.add(out, per_feature(self.beta))
        return out

    def get_config(self):
        config = super().get_config()
        config.update({
            "axis": self.axis, "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
            "rms_scaling": False,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": None,
            "gamma_constraint": None,
        })
        return config
