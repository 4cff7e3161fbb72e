"""Conv1DTranspose and Conv2DTranspose, as `keras.layers.Conv1DTranspose` and `Conv2DTranspose`
(channels_last).

A transposed convolution is the adjoint, with respect to its input, of a convolution: each input
pixel scatters its `KH x KW x filters` product with the kernel into the output.  It is built as that
scatter: the pixels times the kernel reshaped to `[C_in, KH*KW*filters]` (on the GEMM) give one
`KH x KW` block of output taps per pixel, and `patches_grad` (col2im, the adjoint of im2col) sums
the blocks at `strides` apart into the output image.  Its gradients are a GEMM and `patches` (im2col).

Output sizes and where the result sits follow Keras 3 (`compute_conv_transpose_output_shape` and
`compute_conv_transpose_padding_args_for_jax`): per spatial axis, the uncropped scatter has
`(in - 1) * stride + kernel` entries; 'valid' keeps them all (and `output_padding` zeros after them),
'same' crops it to `in * stride` (or `(in - 1) * stride + kernel % 2 + output_padding`).

A dilated transposed convolution is the plain one of the dilated kernel (`dilate_kernel`: zeros
between the taps), and Keras's output sizes and pads use the dilated extent `(kernel - 1) *
dilation + 1` in place of `kernel` (its JAX backend passes `rhs_dilation` to
`lax.conv_transpose` with the pads of that extent).  Keras refuses strides > 1 with dilation > 1
here, and so does kcompile.
"""
from __future__ import annotations


from ir import build as B
from ir import build_nn as NN

from kcompile import activations, initializers, regularizers
from kcompile.layers.convolutional import (as_image, as_sequence, check_channels_last, check_filters,
                                           check_spatial, dilate_kernel, dilated_size,
                                           normalize_padding, normalize_tuple,
                                           refuse_strided_dilation)
from kcompile.layers.layer import Layer, format_shape, refuse_unsupported


def normalize_output_padding(value, strides, argument: str, layer: str):
    """None, or an int or a sequence of non-negative ints each below its axis's stride, as a tuple."""
    if value is None:
        return None
    values = normalize_tuple(value, len(strides), argument, layer, minimum=0, allowed="None, ")
    for axis, (pad, stride) in enumerate(zip(values, strides)):
        if pad >= stride:
            raise ValueError(f"{layer}: each value of `{argument}` must be less than the stride of its "
                             f"axis; at axis {axis} {argument} is {pad} but strides is {stride}. "
                             f"Received: {argument}={value!r}, strides={tuple(strides)}")
    return values


