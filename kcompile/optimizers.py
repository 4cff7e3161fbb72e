"""Optimizers, as ``keras.optimizers``: their update rules are written in IR ops.

The trainer traces `update_step` for every trainable weight into the train-step graph, so one compiled
call computes the gradients and applies the update.  An optimizer's state lives in numpy buffers the
train step updates in place:

- 'optimizer/learning_rate' (f32[]): an input, so `optimizer.learning_rate = 0.01` (a callback, a
  schedule) takes effect at the next step without recompiling;
- 'optimizer/iterations' (i32[]): the number of steps applied; the graph returns iterations + 1;
- one slot per weight and slot name, '{weight path}/{slot}' (e.g. 'dense/kernel/m').

The rules are Keras 3's, step t = iterations + 1:

- SGD: m = momentum * m - lr * g; w += momentum * m - lr * g (nesterov) or w += m; without momentum
  w -= lr * g.
- Adam: lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t); m += (g - m) * (1 - beta_1);
  v += (g^2 - v) * (1 - beta_2); w -= lr_t * m / (sqrt(v) + epsilon), with beta^t = exp(t * log(beta)).
- RMSprop: v = rho * v + (1 - rho) * g^2; w -= lr * g / sqrt(v + epsilon) (with momentum and centered
  variants).
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from ir import Node
from ir import build as B

from kcompile.layers.layer import Variable

LEARNING_RATE = "optimizer/learning_rate"
ITERATIONS = "optimizer/iterations"

# Arguments of Keras optimizers kcompile does not implement yet: accepted only at their defaults.
_UNSUPPORTED = {"weight_decay": None, "clipnorm": None, "clipvalue": None, "global_clipnorm": None,
                "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                "loss_scale_factor": None, "gradient_accumulation_steps": None}


def _check_real(value, argument, low=None, high=None, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{argument} must be a finite number; got {argument}={value!r}")
    if low is not None and value < low:
        raise ValueError(f"{argument} must be >= {low}; got {argument}={value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{argument} must be {'<' if high_open else '<='} {high}; got "
                         f"{argument}={value!r}")
    return float(value)


class Optimizer:
    """Base class.  Subclasses set `slot_names()` and write `update_step` in IR ops."""

    def __init__(self, learning_rate=0.001, name=None, **kwargs):
        if "lr" in kwargs:
            legacy = kwargs.pop("lr")
            warnings.warn("The `lr` argument is deprecated, use `learning_rate` instead.",
                          DeprecationWarning, stacklevel=3)
            if learning_rate is not None and learning_rate != type(self).DEFAULT_LEARNING_RATE:
                raise ValueError("pass only one of `learning_rate` and its deprecated spelling `lr`")
            learning_rate = legacy
        for key, default in _UNSUPPORTED.items():
            if key in kwargs:
                value = kwargs.pop(key)
                if value != default:
                    raise NotImplementedError(f"{type(self).__name__}({key}={value!r}) is not supported "
                                              "yet")
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {sorted(kwargs)}")
        self.name = name or type(self).__name__.lower()
        self._learning_rate = Variable(np.float32(self._check_learning_rate(learning_rate)),
                                       "learning_rate", trainable=False)
        self._iterations = Variable(np.int32(0), "iterations", trainable=False, dtype=np.int32)
        self._slots: dict[str, Variable] = {}
        self._built = False

    DEFAULT_LEARNING_RATE = 0.001

    @staticmethod
    def _check_learning_rate(value):
        if callable(value):
            raise NotImplementedError("learning-rate schedules are not supported yet; pass a number "
                                      "and change `optimizer.learning_rate` from a callback")
        return _check_real(value, "learning_rate")

    # -- state ----------------------------------------------------------------------------------

    @property
    def learning_rate(self) -> float:
        return float(self._learning_rate.buffer)

    @learning_rate.setter
    def learning_rate(self, value):
        # In place: compiled train steps read this buffer at every call.
        self._learning_rate.buffer[...] = np.float32(self._check_learning_rate(float(value)))

    @property
    def iterations(self) -> Variable:
        return self._iterations

    @property
    def variables(self) -> list:
        return [self._iterations, self._learning_rate] + list(self._slots.values())

    @property
    def built(self) -> bool:
        """Whether `build` created the slots (the first `fit` does)."""
        return self._built

    def slot_names(self) -> tuple:
        return ()

    @staticmethod
    def slot_path(variable: Variable, slot: str) -> str:
        return f"{variable.path}/{slot}"

    def build(self, variables):
        """Create (zero) slots for `variables` that have none yet."""
        for variable in variables:
            for slot in self.slot_names():
                path = self.slot_path(variable, slot)
                if path not in self._slots:
                    self._slots[path] = Variable(np.zeros(variable.shape, np.float32), path,
                                                 trainable=False)
        self._built = True

    def state(self) -> dict:
        """Buffers of the train step's optimizer inputs, by graph input name."""
        state = {LEARNING_RATE: self._learning_rate.buffer, ITERATIONS: self._iterations.buffer}
        state.update({path: slot.buffer for path, slot in self._slots.items()})
        return state

    def slot(self, variable: Variable, slot: str) -> Variable:
        return self._slots[self.slot_path(variable, slot)]

    # -- the update, in IR ----------------------------------------------------------------------

    def update_step(self, gradient: Node, variable: Node, learning_rate: Node, step: Node,
                    slots: dict) -> tuple:
        """(new variable, {slot: new value}) from IR values; `step` is t = iterations + 1."""
        raise NotImplementedError

    # -- configuration --------------------------------------------------------------------------

    def get_config(self) -> dict:
        return {"name": self.name, "learning_rate": self.learning_rate}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum."""

    DEFAULT_LEARNING_RATE = 0.01

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="SGD", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = _check_real(momentum, "momentum", low=0.0, high=1.0)
        self.nesterov = bool(nesterov)

    def slot_names(self):
        return ("momentum",) if self.momentum != 0 else ()

    def update_step(self, gradient, variable, learning_rate, step, slots):
        if self.momentum == 0:
            return B.sub(variable, B.mul(gradient, learning_rate)), {}
        m = slots["momentum"]
        m_new = B.sub(B.mul(m, self.momentum), B.mul(gradient, learning_rate))
        if self.nesterov:
            w_new = B.add(variable, B.sub(B.mul(m_new, self.momentum), B.mul(gradient, learning_rate)))
        else:
            w_new = B.add(variable, m_new)
        return w_new, {"momentum": m_new}

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


class Adam(Optimizer):
    """Adam (Kingma & Ba), as Keras 3 computes it."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, amsgrad=False,
                 name="adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if amsgrad:
            raise NotImplementedError("Adam(amsgrad=True) is not supported yet")
        self.beta_1 = _check_real(beta_1, "beta_1", low=0.0, high=1.0, high_open=True)
        self.beta_2 = _check_real(beta_2, "beta_2", low=0.0, high=1.0, high_open=True)
        self.epsilon = _check_real(epsilon, "epsilon", low=0.0)
        self.amsgrad = False

    def slot_names(self):
        return ("m", "v")

    def update_step(self, gradient, variable, learning_rate, step, slots):
        m, v = slots["m"], slots["v"]
        # beta^t as exp(t * log(beta)): pow is not a primitive.
        beta_1_power = B.exp(B.mul(step, B.log(B.scalar(self.beta_1, step))))
        beta_2_power = B.exp(B.mul(step, B.log(B.scalar(self.beta_2, step))))
        alpha = B.div(B.mul(learning_rate, B.sqrt(B.sub(1.0, beta_2_power))), B.sub(1.0, beta_1_power))
        m_new = B.add(m, B.mul(B.sub(gradient, m), 1.0 - self.beta_1))
        v_new = B.add(v, B.mul(B.sub(B.mul(gradient, gradient), v), 1.0 - self.beta_2))
        w_new = B.sub(variable, B.div(B.mul(m_new, alpha), B.add(B.sqrt(v_new), self.epsilon)))
        return w_new, {"m": m_new, "v": v_new}

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                       "amsgrad": self.amsgrad})
        return config


