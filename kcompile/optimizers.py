"""Optimizers, as ``keras.optimizers``: their update rules are written in IR ops.

The trainer traces the whole update for every trainable weight into the train-step graph, so one
compiled call computes the gradients and applies the update.  An optimizer's state lives in numpy
buffers the train step updates in place:

- 'optimizer/learning_rate' (f32[]): an input, so `optimizer.learning_rate = 0.01` (a callback)
  takes effect at the next step without recompiling;
- 'optimizer/iterations' (i32[]): the number of steps applied; the graph returns iterations + 1;
- one slot per weight and slot name, '{weight path}/{slot}' (e.g. 'dense/kernel/m').
- scalars of the whole optimizer that its rule keeps besides the iteration count (`state_names`:
  Nadam's 'optimizer/u_product'), advanced once per step before the weights' updates.

A learning-rate schedule (`kcompile.optimizers.schedules`) is evaluated inside the compiled step
from 'optimizer/iterations' (step k uses schedule(k), as Keras); the learning-rate buffer then only
mirrors the current value for saving, and `optimizer.learning_rate` reads the schedule.

One step, in Keras 3's order (`BaseOptimizer._backend_apply_gradients`):

1. clip the gradients: `clipnorm` (each gradient g to g * c / max(|g|, c)), or `global_clipnorm`
   (all of them by c / max(global norm, c)), or `clipvalue` (each entry to [-c, c]) - at most one;
2. weight decay, if `weight_decay` is set: w -= w * weight_decay * lr (decoupled, as AdamW);
3. the rule, with step t = iterations + 1:

- SGD: m = momentum * m - lr * g; w += momentum * m - lr * g (nesterov) or w += m; without momentum
  w -= lr * g.
- Adam / AdamW: lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t); m += (g - m) * (1 - beta_1);
  v += (g^2 - v) * (1 - beta_2); (amsgrad: v_hat = max(v_hat, v), used for v);
  w -= lr_t * m / (sqrt(v) + epsilon), with beta^t = exp(t * log(beta)).
- RMSprop: v = rho * v + (1 - rho) * g^2; w -= lr * g / sqrt(v + epsilon) (with momentum and centered
  variants).
- Adagrad: a += g^2 (a starts at initial_accumulator_value); w -= lr * g / sqrt(a + epsilon).
- Adamax, Nadam, Adadelta, Lion, Ftrl: Keras 3's rules, written out in their classes' docstrings.
  Nadam also keeps a scalar of its own besides the slots ('optimizer/u_product', `state_names`).
"""
from __future__ import annotations

import math
import numbers
import re
import sys
import warnings

import numpy as np

from ir import Node
from ir import build as B

from kcompile import schedules
from kcompile.layers.layer import Variable

# NOTE: Keras users write `keras.optimizers.schedules.ExponentialDecay` and also
# `from keras.optimizers.schedules import ...`; registering the module under that name makes both work.
sys.modules.setdefault(__name__ + ".schedules", schedules)

LEARNING_RATE = "optimizer/learning_rate"
ITERATIONS = "optimizer/iterations"

