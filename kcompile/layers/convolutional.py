"""Conv1D and Conv2D, as `keras.layers.Conv1D` and `Conv2D` (channels_last).

The convolution is `ir.build_nn.conv2d`: im2col patches times the kernel reshaped to a matrix, so the
compiled step runs it on the GEMM; its gradients are a GEMM and col2im.  A sequence (batch, steps,
channels) is convolved as a one-row image (batch, 1, steps, channels) with a (1, kernel_size) window.

A dilated convolution is the plain one of the dilated kernel (zeros between the taps, built with
`pad`, `reshape` and `slice`, whose gradients return the taps' own); `groups` convolve slices of
the input channels with slices of the filters and concatenate the results, as Keras orders them.
"""
from __future__ import annotations

import numbers

from ir import build as B
from ir import build_nn as NN
from ir import build_seq as S

from kcompile import activations, initializers, regularizers
from kcompile.layers.layer import Layer, format_shape, refuse_unsupported


def normalize_tuple(value, n: int, argument: str, layer: str, minimum: int = 1,
                    allowed: str = "") -> tuple:
    """An int or a sequence of `n` ints of at least `minimum` (1: positive, 0: non-negative) as a
    tuple, or a clear error (`allowed`: what else the argument may be, said first in it)."""
    values = (value,) * n if isinstance(value, numbers.Integral) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != n or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                               or v < minimum for v in values):
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{layer}: `{argument}` must be {allowed}a {kind} integer or a tuple of {n} "
                         f"{kind} integers; got {argument}={value!r}")
    return tuple(int(v) for v in values)


def normalize_padding(padding, layer: str, allowed=NN.PADDINGS) -> str:
    if not isinstance(padding, str) or padding.lower() not in allowed:
        names = " or ".join(", ".join(repr(a) for a in allowed).rsplit(", ", 1))
        raise ValueError(f"{layer}: `padding` must be {names}; got padding={padding!r}")
    return padding.lower()


def positive_int(value, argument: str, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"Invalid value for argument `{argument}`. Expected a strictly positive "
                         f"integer ({meaning}). Received {argument}={value!r}")
    return int(value)


def check_filters(filters) -> int:
    return positive_int(filters, "filters", "the number of output channels")


def refuse_strided_dilation(layer: str, strides, dilation_rate, fix: str) -> None:
    """Keras's convolutions (not its depthwise ones) refuse strides and dilation together."""
    if max(strides) > 1 and max(dilation_rate) > 1:
        raise ValueError(f"{layer}: `strides > 1` not supported in conjunction with "
                         f"`dilation_rate > 1` (as in Keras); got strides={strides} and "
                         f"dilation_rate={dilation_rate}. {fix}")


def check_channels_last(data_format, layer: str) -> None:
    if data_format not in (None, "channels_last", "channels_first"):
        raise ValueError(f"{layer}: `data_format` must be 'channels_last' or 'channels_first'; got "
                         f"data_format={data_format!r}")
    if data_format not in (None, "channels_last"):
        inputs = ("sequences of shape (batch, steps, channels)" if "1D" in layer else
                  "images of shape (batch, height, width, channels)" if "2D" in layer else
                  "inputs of shape (batch, ..., channels)")
        raise NotImplementedError(f"{layer} supports data_format='channels_last' only ({inputs}); got "
                                  f"data_format={data_format!r}")


def check_image(input_shape, layer, name: str) -> None:
    if len(input_shape) != 4:
        hint = ""
        if len(input_shape) == 3:
            h, w = input_shape[1:]
            hint = (f" For single-channel images add a channel axis: x.reshape(-1, {h}, {w}, 1), or "
                    f"put Reshape(({h}, {w}, 1)) first.")
        raise ValueError(f"{layer} layer {name!r} needs images of shape (batch, height, width, channels); "
                         f"got inputs of shape {format_shape(input_shape)}.{hint}")


