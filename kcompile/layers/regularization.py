"""SpatialDropout1D and SpatialDropout2D, as in `keras.layers`: Dropout that drops whole feature maps.

Each is `Dropout` with Keras's noise shape, one mask entry per sample and channel, (batch, 1,
channels) for sequences and (batch, 1, 1, channels) for channels-last images, broadcast over the
steps or pixels.  The mask is drawn as Dropout's is (the train step's seed, on this layer's own
stream from its name and `seed`: `layer.random_stream`), so its gradient, reference and compiled
code are Dropout's.
"""
from __future__ import annotations

from kcompile.layers.convolutional import check_channels_last, check_spatial
from kcompile.layers.core import Dropout


class _SpatialDropout(Dropout):
    rank = 1

    def compute_output_shape(self, input_shape):
        check_spatial(input_shape, self.rank, type(self).__name__, self.name)
        return tuple(input_shape)

    def _mask_shape(self, input_shape) -> tuple:
        self.compute_output_shape(input_shape)
        return (input_shape[0],) + (1,) * self.rank + (input_shape[-1],)

    def get_config(self):
        # Keras 3's keys: no `trainable` or `noise_shape` (the noise shape is the layer's own)
        return {"rate": self.rate, "seed": self.seed, "name": self.name, "dtype": "float32"}


class SpatialDropout1D(_SpatialDropout):
    """Drops whole channels of sequences (batch, steps, channels) in training: each sample's channel
    is zeroed at every step with probability `rate`, the rest scaled by 1 / (1 - rate)."""
    rank = 1

    def __init__(self, rate, seed=None, name=None, dtype=None):
        super().__init__(rate, seed=seed, name=name, dtype=dtype)


class SpatialDropout2D(_SpatialDropout):
    """Drops whole feature maps of images (batch, height, width, channels) in training: each
    sample's channel is zeroed at every pixel with probability `rate`, the rest scaled by
    1 / (1 - rate)."""
    rank = 2

    def __init__(self, rate, data_format=None, seed=None, name=None, dtype=None):
        check_channels_last(data_format, "SpatialDropout2D")
        super().__init__(rate, seed=seed, name=name, dtype=dtype)
        self.data_format = "channels_last"

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}
