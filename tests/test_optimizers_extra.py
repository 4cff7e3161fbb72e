"""Adamax, Nadam, Adadelta, Lion and Ftrl: numpy float64 re-implementations of Keras 3's rules on
every target, parity with Keras 3 itself where it is installed, configs and names as Keras's,
saved state (Nadam's u_product too) resuming exactly, and argument errors."""
import importlib.util
import os
import re
import sys

import numpy as np
import pytest

from kcompile import optimizers
from kcompile.layers import Dense, Input
from kcompile.models import Sequential, load_model
from targets import TARGETS


# ----------------------------------------------------------------------------------------------
# numpy: Keras 3's rules in float64
# ----------------------------------------------------------------------------------------------

class NumpyRule:
    """One of Keras 3's five rules (keras/src/optimizers/*.py), weight decay before it."""

    def __init__(self, rule, learning_rate, weight_decay=None, **hyper):
        self.rule, self.learning_rate, self.weight_decay, self.hyper = (rule, learning_rate,
                                                                        weight_decay, hyper)
        self.iterations, self.state, self.u_product = 0, None, 1.0

    def apply(self, weights, grads):
        h, lr, t = self.hyper, self.learning_rate, self.iterations + 1
        if self.state is None:
            start = h.get("initial_accumulator_value", 0.1) if self.rule == "ftrl" else 0.0
            self.state = [{"a": np.full_like(w, start), "b": np.zeros_like(w)} for w in weights]
        if self.rule == "nadam":    # once per step, before the weights (_backend_update_step)
            self.u_product *= h.get("beta_1", 0.9) * (1 - 0.5 * 0.96 ** t)
        out = []
        for w, g, s in zip(weights, grads, self.state):
            if self.weight_decay:
                w = w - w * self.weight_decay * lr
            if self.rule == "adamax":
                b1, b2, eps = h.get("beta_1", 0.9), h.get("beta_2", 0.999), h.get("epsilon", 1e-7)
                s["a"] = s["a"] + (g - s["a"]) * (1 - b1)
                s["b"] = np.maximum(b2 * s["b"], np.abs(g))
                w = w - lr * s["a"] / ((1 - b1 ** t) * (s["b"] + eps))
            elif self.rule == "nadam":
                b1, b2, eps = h.get("beta_1", 0.9), h.get("beta_2", 0.999), h.get("epsilon", 1e-7)
                u_t = b1 * (1 - 0.5 * 0.96 ** t)
                u_t_1 = b1 * (1 - 0.5 * 0.96 ** (t + 1))
                s["a"] = s["a"] + (g - s["a"]) * (1 - b1)
                s["b"] = s["b"] + (g * g - s["b"]) * (1 - b2)
                m_hat = (u_t_1 * s["a"] / (1 - self.u_product * u_t_1)
                         + (1 - u_t) * g / (1 - self.u_product))
                v_hat = s["b"] / (1 - b2 ** t)
                w = w - m_hat * lr / (np.sqrt(v_hat) + eps)
            elif self.rule == "adadelta":
                rho, eps = h.get("rho", 0.95), h.get("epsilon", 1e-7)
                s["a"] = rho * s["a"] + (1 - rho) * g * g
                delta = -np.sqrt(s["b"] + eps) * g / np.sqrt(s["a"] + eps)
                s["b"] = rho * s["b"] + (1 - rho) * delta * delta
                w = w + lr * delta
            elif self.rule == "lion":
                b1, b2 = h.get("beta_1", 0.9), h.get("beta_2", 0.99)
                w = w - lr * np.sign(b1 * s["a"] + (1 - b1) * g)
                s["a"] = b2 * s["a"] + (1 - b2) * g
            elif self.rule == "ftrl":
                p = -h.get("learning_rate_power", -0.5)
                l1 = h.get("l1_regularization_strength", 0.0)
                l2 = h.get("l2_regularization_strength", 0.0) + h.get("beta", 0.0) / (2 * lr)
                shrinkage = h.get("l2_shrinkage_regularization_strength", 0.0)
                n = s["a"] + g * g
                s["b"] = s["b"] + g + 2 * shrinkage * w - (n ** p - s["a"] ** p) / lr * w
                w = (np.clip(s["b"], -l1, l1) - s["b"]) / (n ** p / lr + 2 * l2)
                s["a"] = n
            out.append(w)
        self.iterations += 1
        return out


