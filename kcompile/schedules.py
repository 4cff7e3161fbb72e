"""Learning-rate schedules, as ``keras.optimizers.schedules`` (also reachable under that name).

A schedule maps the optimizer's step counter to a learning rate.  It is written in IR ops, so the
compiled train step evaluates it from its own 'optimizer/iterations' input: no Python runs per step,
and the rate a step uses is exactly the one `optimizer.learning_rate` reports (the same formula, run
by the reference interpreter, at the current `iterations`).  As in Keras, step k (counting from 0)
uses `schedule(k)`.

`schedule(step)` takes an IR value (a float32 scalar, while the train step is traced) or a number
(traced on the spot and run on the reference interpreter, returning a float).  A custom schedule
subclasses `LearningRateSchedule` and writes `__call__(self, step)` with `ir.build` ops on `step`.

Two functions Keras uses are not IR primitives: `floor` (staircase decay; `kcompile.ops.floor`) and
`cos` (CosineDecay), needed only as cos(pi f) for the completed fraction f in [0, 1]: with
g = min(f, 1 - f) in [0, 1/2], it is +-cos(pi g), and cos on [0, pi/2] is its Taylor polynomial to
degree 14 (error below 7e-11), exact at both ends, so the decay reaches exactly `alpha` times the
initial rate.
"""
from __future__ import annotations

import functools
import math
import numbers

from ir import Node
from ir import build as B

from kcompile import ops, registry


def _eager_value(schedule, step) -> float:
    from kcompile.layers.layer import call_eagerly
    import numpy as np
    return float(call_eagerly(lambda node: schedule(node), np.float32(step)))


def _power(base: float | Node, exponent: Node) -> Node:
    """base ** exponent for base > 0, as exp(exponent * log(base))."""
    if isinstance(base, Node):
        return B.exp(B.mul(exponent, B.log(base)))
    return B.exp(B.mul(exponent, math.log(base)))


_COS_TAYLOR = tuple((-1) ** k / math.factorial(2 * k) for k in range(8))  # 1, v^2, ..., v^14


def cos_pi(fraction: Node) -> Node:
    """cos(pi * fraction) for fraction in [0, 1] (see the module docstring for the error)."""
    nearer = B.minimum(fraction, B.sub(1.0, fraction))  # cos(pi f) = -cos(pi (1 - f))
    v = B.mul(nearer, math.pi)
    v2 = B.mul(v, v)
    result = B.scalar(_COS_TAYLOR[-1], v)
    for coefficient in reversed(_COS_TAYLOR[:-1]):
        result = B.add(B.mul(result, v2), coefficient)
    return B.select(B.le(fraction, 0.5), result, B.neg(result))


def _check_positive(value, argument):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"Argument `{argument}` must be > 0. Received: {argument}={value!r}")


#: The largest finite float32 (the compiled step computes learning rates in float32).
FLOAT32_MAX = 3.4028234663852886e38


def _check_argument(name: str, value) -> None:
    """A built-in schedule's numbers are finite float32 values (the compiled step computes in
    float32), its step counts are not negative, and PiecewiseConstantDecay's boundaries do not
    decrease."""
    numbers_in = value if isinstance(value, (list, tuple)) else [value]
    for number in numbers_in:
        if isinstance(number, numbers.Real) and not isinstance(number, bool) \
                and not (math.isfinite(number) and abs(number) <= FLOAT32_MAX):
            raise ValueError(f"Argument `{name}` must hold finite float32 numbers. Received: "
                             f"{name}={value!r}")
    if name.endswith("_steps") and isinstance(value, numbers.Real) and value < 0:
        raise ValueError(f"Argument `{name}` must be >= 0. Received: {name}={value!r}")
    if name == "boundaries" and any(b > a for b, a in zip(value, list(value)[1:])):
        raise ValueError(f"Argument `boundaries` must not decrease. Received: boundaries={value!r}")


def _rate(schedule, result, step: Node) -> Node:
    """What a schedule returned for the traced `step`, as a value of the graph: a number (Keras
    takes a schedule that returns a float) is a constant rate."""
    if isinstance(result, Node):
        return result
    if getattr(result, "ndim", None) == 0:     # a numpy scalar or 0-d array
        result = result.item()
    if isinstance(result, numbers.Real) and not isinstance(result, bool):
        return B.scalar(float(result), step)
    raise TypeError(f"learning-rate schedule {type(schedule).__name__} returned {result!r} for a "
                    "step; return a number, or a value computed from `step` with kcompile.ops")