# Arguments of Keras optimizers kcompile does not implement yet: accepted only at their defaults.
_UNSUPPORTED = {"use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                "loss_scale_factor": None, "gradient_accumulation_steps": None}


def _check_real(value, argument, low=None, high=None, high_open=False):
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        value = value.item()    # a 0-d array (np.array(0.1), a variable's numpy()), as Keras takes
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not abs(value) <= schedules.FLOAT32_MAX:
        raise ValueError(f"{argument} must be a finite number within float32's range (the compiled "
                         f"step computes in float32); got {argument}={value!r}")
    if low is not None and value < low:
        raise ValueError(f"{argument} must be >= {low}; got {argument}={value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{argument} must be {'<' if high_open else '<='} {high}; got "
                         f"{argument}={value!r}")
    return float(value)


def _optional_real(value, argument):
    return None if value is None else _check_real(value, argument)


class LearningRateValue:
    """What `optimizer.learning_rate` returns: a live view of the rate, as Keras returns its
    learning-rate variable.  It reads the optimizer whenever it is used (`float(lr)`, `lr * 0.5`,
    `lr.numpy()`, comparisons, formatting), so a reference kept across steps, epochs or callbacks
    sees every later change, and `lr.assign(...)` sets the optimizer's rate.  Arithmetic gives plain
    floats.  With a schedule it is the schedule's value at the optimizer's current iteration."""

    __slots__ = ("_optimizer",)
    _live_learning_rate = True      # (what schedules.value_now recognizes)

    def __init__(self, optimizer):
        self._optimizer = optimizer

    def __float__(self) -> float:
        return self._optimizer._current_learning_rate()

    def assign(self, value):
        """Set the optimizer's learning rate (as `optimizer.learning_rate = value`)."""
        self._optimizer.learning_rate = value
        return self

    def assign_add(self, delta):
        return self.assign(float(self) + float(delta))

    def assign_sub(self, delta):
        return self.assign(float(self) - float(delta))

    def numpy(self) -> np.ndarray:
        return np.asarray(float(self), dtype=np.float32)

    @property
    def value(self) -> np.ndarray:
        return self.numpy()

    shape = ()
    dtype = "float32"

    def __array__(self, dtype=None, copy=None):
        return np.asarray(float(self), dtype=np.float32 if dtype is None else dtype)

    def __int__(self):
        return int(float(self))

    def __bool__(self):
        return bool(float(self))

    def __round__(self, ndigits=None):
        return round(float(self), ndigits)

    def __format__(self, spec):
        return format(float(self), spec)

    def __repr__(self):
        return f"<learning_rate: {float(self)!r}>"

    def __str__(self):
        return str(float(self))

    def __reduce__(self):     # pickles and deep-copies as the plain float, not the optimizer
        return float, (float(self),)

    @property
    def real(self) -> float:
        return float(self)

    @property
    def imag(self) -> float:
        return 0.0

    def conjugate(self) -> float:
        return float(self)

    def as_integer_ratio(self) -> tuple:
        return float(self).as_integer_ratio()

    def __complex__(self):
        return complex(float(self))

    def __trunc__(self):
        return math.trunc(float(self))

    def __floor__(self):
        return math.floor(float(self))

    def __ceil__(self):
        return math.ceil(float(self))

    def __neg__(self):
        return -float(self)

    def __pos__(self):
        return float(self)

    def __abs__(self):
        return abs(float(self))

    __hash__ = object.__hash__


def _lr_operator(name):
    def operator(self, other):
        if isinstance(other, LearningRateValue):
            other = float(other)
        return getattr(float(self), name)(other)
    operator.__name__ = name
    return operator


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
              "__rtruediv__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__divmod__",
              "__rdivmod__", "__pow__", "__rpow__", "__eq__", "__ne__", "__lt__", "__le__",
              "__gt__", "__ge__"):
    setattr(LearningRateValue, _name, _lr_operator(_name))
numbers.Real.register(LearningRateValue)


class _UnrecognizedArguments(TypeError, ValueError):
    """An argument an optimizer does not take: a TypeError as Python's own, and the ValueError
    Keras 3 raises ('Argument(s) not recognized'), so either except clause catches it."""


