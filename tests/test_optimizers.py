"""Optimizers against numpy re-implementations of Keras 3's update rules: three steps of a linear
model with every rule, gradient clipping, weight decay and learning-rate schedule, on every target;
schedules against their formulas; configs and saved state round trips."""
import math
import numbers

import numpy as np
import pytest

import kcompile
from kcompile import optimizers
from kcompile.layers import Dense, Input
from kcompile.models import Sequential, load_model
from kcompile.optimizers import schedules
from targets import TARGETS


# ----------------------------------------------------------------------------------------------
# numpy: schedules, clipping, weight decay, rules (float64)
# ----------------------------------------------------------------------------------------------

def np_schedule(config, step):
    kind, c = config
    if kind == "exponential":
        p = step / c["decay_steps"]
        p = math.floor(p) if c.get("staircase") else p
        return c["initial_learning_rate"] * c["decay_rate"] ** p
    if kind == "inverse_time":
        p = step / c["decay_steps"]
        p = math.floor(p) if c.get("staircase") else p
        return c["initial_learning_rate"] / (1 + c["decay_rate"] * p)
    if kind == "piecewise":
        for boundary, value in zip(c["boundaries"], c["values"]):
            if step <= boundary:
                return value
        return c["values"][-1]
    if kind == "polynomial":
        decay_steps = c["decay_steps"]
        if c.get("cycle"):
            decay_steps *= 1.0 if step == 0 else math.ceil(step / decay_steps)
        else:
            step = min(step, decay_steps)
        return ((c["initial_learning_rate"] - c["end_learning_rate"])
                * (1 - step / decay_steps) ** c["power"] + c["end_learning_rate"])
    if kind == "cosine":
        def decay(s, decay_from):
            cosine = 0.5 * (1 + math.cos(math.pi * s / c["decay_steps"]))
            return decay_from * ((1 - c["alpha"]) * cosine + c["alpha"])
        if c.get("warmup_target") is None:
            return decay(min(step, c["decay_steps"]), c["initial_learning_rate"])
        step = min(step, c["decay_steps"] + c["warmup_steps"])
        if step < c["warmup_steps"]:
            return (c["warmup_target"] - c["initial_learning_rate"]) * step / c["warmup_steps"] \
                + c["initial_learning_rate"]
        return decay(step - c["warmup_steps"], c["warmup_target"])
    if kind == "restarts":      # walked period by period (Keras's rule takes a log instead)
        start, period, m_fac = 0.0, c["first_decay_steps"], 1.0
        while step >= start + period:
            start, period, m_fac = start + period, period * c["t_mul"], m_fac * c["m_mul"]
        cosine = 0.5 * m_fac * (1 + math.cos(math.pi * (step - start) / period))
        return c["initial_learning_rate"] * ((1 - c["alpha"]) * cosine + c["alpha"])
    raise AssertionError(kind)