class RMSprop(Optimizer):
    """RMSprop, as Keras 3 computes it (the default optimizer of `compile`)."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-07, centered=False,
                 name="rmsprop", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = _check_real(rho, "rho", low=0.0, high=1.0)
        self.momentum = _check_real(momentum, "momentum", low=0.0, high=1.0)
        self.epsilon = _check_real(epsilon, "epsilon", low=0.0)
        self.centered = bool(centered)

    def slot_names(self):
        names = ("velocity",)
        if self.momentum > 0:
            names += ("momentum",)
        if self.centered:
            names += ("average_gradient",)
        return names

    def update_step(self, gradient, variable, learning_rate, step, slots):
        new = {}
        velocity = B.add(B.mul(slots["velocity"], self.rho),
                         B.mul(B.mul(gradient, gradient), 1.0 - self.rho))
        new["velocity"] = velocity
        if self.centered:
            average = B.add(B.mul(slots["average_gradient"], self.rho),
                            B.mul(gradient, 1.0 - self.rho))
            new["average_gradient"] = average
            denominator = B.add(B.sub(velocity, B.mul(average, average)), self.epsilon)
        else:
            denominator = B.add(velocity, self.epsilon)
        increment = B.div(B.mul(gradient, learning_rate), B.sqrt(denominator))
        if self.momentum > 0:
            momentum = B.add(B.mul(slots["momentum"], self.momentum), increment)
            new["momentum"] = momentum
            return B.sub(variable, momentum), new
        return B.sub(variable, increment), new

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                       "centered": self.centered})
        return config


_CLASSES = {"adam": Adam, "sgd": SGD, "rmsprop": RMSprop}


def serialize(optimizer: Optimizer) -> dict:
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(config: dict) -> Optimizer:
    return get(config)


def get(identifier) -> Optimizer:
    """An optimizer from a name ('adam', 'Adam', 'sgd', 'rmsprop'), a config dict, a class or an object."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        cls = _CLASSES.get(identifier.lower())
        if cls is None:
            raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}. Use one of "
                             f"{sorted(_CLASSES)} or pass an optimizer object such as "
                             "kcompile.optimizers.Adam(learning_rate=0.001).")
        return cls()
    if isinstance(identifier, dict):
        cls = _CLASSES.get(str(identifier.get("class_name", "")).lower())
        if cls is None:
            raise ValueError(f"Unknown optimizer class in config {identifier!r}")
        return cls.from_config(identifier.get("config", {}))
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}; pass a name such as "
                     "'adam' or an optimizer object")
