"""MaxPooling2D, AveragePooling2D and GlobalAveragePooling2D, as in `keras.layers` (channels_last).

Window pooling is a reduction over the window axes of im2col patches (`ir.build_nn.pool2d`): the
compiled kernel evaluates each window in place, and the gradient is col2im of the reduction's
gradient.  Padding never counts: 'same' max pooling ignores it, 'same' average pooling divides by
the number of pixels inside the image, as Keras does.

Max pooling's gradient goes to the *first* position of each window (row-major over the window)
that equals its maximum, as Keras 3 on JAX and PyTorch send it (TensorFlow too picks one position).
NOTE: exact ties at a positive maximum are common: a convolution is its bias wherever its window
is all zeros (Fashion-MNIST's background) or one flat value, and stays so through the ReLU and the
next convolution.  The IR's `max_pool_grad` sends the gradient to *every* tied position (up to
KH*KW-fold in a flat region), which made the example CNN's convolution gradients differ from Keras's
(by 1-2% at the first step, and several-fold for the conv biases once they are positive).  So a
layer traced for training pools with `first_max_pool2d` (the first tap equal to the maximum picked
by a select: its gradient reaches that tap alone); inference keeps the `max_pool` primitive, which
gives the same values bit for bit.  NOTE: the composite costs the example's train step about 15%
(measured single-threaded); `max_pool_grad` routing to the first maximum itself would make it free,
and `call` could then return to `ir.build_nn.pool2d`.
"""
from __future__ import annotations

from ir import build as B
from ir import build_nn as NN

from kcompile.layers.convolutional import (check_channels_last, check_image, normalize_padding,
                                           normalize_tuple, window_output_shape)
from kcompile.layers.layer import Layer, format_shape


def first_max_pool2d(x, size, strides, padding: str):
    """Max pooling of x[N,H,W,C] whose gradient goes to the first maximum of each window (row-major),
    as Keras's.  Values equal `ir.build_nn.pool2d(..., 'max')`'s."""
    size, strides = tuple(size), tuple(strides)
    pads = NN.image_pads(x.shape, size, strides, padding)
    z = NN.relu_operand(x)
    if z is not None:
        # relu(pool(z)) == pool(relu(z)), gradients included: a positive maximum is first at the same
        # position in z and relu(z); a window whose maximum is <= 0 passes no gradient either way.
        return B.relu(_first_max_pool(z, size, strides, pads))
    return _first_max_pool(x, size, strides, pads)


def _first_max_pool(x, size, strides, pads):
    windows = NN.patches(x, size, strides, pads, float("-inf"))     # [N,OH,OW,KH,KW,C]; pads lose
    taps = size[0] * size[1]
    flat = B.reshape(windows, windows.shape[:3] + (taps, windows.shape[5]))
    maxima = B.stop_gradient(NN.max_pool(x, size, strides, pads))  # [N,OH,OW,C]
    at_max = B.eq(flat, B.broadcast(B.reshape(maxima, maxima.shape[:3] + (1,) + maxima.shape[3:]),
                                    flat.shape))
    # NOTE: not `argmax`, whose kernel loops over the taps one channel at a time: reductions over
    # the tap axis vectorize along the channels.  taps - k at the taps k equal to the maximum, 0
    # elsewhere: the largest is taps - (the first such k).
    rank = B.iota(flat.shape, 3, x.dtype)
    score = B.reduce_max(B.select(at_max, B.sub(float(taps), rank), B.zeros_like(flat)), 3,
                         keepdims=True)
    chosen = B.eq(rank, B.sub(float(taps), B.broadcast(score, flat.shape)))
    # A sum of the maximum and zeros: exactly the maximum; its gradient reaches that tap alone.
    pooled = B.reduce_sum(B.select(chosen, flat, B.zeros_like(flat)), 3)
    # A NaN window equals no tap: its maximum (NaN) passes, without a gradient.
    return B.select(B.eq(B.reshape(score, maxima.shape), 0.0), maxima, pooled)


class _Pooling2D(Layer):
    _mode = ""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        layer = type(self).__name__
        check_channels_last(data_format, layer)
        super().__init__(**kwargs)
        self.pool_size = normalize_tuple(pool_size, 2, "pool_size", layer)
        self.strides = (self.pool_size if strides is None
                        else normalize_tuple(strides, 2, "strides", layer))
        self.padding = normalize_padding(padding, layer)

    def compute_output_shape(self, input_shape):
        check_image(input_shape, type(self).__name__, self.name)
        height, width = window_output_shape(input_shape, self.pool_size, self.strides, self.padding)
        if height < 1 or width < 1:
            raise ValueError(f"{type(self).__name__} layer {self.name!r}: a {self.pool_size} window "
                             f"does not fit inputs of shape {format_shape(input_shape)}; use "
                             "padding='same' or a smaller pool_size.")
        return (input_shape[0], height, width, input_shape[3])

    def call(self, inputs, training=False):
        if self._mode == "max" and training:
            return first_max_pool2d(inputs, self.pool_size, self.strides, self.padding)
        return NN.pool2d(inputs, self.pool_size, self.strides, self.padding, self._mode)

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding,
                       "data_format": "channels_last"})
        return config


class MaxPooling2D(_Pooling2D):
    """The maximum of each `pool_size` window, windows `strides` apart (default: pool_size)."""
    _mode = "max"


class AveragePooling2D(_Pooling2D):
    """The mean of each `pool_size` window, windows `strides` apart (default: pool_size)."""
    _mode = "avg"


class GlobalAveragePooling2D(Layer):
    """The mean over height and width: (batch, h, w, c) -> (batch, c), or (batch, 1, 1, c) with
    `keepdims=True`."""

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        check_channels_last(data_format, "GlobalAveragePooling2D")
        super().__init__(**kwargs)
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        check_image(input_shape, "GlobalAveragePooling2D", self.name)
        if self.keepdims:
            return (input_shape[0], 1, 1, input_shape[3])
        return (input_shape[0], input_shape[3])

    def call(self, inputs):
        return B.reduce_mean(inputs, (1, 2), keepdims=self.keepdims)

    def get_config(self):
        config = super().get_config()
        config.update({"data_format": "channels_last", "keepdims": self.keepdims})
        return config