SCHEDULES = {
    "exponential": (lambda: schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5),
                    ("exponential", dict(initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5))),
    "exponential_staircase": (
        lambda: schedules.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.7, staircase=True),
        ("exponential", dict(initial_learning_rate=0.1, decay_steps=3, decay_rate=0.7, staircase=True))),
    "cosine": (lambda: schedules.CosineDecay(0.1, decay_steps=7, alpha=0.1),
               ("cosine", dict(initial_learning_rate=0.1, decay_steps=7, alpha=0.1))),
    "cosine_warmup": (
        lambda: schedules.CosineDecay(0.0, decay_steps=5, warmup_target=0.2, warmup_steps=2),
        ("cosine", dict(initial_learning_rate=0.0, decay_steps=5, alpha=0.0, warmup_target=0.2,
                        warmup_steps=2))),
    "piecewise": (lambda: schedules.PiecewiseConstantDecay([0, 1], [0.1, 0.05, 0.01]),
                  ("piecewise", dict(boundaries=[0, 1], values=[0.1, 0.05, 0.01]))),
    "inverse_time": (lambda: schedules.InverseTimeDecay(0.1, decay_steps=1, decay_rate=0.5),
                     ("inverse_time", dict(initial_learning_rate=0.1, decay_steps=1, decay_rate=0.5))),
    "polynomial": (lambda: schedules.PolynomialDecay(0.1, decay_steps=4, end_learning_rate=0.01,
                                                     power=2.0),
                   ("polynomial", dict(initial_learning_rate=0.1, decay_steps=4,
                                       end_learning_rate=0.01, power=2.0))),
    "restarts": (lambda: schedules.CosineDecayRestarts(0.1, first_decay_steps=3, t_mul=2.0, m_mul=0.5,
                                                        alpha=0.1),
                 ("restarts", dict(initial_learning_rate=0.1, first_decay_steps=3, t_mul=2.0, m_mul=0.5,
                                   alpha=0.1))),
    "restarts_fixed_period": (lambda: schedules.CosineDecayRestarts(0.2, first_decay_steps=4, t_mul=1.0,
                                                                     m_mul=-0.5),
                              ("restarts", dict(initial_learning_rate=0.2, first_decay_steps=4,
                                                t_mul=1.0, m_mul=-0.5, alpha=0.0))),
    # 0 ** 0 is 1: constant, also once the decay is over
    "polynomial_power_0": (lambda: schedules.PolynomialDecay(0.1, decay_steps=4, power=0.0),
                           ("polynomial", dict(initial_learning_rate=0.1, decay_steps=4,
                                               end_learning_rate=0.0001, power=0.0))),
    "polynomial_cycle": (lambda: schedules.PolynomialDecay(0.1, decay_steps=3, cycle=True),
                         ("polynomial", dict(initial_learning_rate=0.1, decay_steps=3,
                                             end_learning_rate=0.0001, power=1.0, cycle=True))),
}


