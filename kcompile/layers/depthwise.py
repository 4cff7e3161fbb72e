"""DepthwiseConv1D/2D and SeparableConv1D/2D, as `keras.layers` has them (channels_last).

A depthwise convolution convolves each input channel with `depth_multiplier` kernels of its own and
never mixes channels: output channel `c * depth_multiplier + m` is input channel `c` convolved with
`kernel[..., c, m]`.  It is written in existing IR ops: the input's channels are repeated
`depth_multiplier` times (a `broadcast` between two `reshape`s, so channel c*M+m of the repeated
image is channel c), the `patches` (im2col) of that image [N,OH,OW,KH,KW,C*M] are multiplied by the
kernel reshaped to [KH,KW,C*M] (whose entry c*M+m is kernel[..., c, m]) and summed over the window
axes.  Its gradients are those ops' rules: `patches_grad` (col2im) for the input, a sum over the
batch and output pixels for the kernel, and a sum over the repeats.

A separable convolution is that, then a 1x1 convolution (a matmul of the pixels) by the pointwise
kernel, then the bias and the activation, as Keras's `ops.separable_conv`.

A sequence (batch, steps, channels) is convolved as the one-row image (batch, 1, steps, channels)
with a (1, kernel_size) window, as Conv1D is.

A dilated depthwise convolution is the plain one of the dilated kernel (`dilate_kernel`: zeros
between the taps of its two window axes), as Conv1D/Conv2D dilate theirs.  Keras's depthwise and
separable layers, unlike Conv1D/Conv2D, take strides > 1 together with dilation_rate > 1: the
windows of the dilated kernel are then simply taken `strides` apart.
"""
from __future__ import annotations


from ir import build as B
from ir import build_nn as NN

from kcompile import activations, initializers, regularizers
from kcompile.layers.convolutional import (as_image, as_sequence, check_channels_last, check_filters,
                                           check_spatial, dilate_kernel, dilated_size,
                                           normalize_padding, normalize_tuple, positive_int,
                                           spatial_output_shape)
from kcompile.layers.layer import Layer, format_shape, refuse_unsupported


def depthwise_conv2d(x, kernel, strides, pads):
    """x[N,H,W,C] depthwise-convolved with kernel[KH,KW,C,M] -> [N,OH,OW,C*M] (cross-correlation,
    as Keras); `pads` explicit zero pads (top, bottom, left, right)."""
    kh, kw, channels, multiplier = kernel.shape
    if multiplier > 1:
        spread = x.shape + (multiplier,)
        x = B.broadcast(B.reshape(x, x.shape + (1,)), spread)
        x = B.reshape(x, x.shape[:3] + (channels * multiplier,))
    windows = NN.patches(x, (kh, kw), strides, pads)
    taps = B.reshape(kernel, (kh, kw, channels * multiplier))
    return B.reduce_sum(B.mul(windows, taps), (3, 4))