def linear_problem(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((8, 4)), rng.standard_normal((8, 3)), rng.standard_normal((4, 3)),
            rng.standard_normal(3))


def mse_gradients(kernel, bias, x, y):
    d = 2 * (x @ kernel + bias - y) / y.size
    return [x.T @ d, d.sum(0)]


FTRL_REGULARIZED = dict(learning_rate_power=-0.7, l1_regularization_strength=0.01,
                        l2_regularization_strength=0.02, l2_shrinkage_regularization_strength=0.03,
                        beta=0.5)
# name -> (class name, learning rate, arguments): the same for kcompile, numpy and Keras
CASES = {
    "adamax": ("Adamax", 0.05, dict(beta_1=0.8)),
    "nadam": ("Nadam", 0.05, {}),
    "nadam_weight_decay": ("Nadam", 0.05, dict(beta_1=0.85, beta_2=0.99, weight_decay=0.1)),
    "adadelta": ("Adadelta", 1.0, dict(rho=0.9)),
    "lion": ("Lion", 0.01, {}),
    "lion_weight_decay": ("Lion", 0.01, dict(beta_1=0.5, beta_2=0.9, weight_decay=0.5)),
    "ftrl": ("Ftrl", 0.1, {}),
    "ftrl_regularized": ("Ftrl", 0.1, FTRL_REGULARIZED),
    "ftrl_fixed_rate": ("Ftrl", 0.1, dict(learning_rate_power=0.0, initial_accumulator_value=0.0)),
}


def make(name, module=optimizers):
    class_name, learning_rate, arguments = CASES[name]
    return getattr(module, class_name)(learning_rate=learning_rate, **arguments)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_steps_match_the_keras_rule_in_float64(name, target):
    class_name, learning_rate, arguments = CASES[name]
    x, y, kernel, bias = linear_problem()
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.set_weights([kernel, bias])
    optimizer = make(name)
    model.compile(optimizer=optimizer, loss="mse", target=target)
    reference = NumpyRule(class_name.lower(), learning_rate, **arguments)
    weights = [kernel, bias]
    for step in range(4):
        model.train_on_batch(x, y)
        weights = reference.apply(weights, mse_gradients(*weights, x, y))
        for got, want in zip(model.get_weights(), weights):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5, err_msg=f"{name}, step {step}")
    assert int(optimizer.iterations.numpy()) == 4
    if class_name == "Nadam":
        assert float(optimizer.state_variable("u_product").numpy()) == pytest.approx(
            reference.u_product, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Keras 3 itself
# ----------------------------------------------------------------------------------------------

def _import_keras():
    saved = os.environ.get("KERAS_BACKEND")
    if saved is None and "keras" not in sys.modules:
        if importlib.util.find_spec("jax") is None:
            pytest.skip("the Keras parity tests run Keras 3 on JAX, which is not installed")
        os.environ["KERAS_BACKEND"] = "jax"
    try:
        keras = pytest.importorskip("keras", reason="Keras 3 is not installed")
    finally:
        if saved is None:
            os.environ.pop("KERAS_BACKEND", None)
    if not keras.__version__.startswith("3."):
        pytest.skip(f"Keras 3 is needed; found {keras.__version__}")
    return keras


def _two_layer_problem():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    weights = [rng.standard_normal((4, 5)).astype(np.float32) * 0.5,
               rng.standard_normal(5).astype(np.float32) * 0.1,
               rng.standard_normal((5, 2)).astype(np.float32) * 0.5,
               rng.standard_normal(2).astype(np.float32) * 0.1]
    return x, y, weights


def _parity_targets(name):
    return ["reference", "llvm"] if name == "nadam" and "llvm" in TARGETS else ["reference"]


@pytest.mark.parametrize("name, target", [(name, target) for name in sorted(CASES)
                                          for target in _parity_targets(name)])
def test_training_steps_match_keras_3(name, target):
    keras = _import_keras()
    x, y, weights = _two_layer_problem()
    theirs = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(5, activation="tanh"),
                               keras.layers.Dense(2)])
    theirs.compile(optimizer=make(name, keras.optimizers), loss="mse", run_eagerly=True)
    theirs.set_weights(weights)
    ours = Sequential([Input(shape=(4,)), Dense(5, activation="tanh"), Dense(2)])
    ours.compile(optimizer=make(name), loss="mse", target=target)
    ours.set_weights(weights)
    for step in range(4):
        expected_loss = float(theirs.train_on_batch(x, y))
        assert ours.train_on_batch(x, y) == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
        for got, want in zip(ours.get_weights(), theirs.get_weights()):
            np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=2e-6,
                                       err_msg=f"{name}, step {step + 1}")
    if CASES[name][0] == "Nadam":
        assert float(ours.optimizer.state_variable("u_product").numpy()) == pytest.approx(
            float(np.asarray(theirs.optimizer._u_product)), rel=1e-6)


