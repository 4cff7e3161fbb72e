"""Reshape, as `keras.layers.Reshape`: a new per-sample shape, the batch axis kept."""
from __future__ import annotations

import math
import numbers

from ir import build as B

from kcompile.layers.layer import Layer, format_shape


class Reshape(Layer):
    """Reshapes every sample to `target_shape` (without the batch axis); one entry may be -1, inferred
    from the others: `Reshape((28, 28, 1))`, `Reshape((-1, 4))`."""

    def __init__(self, target_shape, **kwargs):
        try:
            target = tuple(target_shape)
        except TypeError:
            target = None
        if target is None or not target or any(
                isinstance(d, bool) or not isinstance(d, numbers.Integral) or (d < 1 and d != -1)
                for d in target) or target.count(-1) > 1:
            raise ValueError("Reshape: `target_shape` must be a tuple of positive integers (one of them "
                             f"may be -1), without the batch axis; got target_shape={target_shape!r}")
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in target)

    def compute_output_shape(self, input_shape):
        if not input_shape:
            raise ValueError(f"Reshape layer {self.name!r} needs inputs with a batch axis")
        size = math.prod(input_shape[1:])
        known = math.prod(d for d in self.target_shape if d != -1)
        shape = self.target_shape
        if -1 in shape:
            if size % known:
                raise ValueError(self._mismatch(input_shape))
            shape = tuple(size // known if d == -1 else d for d in shape)
        if math.prod(shape) != size:
            raise ValueError(self._mismatch(input_shape))
        return (input_shape[0],) + shape

    def _mismatch(self, input_shape) -> str:
        return (f"Reshape layer {self.name!r} cannot reshape samples of shape "
                f"{format_shape(input_shape[1:])} ({math.prod(input_shape[1:])} values) to "
                f"{format_shape(self.target_shape)}: the number of values must stay the same")

    def call(self, inputs):
        return B.reshape(inputs, self.compute_output_shape(inputs.shape))

    def get_config(self):
        config = super().get_config()
        config["target_shape"] = self.target_shape
        return config
