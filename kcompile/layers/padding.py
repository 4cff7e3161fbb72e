"""ZeroPadding1D/2D, Cropping1D/2D and UpSampling1D/2D, as in `keras.layers` (channels_last): the
spatial axes of sequences (batch, steps, channels) and images (batch, height, width, channels) grown
with zeros, cut, or repeated.

Each is written in existing IR primitives, so its gradient, its reference semantics and its compiled
code are theirs: padding is `pad` (whose gradient is `slice`), cropping is `slice` (whose gradient is
`pad`), and nearest-neighbour upsampling is a `broadcast` between two `reshape`s,
(n, h, w, c) -> (n, h, 1, w, 1, c) -> (n, h, sh, w, sw, c) -> (n, h*sh, w*sw, c), as numpy's
`np.repeat` along each axis; its gradient sums each repeated block (`broadcast`'s rule).
"""
from __future__ import annotations

import numbers

from ir import build as B
from ir import build_seq as S

from kcompile.layers.convolutional import check_channels_last, check_spatial, normalize_tuple
from kcompile.layers.layer import Layer, format_shape


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pair(value) -> tuple | None:
    """An int v as (v, v), or a sequence of 2 non-negative ints as a tuple; None if it is neither."""
    if _is_int(value):
        values = (value, value)
    elif isinstance(value, str):
        return None
    else:
        try:
            values = tuple(value)
        except TypeError:
            return None
    if len(values) != 2 or not all(_is_int(v) and v >= 0 for v in values):
        return None
    return tuple(int(v) for v in values)


def normalize_pair(value, argument: str, layer: str) -> tuple:
    """`padding` / `cropping` of a 1-D layer: an int or (before, after), both >= 0."""
    pair = _pair(value)
    if pair is None:
        raise ValueError(f"{layer}: `{argument}` must be a non-negative integer or a tuple of 2 "
                         f"non-negative integers (before, after); got {argument}={value!r}")
    return pair


def normalize_pairs(value, argument: str, layer: str) -> tuple:
    """`padding` / `cropping` of a 2-D layer, as Keras reads it: an int (every side), a tuple of 2
    (symmetric height, symmetric width) or of 2 pairs ((top, bottom), (left, right)); all >= 0."""
    message = (f"{layer}: `{argument}` must be a non-negative integer, a tuple of 2 of them "
               f"(symmetric height, symmetric width) or a tuple of 2 tuples of 2 of them "
               f"((top, bottom), (left, right)); got {argument}={value!r}")
    if _is_int(value):
        pair = _pair(value)
        if pair is None:
            raise ValueError(message)
        return (pair, pair)
    if isinstance(value, str):
        raise ValueError(message)
    try:
        entries = tuple(value)
    except TypeError:
        raise ValueError(message) from None
    if len(entries) != 2:
        raise ValueError(message)
    pairs = tuple(_pair(entry) for entry in entries)
    if None in pairs:
        raise ValueError(message)
    return pairs


class _Spatial(Layer):
    """What the layers here share: the rank of their inputs' spatial axes (1: sequences, 2: images),
    checked with the same messages as the convolutions'."""
    rank = 1

    def _check_input(self, input_shape):
        check_spatial(input_shape, self.rank, type(self).__name__, self.name)


class _ZeroPadding(_Spatial):
    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        spatial = tuple(d + before + after
                        for d, (before, after) in zip(input_shape[1:-1], self._pads()))
        return (input_shape[0],) + spatial + (input_shape[-1],)

    def call(self, inputs):
        self.compute_output_shape(inputs.shape)
        for axis, (before, after) in enumerate(self._pads(), start=1):
            inputs = S.pad(inputs, before, after, axis)
        return inputs


class ZeroPadding1D(_ZeroPadding):
    """Adds zeros before and after the steps of (batch, steps, channels): `padding=2` adds two steps
    at each end, `padding=(1, 3)` one at the start and three at the end."""
    rank = 1

    def __init__(self, padding=1, data_format=None, **kwargs):
        check_channels_last(data_format, "ZeroPadding1D")
        self.padding = normalize_pair(padding, "padding", "ZeroPadding1D")
        super().__init__(**kwargs)
        self.data_format = "channels_last"

    def _pads(self):
        return (self.padding,)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "data_format": self.data_format}


class ZeroPadding2D(_ZeroPadding):
    """Adds rows and columns of zeros around images (batch, height, width, channels): `padding=1`
    on every side, `(1, 2)` one row above and below and two columns left and right,
    `((top, bottom), (left, right))` each side its own."""
    rank = 2

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        check_channels_last(data_format, "ZeroPadding2D")
        self.padding = normalize_pairs(padding, "padding", "ZeroPadding2D")
        super().__init__(**kwargs)
        self.data_format = "channels_last"

    def _pads(self):
        return self.padding

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "data_format": self.data_format}