@pytest.mark.parametrize("class_name", ["Adamax", "Nadam", "Adadelta", "Lion", "Ftrl"])
def test_defaults_names_and_config_keys_are_keras_3s(class_name):
    keras = _import_keras()
    theirs = getattr(keras.optimizers, class_name)().get_config()
    ours = getattr(optimizers, class_name)().get_config()
    # kcompile's configs leave out the Keras arguments it takes only at their defaults (use_ema...)
    for key in ("use_ema", "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                "gradient_accumulation_steps"):
        theirs.pop(key)
    assert ours.keys() == theirs.keys()
    # (Keras numbers a second object of a class: 'adamax_1')
    assert ours.pop("name") == re.sub(r"_\d+$", "", theirs.pop("name"))
    for key, value in theirs.items():
        assert ours[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    keras_config = getattr(keras.optimizers, class_name)(learning_rate=0.02).get_config()
    assert getattr(optimizers, class_name).from_config(keras_config).get_config()["learning_rate"] \
        == pytest.approx(0.02)


# ----------------------------------------------------------------------------------------------
# configs, names, saved state
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_configs_round_trip_and_get_finds_every_spelling(name):
    optimizer = make(name)
    cls = type(optimizer)
    clone = optimizers.deserialize(optimizers.serialize(optimizer))
    assert type(clone) is cls and clone.get_config() == optimizer.get_config()
    assert cls.from_config(optimizer.get_config()).get_config() == optimizer.get_config()
    for identifier in (cls.__name__, cls.__name__.lower(), cls.__name__.upper(), cls,
                       {"class_name": cls.__name__, "config": {}}):
        assert type(optimizers.get(identifier)) is cls
    assert optimizers.get(optimizer) is optimizer


def test_default_names_are_keras_3s():
    assert [cls().name for cls in (optimizers.Adamax, optimizers.Nadam, optimizers.Adadelta,
                                   optimizers.Lion, optimizers.Ftrl)] == [
        "adamax", "nadam", "adadelta", "lion", "ftrl"]
    assert optimizers.Nadam(name="mine").get_config()["name"] == "mine"


@pytest.mark.parametrize("identifier", ["adamax", "nadam", "adadelta", "lion", "ftrl"])
def test_compile_takes_the_keras_strings(identifier):
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.compile(optimizer=identifier, loss="mse", target="reference")
    assert type(model.optimizer).__name__.lower() == identifier
    x, y, _, _ = linear_problem(1)
    model.train_on_batch(x, y)
    assert int(model.optimizer.iterations.numpy()) == 1


def test_nadam_u_product_is_an_optimizer_variable_and_a_train_step_input():
    optimizer = optimizers.Nadam()
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.compile(optimizer=optimizer, loss="mse", target="reference")
    x, y, _, _ = linear_problem(1)
    model.train_on_batch(x, y)
    u_product = optimizer.state_variable("u_product")
    assert u_product in optimizer.variables and len(optimizer.variables) == 2 + 4 + 1
    assert "optimizer/u_product" in optimizer.state()
    assert float(u_product.numpy()) == pytest.approx(0.9 * (1 - 0.5 * 0.96), rel=1e-6)


def _resume_problem():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 4)).astype(np.float32)
    y = rng.standard_normal((24, 3)).astype(np.float32)
    return x, y, list(linear_problem(3)[2:])


def _compiled(name, target, weights):
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.set_weights(weights)
    model.compile(optimizer=make(name), loss="mse", target=target)
    return model


@pytest.mark.parametrize("name, target", [(name, "reference") for name in
                                          ("adamax", "nadam_weight_decay", "adadelta", "lion", "ftrl_regularized")]
                         + [("nadam", "llvm")] * ("llvm" in TARGETS))