def check_sequence(input_shape, layer, name: str) -> None:
    if len(input_shape) != 3:
        hint = ""
        if len(input_shape) == 2:
            steps = input_shape[1]
            hint = (f" For one feature per step add a channel axis: x.reshape(-1, {steps}, 1), or put "
                    f"Reshape(({steps}, 1)) first.")
        raise ValueError(f"{layer} layer {name!r} needs sequences of shape (batch, steps, channels); "
                         f"got inputs of shape {format_shape(input_shape)}.{hint}")


def check_spatial(input_shape, rank: int, layer, name: str) -> None:
    """check_sequence (rank 1) or check_image (rank 2) of a layer over either."""
    (check_sequence if rank == 1 else check_image)(tuple(input_shape), layer, name)


def as_image(x):
    """A sequence [N,L,C] as the one-row image [N,1,L,C]."""
    return B.reshape(x, (x.shape[0], 1) + tuple(x.shape[1:]))


def as_sequence(x):
    """A one-row image [N,1,L,C] as the sequence [N,L,C]."""
    return B.reshape(x, (x.shape[0],) + tuple(x.shape[2:]))


def window_output_shape(input_shape, size, strides, padding) -> tuple:
    """(height, width) of the output of `size` windows, or a ValueError if none fits."""
    pads = NN.image_pads(input_shape, size, strides, padding)
    height = NN.window_output_size(input_shape[1], size[0], strides[0], pads[0], pads[1])
    width = NN.window_output_size(input_shape[2], size[1], strides[1], pads[2], pads[3])
    return height, width


def dilated_size(size, dilation) -> tuple:
    """The extent (k - 1) * d + 1 of each axis of a kernel of `size` taps `dilation` apart."""
    return tuple((k - 1) * d + 1 for k, d in zip(size, dilation))


def dilate_kernel(kernel, dilation):
    """kernel[KH,KW,C,F] with d - 1 zero rows (columns) after each tap but the last of each axis.

    NOTE: the convolution then multiplies the zeros too, d_h * d_w times the work of the taps; a
    dilation-aware `patches` would skip them, but it is an IR change.  Correctness first."""
    for axis, d in enumerate(dilation):
        if d == 1:
            continue
        shape = kernel.shape
        spread = B.reshape(kernel, shape[:axis + 1] + (1,) + shape[axis + 1:])
        spread = S.pad(spread, 0, d - 1, axis + 1)
        spread = B.reshape(spread, shape[:axis] + (shape[axis] * d,) + shape[axis + 1:])
        kernel = S.slice(spread, 0, (shape[axis] - 1) * d + 1, axis)
    return kernel


def spatial_output_shape(layer, input_shape) -> tuple:
    """The spatial axes of the output of a convolution layer (Conv1D/2D, the depthwise and
    separable ones: their `_image_shape`, `_window`, `_pads`, kernel_size, dilation_rate, padding
    and rank), or a ValueError when the (dilated) kernel does not fit the input."""
    image = layer._image_shape(input_shape)
    size, strides = layer._window()
    pads = layer._pads(image)
    height = NN.window_output_size(image[1], size[0], strides[0], pads[0], pads[1])
    width = NN.window_output_size(image[2], size[1], strides[1], pads[2], pads[3])
    if height < 1 or width < 1:
        extent = dilated_size(layer.kernel_size, layer.dilation_rate)
        dilated = (f" dilated by {layer.dilation_rate} (extent {extent})"
                   if max(layer.dilation_rate) > 1 else "")
        raise ValueError(f"{type(layer).__name__} layer {layer.name!r}: a {layer.kernel_size} "
                         f"kernel{dilated} does not fit inputs of shape "
                         f"{format_shape(input_shape)} with padding {layer.padding!r}; use "
                         f"padding='same' or a smaller kernel_size"
                         f"{' or dilation_rate' if dilated else ''}.")
    return (width,) if layer.rank == 1 else (height, width)