class _Cropping(_Spatial):
    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        spatial = []
        for axis, (d, (before, after)) in enumerate(zip(input_shape[1:-1], self._crops())):
            if before + after >= d:
                what = "steps" if self.rank == 1 else ("rows", "columns")[axis]
                raise ValueError(
                    f"{type(self).__name__} layer {self.name!r}: `cropping`={self.cropping} removes "
                    f"{before + after} of the {d} {what} of inputs of shape "
                    f"{format_shape(input_shape)}; cropping must leave at least one (make it "
                    "smaller than the input)")
            spatial.append(d - before - after)
        return (input_shape[0],) + tuple(spatial) + (input_shape[-1],)

    def call(self, inputs):
        self.compute_output_shape(inputs.shape)
        for axis, (before, after) in enumerate(self._crops(), start=1):
            inputs = S.slice(inputs, before, inputs.shape[axis] - after, axis)
        return inputs


class Cropping1D(_Cropping):
    """Removes steps at the start and end of (batch, steps, channels): `cropping=1` one at each end,
    `(2, 0)` two at the start."""
    rank = 1

    def __init__(self, cropping=(1, 1), **kwargs):
        self.cropping = normalize_pair(cropping, "cropping", "Cropping1D")
        super().__init__(**kwargs)

    def _crops(self):
        return (self.cropping,)

    def get_config(self):
        return {**super().get_config(), "cropping": self.cropping}


class Cropping2D(_Cropping):
    """Removes rows and columns at the edges of images (batch, height, width, channels): an int
    (every side), (symmetric height, symmetric width) or ((top, bottom), (left, right))."""
    rank = 2

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        check_channels_last(data_format, "Cropping2D")
        self.cropping = normalize_pairs(cropping, "cropping", "Cropping2D")
        super().__init__(**kwargs)
        self.data_format = "channels_last"

    def _crops(self):
        return self.cropping

    def get_config(self):
        return {**super().get_config(), "cropping": self.cropping, "data_format": self.data_format}


def repeat_spatial(x, sizes: tuple):
    """np.repeat of every spatial axis of channels-last x (batch, *spatial, channels) by `sizes`."""
    batch, spatial, channels = x.shape[0], tuple(x.shape[1:-1]), x.shape[-1]
    spread = (batch,) + sum(((d, 1) for d in spatial), ()) + (channels,)
    repeated = (batch,) + sum(((d, s) for d, s in zip(spatial, sizes)), ()) + (channels,)
    out = (batch,) + tuple(d * s for d, s in zip(spatial, sizes)) + (channels,)
    return B.reshape(B.broadcast(B.reshape(x, spread), repeated), out)


class UpSampling1D(_Spatial):
    """Repeats every step `size` times: (batch, steps, channels) -> (batch, steps * size, channels)."""
    rank = 1

    def __init__(self, size=2, **kwargs):
        if not _is_int(size):
            raise TypeError(f"UpSampling1D: expected an integer value for `size`; got size={size!r} "
                            f"(of type {type(size).__name__})")
        if size <= 0:
            raise ValueError(f"UpSampling1D: argument `size` should be a positive integer; got "
                             f"size={size!r}")
        super().__init__(**kwargs)
        self.size = int(size)

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        return (input_shape[0], input_shape[1] * self.size, input_shape[2])

    def call(self, inputs):
        self.compute_output_shape(inputs.shape)
        return repeat_spatial(inputs, (self.size,))

    def get_config(self):
        return {**super().get_config(), "size": self.size}


# What Keras's backends take for `interpolation` (ops.image.resize); kcompile computes 'nearest'.
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos3", "lanczos5", "area")


class UpSampling2D(_Spatial):
    """Repeats every row `size[0]` times and every column `size[1]` times (interpolation='nearest'):
    (batch, h, w, c) -> (batch, h * size[0], w * size[1], c)."""
    rank = 2

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        check_channels_last(data_format, "UpSampling2D")
        sizes = normalize_tuple(size, 2, "size", "UpSampling2D")
        if not isinstance(interpolation, str) or interpolation.lower() not in _INTERPOLATIONS:
            raise ValueError(f"UpSampling2D: `interpolation` must be one of "
                             f"{', '.join(repr(i) for i in _INTERPOLATIONS)}; got "
                             f"interpolation={interpolation!r}")
        if interpolation.lower() != "nearest":
            raise NotImplementedError(
                f"UpSampling2D supports interpolation='nearest' only (each row and column "
                f"repeated); got interpolation={interpolation!r}")
        super().__init__(**kwargs)
        self.size = sizes
        self.data_format = "channels_last"
        self.interpolation = "nearest"

    def compute_output_shape(self, input_shape):
        self._check_input(input_shape)
        return (input_shape[0], input_shape[1] * self.size[0], input_shape[2] * self.size[1],
                input_shape[3])

    def call(self, inputs):
        self.compute_output_shape(inputs.shape)
        return repeat_spatial(inputs, self.size)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "data_format": self.data_format,
                "interpolation": self.interpolation}
