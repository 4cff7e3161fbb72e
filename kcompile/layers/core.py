"""The core layers: InputLayer/Input, Dense, Flatten, Activation, Dropout.

Each layer writes its `call` in IR ops and its `compute_output_shape` on shapes whose batch axis is
None; `compute_output_shape` also validates, so a model reports a bad shape before drawing a weight.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ir import build as B

from kcompile import activations, initializers, regularizers
from kcompile.layers.layer import (Layer, check_seed, format_shape,
                                   normalize_input_shape, random_stream, refuse_unsupported,
                                   training_seed)
from kcompile.schedules import FLOAT32_MAX


class SymbolicTensor:
    """What `Input(shape=...)` returns: a placeholder that tells a Sequential model its input shape;
    also a model's `inputs` and `outputs` (shape, dtype and name only: there is no functional API
    to compute with them)."""

    def __init__(self, input_layer: "InputLayer" = None, *, shape=None, dtype="float32",
                 name=None):
        self._input_layer = input_layer
        self._shape, self._dtype, self._name = (None if shape is None else tuple(shape)), dtype, name

    @property
    def shape(self) -> tuple:
        return self._input_layer.batch_shape if self._input_layer is not None else self._shape

    @property
    def dtype(self) -> str:
        """The Input's dtype ('float32', or an integer type for Embedding ids), as Keras's."""
        return self._input_layer.input_dtype if self._input_layer is not None else self._dtype

    @property
    def name(self) -> str:
        return self._input_layer.name if self._input_layer is not None else self._name

    def __repr__(self):
        return (f"<SymbolicTensor shape={format_shape(self.shape)}, dtype={self.dtype}, "
                f"name={self.name}>")


class InputLayer(Layer):
    """The input of a model: its per-sample shape, as `keras.layers.InputLayer`.

    Args:
        shape: per-sample shape, e.g. (28, 28).
        batch_size: accepted for compatibility; every compiled function takes any batch size.
        batch_shape: full shape including the batch axis (its first entry is ignored).
        dtype: 'float32' (the default), or an integer dtype such as 'int32' for the ids an `Embedding`
            reads: integer inputs are fed as float32, which holds every id below 2**24 exactly.
    """

    def __init__(self, shape=None, batch_size=None, dtype=None, sparse=None, batch_shape=None,
                 input_tensor=None, optional=False, name=None, ragged=None, **kwargs):
        legacy = kwargs.pop("input_shape", None)
        if shape is None and legacy is not None:
            shape = legacy
        if kwargs.pop("batch_input_shape", None) is not None and batch_shape is None:
            raise ValueError("pass batch_shape= (or shape=) to InputLayer")
        if sparse or ragged:
            raise NotImplementedError(f"{'sparse' if sparse else 'ragged'} inputs are not supported")
        if input_tensor is not None or optional:
            raise NotImplementedError("InputLayer(input_tensor=...) and optional inputs are not supported")
        if shape is None and batch_shape is None:
            raise ValueError("InputLayer needs shape= (per sample, e.g. shape=(28, 28)) or batch_shape=")
        if shape is not None and batch_shape is not None:
            raise ValueError("pass only one of shape= and batch_shape= to InputLayer")
        self.input_dtype = _input_dtype(dtype)
        super().__init__(name=name, **kwargs)
        if batch_shape is not None:
            batch_shape = tuple(batch_shape)
            if not batch_shape:
                raise ValueError("batch_shape must include the batch dimension, e.g. (None, 784)")
            per_sample = normalize_input_shape(batch_shape[1:], "batch_shape[1:]")
        else:
            per_sample = normalize_input_shape(shape, "shape")
        self.batch_size = batch_size
        self.batch_shape = (None,) + per_sample
        self._batch_input_shape = self.batch_shape
        self.built = True
        self._output_shape = self.batch_shape
        self.output = SymbolicTensor(self)


    @property
    def dtype(self) -> str:
        """The dtype of the model's inputs ('float32', or 'int32' for Embedding ids), as Keras's."""
        return self.input_dtype

    def compute_output_shape(self, input_shape):
        return self.batch_shape

    def call(self, inputs):
        return inputs

    def get_config(self):
        return {"batch_shape": self.batch_shape, "dtype": self.input_dtype, "name": self.name}


def _input_dtype(dtype) -> str:
    """The dtype name an InputLayer records: float32 (for any float type: the layers compute in
    float32, as Keras's float32 layers cast a float64 input) or an integer type (fed as float32)."""
    if dtype is None:
        return "float32"
    try:
        resolved = np.dtype(getattr(dtype, "name", dtype))
    except TypeError:
        raise ValueError(f"Input dtype={dtype!r} is not a dtype; use 'float32' or an integer type "
                         "such as 'int32'") from None
    if resolved.kind == "f":
        return "float32"
    if resolved.kind in "iu":
        return resolved.name
    raise ValueError(f"kcompile models take float inputs (computed in float32), or integer ids (fed "
                     f"as float32) for an Embedding; got dtype={dtype!r}")


def Input(shape=None, batch_size=None, dtype=None, sparse=None, batch_shape=None, name=None,
          tensor=None, optional=False, ragged=None):
    """A model input of per-sample `shape`: use it as the first element of a Sequential model."""
    layer = InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, sparse=sparse,
                       batch_shape=batch_shape, input_tensor=tensor, optional=optional, name=name,
                       ragged=ragged)
    return layer.output


