"""Conv2D, as `keras.layers.Conv2D` (channels_last).

The convolution is `ir.build_nn.conv2d`: im2col patches times the kernel reshaped to a matrix, so the
compiled step runs it on the GEMM; its gradients are a GEMM and col2im.
"""
from __future__ import annotations

import numbers

from ir import build as B
from ir import build_nn as NN

from kcompile import activations, initializers, regularizers
from kcompile.layers.layer import Layer, format_shape


def normalize_tuple(value, n: int, argument: str, layer: str) -> tuple:
    """An int or a sequence of `n` positive ints as a tuple, or a clear error."""
    values = (value,) * n if isinstance(value, numbers.Integral) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != n or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
                               for v in values):
        raise ValueError(f"{layer}: `{argument}` must be a positive integer or a tuple of {n} positive "
                         f"integers; got {argument}={value!r}")
    return tuple(int(v) for v in values)


def normalize_padding(padding, layer: str) -> str:
    if not isinstance(padding, str) or padding.lower() not in NN.PADDINGS:
        raise ValueError(f"{layer}: `padding` must be 'valid' or 'same'; got padding={padding!r}")
    return padding.lower()


def check_channels_last(data_format, layer: str) -> None:
    if data_format not in (None, "channels_last"):
        raise NotImplementedError(f"{layer} supports data_format='channels_last' only (images of shape "
                                  f"(batch, height, width, channels)); got data_format={data_format!r}")


def check_image(input_shape, layer, name: str) -> None:
    if len(input_shape) != 4:
        hint = ""
        if len(input_shape) == 3:
            h, w = input_shape[1:]
            hint = (f" For single-channel images add a channel axis: x.reshape(-1, {h}, {w}, 1), or "
                    f"put Reshape(({h}, {w}, 1)) first.")
        raise ValueError(f"{layer} layer {name!r} needs images of shape (batch, height, width, channels); "
                         f"got inputs of shape {format_shape(input_shape)}.{hint}")


def window_output_shape(input_shape, size, strides, padding) -> tuple:
    """(height, width) of the output of `size` windows, or a ValueError if none fits."""
    pads = NN.image_pads(input_shape, size, strides, padding)
    height = NN.window_output_size(input_shape[1], size[0], strides[0], pads[0], pads[1])
    width = NN.window_output_size(input_shape[2], size[1], strides[1], pads[2], pads[3])
    return height, width


class Conv2D(Layer):
    """2-D convolution over channels-last images: `activation(conv(inputs, kernel) + bias)`.

    Args:
        filters: the number of output channels.
        kernel_size: an int or (height, width) of the window.
        strides: an int or (vertical, horizontal) step (default 1).
        padding: 'valid' (windows inside the image) or 'same' (zero padding, output size
            ceil(input / stride)), as Keras places it.
        activation: name or function; None is linear.
        use_bias: add a bias per output channel.
        kernel_initializer, bias_initializer: default glorot_uniform (fans count the window) and zeros.

    The kernel has shape (kernel_height, kernel_width, input_channels, filters), as Keras's.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        for argument, value in [("activity_regularizer", activity_regularizer),
                                ("kernel_constraint", kernel_constraint),
                                ("bias_constraint", bias_constraint)]:
            if value is not None:
                raise NotImplementedError(f"Conv2D({argument}=...) is not supported yet")
        if isinstance(filters, bool) or not isinstance(filters, numbers.Integral) or filters <= 0:
            raise ValueError("Invalid value for argument `filters`. Expected a strictly positive "
                             f"integer (the number of output channels). Received filters={filters!r}")
        check_channels_last(data_format, "Conv2D")
        if normalize_tuple(dilation_rate, 2, "dilation_rate", "Conv2D") != (1, 1):
            raise NotImplementedError(f"Conv2D supports dilation_rate=1 only; got {dilation_rate!r}")
        if groups != 1:
            raise NotImplementedError(f"Conv2D supports groups=1 only; got groups={groups!r}")
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = normalize_tuple(kernel_size, 2, "kernel_size", "Conv2D")
        self.strides = normalize_tuple(strides, 2, "strides", "Conv2D")
        self.padding = normalize_padding(padding, "Conv2D")
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel = None
        self.bias = None

    def _check_input(self, input_shape):
        check_image(input_shape, "Conv2D", self.name)
        if self.kernel is not None and input_shape[-1] != self.kernel.shape[2]:
            raise ValueError(f"Input of layer {self.name!r} is incompatible with the layer: expected "
                             f"{self.kernel.shape[2]} input channels (axis -1), but received input "
                             f"with shape {format_shape(input_shape)}")

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        height, width = window_output_shape(input_shape, self.kernel_size, self.strides, self.padding)
        if height < 1 or width < 1:
            raise ValueError(f"Conv2D layer {self.name!r}: a {self.kernel_size} kernel does not fit "
                             f"inputs of shape {format_shape(input_shape)} with padding "
                             f"{self.padding!r}; use padding='same' or a smaller kernel_size.")
        return (input_shape[0], height, width, self.filters)

    def build(self, input_shape):
        self._check_input(input_shape)
        shape = self.kernel_size + (input_shape[-1], self.filters)
        self.kernel = self.add_weight(shape=shape, initializer=self.kernel_initializer, name="kernel",
                                      regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        name="bias", regularizer=self.bias_regularizer)
        self.built = True

    def call(self, inputs):
        x = NN.conv2d(inputs, self.kernel.value, self.strides, self.padding)
        if self.use_bias:
            x = B.add(x, self.bias.value)
        return self.activation(x)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": "channels_last",
            "dilation_rate": (1, 1),
            "groups": 1,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
        })
        return config