def _schedule_call(rule):
    """`__call__` of a schedule from its rule on a traced step: a number step (to print or plot
    the schedule) is traced and run on the spot, and what the rule returns becomes a graph value."""
    @functools.wraps(rule)
    def __call__(self, step):
        if not isinstance(step, Node):
            return _eager_value(self, step)
        return _rate(self, rule(self, step), step)
    __call__._kcompile_wrapped = True
    return __call__


def value_now(value):
    """A live learning rate (`optimizer.learning_rate`, optimizers.LearningRateValue) as its number
    now, for what keeps a value (a schedule's argument, History, a callback's bound); anything else
    as it is."""
    return float(value) if getattr(type(value), "_live_learning_rate", False) else value


class LearningRateSchedule:
    """Base class: `__call__(step)` returns the learning rate for `step` (an IR value or a number).

    A subclass may write `call(step)` or, as in Keras, `__call__(self, step)`: either way it is
    traced on an IR value, and calling the schedule on a number (to print or plot it) runs that."""

    @_schedule_call
    def __call__(self, step):
        return self.call(step)

    def __setattr__(self, name, value):
        # a live learning rate (optimizer.learning_rate) given as an argument is read now: the
        # schedule keeps a number, which its config saves
        value = value_now(value)
        if type(self).__module__ == __name__:      # (a custom schedule's attributes are its own)
            _check_argument(name, value)
        super().__setattr__(name, value)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__call__      # (its own, a mixin's, or an already wrapped parent's)
        if not getattr(own, "_kcompile_wrapped", False):
            cls.__call__ = _schedule_call(own)

    def call(self, step: Node) -> Node:
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                  "`__call__(self, step)` (or `call`), written with ir.build ops.")

    def get_config(self) -> dict:
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                  "`get_config()` in order to be serializable.")

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class _RateDecay(LearningRateSchedule):
    """The schedules of (initial_learning_rate, decay_steps, decay_rate, staircase): the decay is a
    function of p = step / decay_steps, floored if staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase, name):
        _check_positive(decay_steps, "decay_steps")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def _progress(self, step):
        p = B.div(step, float(self.decay_steps))
        return ops.floor(p) if self.staircase else p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class ExponentialDecay(_RateDecay):
    """initial_learning_rate * decay_rate ^ (step / decay_steps), the exponent floored if staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)
        _check_positive(decay_rate, "decay_rate")

    def call(self, step):
        return B.mul(_power(float(self.decay_rate), self._progress(step)),
                     float(self.initial_learning_rate))


class InverseTimeDecay(_RateDecay):
    """initial_learning_rate / (1 + decay_rate * step / decay_steps), the ratio floored if
    staircase."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="InverseTimeDecay"):
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def call(self, step):
        return B.div(float(self.initial_learning_rate),
                     B.add(B.mul(self._progress(step), float(self.decay_rate)), 1.0))


class PiecewiseConstantDecay(LearningRateSchedule):
    """values[0] for step <= boundaries[0], values[i] for boundaries[i-1] < step <= boundaries[i],
    values[-1] after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        if len(boundaries) != len(values) - 1:
            raise ValueError("The length of boundaries should be 1 less than the length of values. "
                             f"Received: boundaries={boundaries} of length {len(boundaries)}, and "
                             f"values={values} of length {len(values)}.")
        self.boundaries = list(boundaries)
        self.values = list(values)
        self.name = name

    def call(self, step):
        result = B.scalar(float(self.values[-1]), step)
        for boundary, value in reversed(list(zip(self.boundaries, self.values[:-1]))):
            result = B.select(B.le(step, float(boundary)), float(value), result)
        return result

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """(initial - end) * (1 - step / decay_steps) ^ power + end, with the step capped at decay_steps
    (or, with `cycle`, decay_steps stretched to the next multiple above the step)."""

    def __init__(self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0,
                 cycle=False, name="PolynomialDecay"):
        _check_positive(decay_steps, "decay_steps")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name

    def call(self, step):
        decay_steps = B.scalar(float(self.decay_steps), step)
        if self.cycle:
            multiplier = B.select(B.eq(step, 0.0), 1.0, ops.ceil(B.div(step, decay_steps)))
            decay_steps = B.mul(decay_steps, multiplier)
        else:
            step = B.minimum(step, decay_steps)
        remaining = B.sub(1.0, B.div(step, decay_steps))
        if self.power == 1:
            factor = remaining
        elif self.power == 0:
            factor = B.scalar(1.0, step)     # 0 ** 0 = 1 at the end too (exp(0 * log 0) is NaN)
        else:
            # NOTE: exp(power * log(0)) = exp(-inf) = 0 at the end of the decay, as 0 ** power.
            factor = _power(remaining, B.scalar(float(self.power), step))
        scale = float(self.initial_learning_rate) - float(self.end_learning_rate)
        return B.add(B.mul(factor, scale), float(self.end_learning_rate))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "end_learning_rate": self.end_learning_rate, "power": self.power,
                "cycle": self.cycle, "name": self.name}


