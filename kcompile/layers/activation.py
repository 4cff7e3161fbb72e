"""PReLU, as `keras.layers.PReLU`: a leaky relu whose negative slope is a learned weight.

The activation layers without weights (ReLU, LeakyReLU, ELU, Softmax) are in core.py.
"""
from __future__ import annotations

import numbers

from ir import build as B

from kcompile import initializers, regularizers
from kcompile.layers.layer import Layer, format_shape, refuse_unsupported


class PReLU(Layer):
    """x for x >= 0, alpha * x below, with `alpha` a weight of the per-sample shape (one slope per
    entry), shared along `shared_axes` (size 1 there).

    Args:
        alpha_initializer: initializer of `alpha` (default 'Zeros': a relu at first).
        alpha_regularizer: optional regularizer of `alpha`.
        alpha_constraint: not supported (None).
        shared_axes: an axis or list of axes of the samples (1 is the first after the batch axis)
            along which one slope is shared, e.g. [1, 2] for one slope per channel of images.
    """

    def __init__(self, alpha_initializer="Zeros", alpha_regularizer=None, alpha_constraint=None,
                 shared_axes=None, **kwargs):
        refuse_unsupported("PReLU", {"alpha_constraint": alpha_constraint})
        if shared_axes is None:
            axes = None
        else:
            axes = list(shared_axes) if isinstance(shared_axes, (list, tuple)) else [shared_axes]
            if any(isinstance(a, bool) or not isinstance(a, numbers.Integral) or a < 1 for a in axes):
                raise ValueError("PReLU: `shared_axes` must be an axis or a list of axes of the "
                                 "samples, integers >= 1 (axis 0 is the batch); got "
                                 f"shared_axes={shared_axes!r}")
            axes = [int(a) for a in axes]
        super().__init__(**kwargs)
        self.alpha_initializer = initializers.get(alpha_initializer)
        self.alpha_regularizer = regularizers.get(alpha_regularizer)
        self.shared_axes = axes
        self.alpha = None

    def _alpha_shape(self, input_shape) -> tuple:
        if len(input_shape) < 2:
            raise ValueError(f"PReLU layer {self.name!r} needs inputs with an axis besides the batch "
                             f"axis; got {format_shape(input_shape)}")
        shape = list(input_shape[1:])
        for axis in self.shared_axes or ():
            if axis >= len(input_shape):
                raise ValueError(f"PReLU layer {self.name!r}: shared axis {axis} is not an axis of "
                                 f"inputs of shape {format_shape(input_shape)}; give axes 1 to "
                                 f"{len(input_shape) - 1}")
            shape[axis - 1] = 1
        return tuple(shape)

    def compute_output_shape(self, input_shape):
        shape = self._alpha_shape(input_shape)
        if self.alpha is not None and tuple(self.alpha.shape) != shape:
            raise ValueError(f"Input of layer {self.name!r} is incompatible with the layer: its "
                             f"alpha has shape {tuple(self.alpha.shape)}, but inputs of shape "
                             f"{format_shape(input_shape)} need one of shape {shape}")
        return tuple(input_shape)

    def build(self, input_shape):
        self.alpha = self.add_weight(shape=self._alpha_shape(input_shape), name="alpha",
                                     initializer=self.alpha_initializer,
                                     regularizer=self.alpha_regularizer)
        self.built = True

    def call(self, inputs):
        # As Keras: relu(x) - alpha * relu(-x)
        return B.sub(B.relu(inputs), B.mul(self.alpha.value, B.relu(B.neg(inputs))))

    def get_config(self):
        return {**super().get_config(),
                "alpha_initializer": initializers.serialize(self.alpha_initializer),
                "alpha_regularizer": regularizers.serialize(self.alpha_regularizer),
                "alpha_constraint": None, "shared_axes": self.shared_axes}