class _DepthwiseBase(Layer):
    """What the depthwise and separable convolutions share: arguments, the window, input checks,
    the depthwise kernel and the config."""

    rank = 2
    _CONSTRAINTS = ("depthwise_constraint", "bias_constraint")

    def __init__(self, kernel_size, strides, padding, depth_multiplier, data_format, dilation_rate,
                 activation, use_bias, depthwise_initializer, bias_initializer,
                 depthwise_regularizer, bias_regularizer, activity_regularizer, constraints,
                 **kwargs):
        layer = type(self).__name__
        refuse_unsupported(layer, constraints)
        self.depth_multiplier = positive_int(
            depth_multiplier, "depth_multiplier",
            "the number of output channels of each input channel")
        check_channels_last(data_format, layer)
        # NOTE: no refusal of strides > 1 with dilation_rate > 1: Keras's depthwise and separable
        # layers (unlike its Conv1D/Conv2D) accept and compute them.
        dilation_rate = normalize_tuple(dilation_rate, self.rank, "dilation_rate", layer)
        super().__init__(**kwargs)
        self.data_format = "channels_last"
        self.kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size", layer)
        self.strides = normalize_tuple(strides, self.rank, "strides", layer)
        self.dilation_rate = dilation_rate
        self.padding = normalize_padding(padding, layer)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.depthwise_regularizer = regularizers.get(depthwise_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self._depthwise_weight = None     # the depthwise kernel, whatever Keras names it
        self.bias = None

    # -- the 2-D view: a sequence is a one-row image -------------------------------------------

    def _window(self):
        """(extent of the dilated kernel, strides) of the image convolution."""
        size = dilated_size(self.kernel_size, self.dilation_rate)
        if self.rank == 1:
            return (1,) + size, (1,) + self.strides
        return size, self.strides

    def _dilation(self):
        return (1,) + self.dilation_rate if self.rank == 1 else self.dilation_rate

    def _image_shape(self, input_shape):
        if self.rank == 1:
            return (input_shape[0], 1) + tuple(input_shape[1:])
        return tuple(input_shape)

    def _pads(self, image_shape):
        size, strides = self._window()
        return NN.image_pads(image_shape, size, strides, self.padding)

    def _depthwise(self, inputs, kernel):
        """The depthwise convolution of `inputs` by the traced `kernel`, as a [N,OH,OW,C*M] image."""
        image = inputs if self.rank == 2 else as_image(inputs)
        if self.rank == 1:
            kernel = B.reshape(kernel, (1,) + tuple(kernel.shape))
        kernel = dilate_kernel(kernel, self._dilation())
        return depthwise_conv2d(image, kernel, self._window()[1], self._pads(image.shape))

    def _finish(self, image):
        """Bias and activation of the output image, returned as a sequence for a 1-D layer."""
        x = image if self.rank == 2 else as_sequence(image)
        if self.use_bias:
            x = B.add(x, self.bias.value)
        return self.activation(x)

    # -- shapes ------------------------------------------------------------------------------

    def _output_channels(self, input_channels):
        raise NotImplementedError

    def _check_input(self, input_shape):
        layer = type(self).__name__
        check_spatial(input_shape, self.rank, layer, self.name)
        kernel = self._depthwise_weight
        if kernel is not None and input_shape[-1] != kernel.shape[-2]:
            raise ValueError(f"Input of layer {self.name!r} is incompatible with the layer: expected "
                             f"{kernel.shape[-2]} input channels (axis -1), but received input "
                             f"with shape {format_shape(input_shape)}")

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        spatial = spatial_output_shape(self, input_shape)
        return (input_shape[0],) + spatial + (self._output_channels(input_shape[-1]),)

    def _add_depthwise_kernel(self, input_shape, name):
        shape = self.kernel_size + (input_shape[-1], self.depth_multiplier)
        weight = self.add_weight(shape=shape, initializer=self.depthwise_initializer, name=name,
                                 regularizer=self.depthwise_regularizer)
        self._depthwise_weight = weight
        return weight

    def _add_bias(self, size):
        if self.use_bias:
            self.bias = self.add_weight(shape=(size,), initializer=self.bias_initializer, name="bias",
                                        regularizer=self.bias_regularizer)

    def get_config(self):
        config = super().get_config()
        config.update({
            "depth_multiplier": self.depth_multiplier,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": "channels_last",
            "dilation_rate": self.dilation_rate,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "depthwise_regularizer": regularizers.serialize(self.depthwise_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
        })
        # (Keras's keys; kcompile refuses any constraint, so they are None)
        config.update({argument: None for argument in self._CONSTRAINTS})
        return config


class _DepthwiseConv(_DepthwiseBase):
    """DepthwiseConv1D and DepthwiseConv2D: `activation(depthwise_conv(inputs, kernel) + bias)`."""

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(kernel_size, strides, padding, depth_multiplier, data_format, dilation_rate,
                         activation, use_bias, depthwise_initializer, bias_initializer,
                         depthwise_regularizer, bias_regularizer, activity_regularizer,
                         {"depthwise_constraint": depthwise_constraint,
                          "bias_constraint": bias_constraint}, **kwargs)
        self.kernel = None

    def _output_channels(self, input_channels):
        return input_channels * self.depth_multiplier

    def build(self, input_shape):
        self._check_input(input_shape)
        # NOTE: Keras 3 names the depthwise layers' kernel 'kernel' (the separable layers' is
        # 'depthwise_kernel'); weight paths and saved files follow it.
        self.kernel = self._add_depthwise_kernel(input_shape, "kernel")
        self._add_bias(input_shape[-1] * self.depth_multiplier)
        self.built = True

    def call(self, inputs):
        return self._finish(self._depthwise(inputs, self.kernel.value))


class _SeparableConv(_DepthwiseBase):
    """SeparableConv1D and SeparableConv2D: a depthwise convolution, then a 1x1 convolution by the
    pointwise kernel, then `activation(... + bias)`."""

    _CONSTRAINTS = ("depthwise_constraint", "pointwise_constraint", "bias_constraint")

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, bias_constraint=None, **kwargs):
        self.filters = check_filters(filters)
        super().__init__(kernel_size, strides, padding, depth_multiplier, data_format, dilation_rate,
                         activation, use_bias, depthwise_initializer, bias_initializer,
                         depthwise_regularizer, bias_regularizer, activity_regularizer,
                         {"depthwise_constraint": depthwise_constraint,
                          "pointwise_constraint": pointwise_constraint,
                          "bias_constraint": bias_constraint}, **kwargs)
        self.pointwise_initializer = initializers.get(pointwise_initializer)
        self.pointwise_regularizer = regularizers.get(pointwise_regularizer)
        self.depthwise_kernel = None
        self.pointwise_kernel = None

    def _output_channels(self, input_channels):
        return self.filters

    def build(self, input_shape):
        self._check_input(input_shape)
        self.depthwise_kernel = self._add_depthwise_kernel(input_shape, "depthwise_kernel")
        shape = (1,) * self.rank + (input_shape[-1] * self.depth_multiplier, self.filters)
        self.pointwise_kernel = self.add_weight(shape=shape, initializer=self.pointwise_initializer,
                                                name="pointwise_kernel",
                                                regularizer=self.pointwise_regularizer)
        self._add_bias(self.filters)
        self.built = True

    def call(self, inputs):
        depthwise = self._depthwise(inputs, self.depthwise_kernel.value)
        pointwise = self.pointwise_kernel.value
        # the 1x1 convolution: a matmul of the pixels, as NN.conv2d does it
        pointwise = B.reshape(pointwise, pointwise.shape[-2:])
        return self._finish(B.matmul(depthwise, pointwise))

    def get_config(self):
        config = super().get_config()
        # Keras's order: depth_multiplier, filters, ..., the pointwise entries after the depthwise
        ordered = {}
        for key, value in config.items():
            ordered[key] = value
            if key == "depth_multiplier":
                ordered["filters"] = self.filters
            elif key == "depthwise_initializer":
                ordered["pointwise_initializer"] = initializers.serialize(self.pointwise_initializer)
            elif key == "depthwise_regularizer":
                ordered["pointwise_regularizer"] = regularizers.serialize(self.pointwise_regularizer)
        return ordered


class DepthwiseConv2D(_DepthwiseConv):
    """Depthwise 2-D convolution over channels-last images: each input channel convolved with
    `depth_multiplier` kernels of its own, `activation(depthwise_conv(inputs, kernel) + bias)`.

    Args:
        kernel_size: an int or (height, width) of the window.
        strides: an int or (vertical, horizontal) step (default 1).
        padding: 'valid' (windows inside the image) or 'same' (zero padding, output size
            ceil(input / stride)), as Keras places it.
        depth_multiplier: output channels per input channel; the output has
            `input_channels * depth_multiplier` channels, channel `c * depth_multiplier + m` from
            input channel c and kernel[..., c, m].
        dilation_rate: an int or (vertical, horizontal) spacing of the kernel's taps (default 1): a
            window spans (kernel_size - 1) * dilation_rate + 1 pixels.  Strides > 1 may go with
            it, as in Keras.
        activation: name or function; None is linear.
        use_bias: add a bias per output channel.
        depthwise_initializer, bias_initializer: default glorot_uniform and zeros.
        depthwise_regularizer, bias_regularizer, activity_regularizer: optional penalties.

    The kernel ('kernel', as Keras 3 names it) has shape (kernel_height, kernel_width,
    input_channels, depth_multiplier).  data_format='channels_last' only; no constraints.
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(kernel_size, strides=strides, padding=padding,
                         depth_multiplier=depth_multiplier, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         depthwise_initializer=depthwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)


class DepthwiseConv1D(_DepthwiseConv):
    """Depthwise 1-D convolution over channels-last sequences (batch, steps, channels), computed as
    a DepthwiseConv2D of one-row images.

    Args: as DepthwiseConv2D, with kernel_size, strides and dilation_rate an int (or a 1-tuple)
    each, and padding 'valid' or 'same' (Keras's DepthwiseConv1D has no 'causal').

    The kernel has shape (kernel_size, input_channels, depth_multiplier), as Keras's.
    """

    rank = 1

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 depthwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(kernel_size, strides=strides, padding=padding,
                         depth_multiplier=depth_multiplier, data_format=data_format,
                         dilation_rate=dilation_rate, activation=activation, use_bias=use_bias,
                         depthwise_initializer=depthwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)


class SeparableConv2D(_SeparableConv):
    """Depthwise separable 2-D convolution over channels-last images: a DepthwiseConv2D (no bias),
    then a 1x1 convolution to `filters` channels, then `activation(... + bias)`.

    Args:
        filters: the number of output channels.
        kernel_size, strides, padding, depth_multiplier, dilation_rate: of the depthwise step, as
            DepthwiseConv2D.
        activation, use_bias: as Conv2D.
        depthwise_initializer, pointwise_initializer, bias_initializer: default glorot_uniform,
            glorot_uniform and zeros.
        depthwise_regularizer, pointwise_regularizer, bias_regularizer, activity_regularizer:
            optional penalties.

    The kernels have shapes (kernel_height, kernel_width, input_channels, depth_multiplier)
    ('depthwise_kernel') and (1, 1, input_channels * depth_multiplier, filters)
    ('pointwise_kernel'), as Keras's.  data_format='channels_last' only; no constraints.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate,
                         depth_multiplier=depth_multiplier, activation=activation,
                         use_bias=use_bias, depthwise_initializer=depthwise_initializer,
                         pointwise_initializer=pointwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         pointwise_regularizer=pointwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         pointwise_constraint=pointwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)


class SeparableConv1D(_SeparableConv):
    """Depthwise separable 1-D convolution over channels-last sequences (batch, steps, channels),
    computed as a SeparableConv2D of one-row images.

    Args: as SeparableConv2D, with kernel_size, strides and dilation_rate an int (or a 1-tuple)
    each, and padding 'valid' or 'same'.

    The kernels have shapes (kernel_size, input_channels, depth_multiplier) and
    (1, input_channels * depth_multiplier, filters), as Keras's.
    """

    rank = 1

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate,
                         depth_multiplier=depth_multiplier, activation=activation,
                         use_bias=use_bias, depthwise_initializer=depthwise_initializer,
                         pointwise_initializer=pointwise_initializer,
                         bias_initializer=bias_initializer,
                         depthwise_regularizer=depthwise_regularizer,
                         pointwise_regularizer=pointwise_regularizer,
                         bias_regularizer=bias_regularizer,
                         activity_regularizer=activity_regularizer,
                         depthwise_constraint=depthwise_constraint,
                         pointwise_constraint=pointwise_constraint,
                         bias_constraint=bias_constraint, **kwargs)


__all__ = ["DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
           "depthwise_conv2d"]