class CosineDecay(LearningRateSchedule):
    """Cosine decay from the initial rate (or from `warmup_target` after a linear warmup of
    `warmup_steps`) to `alpha` times it over `decay_steps`, then constant."""

    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        _check_positive(decay_steps, "decay_steps")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps

    def _decay(self, step: Node, decay_from: float) -> Node:
        cosine = B.mul(B.add(cos_pi(B.div(step, float(self.decay_steps))), 1.0), 0.5)
        decayed = B.add(B.mul(cosine, 1.0 - float(self.alpha)), float(self.alpha))
        return B.mul(decayed, decay_from)

    def call(self, step):
        decay_steps = float(self.decay_steps)
        if self.warmup_target is None:
            return self._decay(B.minimum(step, decay_steps), float(self.initial_learning_rate))
        warmup_steps = float(self.warmup_steps)
        target, initial = float(self.warmup_target), float(self.initial_learning_rate)
        step = B.minimum(step, decay_steps + warmup_steps)
        # max(warmup_steps, 1): the warmup branch is computed even when unused; no 0 / 0.
        warmup = B.add(B.mul(B.div(step, max(warmup_steps, 1.0)), target - initial), initial)
        decay = self._decay(B.maximum(B.sub(step, warmup_steps), 0.0), target)
        return B.select(B.lt(step, warmup_steps), warmup, decay)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": self.decay_steps,
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps}


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay with warm restarts (SGDR, Loshchilov & Hutter), as Keras's: the first period
    lasts `first_decay_steps`, each next one `t_mul` times longer and starting from `m_mul` times the
    previous period's initial rate; within a period the rate falls from it to `alpha` times it."""

    def __init__(self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0,
                 name="SGDRDecay"):
        _check_positive(first_decay_steps, "first_decay_steps")
        _check_positive(t_mul, "t_mul")
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self.t_mul = t_mul
        self.m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def call(self, step):
        completed = B.div(step, float(self.first_decay_steps))
        t_mul, m_mul = float(self.t_mul), float(self.m_mul)
        if t_mul == 1.0:
            restart = ops.floor(completed)
            fraction = B.sub(completed, restart)
        else:
            # periods 1, t, t^2, ...: the restart i is the largest with (1 - t^i) / (1 - t) <= f
            restart = ops.floor(B.div(B.log(B.sub(1.0, B.mul(completed, 1.0 - t_mul))),
                                      math.log(t_mul)))
            scale = _power(t_mul, restart)
            fraction = B.div(B.sub(completed, B.div(B.sub(1.0, scale), 1.0 - t_mul)), scale)
        cosine = B.mul(B.add(cos_pi(fraction), 1.0), 0.5)
        if m_mul != 1.0:
            cosine = B.mul(cosine, _integer_power(m_mul, restart))
        decayed = B.add(B.mul(cosine, 1.0 - float(self.alpha)), float(self.alpha))
        return B.mul(decayed, float(self.initial_learning_rate))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "first_decay_steps": self.first_decay_steps, "t_mul": self.t_mul,
                "m_mul": self.m_mul, "alpha": self.alpha, "name": self.name}


def _integer_power(base: float, exponent: Node) -> Node:
    """base ** exponent for a whole, non-negative exponent and any real base (0 ** 0 = 1)."""
    if base == 0.0:
        return B.cast(B.eq(exponent, 0.0), exponent.dtype)
    magnitude = _power(abs(base), exponent)
    if base > 0:
        return magnitude
    odd = B.sub(exponent, B.mul(ops.floor(B.mul(exponent, 0.5)), 2.0))
    return B.mul(magnitude, B.sub(1.0, B.mul(odd, 2.0)))


_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay,
                                           PolynomialDecay, CosineDecay, CosineDecayRestarts)}


def serialize(schedule: LearningRateSchedule) -> dict:
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(config: dict, custom_objects=None) -> LearningRateSchedule:
    classes = dict(_CLASSES)
    classes.update(registry.custom_objects_for(custom_objects))
    cls = classes.get(config.get("class_name")) if isinstance(config, dict) else None
    if cls is None:
        raise ValueError(f"Unknown learning rate schedule in config {config!r}; pass custom schedule "
                         "classes in custom_objects=")
    return cls.from_config(dict(config.get("config") or {}))


def get(identifier):
    """A schedule object from itself or its `serialize` dict."""
    if isinstance(identifier, LearningRateSchedule):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    raise ValueError(f"Could not interpret learning rate schedule identifier: {identifier!r}")