class NumpyOptimizer:
    """Keras 3's BaseOptimizer.apply, in numpy: clip, weight decay, the rule; state per weight."""

    def __init__(self, rule, learning_rate=0.01, schedule=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, weight_decay=None, decay_mask=None, **hyper):
        self.rule, self.hyper = rule, hyper
        self.learning_rate, self.schedule = learning_rate, schedule
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.weight_decay, self.decay_mask = weight_decay, decay_mask
        self.iterations = 0
        self.state = None

    def current_learning_rate(self):
        return np_schedule(self.schedule, self.iterations) if self.schedule else self.learning_rate

    def clip(self, grads):
        if self.clipnorm:
            return [g * self.clipnorm / max(np.sqrt((g * g).sum()), self.clipnorm) for g in grads]
        if self.global_clipnorm:
            norm = np.sqrt(sum((g * g).sum() for g in grads))
            return [g * self.global_clipnorm / max(norm, self.global_clipnorm) for g in grads]
        if self.clipvalue:
            return [np.clip(g, -self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def apply(self, weights, grads):
        h = self.hyper
        if self.state is None:
            start = h.get("initial_accumulator_value", 0.0) if self.rule == "adagrad" else 0.0
            self.state = [{k: np.full_like(w, start) for k in ("a", "b", "c")} for w in weights]
        lr = self.current_learning_rate()
        t = self.iterations + 1
        grads = self.clip(grads)
        out = []
        for i, (w, g, s) in enumerate(zip(weights, grads, self.state)):
            if self.weight_decay and (self.decay_mask is None or self.decay_mask[i]):
                w = w - w * self.weight_decay * lr
            if self.rule == "sgd":
                momentum = h.get("momentum", 0.0)
                if momentum:
                    s["a"] = momentum * s["a"] - lr * g
                    w = w + (momentum * s["a"] - lr * g if h.get("nesterov") else s["a"])
                else:
                    w = w - lr * g
            elif self.rule == "adam":
                b1, b2, eps = h.get("beta_1", 0.9), h.get("beta_2", 0.999), h.get("epsilon", 1e-7)
                alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                s["a"] = s["a"] + (g - s["a"]) * (1 - b1)
                s["b"] = s["b"] + (g * g - s["b"]) * (1 - b2)
                v = s["b"]
                if h.get("amsgrad"):
                    s["c"] = np.maximum(s["c"], s["b"])
                    v = s["c"]
                w = w - alpha * s["a"] / (np.sqrt(v) + eps)
            elif self.rule == "rmsprop":
                rho, eps, momentum = h.get("rho", 0.9), h.get("epsilon", 1e-7), h.get("momentum", 0.0)
                s["a"] = rho * s["a"] + (1 - rho) * g * g
                if h.get("centered"):
                    s["b"] = rho * s["b"] + (1 - rho) * g
                    denominator = s["a"] - s["b"] ** 2 + eps
                else:
                    denominator = s["a"] + eps
                increment = lr * g / np.sqrt(denominator)
                if momentum:
                    s["c"] = momentum * s["c"] + increment
                    w = w - s["c"]
                else:
                    w = w - increment
            elif self.rule == "adagrad":
                s["a"] = s["a"] + g * g
                w = w - lr * g / np.sqrt(s["a"] + h.get("epsilon", 1e-7))
            out.append(w)
        self.iterations += 1
        return out


def mse_gradients(kernel, bias, x, y):
    """Gradients of mean((x @ kernel + bias - y)^2) (Keras's MSE, 'sum_over_batch_size')."""
    d = 2 * (x @ kernel + bias - y) / y.size
    return [x.T @ d, d.sum(0)]


# name -> (kcompile optimizer, numpy optimizer)
CASES = {
    "sgd": (lambda: optimizers.SGD(0.1), lambda: NumpyOptimizer("sgd", 0.1)),
    "sgd_momentum": (lambda: optimizers.SGD(0.1, momentum=0.9),
                     lambda: NumpyOptimizer("sgd", 0.1, momentum=0.9)),
    "sgd_nesterov": (lambda: optimizers.SGD(0.1, momentum=0.8, nesterov=True),
                     lambda: NumpyOptimizer("sgd", 0.1, momentum=0.8, nesterov=True)),
    "adam": (lambda: optimizers.Adam(0.05), lambda: NumpyOptimizer("adam", 0.05)),
    "adam_amsgrad": (lambda: optimizers.Adam(0.05, beta_1=0.8, amsgrad=True),
                     lambda: NumpyOptimizer("adam", 0.05, beta_1=0.8, amsgrad=True)),
    "adamw": (lambda: optimizers.AdamW(0.05, weight_decay=0.2),
              lambda: NumpyOptimizer("adam", 0.05, weight_decay=0.2)),
    "adamw_excluding_bias": (
        lambda: _excluding_bias(optimizers.AdamW(0.05, weight_decay=0.2)),
        lambda: NumpyOptimizer("adam", 0.05, weight_decay=0.2, decay_mask=[True, False])),
    "rmsprop": (lambda: optimizers.RMSprop(0.01), lambda: NumpyOptimizer("rmsprop", 0.01)),
    "rmsprop_centered_momentum": (
        lambda: optimizers.RMSprop(0.01, rho=0.8, momentum=0.5, centered=True),
        lambda: NumpyOptimizer("rmsprop", 0.01, rho=0.8, momentum=0.5, centered=True)),
    "adagrad": (lambda: optimizers.Adagrad(0.1), lambda: NumpyOptimizer("adagrad", 0.1,
                                                                        initial_accumulator_value=0.1)),
    "sgd_clipnorm": (lambda: optimizers.SGD(0.1, clipnorm=0.1),
                     lambda: NumpyOptimizer("sgd", 0.1, clipnorm=0.1)),
    "sgd_clipvalue": (lambda: optimizers.SGD(0.1, clipvalue=0.05),
                      lambda: NumpyOptimizer("sgd", 0.1, clipvalue=0.05)),
    "adam_global_clipnorm": (lambda: optimizers.Adam(0.05, global_clipnorm=0.2),
                             lambda: NumpyOptimizer("adam", 0.05, global_clipnorm=0.2)),
    "sgd_weight_decay": (lambda: optimizers.SGD(0.1, weight_decay=0.1),
                         lambda: NumpyOptimizer("sgd", 0.1, weight_decay=0.1)),
}
for _name, (_make, _config) in SCHEDULES.items():
    CASES[f"sgd_{_name}"] = (lambda make=_make: optimizers.SGD(learning_rate=make()),
                             lambda config=_config: NumpyOptimizer("sgd", schedule=config))
CASES["adamw_cosine_clipnorm"] = (
    lambda: optimizers.AdamW(learning_rate=SCHEDULES["cosine_warmup"][0](), weight_decay=0.1,
                             clipnorm=0.5),
    lambda: NumpyOptimizer("adam", schedule=SCHEDULES["cosine_warmup"][1], weight_decay=0.1,
                           clipnorm=0.5))


def _excluding_bias(optimizer):
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def linear_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, 4))
    y = rng.standard_normal((8, 3))
    kernel, bias = rng.standard_normal((4, 3)), rng.standard_normal(3)
    return x, y, kernel, bias


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_three_steps_match_the_keras_rule(name, target):
    make, make_numpy = CASES[name]
    x, y, kernel, bias = linear_problem()
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.set_weights([kernel, bias])
    optimizer = make()
    model.compile(optimizer=optimizer, loss="mse", target=target)
    reference = make_numpy()
    weights = [kernel, bias]
    for step in range(3):
        assert optimizer.learning_rate == pytest.approx(reference.current_learning_rate(), rel=1e-5,
                                                        abs=1e-9)
        model.train_on_batch(x, y)
        weights = reference.apply(weights, mse_gradients(*weights, x, y))
        for got, want in zip(model.get_weights(), weights):
            # atol: Adam's m / sqrt(v) turns float32 rounding of a small gradient into an error
            # of up to ~1e-4 of the step (learning rates here are ~0.1); formula errors are ~0.01.
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5, err_msg=f"{name}, step {step}")
    assert int(optimizer.iterations.buffer) == 3


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_values_match_their_formulas(name):
    make, config = SCHEDULES[name]
    schedule = make()
    for step in range(0, 25):
        assert schedule(step) == pytest.approx(np_schedule(config, step), rel=1e-6, abs=1e-9), step
    clone = type(schedule).from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()
    assert schedules.deserialize(schedules.serialize(schedule)).get_config() == schedule.get_config()