def test_load_model_mid_training_resumes_exactly(name, target, tmp_path):
    x, y, weights = _resume_problem()
    in_one_go = _compiled(name, target, weights)
    in_one_go.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    first_half = _compiled(name, target, weights)
    first_half.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    first_half.save(tmp_path / "half.keras")
    resumed = load_model(tmp_path / "half.keras")
    assert type(resumed.optimizer) is type(first_half.optimizer)
    assert resumed.optimizer.get_config() == first_half.optimizer.get_config()
    for got, want in zip(resumed.optimizer.variables, first_half.optimizer.variables):
        assert got.path == want.path
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    resumed.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    for got, want in zip(resumed.get_weights(), in_one_go.get_weights()):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(resumed.optimizer.variables, in_one_go.optimizer.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_nadam_state_in_a_weights_file_resumes_exactly_and_is_checked(tmp_path):
    x, y, weights = _resume_problem()
    in_one_go = _compiled("nadam", "reference", weights)
    in_one_go.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    first_half = _compiled("nadam", "reference", weights)
    first_half.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "half.weights.npz"
    first_half.save_weights(path)
    resumed = _compiled("nadam", "reference", weights)
    resumed.load_weights(path)
    assert float(resumed.optimizer.state_variable("u_product").numpy()) == float(
        first_half.optimizer.state_variable("u_product").numpy()) != 1.0
    resumed.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, shuffle=False, verbose=0)
    for got, want in zip(resumed.get_weights(), in_one_go.get_weights()):
        np.testing.assert_array_equal(got, want)

    # a state past step 0 without u_product is not Nadam's: refused with a warning, nothing loaded
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files if key != "optimizer:optimizer/u_product"}
    np.savez(tmp_path / "cut.weights.npz", **arrays)
    other = _compiled("nadam", "reference", weights)
    with pytest.warns(UserWarning, match="u_product"):
        other.load_weights(tmp_path / "cut.weights.npz")
    assert int(other.optimizer.iterations.numpy()) == 0
    assert float(other.optimizer.state_variable("u_product").numpy()) == 1.0
    # nor does an Adam model take Nadam's state
    adam = Sequential([Input(shape=(4,)), Dense(3)])
    adam.compile(optimizer="adam", loss="mse", target="reference")
    with pytest.warns(UserWarning, match="Nadam"):
        adam.load_weights(path)
    assert int(adam.optimizer.iterations.numpy()) == 0


# ----------------------------------------------------------------------------------------------
# argument errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("build, error, message", [
    (lambda: optimizers.Lion(beta_1=0.0), ValueError, "degenerates to SignSGD"),
    (lambda: optimizers.Lion(beta_1=1.5), ValueError, "degenerates to SignSGD"),
    (lambda: optimizers.Ftrl(initial_accumulator_value=-0.1), ValueError,
     "`initial_accumulator_value` needs to be positive or zero"),
    (lambda: optimizers.Ftrl(learning_rate_power=0.5), ValueError,
     "`learning_rate_power` needs to be negative or zero"),
    (lambda: optimizers.Ftrl(l1_regularization_strength=-1.0), ValueError,
     "l1_regularization_strength"),
    (lambda: optimizers.Ftrl(l2_regularization_strength=-1.0), ValueError,
     "l2_regularization_strength"),
    (lambda: optimizers.Ftrl(l2_shrinkage_regularization_strength=-1.0), ValueError,
     "l2_shrinkage_regularization_strength"),
    (lambda: optimizers.Ftrl(beta=float("nan")), ValueError, "beta must be a finite number"),
    (lambda: optimizers.Adamax(beta_1=1.0), ValueError, "beta_1 must be < 1"),
    (lambda: optimizers.Nadam(beta_2=1.0), ValueError, "beta_2 must be < 1"),
    (lambda: optimizers.Adadelta(rho=1.5), ValueError, "rho must be <= 1"),
    (lambda: optimizers.Adadelta(epsilon=-1e-7), ValueError, "epsilon must be >= 0"),
    (lambda: optimizers.Nadam(use_ema=True), NotImplementedError, "use_ema"),
    (lambda: optimizers.Ftrl(gradient_accumulation_steps=2), NotImplementedError,
     "gradient_accumulation_steps"),
    (lambda: optimizers.Lion(momentum=0.9), TypeError, "unexpected keyword arguments"),
    (lambda: optimizers.get("nadamw"), ValueError, "Could not interpret optimizer identifier"),
])
def test_bad_arguments_are_named(build, error, message):
    with pytest.raises(error, match=message):
        build()