class Optimizer:
    """Base class.  Subclasses set `slot_names()` and write `update_step` in IR ops."""

    def __init__(self, learning_rate=0.001, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
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
        if kwargs.pop("decay", None) is not None:
            # Keras 3 warns and ignores the Keras 2 argument (old tutorials pass Adam(decay=1e-6)).
            warnings.warn("Argument `decay` is no longer supported and will be ignored.", stacklevel=3)
        if kwargs:
            raise _UnrecognizedArguments(f"{type(self).__name__} got unexpected keyword arguments "
                                         f"{sorted(kwargs)} (Argument(s) not recognized)")
        clipping = {"clipnorm": clipnorm, "clipvalue": clipvalue, "global_clipnorm": global_clipnorm}
        if sum(value is not None for value in clipping.values()) > 1:
            raise ValueError("Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                             f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                             f"global_clipnorm={global_clipnorm}")
        self.clipnorm = _optional_real(clipnorm, "clipnorm")
        self.clipvalue = _optional_real(clipvalue, "clipvalue")
        self.global_clipnorm = _optional_real(global_clipnorm, "global_clipnorm")
        self.weight_decay = _optional_real(weight_decay, "weight_decay")
        self.name = name or type(self).__name__.lower()
        self._schedule = None
        self._learning_rate = Variable(np.float32(0.0), "learning_rate", trainable=False)
        self._iterations = Variable(np.int32(0), "iterations", trainable=False, dtype=np.int32)
        self._slots: dict[str, Variable] = {}
        # scalar state of the whole optimizer besides the iteration count (Nadam's 'u_product')
        self._state_variables: dict[str, Variable] = {
            name: Variable(np.float32(self.state_initial_value(name)), name, trainable=False)
            for name in self.state_names()}
        self._built = False
        self._exclude_from_weight_decay: set = set()
        self._exclude_from_weight_decay_pattern = None
        self.learning_rate = learning_rate

    DEFAULT_LEARNING_RATE = 0.001

    @staticmethod
    def _check_learning_rate(value):
        if isinstance(value, schedules.LearningRateSchedule):
            return value
        if callable(value):
            raise NotImplementedError("learning_rate may be a number or a "
                                      "kcompile.optimizers.schedules.LearningRateSchedule (evaluated "
                                      "inside the compiled step); a plain function is not supported")
        return _check_real(value, "learning_rate")

    # -- state ----------------------------------------------------------------------------------

    @property
    def learning_rate(self) -> "LearningRateValue":
        """The rate the next step uses: the number set, or the schedule at `iterations`, as a live
        number with Keras's variable methods (`LearningRateValue`):
        `optimizer.learning_rate.assign(0.01)` sets it."""
        self._current_learning_rate()   # (refreshes the mirrored value of a schedule)
        return LearningRateValue(self)

    def _current_learning_rate(self) -> float:
        if self._schedule is None:
            return float(self._learning_rate.buffer)
        value = schedules._eager_value(self._schedule, int(self._iterations.buffer))
        self._learning_rate.buffer[...] = np.float32(value)
        return value

    @learning_rate.setter
    def learning_rate(self, value):
        value = self._check_learning_rate(value)
        if isinstance(value, schedules.LearningRateSchedule):
            self._schedule = value  # the trainer retraces: `trace_signature` changed
            self._current_learning_rate()   # refreshes the mirrored buffer
            return
        if self._schedule is not None:
            # NOTE: restoring a saved state assigns the value the schedule itself gives at the saved
            # iterations; accept that, reject anything else as Keras does.
            if math.isclose(value, self._current_learning_rate(), rel_tol=1e-5, abs_tol=1e-12):
                return
            raise TypeError("This optimizer was created with a `LearningRateSchedule` object as its "
                            "`learning_rate` constructor argument, hence its learning rate is not "
                            "settable. If you need the learning rate to be settable, you should "
                            "instantiate the optimizer with a float `learning_rate` argument.")
        # In place: compiled train steps read this buffer at every call.
        self._learning_rate.buffer[...] = np.float32(value)

    @property
    def learning_rate_schedule(self):
        """The schedule given as `learning_rate`, or None."""
        return self._schedule

    @property
    def iterations(self) -> Variable:
        return self._iterations

    @property
    def variables(self) -> list:
        return ([self._iterations, self._learning_rate] + list(self._slots.values())
                + list(self._state_variables.values()))

    @property
    def built(self) -> bool:
        """Whether `build` created the slots (the first `fit` does)."""
        return self._built

    def slot_names(self) -> tuple:
        return ()

    def slot_initial_value(self, slot: str) -> float:
        """What a slot starts at (0 unless the rule says otherwise, e.g. Adagrad's accumulator)."""
        return 0.0

    @staticmethod
    def slot_path(variable: Variable, slot: str) -> str:
        return f"{variable.path}/{slot}"

    def state_names(self) -> tuple:
        """Scalars the rule keeps for the whole optimizer besides the iteration count (Nadam's
        'u_product'): each is an f32[] input and output 'optimizer/{name}' of the train step,
        advanced once per step by `update_state`, and saved, loaded and listed in `variables`
        with the iteration count."""
        return ()

    def state_initial_value(self, name: str) -> float:
        """What a state scalar starts at (and goes back to when state at step 0 is loaded)."""
        return 0.0

    @staticmethod
    def state_path(name: str) -> str:
        return f"optimizer/{name}"

    def state_variable(self, name: str) -> Variable:
        return self._state_variables[name]

    def build(self, variables):
        """Create slots (at their initial values) for `variables` that have none yet."""
        wanted = [(variable, slot, self.slot_path(variable, slot))
                  for variable in variables for slot in self.slot_names()]
        for variable, slot, path in wanted:     # (all checked before any slot is made)
            held = self._slots.get(path)
            if held is not None and tuple(held.shape) != tuple(variable.shape):
                raise ValueError(
                    f"this {type(self).__name__} optimizer already holds its {slot!r} slot for a "
                    f"weight named {variable.path!r} of shape {tuple(held.shape)}, but the weight "
                    f"of that name now has shape {tuple(variable.shape)}: is one optimizer object "
                    "shared by two models? Give each model its own (e.g. "
                    "type(optimizer).from_config(optimizer.get_config()))")
        for variable, slot, path in wanted:
            if path not in self._slots:
                self._slots[path] = Variable(
                    np.full(variable.shape, self.slot_initial_value(slot), np.float32), path,
                    trainable=False)
        self._built = True

    def state(self) -> dict:
        """Buffers of the train step's optimizer inputs, by graph input name."""
        if self._schedule is not None:
            self._current_learning_rate()   # the mirrored value, current for saving
        state = {LEARNING_RATE: self._learning_rate.buffer, ITERATIONS: self._iterations.buffer}
        state.update({path: slot.buffer for path, slot in self._slots.items()})
        state.update({self.state_path(name): variable.buffer
                      for name, variable in self._state_variables.items()})
        return state

    def slot(self, variable: Variable, slot: str) -> Variable:
        return self._slots[self.slot_path(variable, slot)]

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exempt variables from weight decay: these objects, or names matching these patterns."""
        self._exclude_from_weight_decay = {id(v) for v in var_list or ()}
        self._exclude_from_weight_decay_pattern = ("|".join(var_names) if var_names else None)

    def _use_weight_decay(self, variable: Variable) -> bool:
        if id(variable) in self._exclude_from_weight_decay:
            return False
        pattern = self._exclude_from_weight_decay_pattern
        return pattern is None or re.search(pattern, variable.name) is None

    # -- the update, in IR ----------------------------------------------------------------------

    def trace_signature(self) -> tuple:
        """What the traced update depends on besides the weights: a change needs a new trace."""
        return (type(self), id(self._schedule), self.clipnorm, self.clipvalue, self.global_clipnorm,
                self.weight_decay, frozenset(self._exclude_from_weight_decay),
                self._exclude_from_weight_decay_pattern)

    def current_learning_rate(self, learning_rate: Node, iterations: Node) -> Node:
        """This step's rate (f32[]): the schedule at `iterations` (i32[]), or the rate input."""
        if self._schedule is None:
            return learning_rate
        rate = self._schedule(B.cast(iterations, "f32"))
        if not isinstance(rate, Node) or rate.shape != ():
            raise ValueError(f"learning rate schedule {self._schedule!r} must return a scalar IR "
                             f"value; got {rate!r}")
        return B.cast(rate, "f32")

    def clip_gradients(self, gradients: list) -> list:
        """Keras 3's `_clip_gradients`, in IR."""
        if self.clipnorm and self.clipnorm > 0:
            return [self._clip_by_norm(g, self.clipnorm) for g in gradients]
        if self.global_clipnorm and self.global_clipnorm > 0:
            squared = None
            for g in gradients:
                term = B.reduce_sum(B.mul(g, g))
                squared = term if squared is None else B.add(squared, term)
            if squared is None:
                return gradients
            # c / max(norm, c): Keras's c * min(1 / norm, 1 / c) without dividing by a zero norm.
            norm = B.sqrt(squared)
            scale = B.div(self.global_clipnorm, B.maximum(norm, self.global_clipnorm))
            return [B.mul(g, scale) for g in gradients]
        if self.clipvalue and self.clipvalue > 0:
            return [B.clip(g, -self.clipvalue, self.clipvalue) for g in gradients]
        return gradients

    @staticmethod
    def _clip_by_norm(g: Node, clipnorm: float) -> Node:
        squared = B.reduce_sum(B.mul(g, g))
        # NOTE: sqrt(0) has an infinite derivative; Keras's "two-tap where" keeps a zero gradient
        # finite.  The update is not differentiated here, but the same guard keeps the formula equal.
        positive = B.gt(squared, 0.0)
        norm = B.select(positive, B.sqrt(B.select(positive, squared, 1.0)), squared)
        return B.div(B.mul(g, clipnorm), B.maximum(norm, clipnorm))

    def apply_weight_decay(self, variable: Variable, value: Node, learning_rate: Node) -> Node:
        """w - w * weight_decay * lr (Keras 3's `_apply_weight_decay`), or w."""
        if self.weight_decay is None or not self._use_weight_decay(variable):
            return value
        return B.sub(value, B.mul(B.mul(value, self.weight_decay), learning_rate))

    def update_state(self, step: Node, state: dict) -> dict:
        """{name: new value} of the `state_names` scalars (IR values, f32[]), computed once per step
        before any weight's update (Keras's `_backend_update_step`); `update_step` gets the new
        values as `state`."""
        return {}

    def update_step(self, gradient: Node, variable: Node, learning_rate: Node, step: Node,
                    slots: dict) -> tuple:
        """(new variable, {slot: new value}) from IR values; `step` is t = iterations + 1.  An
        optimizer with `state_names` also takes `state`: this step's values of those scalars."""
        raise NotImplementedError

    # -- configuration --------------------------------------------------------------------------

    def get_config(self) -> dict:
        learning_rate = (schedules.serialize(self._schedule) if self._schedule is not None
                         else float(self.learning_rate))
        return {"name": self.name, "learning_rate": learning_rate, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "global_clipnorm": self.global_clipnorm,
                "clipvalue": self.clipvalue}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(config["learning_rate"], custom_objects)
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum."""

    DEFAULT_LEARNING_RATE = 0.01

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="sgd", **kwargs):
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


def _power_of_constant(base: float, exponent: Node) -> Node:
    """base ** exponent for a constant base in (0, 1) and an f32[] exponent, as exp(exponent *
    log(base)): pow is not a primitive (Adam's beta^t)."""
    return B.exp(B.mul(exponent, B.log(B.scalar(base, exponent))))


class Adam(Optimizer):
    """Adam (Kingma & Ba), as Keras 3 computes it."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, amsgrad=False,
                 name="adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = _check_real(beta_1, "beta_1", low=0.0, high=1.0, high_open=True)
        self.beta_2 = _check_real(beta_2, "beta_2", low=0.0, high=1.0, high_open=True)
        self.epsilon = _check_real(epsilon, "epsilon", low=0.0)
        self.amsgrad = bool(amsgrad)

    def slot_names(self):
        return ("m", "v", "velocity_hat") if self.amsgrad else ("m", "v")

    def update_step(self, gradient, variable, learning_rate, step, slots):
        m, v = slots["m"], slots["v"]
        beta_1_power = _power_of_constant(self.beta_1, step)
        beta_2_power = _power_of_constant(self.beta_2, step)
        alpha = B.div(B.mul(learning_rate, B.sqrt(B.sub(1.0, beta_2_power))), B.sub(1.0, beta_1_power))
        m_new = B.add(m, B.mul(B.sub(gradient, m), 1.0 - self.beta_1))
        v_new = B.add(v, B.mul(B.sub(B.mul(gradient, gradient), v), 1.0 - self.beta_2))
        new = {"m": m_new, "v": v_new}
        denominator_v = v_new
        if self.amsgrad:
            denominator_v = new["velocity_hat"] = B.maximum(slots["velocity_hat"], v_new)
        w_new = B.sub(variable, B.div(B.mul(m_new, alpha), B.add(B.sqrt(denominator_v), self.epsilon)))
        return w_new, new

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon,
                       "amsgrad": self.amsgrad})
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): Keras 3's AdamW, whose
    `weight_decay` (default 0.004) shrinks every weight by w * weight_decay * lr before the Adam
    step."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-07, amsgrad=False, name="adam_w", **kwargs):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         amsgrad=amsgrad, name=name, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    """RMSprop, as Keras 3 computes it (the default optimizer of `compile`)."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-07, centered=False,
                 name="rm_sprop", **kwargs):
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


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.), as Keras 3 computes it: per-weight rates shrink with the accumulated
    squared gradients."""

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-07,
                 name="adagrad", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.initial_accumulator_value = _check_real(initial_accumulator_value,
                                                     "initial_accumulator_value", low=0.0)
        self.epsilon = _check_real(epsilon, "epsilon", low=0.0)

    def slot_names(self):
        return ("accumulator",)

    def slot_initial_value(self, slot):
        return self.initial_accumulator_value

    def update_step(self, gradient, variable, learning_rate, step, slots):
        accumulator = B.add(slots["accumulator"], B.mul(gradient, gradient))
        increment = B.div(B.mul(gradient, learning_rate), B.sqrt(B.add(accumulator, self.epsilon)))
        return B.sub(variable, increment), {"accumulator": accumulator}

    def get_config(self):
        config = super().get_config()
        config.update({"initial_accumulator_value": self.initial_accumulator_value,
                       "epsilon": self.epsilon})
        return config


def _power(x: Node, exponent: float) -> Node:
    """x ** exponent for x >= 0 and a constant exponent >= 0: exact where a primitive is (0 gives
    1, also at x = 0; 0.5 is sqrt; 1 is x), else exp(exponent * log(x)) (0 at x = 0)."""
    if exponent == 0:
        return B.full_like(x, 1.0)
    if exponent == 0.5:
        return B.sqrt(x)
    if exponent == 1:
        return x
    return B.exp(B.mul(B.log(x), exponent))


def _sign(x: Node) -> Node:
    """-1, 0 or 1 as jnp.sign: a zero keeps its sign and NaN stays NaN (both are x itself)."""
    return B.select(B.gt(x, 0.0), 1.0, B.select(B.lt(x, 0.0), -1.0, x))


class Adamax(Optimizer):
    """Adamax (Kingma & Ba, section 7.1), Adam with the infinity norm, as Keras 3 computes it:
    m += (g - m) * (1 - beta_1); u = max(beta_2 * u, |g|);
    w -= lr * m / ((1 - beta_1^t) * (u + epsilon))."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, name="adamax",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = _check_real(beta_1, "beta_1", low=0.0, high=1.0, high_open=True)
        self.beta_2 = _check_real(beta_2, "beta_2", low=0.0, high=1.0)
        self.epsilon = _check_real(epsilon, "epsilon", low=0.0)

    def slot_names(self):
        return ("momentum", "norm")

    def update_step(self, gradient, variable, learning_rate, step, slots):
        m, u = slots["momentum"], slots["norm"]
        beta_1_power = _power_of_constant(self.beta_1, step)
        m_new = B.add(m, B.mul(B.sub(gradient, m), 1.0 - self.beta_1))
        u_new = B.maximum(B.mul(u, self.beta_2), B.abs(gradient))
        increment = B.div(B.mul(m_new, learning_rate),
                          B.mul(B.sub(1.0, beta_1_power), B.add(u_new, self.epsilon)))
        return B.sub(variable, increment), {"momentum": m_new, "norm": u_new}

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


class Nadam(Optimizer):
    """Nadam (Dozat), Adam with Nesterov momentum, as Keras 3 computes it.  Besides the slots it
    keeps one scalar for the whole optimizer, 'u_product' (1 at first): the product of the momentum
    schedule u_s = beta_1 * (1 - 0.5 * 0.96^s) over the steps so far, advanced at the start of
    every step (state 'optimizer/u_product', saved with the iteration count)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-07, name="nadam",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = _check_real(beta_1, "beta_1", low=0.0, high=1.0)
        self.beta_2 = _check_real(beta_2, "beta_2", low=0.0, high=1.0, high_open=True)
        self.epsilon = _check_real(epsilon, "epsilon", low=0.0)

    def slot_names(self):
        return ("momentum", "velocity")

    def state_names(self):
        return ("u_product",)

    def state_initial_value(self, name):
        return 1.0

    def _momentum_schedule(self, step: Node) -> Node:
        return B.mul(B.sub(1.0, B.mul(_power_of_constant(0.96, step), 0.5)), self.beta_1)

    def update_state(self, step, state):
        # Keras: u_product * beta_1 * (1 - 0.5 * 0.96^t), multiplied in that order
        product = B.mul(state["u_product"], self.beta_1)
        return {"u_product": B.mul(product, B.sub(1.0, B.mul(_power_of_constant(0.96, step), 0.5)))}

    def update_step(self, gradient, variable, learning_rate, step, slots, state):
        m, v = slots["momentum"], slots["velocity"]
        u_t = self._momentum_schedule(step)
        u_t_1 = self._momentum_schedule(B.add(step, 1.0))
        u_product_t = state["u_product"]
        u_product_t_1 = B.mul(u_product_t, u_t_1)
        beta_2_power = _power_of_constant(self.beta_2, step)
        m_new = B.add(m, B.mul(B.sub(gradient, m), 1.0 - self.beta_1))
        v_new = B.add(v, B.mul(B.sub(B.mul(gradient, gradient), v), 1.0 - self.beta_2))
        m_hat = B.add(B.div(B.mul(u_t_1, m_new), B.sub(1.0, u_product_t_1)),
                      B.div(B.mul(B.sub(1.0, u_t), gradient), B.sub(1.0, u_product_t)))
        v_hat = B.div(v_new, B.sub(1.0, beta_2_power))
        increment = B.div(B.mul(m_hat, learning_rate), B.add(B.sqrt(v_hat), self.epsilon))
        return B.sub(variable, increment), {"momentum": m_new, "velocity": v_new}

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


class Adadelta(Optimizer):
    """Adadelta (Zeiler), as Keras 3 computes it, with a learning rate (1.0 is the paper's form):
    a = rho * a + (1 - rho) * g^2; delta = -sqrt(d + epsilon) * g / sqrt(a + epsilon);
    d = rho * d + (1 - rho) * delta^2; w += lr * delta."""

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-07, name="adadelta", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = _check_real(rho, "rho", low=0.0, high=1.0)
        self.epsilon = _check_real(epsilon, "epsilon", low=0.0)

    def slot_names(self):
        return ("accumulated_grad", "accumulated_delta_var")

    def update_step(self, gradient, variable, learning_rate, step, slots):
        rho, epsilon = self.rho, self.epsilon
        grads = B.add(B.mul(slots["accumulated_grad"], rho),
                      B.mul(B.mul(gradient, gradient), 1.0 - rho))
        deltas = slots["accumulated_delta_var"]
        delta = B.neg(B.div(B.mul(B.sqrt(B.add(deltas, epsilon)), gradient),
                            B.sqrt(B.add(grads, epsilon))))
        deltas = B.add(B.mul(deltas, rho), B.mul(B.mul(delta, delta), 1.0 - rho))
        return (B.add(variable, B.mul(delta, learning_rate)),
                {"accumulated_grad": grads, "accumulated_delta_var": deltas})

    def get_config(self):
        config = super().get_config()
        config.update({"rho": self.rho, "epsilon": self.epsilon})
        return config


class Lion(Optimizer):
    """Lion (Chen et al.), as Keras 3 computes it: w -= lr * sign(beta_1 * m + (1 - beta_1) * g);
    then m = beta_2 * m + (1 - beta_2) * g."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, name="lion", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        beta_1 = _check_real(beta_1, "beta_1")
        if beta_1 <= 0 or beta_1 > 1:
            raise ValueError("Argument `beta_1` must be in the [0, 1] range. Otherwise, the "
                             f"optimizer degenerates to SignSGD. Received: beta_1={beta_1}.")
        self.beta_1 = beta_1
        self.beta_2 = _check_real(beta_2, "beta_2", low=0.0, high=1.0)

    def slot_names(self):
        return ("momentum",)

    def update_step(self, gradient, variable, learning_rate, step, slots):
        m = slots["momentum"]
        direction = _sign(B.add(B.mul(m, self.beta_1), B.mul(gradient, 1.0 - self.beta_1)))
        m_new = B.add(B.mul(m, self.beta_2), B.mul(gradient, 1.0 - self.beta_2))
        return B.sub(variable, B.mul(learning_rate, direction)), {"momentum": m_new}

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2})
        return config