def test_cosine_polynomial_is_accurate_over_the_whole_decay():
    schedule = schedules.CosineDecay(1.0, decay_steps=1000)
    for step in range(0, 1001, 37):
        assert schedule(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * step / 1000)), abs=2e-7)


def test_schedules_are_reachable_as_in_keras():
    from kcompile.optimizers.schedules import CosineDecay
    assert kcompile.optimizers.schedules.CosineDecay is CosineDecay is schedules.CosineDecay


def test_learning_rate_of_a_schedule_is_read_only_except_its_own_value():
    optimizer = optimizers.SGD(learning_rate=schedules.ExponentialDecay(0.1, 1, 0.5))
    assert optimizer.learning_rate == pytest.approx(0.1)
    optimizer.iterations.assign(np.int32(2))
    assert optimizer.learning_rate == pytest.approx(0.025)
    optimizer.learning_rate = 0.025  # what restoring a saved state writes: accepted
    with pytest.raises(TypeError, match="learning rate is not settable"):
        optimizer.learning_rate = 0.5
    optimizer.learning_rate = schedules.InverseTimeDecay(1.0, 1, 1.0)  # a new schedule: accepted
    assert optimizer.learning_rate == pytest.approx(1 / 3)


@pytest.mark.parametrize("target", TARGETS)
def test_learning_rate_assign_as_keras_code_writes_it(target):
    """`optimizer.learning_rate` is a live number with the Keras variable's `assign` and `numpy`:
    a reference kept across changes reads the current rate, and a callback that assigns 0 freezes
    the next epoch's steps."""
    x, y, kernel, bias = linear_problem(1)
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.set_weights([kernel, bias])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=target)
    rate = model.optimizer.learning_rate
    assert isinstance(rate, numbers.Real) and rate == pytest.approx(0.1)
    assert rate.numpy() == np.float32(0.1) and f"{rate:.2f}" == "0.10" and rate * 2 == pytest.approx(0.2)
    assert rate.numpy().shape == () and rate.shape == () and rate.dtype == "float32"
    assert rate.assign_add(0.05) == pytest.approx(0.15) and model.optimizer.learning_rate.assign_sub(
        0.05) == pytest.approx(0.1)
    assert model.optimizer.get_config()["learning_rate"] == pytest.approx(0.1)
    assert type(model.optimizer.get_config()["learning_rate"]) is float
    # 0-d arrays (a variable's numpy()) are numbers too, as in Keras; a 1-element vector is not
    model.optimizer.learning_rate = np.array(0.25)
    assert model.optimizer.learning_rate == 0.25 and model.optimizer.learning_rate.numpy() == 0.25
    assert rate == 0.25 and float(rate) == 0.25   # the reference taken before: live, as in Keras
    rate.assign(rate * 0.5)
    assert model.optimizer.learning_rate == 0.125 and rate == 0.125
    model.optimizer.learning_rate = rate.numpy() * 0 + np.float32(0.1)
    assert optimizers.Adam(learning_rate=np.array(0.5, np.float64)).learning_rate == 0.5
    with pytest.raises(ValueError, match="finite number"):
        model.optimizer.learning_rate = np.array([0.5])
    assert model.optimizer.learning_rate == pytest.approx(0.1)

    class Freeze(kcompile.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(0.0)
            self.after_first = [w.copy() for w in self.model.get_weights()]

    freeze = Freeze()
    model.fit(x, y, epochs=1, batch_size=len(x), callbacks=[freeze], verbose=0)
    assert model.optimizer.learning_rate == 0.0
    model.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    for got, want in zip(model.get_weights(), freeze.after_first):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(freeze.after_first[0], kernel.astype(np.float32))
    scheduled = optimizers.SGD(learning_rate=schedules.ExponentialDecay(0.1, 1, 0.5))
    with pytest.raises(TypeError, match="learning rate is not settable"):
        scheduled.learning_rate.assign(0.5)


def test_a_new_schedule_or_clipping_retraces_the_train_step():
    x, y, kernel, bias = linear_problem(1)
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.set_weights([kernel, bias])
    optimizer = optimizers.SGD(learning_rate=0.1)
    model.compile(optimizer=optimizer, loss="mse", target="reference")
    model.train_on_batch(x, y)
    optimizer.learning_rate = schedules.PiecewiseConstantDecay([5], [0.0, 1.0])
    before = model.get_weights()
    model.train_on_batch(x, y)  # the schedule gives 0 at step 1: nothing moves
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_argument_errors_follow_keras():
    with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
        optimizers.SGD(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="`decay_steps` must be > 0"):
        schedules.CosineDecay(0.1, decay_steps=0)
    with pytest.raises(ValueError, match="`t_mul` must be > 0"):
        schedules.CosineDecayRestarts(0.1, 10, t_mul=0.0)
    with pytest.raises(ValueError, match="length of boundaries should be 1 less"):
        schedules.PiecewiseConstantDecay([1, 2], [0.1])
    with pytest.raises(NotImplementedError, match="LearningRateSchedule"):
        optimizers.SGD(learning_rate=lambda: 0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        optimizers.AdamW(weight_decay=None)
    with pytest.raises(NotImplementedError, match="use_ema"):
        optimizers.Adam(use_ema=True)


@pytest.mark.parametrize("optimizer", [
    optimizers.SGD(0.1, momentum=0.5, clipnorm=1.0), optimizers.Adam(amsgrad=True, clipvalue=0.5),
    optimizers.AdamW(learning_rate=schedules.CosineDecay(0.1, 10, warmup_target=0.2, warmup_steps=3)),
    optimizers.RMSprop(centered=True, global_clipnorm=2.0), optimizers.Adagrad(0.2, weight_decay=0.01),
    optimizers.SGD(learning_rate=schedules.PiecewiseConstantDecay([3, 6], [0.1, 0.05, 0.01])),
], ids=lambda o: type(o).__name__)
def test_optimizer_configs_round_trip(optimizer):
    clone = optimizers.deserialize(optimizers.serialize(optimizer))
    assert type(clone) is type(optimizer)
    assert clone.get_config() == optimizer.get_config()
    assert optimizers.get(type(optimizer).__name__.lower()).__class__ is type(optimizer)


def test_saved_schedule_and_adamw_state_resume_exactly(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 4)).astype(np.float32)
    y = rng.standard_normal((24, 3)).astype(np.float32)

    def model_with_state():
        model = Sequential([Input(shape=(4,)), Dense(3)])
        model.set_weights(list(linear_problem(3)[2:]))
        model.compile(optimizer=optimizers.AdamW(
            learning_rate=schedules.CosineDecay(0.05, 6, warmup_target=0.1, warmup_steps=2),
            clipnorm=1.0), loss="mse", target="reference")
        return model

    in_one_go = model_with_state()
    in_one_go.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    first_half = model_with_state()
    first_half.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first_half.save(tmp_path / "half.keras")
    resumed = load_model(tmp_path / "half.keras")
    assert resumed.optimizer.get_config() == first_half.optimizer.get_config()
    assert resumed.optimizer.learning_rate == pytest.approx(first_half.optimizer.learning_rate)
    resumed.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    for got, want in zip(resumed.get_weights(), in_one_go.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert resumed.optimizer.learning_rate == pytest.approx(in_one_go.optimizer.learning_rate)


class KerasStyleWarmup(schedules.LearningRateSchedule):
    """A custom schedule written as Keras documents it: `__call__` on `step`."""

    def __init__(self, peak):
        self.peak = peak

    def __call__(self, step):
        return self.peak * kcompile.ops.minimum((step + 1) / 4.0, 1.0)

    def get_config(self):
        return {"peak": self.peak}


class ConstantRate(schedules.LearningRateSchedule):
    def __call__(self, step):
        return 0.5     # a number, as Keras takes it


@pytest.mark.parametrize("target", TARGETS)
def test_custom_schedules_written_with_call_run_on_numbers_train_and_reload(target, tmp_path):
    warmup = KerasStyleWarmup(0.2)
    assert [warmup(step) for step in range(5)] == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])
    assert ConstantRate()(7) == 0.5

    # one SGD step of a linear model at the constant rate: w - 0.5 * dL/dw, by hand
    x, y, kernel, bias = linear_problem(3)
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.set_weights([kernel, bias])
    model.compile(optimizer=optimizers.SGD(learning_rate=ConstantRate()), loss="mse", target=target)
    model.train_on_batch(x, y)
    error = 2 * (x @ kernel + bias - y) / y.size
    np.testing.assert_allclose(model.get_weights()[0], kernel - 0.5 * x.T @ error, rtol=1e-4,
                               atol=1e-5)

    model.compile(optimizer=optimizers.SGD(learning_rate=warmup), loss="mse", target=target)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)      # 2 steps: the next rate is warmup(2)
    path = str(tmp_path / "warm.keras")
    model.save(path)
    loaded = load_model(path, custom_objects={"KerasStyleWarmup": KerasStyleWarmup})
    assert float(loaded.optimizer.learning_rate) == pytest.approx(0.15)
    assert int(loaded.optimizer.iterations.numpy()) == 2

    class Bad(schedules.LearningRateSchedule):
        def __call__(self, step):
            return "fast"
    with pytest.raises(TypeError, match="schedule Bad returned 'fast'"):
        optimizers.SGD(learning_rate=Bad())