def transpose_pads(kernel: int, stride: int, padding: str, output_padding):
    """(low, high) padding of the stride-dilated input that Keras's JAX backend convolves with the
    flipped kernel (`_convert_conv_transpose_padding_args_from_keras_to_jax`, dilation 1)."""
    if padding == "valid":
        if output_padding is None:
            output_padding = max(kernel, stride) - kernel
        return kernel - 1, kernel - 1 + output_padding
    if output_padding is None:
        total = stride + kernel - 2               # an output of size * stride
    else:
        total = kernel + kernel % 2 - 2 + output_padding
    low = min(total // 2 + total % 2, kernel - 1)
    return low, total - low


def transpose_output_size(size: int, kernel: int, stride: int, padding: str, output_padding) -> int:
    """Keras's output size of one axis: (size - 1) * stride + kernel, cropped or extended by the pads."""
    low, high = transpose_pads(kernel, stride, padding, output_padding)
    return (size - 1) * stride + 1 + low + high - kernel + 1


def scatter_pads(kernel: int, stride: int, output_padding, padding: str) -> tuple[int, int]:
    """(low, high) pads of `patches_grad` that put the scatter where Keras puts the output.

    The uncropped scatter adds x[i] * kernel[b] at i * stride + b; Keras's output entry o is that
    entry o + (kernel - 1 - low).  patches_grad of an image of the output size with pads (p, q) sums
    its window taps (i, b) at i * stride + b - p, so p = kernel - 1 - low (>= 0, low is at most
    kernel - 1).  q must leave the image exactly `size` windows: max(kernel - 1 - high, 0) does,
    as high is at most kernel + stride - 2 (output_padding is below the stride)."""
    low, high = transpose_pads(kernel, stride, padding, output_padding)
    return kernel - 1 - low, max(kernel - 1 - high, 0)


class _ConvTranspose(Layer):
    """A transposed convolution over channels-last inputs of `rank` spatial axes."""

    rank = 2

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None,
                 data_format=None, dilation_rate=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        layer = type(self).__name__
        refuse_unsupported(layer, {"kernel_constraint": kernel_constraint,
                                   "bias_constraint": bias_constraint})
        filters = check_filters(filters)
        check_channels_last(data_format, layer)
        kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size", layer)
        strides = normalize_tuple(strides, self.rank, "strides", layer)
        dilation_rate = normalize_tuple(dilation_rate, self.rank, "dilation_rate", layer)
        output_padding = normalize_output_padding(output_padding, strides, "output_padding", layer)
        refuse_strided_dilation(layer, strides, dilation_rate, "Use strides=1 with the dilation, "
                                "or dilation_rate=1 with the strides.")
        super().__init__(**kwargs)
        self.data_format = "channels_last"
        self.filters = int(filters)
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.padding = normalize_padding(padding, layer)
        self.output_padding = output_padding
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self.kernel = None
        self.bias = None

    def _axes(self):
        """(extent of the dilated kernel, stride, output_padding) of each spatial axis of the image
        the layer scatters into; a sequence is a one-row image whose row axis is a 1-tap, stride-1
        identity."""
        paddings = self.output_padding or (None,) * self.rank
        axes = list(zip(dilated_size(self.kernel_size, self.dilation_rate), self.strides, paddings))
        return [(1, 1, None)] + axes if self.rank == 1 else axes

    def _check_input(self, input_shape):
        check_spatial(input_shape, self.rank, type(self).__name__, self.name)
        if self.kernel is not None and input_shape[-1] != self.kernel.shape[-1]:
            raise ValueError(f"Input of layer {self.name!r} is incompatible with the layer: expected "
                             f"{self.kernel.shape[-1]} input channels (axis -1), but received input "
                             f"with shape {format_shape(input_shape)}")

    def _output_image(self, image_shape):
        """(height, width) of the output image of an input image [N,H,W,C]."""
        return tuple(transpose_output_size(size, kernel, stride, self.padding, pad)
                     for size, (kernel, stride, pad) in zip(image_shape[1:3], self._axes()))

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        image = (input_shape[0], 1) + tuple(input_shape[1:]) if self.rank == 1 else input_shape
        out = self._output_image(image)
        if min(out) < 1:
            dilated = (f", dilation_rate={self.dilation_rate}" if max(self.dilation_rate) > 1
                       else "")
            raise ValueError(f"{type(self).__name__} layer {self.name!r}: inputs of shape "
                             f"{format_shape(input_shape)} with kernel_size={self.kernel_size}"
                             f"{dilated}, padding={self.padding!r} and output_padding="
                             f"{self.output_padding} give an empty output; use a larger "
                             "output_padding or padding='valid'.")
        spatial = out[1:] if self.rank == 1 else out
        return (input_shape[0],) + spatial + (self.filters,)

    def build(self, input_shape):
        self._check_input(input_shape)
        # NOTE: Keras's layout, filters before input channels: the kernel of the convolution whose
        # input gradient this layer computes.
        shape = self.kernel_size + (self.filters, input_shape[-1])
        self.kernel = self.add_weight(shape=shape, initializer=self.kernel_initializer, name="kernel",
                                      regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        name="bias", regularizer=self.bias_regularizer)
        self.built = True

    def _scatter(self, image):
        """The transposed convolution of image[N,H,W,C_in] -> [N,OH,OW,filters]."""
        out = self._output_image(image.shape)
        size = tuple(kernel for kernel, _, _ in self._axes())
        strides = tuple(stride for _, stride, _ in self._axes())
        (top, bottom), (left, right) = (scatter_pads(*axis, self.padding) for axis in self._axes())
        # kernel[KH,KW,F,C_in], dilated, is already the matrix [KH*KW*F, C_in] whose transpose maps
        # a pixel's channels to its block of output taps
        taps = size[0] * size[1] * self.filters
        kernel = B.reshape(dilate_kernel(self.kernel.value, self.dilation_rate),
                           (taps, image.shape[-1]))
        columns = B.matmul(image, kernel, transpose_b=True)
        blocks = B.reshape(columns, tuple(image.shape[:3]) + size + (self.filters,))
        return NN.patches_grad(blocks, size, strides, (top, bottom, left, right), out)

    def call(self, inputs):
        x = as_sequence(self._scatter(as_image(inputs))) if self.rank == 1 else self._scatter(inputs)
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
            "output_padding": self.output_padding,
            "data_format": "channels_last",
            "dilation_rate": self.dilation_rate,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            "kernel_constraint": None,
            "bias_constraint": None,
        })
        return config


class Conv2DTranspose(_ConvTranspose):
    """2-D transposed convolution over channels-last images (the adjoint of a Conv2D with respect
    to its input, e.g. to upsample): `activation(conv_transpose(inputs, kernel) + bias)`.

    Args:
        filters: the number of output channels.
        kernel_size: an int or (height, width) of the window.
        strides: an int or (vertical, horizontal) step (default 1): the output is about `strides`
            times the input.
        padding: 'valid' (output (in - 1) * stride + kernel_size) or 'same' (output in * stride).
        output_padding: None, or an int or pair below `strides`: the output size becomes
            (in - 1) * stride + kernel_size + output_padding ('valid') or
            (in - 1) * stride + kernel_size % 2 + output_padding ('same'), as Keras computes it.
        dilation_rate: an int or (vertical, horizontal) spacing of the kernel's taps (default 1);
            the sizes above then count the dilated extent (kernel_size - 1) * dilation_rate + 1 as
            the kernel.  Only with strides 1, as in Keras.
        activation, use_bias, kernel_initializer, bias_initializer, ...: as Conv2D.

    The kernel has shape (kernel_height, kernel_width, filters, input_channels), as Keras's.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         output_padding=output_padding, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         **kwargs)


class Conv1DTranspose(_ConvTranspose):
    """1-D transposed convolution over channels-last sequences (batch, steps, channels), computed
    as a Conv2DTranspose of one-row images.

    Args: as Conv2DTranspose, with ints (or 1-tuples) for kernel_size, strides, output_padding and
    dilation_rate.

    The kernel has shape (kernel_size, filters, input_channels), as Keras's.
    """

    rank = 1

    def __init__(self, filters, kernel_size, strides=1, padding="valid", output_padding=None,
                 data_format=None, dilation_rate=1, activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         output_padding=output_padding, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         **kwargs)