def grouped_conv2d(image, kernel, strides, pads, groups: int):
    """conv2d of image[N,H,W,C] with kernel[KH,KW,C/groups,F]: group g convolves input channels
    [g*C/groups, (g+1)*C/groups) with filters [g*F/groups, (g+1)*F/groups), as Keras (and XLA's
    feature_group_count) pairs them."""
    if groups == 1:
        return NN.conv2d(image, kernel, strides, pads)
    channels, filters = kernel.shape[2], kernel.shape[3] // groups
    outputs = [NN.conv2d(S.slice(image, g * channels, (g + 1) * channels, 3),
                         S.slice(kernel, g * filters, (g + 1) * filters, 3), strides, pads)
               for g in range(groups)]
    return S.concat(outputs, 3)


class _Conv(Layer):
    """A convolution over channels-last inputs of `rank` spatial axes (Conv1D, Conv2D)."""

    rank = 2
    paddings = NN.PADDINGS

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 bias_constraint=None, **kwargs):
        layer = type(self).__name__
        refuse_unsupported(layer, {"kernel_constraint": kernel_constraint,
                                   "bias_constraint": bias_constraint})
        filters = check_filters(filters)
        check_channels_last(data_format, layer)
        if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups <= 0:
            raise ValueError(f"{layer}: the number of groups must be a positive integer; got "
                             f"groups={groups!r}")
        if filters % groups:
            raise ValueError(f"{layer}: the number of filters must be evenly divisible by the number "
                             f"of groups; got groups={groups}, filters={filters}. Use a multiple of "
                             f"{groups} filters or fewer groups.")
        kernel_size = normalize_tuple(kernel_size, self.rank, "kernel_size", layer)
        strides = normalize_tuple(strides, self.rank, "strides", layer)
        dilation_rate = normalize_tuple(dilation_rate, self.rank, "dilation_rate", layer)
        refuse_strided_dilation(layer, strides, dilation_rate, "Use strides=1, or follow the "
                                "dilated convolution with a pooling layer.")
        super().__init__(**kwargs)
        self.data_format = "channels_last"
        self.filters = int(filters)
        self.groups = int(groups)
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.padding = normalize_padding(padding, layer, self.paddings)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.activity_regularizer = regularizers.get(activity_regularizer)
        self.kernel = None
        self.bias = None

    # The 2-D view of the layer: window (the dilated kernel's extent), strides, dilation and pads
    # of the image a Conv2D convolves.
    def _window(self):
        return dilated_size(self.kernel_size, self.dilation_rate), self.strides

    def _dilation(self):
        return self.dilation_rate

    def _pads(self, image_shape):
        size, strides = self._window()
        return NN.image_pads(image_shape, size, strides, self.padding)

    def _image_shape(self, input_shape):
        return tuple(input_shape)

    def _check_input(self, input_shape):
        check_image(input_shape, "Conv2D", self.name)
        self._check_channels(input_shape)

    def _check_channels(self, input_shape):
        channels = input_shape[-1]
        if self.kernel is not None and channels != self.kernel.shape[-2] * self.groups:
            raise ValueError(f"Input of layer {self.name!r} is incompatible with the layer: expected "
                             f"{self.kernel.shape[-2] * self.groups} input channels (axis -1), but "
                             f"received input with shape {format_shape(input_shape)}")
        if channels is not None and channels % self.groups:
            raise ValueError(f"{type(self).__name__} layer {self.name!r}: the number of input channels "
                             f"must be evenly divisible by the number of groups; got groups="
                             f"{self.groups}, but the input has {channels} channels (full input shape "
                             f"is {format_shape(input_shape)}). Use groups dividing {channels}.")

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        spatial = spatial_output_shape(self, input_shape)
        return (input_shape[0],) + spatial + (self.filters,)

    def build(self, input_shape):
        self._check_input(input_shape)
        shape = self.kernel_size + (input_shape[-1] // self.groups, self.filters)
        self.kernel = self.add_weight(shape=shape, initializer=self.kernel_initializer, name="kernel",
                                      regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer=self.bias_initializer,
                                        name="bias", regularizer=self.bias_regularizer)
        self.built = True

    def _image_kernel(self):
        """The kernel as the 4-D kernel of the image convolution."""
        return self.kernel.value

    def _convolve(self, inputs):
        strides = self._window()[1]
        kernel = dilate_kernel(self._image_kernel(), self._dilation())
        return grouped_conv2d(inputs, kernel, strides, self._pads(inputs.shape), self.groups)

    def call(self, inputs):
        x = self._convolve(inputs)
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
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "activation": activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": initializers.serialize(self.kernel_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            # Keras always writes them; kcompile refuses any constraint, so they are None (and a
            # config without them, as kcompile wrote before, still loads: None is the default)
            "kernel_constraint": None,
            "bias_constraint": None,
        })
        return config


