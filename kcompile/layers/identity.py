"""The pass-through layers, as in `keras.layers`: Identity and ActivityRegularization.

Both return their inputs.  ActivityRegularization's penalty is the one any layer's
`activity_regularizer=` adds (`Layer.__call__`: the L1L2 penalty of the output divided by the batch
size, as Keras 3), so the two share one code path and one gradient.
"""
from __future__ import annotations

from kcompile import regularizers
from kcompile.layers.layer import Layer


class Identity(Layer):
    """Returns its inputs unchanged: a placeholder where no operation is wanted."""

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        return inputs


class ActivityRegularization(Layer):
    """Returns its inputs and adds `l1 * sum(|x|) + l2 * sum(x^2)` of them, divided by the batch
    size, to the model's loss (in training and in evaluate, as Keras 3).

    Args:
        l1, l2: the factors of the penalty, numbers >= 0 (default 0.0).
    """

    def __init__(self, l1=0.0, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        # L1L2 checks both factors (finite numbers >= 0), naming the argument
        self.activity_regularizer = regularizers.L1L2(l1=l1, l2=l2)
        self.l1, self.l2 = self.activity_regularizer.l1, self.activity_regularizer.l2

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, inputs):
        return inputs

    def get_config(self):
        # Keras 3's keys: the base layer's and l1, l2 (not the activity_regularizer they make)
        return {**super().get_config(), "l1": self.l1, "l2": self.l2}
