"""GaussianNoise, GaussianDropout and AlphaDropout, as in `keras.layers`: noise in training, the
inputs themselves in inference.

Their draws come from the train step's seed through the counter-based `random_uniform`, on the
layer's own streams (`random_stream`: its name and `seed`), as Dropout's mask does, so the reference
interpreter and compiled code draw the same bits and a run is reproducible from `set_random_seed`.

Normal noise is made by the Box-Muller transform, exactly from two uniforms: the radius
sqrt(-2 log u1) and the angle 2 pi u2.  The IR has no sine or cosine, so the cosine of the angle is
taken in two steps that lose nothing: the top two bits of u2 choose a quarter turn, the rest an angle
phi in [-pi/4, pi/4), whose cosine and sine are their Taylor series there (truncated past float32's
precision: the first term left out is below 2e-9); cos(phi + k pi/2) is then +-cos or +-sin phi.
"""
from __future__ import annotations

import math
import numbers

from ir import Node
from ir import build as B

from kcompile.layers.core import Dropout
from kcompile.layers.layer import Layer, check_seed, random_stream, training_seed

# cos(phi) = 1 - phi^2/2! + phi^4/4! - ..., sin(phi) = phi - phi^3/3! + ..., to phi^10 and phi^9:
# for |phi| <= pi/4 the first terms left out, phi^12/12! and phi^11/11!, are below 1.2e-10 and 1.8e-9
_COS = [(-1) ** k / math.factorial(2 * k) for k in range(6)]
_SIN = [(-1) ** k / math.factorial(2 * k + 1) for k in range(5)]


def _series(coefficients, square):
    """sum_k coefficients[k] * square^k, by Horner's rule."""
    total = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        total = B.add(B.mul(total, square), coefficient)
    return total


def standard_normal(seed, shape, layer) -> Node:
    """Independent standard normal draws of `shape` (None: the batch), on `layer`'s streams."""
    uniform = B.random_uniform(seed, shape, random_stream(layer, "radius"))     # in [0, 1)
    # 1 - u is exact (u is a multiple of 2^-24) and in (0, 1]: the radius is finite, <= 5.8
    radius = B.sqrt(B.mul(B.log(B.sub(1.0, uniform)), -2.0))
    turns = B.mul(B.random_uniform(seed, shape, random_stream(layer, "angle")), 4.0)   # exact
    quarter = B.floor(turns)                                      # 0, 1, 2 or 3
    phi = B.mul(B.sub(B.sub(turns, quarter), 0.5), math.pi / 2)   # the angle within the quarter
    square = B.mul(phi, phi)
    cos, sin = _series(_COS, square), B.mul(_series(_SIN, square), phi)
    # cos(phi + quarter * pi/2)
    rotated = B.select(B.lt(quarter, 2.0), B.select(B.lt(quarter, 1.0), cos, B.neg(sin)),
                       B.select(B.lt(quarter, 3.0), B.neg(cos), sin))
    return B.mul(radius, rotated)


def _check_fraction(value, argument: str, layer: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"Invalid value received for argument `{argument}` of {layer}. Expected a "
                         f"float value between 0 and 1. Received: {argument}={value!r}")
    return float(value)


def _refuse_rate_one(layer):
    raise ValueError(f"{type(layer).__name__} layer {layer.name!r} cannot train with rate=1: its "
                     "noise divides by 1 - rate = 0 (as Keras's does, which fails there too). Give "
                     "a rate below 1")


class GaussianNoise(Layer):
    """Adds zero-centered normal noise of standard deviation `stddev` in training (a
    regularization, or data augmentation of real-valued inputs); the inputs in inference.

    Args:
        stddev: the noise's standard deviation, in [0, 1] (as Keras).
        seed: optional integer mixed into this layer's random streams.
    """

    def __init__(self, stddev, seed=None, **kwargs):
        stddev = _check_fraction(stddev, "stddev", "GaussianNoise")
        seed = check_seed(seed, "GaussianNoise")
        super().__init__(**kwargs)
        self.stddev, self.seed = stddev, seed

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs, training=False):
        if not training or self.stddev == 0.0:
            return inputs
        noise = standard_normal(training_seed(self), inputs.shape, self)
        return B.add(inputs, B.mul(noise, self.stddev))

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev, "seed": self.seed}


class GaussianDropout(Layer):
    """Multiplies the inputs by normal noise of mean 1 and standard deviation
    sqrt(rate / (1 - rate)) in training; the inputs in inference.

    Args:
        rate: as Dropout's, in [0, 1) for training.
        seed: optional integer mixed into this layer's random streams.
    """

    def __init__(self, rate, seed=None, **kwargs):
        rate = _check_fraction(rate, "rate", "GaussianDropout")
        seed = check_seed(seed, "GaussianDropout")
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            _refuse_rate_one(self)
        stddev = math.sqrt(self.rate / (1.0 - self.rate))
        noise = standard_normal(training_seed(self), inputs.shape, self)
        return B.mul(inputs, B.add(B.mul(noise, stddev), 1.0))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


# SELU's constants (activations.selu), as Keras's AlphaDropout writes them
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


class AlphaDropout(Dropout):
    """Dropout that keeps the mean and variance of SELU activations: in training each input is
    replaced with probability `rate` by SELU's negative saturation value -alpha * scale, then all
    are transformed by a * x + b, with a and b chosen (as Keras's) so that standardized inputs stay
    of mean 0 and variance 1; the inputs in inference.

    Args:
        rate: the fraction of inputs to drop, in [0, 1) for training.
        noise_shape: the mask's shape, broadcast over the inputs (None entries: the input's size).
        seed: optional integer mixed into this layer's random stream.
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)

    def affine(self) -> tuple:
        """(a, b) of the transformation a * x + b after the drop, as Keras computes them."""
        saturation = -_SELU_ALPHA * _SELU_SCALE
        a = ((1 - self.rate) * (1 + self.rate * saturation ** 2)) ** -0.5
        return a, -a * saturation * self.rate

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        if self.rate == 1.0:
            _refuse_rate_one(self)
        mask_shape = self._mask_shape(inputs.shape)
        keep = B.ge(B.random_uniform(training_seed(self), mask_shape, self.stream), self.rate)
        keep = B.broadcast(keep, inputs.shape) if keep.shape != inputs.shape else keep
        a, b = self.affine()
        return B.add(B.mul(B.select(keep, inputs, -_SELU_ALPHA * _SELU_SCALE), a), b)
