"""MaxPooling1D/2D, AveragePooling1D/2D and the global poolings (1D and 2D, mean and max), as in
`keras.layers` (channels_last).  The 1-D poolings are the 2-D ones of one-row images.

Window pooling is a reduction over the window axes of im2col patches (`ir.build_nn.pool2d`): the
compiled kernel evaluates each window in place, and the gradient is col2im of the reduction's
gradient.  Padding never counts: 'same' max pooling ignores it, 'same' average pooling divides by
the number of pixels inside the image, as Keras does.

Max pooling's gradient goes to the *first* position of each window (row-major over the window)
that equals its maximum, as Keras 3 on JAX and PyTorch send it (the `max_pool_grad` op's rule).
"""
from __future__ import annotations

from ir import build as B
from ir import build_nn as NN

from kcompile.layers.convolutional import (as_image, as_sequence, check_channels_last, check_image,
                                           check_sequence, normalize_padding, normalize_tuple,
                                           window_output_shape)
from kcompile.layers.layer import Layer, format_shape


class _Pooling2D(Layer):
    _mode = ""
    rank = 2

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        layer = type(self).__name__
        check_channels_last(data_format, layer)
        super().__init__(**kwargs)
        self.data_format = "channels_last"
        self.pool_size = normalize_tuple(pool_size, self.rank, "pool_size", layer)
        self.strides = (self.pool_size if strides is None
                        else normalize_tuple(strides, self.rank, "strides", layer))
        self.padding = normalize_padding(padding, layer)

    def _check_input(self, input_shape):
        check_image(input_shape, type(self).__name__, self.name)

    def _window(self):
        """(pool_size, strides) of the 2-D pooling that computes the layer."""
        return self.pool_size, self.strides

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        image = input_shape if self.rank == 2 else (input_shape[0], 1) + tuple(input_shape[1:])
        size, strides = self._window()
        height, width = window_output_shape(image, size, strides, self.padding)
        if height < 1 or width < 1:
            raise ValueError(f"{type(self).__name__} layer {self.name!r}: a {self.pool_size} window "
                             f"does not fit inputs of shape {format_shape(input_shape)}; use "
                             "padding='same' or a smaller pool_size.")
        spatial = (width,) if self.rank == 1 else (height, width)
        return (input_shape[0],) + spatial + (input_shape[-1],)

    def call(self, inputs):
        size, strides = self._window()
        if self.rank == 1:
            return as_sequence(NN.pool2d(as_image(inputs), size, strides, self.padding, self._mode))
        return NN.pool2d(inputs, size, strides, self.padding, self._mode)

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


class _Pooling1D(_Pooling2D):
    """Pooling over the steps of channels-last sequences (batch, steps, channels), computed as the 2-D
    pooling of one-row images."""
    rank = 1

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size=pool_size, strides=strides, padding=padding,
                         data_format=data_format, **kwargs)

    def _check_input(self, input_shape):
        check_sequence(input_shape, type(self).__name__, self.name)

    def _window(self):
        return (1,) + self.pool_size, (1,) + self.strides


class MaxPooling1D(_Pooling1D):
    """The maximum of each `pool_size` steps, windows `strides` apart (default: pool_size)."""
    _mode = "max"


class AveragePooling1D(_Pooling1D):
    """The mean of each `pool_size` steps, windows `strides` apart (default: pool_size); 'same'
    padding divides by the steps inside the sequence."""
    _mode = "avg"


class _GlobalPooling(Layer):
    """The mean or max over the steps of (batch, steps, features) (1D) or the pixels of
    (batch, h, w, channels) (2D): (batch, channels), or with `keepdims=True` the reduced axes kept as
    size 1.  Max pooling's gradient is shared among positions tied for the maximum (jnp.max's rule)."""
    rank = 2
    reduce = None

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        check_channels_last(data_format, type(self).__name__)
        super().__init__(**kwargs)
        self.data_format = "channels_last"
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        if self.rank == 2:
            check_image(input_shape, type(self).__name__, self.name)
        elif len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} layer {self.name!r} needs inputs of shape (batch, "
                             f"steps, features); got inputs of shape {format_shape(input_shape)}")
        if self.keepdims:
            return (input_shape[0],) + (1,) * self.rank + (input_shape[-1],)
        return (input_shape[0], input_shape[-1])

    def call(self, inputs):
        return self.reduce(inputs, tuple(range(1, self.rank + 1)), keepdims=self.keepdims)

    def get_config(self):
        config = super().get_config()
        config.update({"data_format": "channels_last", "keepdims": self.keepdims})
        return config


class GlobalAveragePooling2D(_GlobalPooling):
    """The mean over height and width: (batch, h, w, c) -> (batch, c), or (batch, 1, 1, c) with
    `keepdims=True`."""
    rank, reduce = 2, staticmethod(B.reduce_mean)


class GlobalMaxPooling2D(_GlobalPooling):
    """The maximum over height and width: (batch, h, w, c) -> (batch, c) (or (batch, 1, 1, c))."""
    rank, reduce = 2, staticmethod(B.reduce_max)


class GlobalAveragePooling1D(_GlobalPooling):
    """The mean over the steps: (batch, steps, features) -> (batch, features) (or (batch, 1,
    features)), as after an Embedding in a text classifier.  With a mask (Embedding(mask_zero=True),
    Masking), the mean of the unmasked steps, as Keras's (a sample with every step masked gives
    0 / 0 = NaN there too)."""
    rank, reduce = 1, staticmethod(B.reduce_mean)

    def call(self, inputs, mask=None):
        if mask is None:
            return super().call(inputs)
        keep = B.reshape(mask, mask.shape + (1,))
        total = B.reduce_sum(B.select(keep, inputs, 0.0), 1, keepdims=self.keepdims)
        count = B.reduce_sum(B.cast(keep, inputs.dtype), 1, keepdims=self.keepdims)
        return B.div(total, count)

    def compute_mask(self, inputs, previous_mask):
        return None


class GlobalMaxPooling1D(_GlobalPooling):
    """The maximum over the steps: (batch, steps, features) -> (batch, features)."""
    rank, reduce = 1, staticmethod(B.reduce_max)