class Ftrl(Optimizer):
    """FTRL-proximal (McMahan et al.), as Keras 3 computes it, with its online L1 and L2 and its
    shrinkage-type L2 regularization:
    n' = n + g^2; z += g + 2 * l2_shrinkage * w - (n'^-p - n^-p) / lr * w;
    w = (clip(z, -l1, l1) - z) / (n'^-p / lr + 2 * (l2 + beta / (2 * lr))); n = n'
    (p = learning_rate_power; n starts at initial_accumulator_value)."""

    def __init__(self, learning_rate=0.001, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0, name="ftrl", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        checks = (("initial_accumulator_value", initial_accumulator_value, "positive or zero"),
                  ("learning_rate_power", learning_rate_power, "negative or zero"),
                  ("l1_regularization_strength", l1_regularization_strength, "positive or zero"),
                  ("l2_regularization_strength", l2_regularization_strength, "positive or zero"),
                  ("l2_shrinkage_regularization_strength", l2_shrinkage_regularization_strength,
                   "positive or zero"))
        for argument, value, wanted in checks:
            value = _check_real(value, argument)
            if (value > 0.0) if wanted == "negative or zero" else (value < 0.0):
                raise ValueError(f"`{argument}` needs to be {wanted}. Received: "
                                 f"{argument}={value}.")
            setattr(self, argument, value)
        self.beta = _check_real(beta, "beta")

    def slot_names(self):
        return ("accumulator", "linear")

    def slot_initial_value(self, slot):
        return self.initial_accumulator_value if slot == "accumulator" else 0.0

    def update_step(self, gradient, variable, learning_rate, step, slots):
        accumulator, linear = slots["accumulator"], slots["linear"]
        power = -self.learning_rate_power
        # Keras: l2 + beta / (2.0 * lr), in float32 with the rate (NaN at lr = 0, as there)
        l2 = B.add(B.div(B.scalar(self.beta, learning_rate), B.mul(learning_rate, 2.0)),
                   self.l2_regularization_strength)
        gradient_to_use = B.add(gradient, B.mul(variable, 2 * self.l2_shrinkage_regularization_strength))
        new_accumulator = B.add(accumulator, B.mul(gradient, gradient))
        new_power = _power(new_accumulator, power)
        sigma = B.div(B.sub(new_power, _power(accumulator, power)), learning_rate)
        linear = B.add(linear, B.sub(gradient_to_use, B.mul(sigma, variable)))
        quadratic = B.add(B.div(new_power, learning_rate), B.mul(l2, 2.0))
        l1 = self.l1_regularization_strength
        new_value = B.div(B.sub(B.clip(linear, -l1, l1), linear), quadratic)
        return new_value, {"accumulator": new_accumulator, "linear": linear}

    def get_config(self):
        config = super().get_config()
        config.update({"learning_rate_power": self.learning_rate_power,
                       "initial_accumulator_value": self.initial_accumulator_value,
                       "l1_regularization_strength": self.l1_regularization_strength,
                       "l2_regularization_strength": self.l2_regularization_strength,
                       "l2_shrinkage_regularization_strength":
                           self.l2_shrinkage_regularization_strength,
                       "beta": self.beta})
        return config


_CLASSES = {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSprop, "adagrad": Adagrad,
            "adamax": Adamax, "nadam": Nadam, "adadelta": Adadelta, "lion": Lion, "ftrl": Ftrl}


def serialize(optimizer: Optimizer) -> dict:
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(config: dict, custom_objects=None) -> Optimizer:
    """An optimizer from its config dict (as `serialize` gives it); `custom_objects` names custom
    learning-rate schedule classes."""
    return get(config, custom_objects)


def get(identifier, custom_objects=None) -> Optimizer:
    """An optimizer from a name ('adam', 'Adam', 'adamw', 'sgd', 'rmsprop', 'adagrad', 'adamax',
    'nadam', 'adadelta', 'lion', 'ftrl'), a config dict, a class or an object."""
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
        return cls.from_config(identifier.get("config", {}), custom_objects)
    if isinstance(identifier, type) and issubclass(identifier, Optimizer):
        return identifier()
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}; pass a name such as "
                     "'adam' or an optimizer object")
