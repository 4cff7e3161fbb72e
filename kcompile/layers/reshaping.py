"""Reshape, Permute and RepeatVector, as in `keras.layers`: new per-sample shapes, the batch axis
kept."""
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


class Permute(Layer):
    """Permutes the axes of every sample: `dims` numbers them from 1 (the batch axis stays first),
    `Permute((2, 1))` swaps the two axes of (batch, steps, features)."""

    def __init__(self, dims, **kwargs):
        try:
            dims = tuple(dims)
        except TypeError:
            dims = None
        if dims is None or any(isinstance(d, bool) or not isinstance(d, numbers.Integral)
                               for d in dims) or sorted(dims) != list(range(1, len(dims) + 1)):
            raise ValueError("Invalid permutation argument `dims` for Permute Layer. The set of "
                             "indices in `dims` must be consecutive and start from 1 (the batch axis "
                             f"stays first). Received dims={dims!r}")
        super().__init__(**kwargs)
        self.dims = tuple(int(d) for d in dims)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != len(self.dims) + 1:
            raise ValueError(f"Permute layer {self.name!r} with dims={self.dims} needs inputs of rank "
                             f"{len(self.dims) + 1}; got inputs of shape {format_shape(input_shape)}")
        return (input_shape[0],) + tuple(input_shape[d] for d in self.dims)

    def call(self, inputs):
        self.compute_output_shape(inputs.shape)
        return B.transpose(inputs, (0,) + self.dims)

    def get_config(self):
        return {**super().get_config(), "dims": self.dims}


class RepeatVector(Layer):
    """Repeats each sample's vector `n` times: (batch, features) -> (batch, n, features)."""

    def __init__(self, n, **kwargs):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"RepeatVector: `n` must be a positive integer; got n={n!r}")
        super().__init__(**kwargs)
        self.n = int(n)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"RepeatVector layer {self.name!r} needs inputs of shape (batch, "
                             f"features); got {format_shape(input_shape)}")
        return (input_shape[0], self.n, input_shape[1])

    def call(self, inputs):
        shape = self.compute_output_shape(inputs.shape)
        return B.broadcast(B.reshape(inputs, (shape[0], 1, shape[2])), shape)

    def get_config(self):
        return {**super().get_config(), "n": self.n}
