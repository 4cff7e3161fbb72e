"""Weight regularizers, as ``keras.regularizers``: a penalty of a weight added to the loss.

``Dense(64, kernel_regularizer='l2')`` or ``kernel_regularizer=kcompile.regularizers.L2(1e-4)``: the
train step's loss (and evaluate's, as in Keras 3) is the compiled loss plus the sum of every
regularized weight's penalty, so the gradient of the penalty reaches the optimizer with the rest.

- ``L1(l1=0.01)``: l1 * sum(|w|);  ``L2(l2=0.01)``: l2 * sum(w^2);  ``L1L2(l1=0.0, l2=0.0)``: both.
- Strings 'l1', 'l2', 'l1_l2' give the classes with their defaults; ``l1``, ``l2`` and ``l1_l2`` are
  the classes under Keras 3's lower-case names.
- A subclass defines ``__call__(self, x)`` with traced arithmetic (``x ** 2``, ``abs(x)``,
  ``ir.build`` ops) and ``get_config``; a penalty that is not a scalar is summed, as in Keras.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ir import Node
from ir import build as B
from ir.ops import as_traced
from kcompile.schedules import FLOAT32_MAX


class Regularizer:
    """Base class: ``__call__(x)`` returns the scalar penalty of the traced weight ``x``."""

    def __call__(self, x):
        raise NotImplementedError(f"{type(self).__name__} must define __call__(self, x)")

    def get_config(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must define get_config() to be saved")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _factor(value, name) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or value > FLOAT32_MAX:
        raise ValueError(f"Value for argument `{name}` must be a finite number >= 0 (within "
                         f"float32's range); received {name}={value!r}")
    return float(value)


class L1L2(Regularizer):
    """l1 * sum(|x|) + l2 * sum(x^2)."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(l1, "l1")
        self.l2 = _factor(l2, "l2")

    def __call__(self, x):
        x = as_traced(x)
        if not isinstance(x, Node):   # a numpy weight: its penalty, as a number (Keras's tensor)
            from kcompile.layers.layer import call_eagerly
            return call_eagerly(self.__call__, np.asarray(x, np.float32).reshape((1, -1)))
        penalty = None
        if self.l1:
            penalty = B.mul(B.reduce_sum(B.abs(x)), self.l1)
        if self.l2:
            term = B.mul(B.reduce_sum(B.mul(x, x)), self.l2)
            penalty = term if penalty is None else B.add(penalty, term)
        return penalty if penalty is not None else B.mul(B.reduce_sum(x), 0.0)

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """l1 * sum(|x|)."""

    def __init__(self, l1=0.01):
        super().__init__(l1=0.01 if l1 is None else l1)    # (None: the default, as Keras's)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """l2 * sum(x^2)."""

    def __init__(self, l2=0.01):
        super().__init__(l2=0.01 if l2 is None else l2)    # (None: the default, as Keras's)

    def get_config(self):
        return {"l2": self.l2}


# Keras 3's lower-case names are the classes themselves (so l1_l2() is L1L2(0.0, 0.0)).
l1, l2, l1_l2 = L1, L2, L1L2


_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}
_NAMES = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}


def serialize(regularizer) -> dict | None:
    if regularizer is None:
        return None
    if not isinstance(regularizer, Regularizer):
        raise ValueError(f"the regularizer {regularizer!r} is a plain function, which cannot be "
                         "saved in a config; subclass kcompile.regularizers.Regularizer with "
                         "get_config()")
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def deserialize(config, custom_objects=None):
    """The regularizer a `serialize` config describes (a class in `custom_objects`, the registry or
    an open custom_object_scope first)."""
    from kcompile import registry
    cls = registry.custom_objects_for(custom_objects).get(
        config.get("class_name")) if isinstance(config, dict) else None
    if isinstance(cls, type) and issubclass(cls, Regularizer):
        return cls.from_config(dict(config.get("config") or {}))
    return get(config)


def get(identifier):
    """A regularizer from None, a name, a config dict, an instance or a callable of the weight."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        cls = _NAMES.get(identifier.lower()) or _CLASSES.get(identifier)
        if cls is None:
            raise ValueError(f"Unknown regularizer: {identifier!r}; use one of "
                             f"{sorted(_NAMES)} or a kcompile.regularizers object")
        return cls()
    if isinstance(identifier, dict):
        cls = _CLASSES.get(identifier.get("class_name"))
        if cls is None:
            raise ValueError(f"Unknown regularizer class in config {identifier!r}")
        return cls.from_config(dict(identifier.get("config") or {}))
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret regularizer identifier: {identifier!r}")