def test_a_live_learning_rate_is_a_number_where_it_is_stored():
    """The history keeps each epoch's rate, a schedule or a callback given the live rate keeps its
    value then, and it has the methods of a real number."""
    x, y, kernel, bias = linear_problem(2)
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.01), loss="mse")

    class Halve(kcompile.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["lr"] = self.model.optimizer.learning_rate   # the live view, as Keras code does
            self.model.optimizer.learning_rate.assign(self.model.optimizer.learning_rate * 0.5)

    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[Halve()])
    assert history.history["lr"] == pytest.approx([0.005, 0.0025, 0.00125])
    rate = model.optimizer.learning_rate
    schedule = schedules.ExponentialDecay(rate, decay_steps=10, decay_rate=0.5)
    plateau = kcompile.callbacks.ReduceLROnPlateau(min_lr=rate)
    rate.assign(1.0)
    assert schedule.initial_learning_rate == pytest.approx(0.00125) and schedule(0) == pytest.approx(
        0.00125)
    assert plateau.min_lr == pytest.approx(0.00125) and type(plateau.min_lr) is float
    assert (math.trunc(rate), math.floor(rate), math.ceil(rate), divmod(rate, 0.3)[0]) == (1, 1, 1, 3)
    assert rate.real == 1.0 and rate.imag == 0.0 and rate.as_integer_ratio() == (1, 1)