class Conv2D(_Conv):
    """2-D convolution over channels-last images: `activation(conv(inputs, kernel) + bias)`.

    Args:
        filters: the number of output channels.
        kernel_size: an int or (height, width) of the window.
        strides: an int or (vertical, horizontal) step (default 1).
        padding: 'valid' (windows inside the image) or 'same' (zero padding, output size
            ceil(input / stride)), as Keras places it.
        dilation_rate: an int or (vertical, horizontal) spacing of the kernel's taps (default 1): a
            window spans (kernel_size - 1) * dilation_rate + 1 pixels.  Only with strides 1.
        groups: split the input channels and the filters into this many groups, each group of
            filters seeing its group of channels only; both counts must be divisible by it.
        activation: name or function; None is linear.
        use_bias: add a bias per output channel.
        kernel_initializer, bias_initializer: default glorot_uniform (fans count the window) and zeros.

    The kernel has shape (kernel_height, kernel_width, input_channels // groups, filters), as
    Keras's.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate, groups=groups,
                         activation=activation, use_bias=use_bias, **kwargs)


class Conv1D(_Conv):
    """1-D convolution over channels-last sequences (batch, steps, channels):
    `activation(conv(inputs, kernel) + bias)`, computed as a Conv2D of one-row images.

    Args:
        filters: the number of output channels.
        kernel_size: an int (or a 1-tuple), the window's length in steps.
        strides: an int (or a 1-tuple), the step between windows (default 1).
        padding: 'valid' (windows inside the sequence), 'same' (zero padding, output length
            ceil(steps / strides), as Keras places it) or 'causal' ((kernel_size - 1) *
            dilation_rate zeros before the sequence: output t sees inputs up to t).
        dilation_rate: an int (or a 1-tuple), the spacing of the kernel's taps (default 1).
        groups, activation, use_bias, kernel_initializer, bias_initializer, ...: as Conv2D.

    The kernel has shape (kernel_size, input_channels // groups, filters), as Keras's.
    """

    rank = 1
    paddings = NN.PADDINGS + ("causal",)

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None,
                 dilation_rate=1, groups=1, activation=None, use_bias=True, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding,
                         data_format=data_format, dilation_rate=dilation_rate, groups=groups,
                         activation=activation, use_bias=use_bias, **kwargs)

    def _window(self):
        return (1,) + dilated_size(self.kernel_size, self.dilation_rate), (1,) + self.strides

    def _dilation(self):
        return (1,) + self.dilation_rate

    def _pads(self, image_shape):
        if self.padding == "causal":   # the dilated kernel's extent - 1 zeros before the sequence
            return (0, 0, self._window()[0][1] - 1, 0)
        return super()._pads(image_shape)

    def _image_shape(self, input_shape):
        return (input_shape[0], 1) + tuple(input_shape[1:])

    def _check_input(self, input_shape):
        check_sequence(input_shape, "Conv1D", self.name)
        self._check_channels(input_shape)

    def _image_kernel(self):
        return B.reshape(self.kernel.value, (1,) + self.kernel.shape)

    def _convolve(self, inputs):
        return as_sequence(super()._convolve(as_image(inputs)))
