"""TimeDistributed, as `keras.layers.TimeDistributed` (Bidirectional is in recurrent.py), and what
wrappers share: the owner their inner layers' weights report.

A layer inside a wrapper is no layer of the model: its weights are listed by the wrapper, and their
paths follow the wrapper's name ('time_distributed/dense/kernel'), which the model may change when
it makes names unique.
"""
from __future__ import annotations

from ir import build as B

from kcompile.layers.layer import Layer, format_shape, wrap


class SubOwner:
    """The owner a wrapped layer's weights report (see the module)."""

    def __init__(self, wrapper, layer):
        self._wrapper, self._layer = wrapper, layer

    @property
    def name(self) -> str:
        return f"{self._wrapper.name}/{self._layer.name}"

    @property
    def trainable(self) -> bool:
        return bool(self._wrapper.trainable) and bool(self._layer.trainable)

    def _on_structure_change(self):
        self._wrapper._on_structure_change()


def inner_regularization(wrapper, inners):
    """The weight penalties of a wrapper and of the layers it holds (traced), or None: Keras
    counts a wrapped layer's regularizers with the wrapper's."""
    total = Layer.regularization(wrapper)
    for inner in inners:
        penalty = inner.regularization()
        if penalty is not None:
            total = penalty if total is None else B.add(total, penalty)
    return total


def _per_step_layers() -> tuple:
    from kcompile.layers.core import ELU, Activation, Dense, Dropout, LeakyReLU, ReLU, Rescaling, Softmax
    from kcompile.layers.normalization import LayerNormalization
    return Dense, Activation, Dropout, LeakyReLU, ReLU, ELU, Softmax, Rescaling, LayerNormalization


class TimeDistributed(Layer):
    """Applies `layer` to every timestep of (batch, timesteps, ...) inputs, with one set of weights,
    as `keras.layers.TimeDistributed(Dense(8))`.

    kcompile takes the layers that already act on each step alone when given the whole sequence
    (Dense, Activation, Dropout, the activation layers, Rescaling, and Softmax and LayerNormalization
    over the last axis), and runs them on it; others (convolutions over frames, BatchNormalization)
    are refused.
    """

    def __init__(self, layer, **kwargs):
        allowed = _per_step_layers()
        if not isinstance(layer, Layer):
            raise ValueError(f"TimeDistributed wraps a layer; got {layer!r}")
        axis = getattr(layer, "axis", -1)
        last_axis_only = (axis,) == (-1,) if isinstance(axis, int) else tuple(axis) == (-1,)
        if type(layer) not in allowed or not last_axis_only:
            names = ", ".join(cls.__name__ for cls in allowed)
            raise NotImplementedError(f"TimeDistributed({type(layer).__name__}) is not supported yet: "
                                      f"kcompile runs {names} (Softmax and LayerNormalization "
                                      "over axis -1) on every timestep")
        super().__init__(**kwargs)
        self.layer = layer

    @property
    def weights(self) -> list:
        return self.layer.weights

    def regularization(self):
        # (the inner layer's weight penalties only: Keras runs its `call` on the steps, so an
        # activity_regularizer of the inner layer adds nothing, in Keras 3 as here)
        return inner_regularization(self, [self.layer])

    @property
    def losses(self) -> list:
        return Layer.losses.fget(self) + self.layer.losses

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 3:
            raise ValueError(f"TimeDistributed layer {self.name!r} needs inputs of shape (batch, "
                             f"timesteps, ...); got {format_shape(input_shape)}")
        return tuple(self.layer.compute_output_shape(tuple(input_shape)))

    def build(self, input_shape):
        self.layer.build_for(tuple(input_shape))
        for variable in self.layer.weights:
            variable._owner = SubOwner(self, self.layer)
        self.built = True

    def call(self, inputs, training=False):
        wrap(self, self.layer)
        if self.layer._accepts_training():
            return self.layer.call(inputs, training=training)
        return self.layer.call(inputs)

    def get_config(self):
        from kcompile import layers as layers_module
        config = super().get_config()
        config["layer"] = layers_module.serialize(self.layer)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from kcompile import layers as layers_module
        config = dict(config)
        return cls(layers_module.deserialize(config.pop("layer"), custom_objects), **config)