class ConstantMixin:
    def __call__(self, step):
        return 0.05


class MixedIn(ConstantMixin, schedules.LearningRateSchedule):
    pass


def test_a_schedule_whose_call_comes_from_a_mixin_trains():
    assert MixedIn()(3) == pytest.approx(0.05)
    x, y, kernel, bias = linear_problem(4)
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.set_weights([kernel, bias])
    model.compile(optimizer=optimizers.SGD(learning_rate=MixedIn()), loss="mse")
    model.train_on_batch(x, y)
    error = 2 * (x @ kernel + bias - y) / y.size
    np.testing.assert_allclose(model.get_weights()[0], kernel - 0.05 * x.T @ error, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: optimizers.SGD(1e40), "within float32.s range"),
    (lambda: schedules.ExponentialDecay(float("nan"), 10, 0.9), "initial_learning_rate"),
    (lambda: schedules.InverseTimeDecay(0.1, 10, float("inf")), "decay_rate"),
    (lambda: schedules.PiecewiseConstantDecay([5, 3], [1.0, 0.5, 0.1]), "must not decrease"),
    (lambda: schedules.PiecewiseConstantDecay([3, 5], [1.0, float("nan"), 0.1]), "values"),
    (lambda: schedules.CosineDecay(0.1, 10, warmup_steps=-1, warmup_target=0.2), "warmup_steps"),
    (lambda: schedules.PolynomialDecay(0.1, 10, power=float("inf")), "power"),
    (lambda: kcompile.callbacks.ReduceLROnPlateau(factor=-1), "factor"),
    (lambda: kcompile.callbacks.ReduceLROnPlateau(min_lr=float("nan")), "min_lr"),
])
def test_learning_rates_and_schedules_that_float32_cannot_hold_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_assigning_an_overflowing_learning_rate_is_refused_and_changes_nothing():
    optimizer = optimizers.Adam(0.01)
    for assign in (lambda: setattr(optimizer, "learning_rate", 1e39),
                   lambda: optimizer.learning_rate.assign(-1e39)):
        with pytest.raises(ValueError, match="within float32.s range"):
            assign()
        assert float(optimizer.learning_rate) == pytest.approx(0.01)