class Dense(Layer):
    """`activation(inputs @ kernel + bias)` on the last axis of inputs of any rank, as `keras.layers.Dense`.

    Args:
        units: positive integer, the size of the output's last axis.
        activation: name ('relu', 'softmax', ...) or function; None is linear.
        use_bias: add a bias vector.
        kernel_initializer, bias_initializer: initializers (default glorot_uniform and zeros).
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 lora_rank=None, quantization_config=None, **kwargs):
        refuse_unsupported("Dense", {"kernel_constraint": kernel_constraint,
                                     "bias_constraint": bias_constraint, "lora_rank": lora_rank,
                                     "quantization_config": quantization_config})
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units <= 0:
            raise ValueError("Received an invalid value for `units`, expected a positive integer. "
                             f"Received: units={units!r}")
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self.kernel = None
        self.bias = None

    def _check_input(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"Dense layer {self.name!r} needs inputs of shape (batch, ..., features); "
                             f"got {format_shape(input_shape)}. Give samples a feature axis, e.g. "
                             "reshape x to (n, 1).")
        if self.kernel is not None and input_shape[-1] != self.kernel.shape[0]:
            raise ValueError(f"Input of layer {self.name!r} is incompatible with the layer: expected "
                             f"axis -1 of input shape to have value {self.kernel.shape[0]}, but "
                             f"received input with shape {format_shape(input_shape)}")

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        return tuple(input_shape[:-1]) + (self.units,)

    def build(self, input_shape):
        self._check_input(input_shape)
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                      initializer=self.kernel_initializer, name="kernel",
                                      regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.units,), initializer=self.bias_initializer,
                                        name="bias", regularizer=self.bias_regularizer)
        self.built = True

    def call(self, inputs):
        # matmul contracts the last axis of any-rank inputs with the kernel's rows.
        x = B.matmul(inputs, self.kernel.value)
        if self.use_bias:
            x = B.add(x, self.bias.value)
        return self.activation(x)

    def get_config(self):
        config = super().get_config()
        config.update({
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": None,
            "bias_constraint": None,
            "quantization_config": None,
        })
        # as Keras 3's Dense: the key only when there is one (its base Layer's config)
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = regularizers.serialize(self.activity_regularizer)
        return config


class Flatten(Layer):
    """Flattens every axis but the batch axis: (None, 28, 28) -> (None, 784)."""

    def __init__(self, data_format=None, **kwargs):
        from .convolutional import check_channels_last
        check_channels_last(data_format, "Flatten")
        super().__init__(**kwargs)
        self.data_format = "channels_last"

    def compute_output_shape(self, input_shape):
        if not input_shape:
            raise ValueError(f"Flatten layer {self.name!r} needs inputs with a batch axis")
        rest = input_shape[1:]
        return (input_shape[0], None if None in rest else math.prod(rest))   # (as Keras's)

    def call(self, inputs):
        return B.reshape(inputs, self.compute_output_shape(inputs.shape))

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}   # (Keras 3's keys)


class Activation(Layer):
    """Applies an activation function: `Activation('softmax')`."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        return self.activation(inputs)

    def get_config(self):
        config = super().get_config()
        config["activation"] = activations.serialize(self.activation)
        return config


