"""Masking, as `keras.layers.Masking`: the timesteps whose features all equal `mask_value` are
masked for the layers after it (an RNN carries its state over them, GlobalAveragePooling1D leaves
them out of its mean), and their features are set to zero, as Keras's does.
"""
from __future__ import annotations

import numbers

from ir import build as B

from kcompile.layers.layer import Layer, format_shape


class Masking(Layer):
    """(batch, timesteps, features) -> the same shape; the output's mask is
    `any(inputs != mask_value, axis=-1)` (a NaN feature is unequal to every mask_value).

    Args:
        mask_value: the padding value (default 0.0).
    """

    def __init__(self, mask_value=0.0, **kwargs):
        if isinstance(mask_value, bool) or not isinstance(mask_value, numbers.Real):
            raise ValueError("Masking: `mask_value` must be a number (the value of every feature of "
                             f"a padded timestep); got mask_value={mask_value!r}")
        super().__init__(**kwargs)
        self.mask_value = mask_value
        self.supports_masking = True

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"Masking layer {self.name!r} needs inputs of shape (batch, timesteps, "
                             f"...); got {format_shape(input_shape)}")
        return tuple(input_shape)

    def _keep(self, inputs):
        """Whether each timestep has a feature other than mask_value: bool (batch, timesteps)."""
        unequal = B.cast(B.ne(inputs, B.scalar(self.mask_value, inputs)), inputs.dtype)
        return B.gt(B.reduce_max(unequal, -1), 0.0)

    def compute_mask(self, inputs, previous_mask=None):
        return self._keep(inputs)

    def call(self, inputs):
        keep = self._keep(inputs)
        return B.select(B.reshape(keep, keep.shape + (1,)), inputs, 0.0)

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}