def test_one_optimizer_shared_by_two_models_of_other_shapes_is_named_as_the_problem():
    rng = np.random.default_rng(0)
    x = rng.random((16, 4), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(16) % 3]
    shared = optimizers.Adam()

    def model(hidden):
        m = Sequential([Input((4,)), Dense(hidden), Dense(3)])
        m.compile(shared, "mse", target="llvm")
        return m
    model(8).fit(x, y, verbose=0)
    slots = {path: slot.numpy().copy() for path, slot in shared._slots.items()}
    other = model(5)
    weights = other.get_weights()
    with pytest.raises(ValueError, match="shared by two models"):
        other.fit(x, y, verbose=0)
    assert {path: slot.numpy() for path, slot in shared._slots.items()}.keys() == slots.keys()
    for path, value in slots.items():
        np.testing.assert_array_equal(shared._slots[path].numpy(), value)
    for got, want in zip(other.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    own = type(shared).from_config(shared.get_config())     # the fix the message gives
    other.compile(own, "mse", target="llvm")
    other.fit(x, y, verbose=0)


def test_default_names_are_keras_3s():
    """Keras 3 names an optimizer after its class in snake case (keras.optimizers.RMSprop().name
    is 'rm_sprop'); an explicit name is kept."""
    names = [cls().name for cls in (optimizers.SGD, optimizers.Adam, optimizers.AdamW,
                                    optimizers.RMSprop, optimizers.Adagrad)]
    assert names == ["sgd", "adam", "adam_w", "rm_sprop", "adagrad"]
    assert optimizers.Adam(name="mine").get_config()["name"] == "mine"
    assert optimizers.SGD().get_config()["name"] == "sgd"