class Dropout(Layer):
    """Zeroes a fraction `rate` of its inputs in training and scales the rest by 1 / (1 - rate).

    Identity in inference.  The mask comes from the train step's `seed` input through a counter-based
    generator, on a stream of its own per layer (derived from the layer's name and `seed`), so two
    Dropout layers never share a mask and a run is reproducible from `set_random_seed`.

    Args:
        rate: fraction of units to drop, in [0, 1] (1: every unit, zeros in training, as Keras).
        noise_shape: shape of the mask, broadcast over the inputs (None entries take the input's size).
        seed: optional integer mixed into this layer's stream.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate <= 1:
            raise ValueError("Invalid value received for argument `rate`. Expected a float value in "
                             f"[0, 1] (the fraction of inputs to drop). Received: rate={rate!r}")
        seed = check_seed(seed, type(self).__name__)
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.seed = seed

    def compute_output_shape(self, input_shape):
        if self.noise_shape is not None:
            self._mask_shape(input_shape)
        return tuple(input_shape)

    def _mask_shape(self, input_shape) -> tuple:
        if self.noise_shape is None:
            return tuple(input_shape)
        if len(self.noise_shape) != len(input_shape):
            raise ValueError(f"{type(self).__name__} noise_shape {self.noise_shape} must have the "
                             f"rank of the inputs {format_shape(input_shape)}")
        shape = []
        for axis, (n, d) in enumerate(zip(self.noise_shape, input_shape)):
            if n is None:
                shape.append(d)
            elif n == 1 or n == d:
                shape.append(None if axis == 0 and d is None and n != 1 else n)
            else:
                raise ValueError(f"{type(self).__name__} noise_shape {self.noise_shape} does not "
                                 f"broadcast to the inputs {format_shape(input_shape)}")
        return tuple(shape)

    @property
    def stream(self) -> int:
        """This layer's random stream: distinct per layer name (and seed) within a model."""
        return random_stream(self)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            return B.zeros_like(inputs)     # every unit dropped (Keras's select gives zeros too)
        mask_shape = self._mask_shape(inputs.shape)
        keep = B.ge(B.random_uniform(training_seed(self), mask_shape, self.stream), self.rate)
        keep = B.broadcast(keep, inputs.shape) if keep.shape != inputs.shape else keep
        # As Keras: select(mask, x / keep_prob, 0).
        return B.select(keep, B.div(inputs, 1.0 - self.rate), 0.0)

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "noise_shape": self.noise_shape, "seed": self.seed})
        return config


class LeakyReLU(Layer):
    """max(x, negative_slope * x), as `keras.layers.LeakyReLU` (default slope 0.3)."""

    def __init__(self, negative_slope=0.3, **kwargs):
        if "alpha" in kwargs:     # Keras 2's name, which Keras 3 still takes
            negative_slope = kwargs.pop("alpha")
        super().__init__(**kwargs)
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real) \
                or not negative_slope >= 0:
            raise ValueError(f"negative_slope of LeakyReLU must be a number >= 0; got "
                             f"negative_slope={negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        return activations.leaky_relu(inputs, negative_slope=self.negative_slope)

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


def _real(value, argument, layer, allow_none=False, minimum=None):
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{layer}: `{argument}` must be a finite number{bound}"
                         f"{' or None' if allow_none else ''}; got {argument}={value!r}")
    return float(value)


class ReLU(Layer):
    """relu with Keras's options, as `keras.layers.ReLU`: x for threshold <= x < max_value,
    max_value above, negative_slope * (x - threshold) below the threshold."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        self.max_value = _real(max_value, "max_value", "ReLU", allow_none=True, minimum=0.0)
        self.negative_slope = _real(negative_slope, "negative_slope", "ReLU", minimum=0.0)
        self.threshold = _real(threshold, "threshold", "ReLU", minimum=0.0)   # (as Keras)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        return activations.relu(inputs, negative_slope=self.negative_slope,
                                max_value=self.max_value, threshold=self.threshold)

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value,
                "negative_slope": self.negative_slope, "threshold": self.threshold}


class Softmax(Layer):
    """softmax along `axis` (default -1), or jointly along a tuple of axes, as
    `keras.layers.Softmax`."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        axes = axis if isinstance(axis, (list, tuple)) else (axis,)
        if not axes or any(isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in axes):
            raise ValueError(f"Softmax: `axis` must be an integer or a tuple of integers; got "
                             f"axis={axis!r}")
        self.axis = tuple(int(a) for a in axes) if isinstance(axis, (list, tuple)) else int(axis)

    def compute_output_shape(self, input_shape):
        rank = len(input_shape)
        for axis in (self.axis if isinstance(self.axis, tuple) else (self.axis,)):
            if not -rank <= axis < rank or axis % rank == 0:
                raise ValueError(f"Softmax layer {self.name!r}: axis {axis} is not a sample axis of "
                                 f"inputs of shape {format_shape(input_shape)}")
        return tuple(input_shape)

    def call(self, inputs, mask=None):
        if mask is not None:
            # Keras checks the mask broadcasts against the inputs from the last axis on; a
            # timestep mask (batch, steps) on (batch, steps, features) does not
            if mask.type.rank != inputs.type.rank or mask.shape[1:] != inputs.shape[1:]:
                raise ValueError(f"Softmax layer {self.name!r}: the `mask` must be broadcastable to "
                                 f"`inputs`; got mask.shape={format_shape(mask.shape)} and "
                                 f"inputs.shape={format_shape(inputs.shape)}. Apply the softmax in "
                                 "the Dense layer before it (activation='softmax'), which ignores "
                                 "the mask")
            raise NotImplementedError(f"Softmax layer {self.name!r} with a mask (Keras's masked "
                                      "softmax) is not supported yet")
        return activations.softmax(inputs, axis=self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


class ELU(Layer):
    """x for x > 0, alpha * (exp(x) - 1) otherwise, as `keras.layers.ELU`."""

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _real(alpha, "alpha", "ELU")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        return activations.elu(inputs, alpha=self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class Rescaling(Layer):
    """inputs * scale + offset, as `keras.layers.Rescaling` (e.g. scale=1/255 for pixels)."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        values = {}
        for name, value in (("scale", scale), ("offset", offset)):
            array = np.asarray(value)
            if array.dtype.kind not in "fiu" or array.ndim > 1 \
                    or not (np.abs(array.astype(np.float64)) <= FLOAT32_MAX).all():
                raise ValueError(f"{name} of Rescaling must be a finite number within float32's range "
                                 f"(or one per channel); got {name}={value!r}")
            values[name] = float(array) if array.ndim == 0 else [float(v) for v in array]
        self.scale, self.offset = values["scale"], values["offset"]

    def compute_output_shape(self, input_shape):
        for name in ("scale", "offset"):
            value = getattr(self, name)
            if isinstance(value, list) and len(value) not in (1, input_shape[-1]):
                raise ValueError(f"Rescaling has {len(value)} {name} values for {input_shape[-1]} "
                                 "channels")
        return tuple(input_shape)

    def call(self, inputs):
        def constant(value):
            return value if not isinstance(value, list) else B.const(np.array(value, np.float32))
        return B.add(B.mul(B.cast(inputs, "f32"), constant(self.scale)), constant(self.offset))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}
