"""Regularizers of the recurrent and normalization layers, their Keras 3 config keys, and LSTM/GRU
recurrent dropout.

The penalties are checked against the loss computed by hand in float64 numpy (the recurrences
written out below), and one SGD step against central differences of that numpy loss; Keras 3 (in
a subprocess) gives the same loss and step with the same weights, and the configs' keys."""
import json
import textwrap

import numpy as np
import pytest

from kcompile import load_model, optimizers, regularizers
from kcompile import layers as L
from kcompile.models import Sequential
from keras_subprocess import keras_available, run_keras
from targets import TARGETS


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# -- float64 numpy recurrences ---------------------------------------------------------------------
# Each returns every step's output, (batch, steps, units), reading x's steps in the given order.
# `masks` (for recurrent dropout) is (input masks, state masks): one per gate each (or None), as
# Keras 3's cells use them when recurrent_dropout is set (implementation 1).

def np_simple_rnn(x, kernel, recurrent, bias, masks=None):
    h, out = np.zeros((len(x), kernel.shape[1])), []
    for t in range(x.shape[1]):
        x_t, h_in = x[:, t], h
        if masks is not None:
            x_t = x_t if masks[0] is None else x_t * masks[0]
            h_in = h if masks[1] is None else h * masks[1]
        h = np.tanh(x_t @ kernel + h_in @ recurrent + bias)
        out.append(h)
    return np.stack(out, 1)


def _per_gate(value, masks, gates):
    """The per-gate copies of `value` (inputs or state), masked when `masks` is given."""
    return [value] * gates if masks is None else [value * m for m in masks]


def np_lstm(x, kernel, recurrent, bias, masks=None):
    u = recurrent.shape[0]
    h, c, out = np.zeros((len(x), u)), np.zeros((len(x), u)), []
    k, rk, b = np.split(kernel, 4, 1), np.split(recurrent, 4, 1), np.split(bias, 4)
    for t in range(x.shape[1]):
        xs = _per_gate(x[:, t], None if masks is None else masks[0], 4)
        hs = _per_gate(h, None if masks is None else masks[1], 4)
        i, f, cc, o = (xs[g] @ k[g] + hs[g] @ rk[g] + b[g] for g in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(cc)
        h = _sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, 1)


def np_gru(x, kernel, recurrent, bias, masks=None, reset_after=True):
    u = recurrent.shape[0]
    h, out = np.zeros((len(x), u)), []
    k, rk = np.split(kernel, 3, 1), np.split(recurrent, 3, 1)
    if reset_after:
        bx, bh = np.split(bias[0], 3), np.split(bias[1], 3)
    else:
        bx, bh = np.split(bias, 3), [0.0, 0.0, 0.0]
    for t in range(x.shape[1]):
        xs = _per_gate(x[:, t], None if masks is None else masks[0], 3)
        hs = _per_gate(h, None if masks is None else masks[1], 3)
        z = _sigmoid(xs[0] @ k[0] + bx[0] + hs[0] @ rk[0] + bh[0])
        r = _sigmoid(xs[1] @ k[1] + bx[1] + hs[1] @ rk[1] + bh[1])
        if reset_after:
            hh = np.tanh(xs[2] @ k[2] + bx[2] + r * (hs[2] @ rk[2] + bh[2]))
        else:
            hh = np.tanh(xs[2] @ k[2] + bx[2] + (r * hs[2]) @ rk[2])
        h = z * h + (1 - z) * hh
        out.append(h)
    return np.stack(out, 1)


NP_RNNS = {"SimpleRNN": np_simple_rnn, "LSTM": np_lstm, "GRU": np_gru}


def _l1(w, f):
    return f * np.abs(w).sum()


def _l2(w, f):
    return f * (w * w).sum()


def _central_differences(loss, weights, eps=1e-6):
    """d loss / d w for every entry of every weight (float64)."""
    grads = []
    for w in weights:
        g = np.zeros_like(w)
        for index in np.ndindex(w.shape):
            saved = w[index]
            w[index] = saved + eps
            up = loss(weights)
            w[index] = saved - eps
            down = loss(weights)
            w[index] = saved
            g[index] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def _check_loss_and_sgd_step(model, x, y, loss64, target, lr=0.1):
    """evaluate (inference) and train_on_batch (training) report the numpy losses, and one SGD
    step moves every weight by -lr times the central differences of the training loss."""
    weights = [w.astype(np.float64) for w in model.get_weights()]
    model.compile(optimizer=optimizers.SGD(learning_rate=lr), loss="mse", target=target)
    assert model.evaluate(x, y, batch_size=len(x), verbose=0) == pytest.approx(loss64(weights),
                                                                               rel=1e-5)
    grads = _central_differences(loss64, [w.copy() for w in weights])
    assert model.train_on_batch(x, y) == pytest.approx(loss64(weights), rel=1e-5)
    for variable, got, w, g in zip(model.weights, model.get_weights(), weights, grads):
        np.testing.assert_allclose(got, w - lr * g, rtol=1e-4, atol=1e-6, err_msg=variable.path)


# -- regularizers ----------------------------------------------------------------------------------

def _regularized(cls, **extra):
    return getattr(L, cls)(3, kernel_regularizer=regularizers.L1L2(l1=0.05, l2=0.1),
                           recurrent_regularizer=regularizers.L2(0.2),
                           bias_regularizer=regularizers.L1(0.3),
                           activity_regularizer=regularizers.L2(0.4), **extra)


def _rnn_weights(model, rng):
    """Random weights (non-zero biases, so that the bias penalty matters)."""
    model.set_weights([0.5 * rng.standard_normal(w.shape) for w in model.weights])


def _rnn_penalty(kernel, recurrent, bias, output):
    return (_l1(kernel, 0.05) + _l2(kernel, 0.1) + _l2(recurrent, 0.2) + _l1(bias, 0.3)
            + _l2(output, 0.4) / len(output))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("cls", ["SimpleRNN", "LSTM", "GRU"])
def test_recurrent_penalties_are_in_the_loss_and_its_gradient(cls, target):
    """mse + kernel L1L2 + recurrent L2 + bias L1 + the output's L2 / batch: evaluate and
    train_on_batch report it (numpy, float64) and one SGD step follows its gradient (central
    differences of the numpy loss)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4, 2)).astype(np.float32)
    y = rng.standard_normal((5, 3)).astype(np.float32)
    model = Sequential([L.Input((4, 2)), _regularized(cls)])
    _rnn_weights(model, rng)

    def loss64(weights):
        out = NP_RNNS[cls](x.astype(np.float64), *weights)[:, -1]
        return ((out - y) ** 2).mean() + _rnn_penalty(*weights, out)
    _check_loss_and_sgd_step(model, x, y, loss64, target)
    assert len(model.losses) == 3      # the weights' penalties (Keras's layer.losses)
    np.testing.assert_allclose(
        sum(model.losses), _rnn_penalty(*[w.astype(np.float64) for w in model.get_weights()],
                                        np.zeros((1, 1))), rtol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_bidirectional_regularizes_each_direction(target):
    """Bidirectional(LSTM(3, regularizers...)): both copies carry the layer's regularizers: four
    weight penalties each and the activity penalty of each direction's own output."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    y = rng.standard_normal((4, 6)).astype(np.float32)
    model = Sequential([L.Input((3, 2)), L.Bidirectional(_regularized("LSTM"))])
    _rnn_weights(model, rng)
    for inner in (model.layers[0].forward_layer, model.layers[0].backward_layer):
        assert inner.get_config()["kernel_regularizer"] == {
            "class_name": "L1L2", "config": {"l1": 0.05, "l2": 0.1}}

    def loss64(weights):
        x64 = x.astype(np.float64)
        forward = np_lstm(x64, *weights[:3])[:, -1]
        backward = np_lstm(x64[:, ::-1], *weights[3:])[:, -1]
        out = np.concatenate([forward, backward], -1)
        return (((out - y) ** 2).mean() + _rnn_penalty(*weights[:3], forward)
                + _rnn_penalty(*weights[3:], backward))
    _check_loss_and_sgd_step(model, x, y, loss64, target)
    assert len(model.losses) == 6


def _np_layer_norm(x, gamma, beta, epsilon=1e-3):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _np_batch_norm(x, gamma, beta, mean, variance, epsilon=1e-3):
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


@pytest.mark.parametrize("target", TARGETS)
def test_layer_normalization_penalties(target):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.standard_normal((6, 4)).astype(np.float32)
    model = Sequential([L.Input((4,)), L.LayerNormalization(gamma_regularizer=regularizers.L2(0.3),
                                                            beta_regularizer="l1")])
    model.set_weights([1 + 0.5 * rng.standard_normal(4), 0.5 * rng.standard_normal(4)])

    def loss64(weights):
        gamma, beta = weights
        out = _np_layer_norm(x.astype(np.float64), gamma, beta)
        return ((out - y) ** 2).mean() + _l2(gamma, 0.3) + _l1(beta, 0.01)
    _check_loss_and_sgd_step(model, x, y, loss64, target)


@pytest.mark.parametrize("target", TARGETS)
def test_batch_normalization_penalties(target):
    """Training normalizes by the batch's statistics, evaluate by the moving ones; the penalties
    of gamma and beta are in both losses and the step (the moving statistics have none)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)
    model = Sequential([L.Input((3,)), L.BatchNormalization(gamma_regularizer="l2",
                                                            beta_regularizer=regularizers.L1(0.2))])
    model.set_weights([1 + 0.5 * rng.standard_normal(3), 0.5 * rng.standard_normal(3),
                       0.3 * rng.standard_normal(3), 1 + rng.random(3)])
    x64 = x.astype(np.float64)

    def penalty(gamma, beta):
        return _l2(gamma, 0.01) + _l1(beta, 0.2)

    def train_loss64(weights):
        gamma, beta = weights[:2]
        out = _np_batch_norm(x64, gamma, beta, x64.mean(0), x64.var(0))
        return ((out - y) ** 2).mean() + penalty(gamma, beta)

    def inference_loss64(weights):
        out = _np_batch_norm(x64, *weights)
        return ((out - y) ** 2).mean() + penalty(*weights[:2])
    weights = [w.astype(np.float64) for w in model.get_weights()]
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=target)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(inference_loss64(weights), rel=1e-5)
    grads = _central_differences(train_loss64, [w.copy() for w in weights[:2]])
    assert model.train_on_batch(x, y) == pytest.approx(train_loss64(weights), rel=1e-5)
    got = model.get_weights()
    for i in range(2):
        np.testing.assert_allclose(got[i], weights[i] - 0.1 * grads[i], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[2], 0.99 * weights[2] + 0.01 * x64.mean(0), rtol=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_time_distributed_counts_its_layers_weight_penalties(target):
    """TimeDistributed(Dense(kernel_regularizer=..., activity_regularizer=...)): the kernel's
    penalty is in the loss and its gradient, the activity one not (as Keras 3)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    y = rng.standard_normal((4, 3, 2)).astype(np.float32)
    model = Sequential([L.Input((3, 2)), L.TimeDistributed(L.Dense(
        2, kernel_regularizer=regularizers.L2(0.3), bias_regularizer="l1",
        activity_regularizer="l2"))])
    model.set_weights([rng.standard_normal((2, 2)), rng.standard_normal(2)])

    def loss64(weights):
        kernel, bias = weights
        out = x.astype(np.float64) @ kernel + bias
        return ((out - y) ** 2).mean() + _l2(kernel, 0.3) + _l1(bias, 0.01)
    _check_loss_and_sgd_step(model, x, y, loss64, target)
    assert len(model.losses) == 2


def test_regularizer_configs_round_trip_and_save(tmp_path):
    model = Sequential([
        L.Input((3, 2)),
        L.GRU(3, kernel_regularizer="l2", recurrent_regularizer=regularizers.L1(0.2),
              return_sequences=True),
        L.LayerNormalization(gamma_regularizer=regularizers.L1L2(0.1, 0.2)),
        L.Bidirectional(L.SimpleRNN(2, bias_regularizer="l1", activity_regularizer="l2")),
        L.BatchNormalization(beta_regularizer="l2"),
        L.Dense(1)])
    for layer in model.layers:
        config = json.loads(json.dumps(L.serialize(layer)))
        clone = L.deserialize(config)
        assert clone.get_config() == layer.get_config(), layer.name
    config = model.layers[0].get_config()
    assert config["kernel_regularizer"] == {"class_name": "L2", "config": {"l2": 0.01}}
    assert config["recurrent_regularizer"] == {"class_name": "L1", "config": {"l1": 0.2}}
    assert config["bias_regularizer"] is None and config["activity_regularizer"] is None
    assert model.layers[1].get_config()["gamma_regularizer"] == {
        "class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    y = rng.standard_normal((4, 1)).astype(np.float32)
    model.compile(optimizer="sgd", loss="mse", target="reference")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0),
                                                             rel=1e-6)
    assert [float(v) for v in loaded.losses] == pytest.approx([float(v) for v in model.losses])
    assert len(model.losses) == 2 + 1 + 2 + 1


def test_constraints_are_still_refused_naming_the_argument():
    for make, what in [(lambda: L.LSTM(2, kernel_constraint="non_neg"), "kernel_constraint"),
                       (lambda: L.GRU(2, recurrent_constraint="non_neg"), "recurrent_constraint"),
                       (lambda: L.BatchNormalization(gamma_constraint="non_neg"), "gamma_constraint"),
                       (lambda: L.LayerNormalization(beta_constraint="non_neg"), "beta_constraint")]:
        with pytest.raises(NotImplementedError, match=what):
            make()
    with pytest.raises(ValueError, match="regularizer"):
        L.SimpleRNN(2, kernel_regularizer="l3")


# -- Keras 3 parity of the penalties ---------------------------------------------------------------

# (layer expressions written alike in both APIs, input shape, output shape)
REGULARIZED_MODELS = {
    # NOTE: no activity_regularizer for SimpleRNN: Keras 3.15's SimpleRNN drops that argument
    # (it does not pass it on to its base class, unlike LSTM and GRU), so Keras adds no penalty
    # and its config holds None; kcompile applies it, as Keras documents it and as for LSTM/GRU.
    "simple_rnn": (["SimpleRNN(3, kernel_regularizer=regularizers.L1L2(0.05, 0.1), "
                    "recurrent_regularizer='l2', bias_regularizer=regularizers.L1(0.3))"],
                   (4, 2), (3,)),
    "lstm": (["LSTM(3, kernel_regularizer='l1', recurrent_regularizer=regularizers.L2(0.2), "
              "bias_regularizer='l2', activity_regularizer=regularizers.L1(0.1))"], (4, 2), (3,)),
    "gru": (["GRU(3, kernel_regularizer=regularizers.L2(0.3), recurrent_regularizer='l1', "
             "bias_regularizer=regularizers.L1L2(0.1, 0.2), activity_regularizer='l2', "
             "return_sequences=True)"], (4, 2), (4, 3)),
    "bidirectional": (["Bidirectional(LSTM(2, kernel_regularizer=regularizers.L2(0.2), "
                       "activity_regularizer=regularizers.L1(0.1)))"], (3, 2), (4,)),
    "normalization": (["Dense(4)", "BatchNormalization(gamma_regularizer=regularizers.L2(0.3), "
                       "beta_regularizer='l1')",
                       "LayerNormalization(gamma_regularizer='l2', "
                       "beta_regularizer=regularizers.L1L2(0.1, 0.2))"], (3,), (4,)),
    # a wrapped layer's weight penalties count; its activity_regularizer does not (Keras runs
    # its `call` on the steps)
    "time_distributed": (["GRU(3, return_sequences=True)",
                          "TimeDistributed(Dense(2, kernel_regularizer=regularizers.L2(0.3), "
                          "bias_regularizer='l1', activity_regularizer='l2'))",
                          "TimeDistributed(LayerNormalization(gamma_regularizer='l2'))"],
                         (4, 2), (4, 2)),
}

KERAS_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, keras
    from keras import regularizers
    from keras.layers import *
    for spec in sys.argv[1:]:
        exprs, shape, path = eval(spec)
        data = np.load(path)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape)] + [eval(e) for e in exprs])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
        rng = np.random.default_rng(1)
        # biases are zero at first: perturb every weight so that each one matters
        perturbed = [np.asarray(v.numpy()) + 0.3 * rng.standard_normal(v.shape)
                     for v in model.weights]
        model.set_weights([np.abs(w) if "variance" in v.path else w
                           for v, w in zip(model.weights, perturbed)])
        weights = model.get_weights()
        loss = model.evaluate(data["x"], data["y"], batch_size=len(data["x"]), verbose=0)
        history = model.fit(data["x"], data["y"], batch_size=len(data["x"]), epochs=1,
                            shuffle=False, verbose=0)
        np.savez(path, loss=loss, train_loss=history.history["loss"][0],
                 **{f"w{i}": w for i, w in enumerate(weights)},
                 **{f"t{i}": w for i, w in enumerate(model.get_weights())})
""")


def _namespace():
    namespace = {k: getattr(L, k) for k in dir(L) if not k.startswith("_")}
    namespace["regularizers"] = regularizers
    return namespace


def _regularized_data(name):
    _, shape, out = REGULARIZED_MODELS[name]
    rng = np.random.default_rng(0)
    return (rng.standard_normal((5,) + shape).astype(np.float32),
            rng.standard_normal((5,) + out).astype(np.float32))


@pytest.fixture(scope="module")
def keras_regularized(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keras_regularized")
    specs = []
    for name, (exprs, shape, _) in REGULARIZED_MODELS.items():
        x, y = _regularized_data(name)
        np.savez(directory / f"{name}.npz", x=x, y=y)
        specs.append(repr((exprs, shape, str(directory / f"{name}.npz"))))
    run_keras(KERAS_SCRIPT, specs)
    return {name: np.load(directory / f"{name}.npz") for name in REGULARIZED_MODELS}


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
@pytest.mark.parametrize("name", sorted(REGULARIZED_MODELS))
def test_regularized_losses_and_step_agree_with_keras(name, keras_regularized):
    keras_out = keras_regularized[name]
    exprs, shape, _ = REGULARIZED_MODELS[name]
    x, y = _regularized_data(name)
    model = Sequential([L.Input(shape)] + [eval(e, _namespace()) for e in exprs])
    model.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=TARGETS[-1])
    assert model.evaluate(x, y, batch_size=len(x), verbose=0) == pytest.approx(
        float(keras_out["loss"]), rel=1e-5)
    history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(float(keras_out["train_loss"]), rel=1e-5)
    for i, (variable, got) in enumerate(zip(model.weights, model.get_weights())):
        np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{variable.path} after one SGD step")


# -- Keras 3's config keys -------------------------------------------------------------------------

# layer expressions written alike in both APIs
CONFIG_LAYERS = [
    "Dense(3)", "Dense(3, activity_regularizer='l2', kernel_regularizer='l2')",
    "Embedding(5, 3)", "Embedding(5, 3, activity_regularizer='l2')",
    "BatchNormalization()", "BatchNormalization(axis=1, gamma_regularizer='l2', center=False)",
    "LayerNormalization()", "LayerNormalization(beta_regularizer='l2', epsilon=0.01)",
    "SimpleRNN(3)", "SimpleRNN(3, kernel_regularizer='l2', return_sequences=True)",
    "LSTM(3)", "LSTM(3, recurrent_regularizer='l2', activity_regularizer='l2', dropout=0.1)",
    "GRU(3)", "GRU(3, bias_regularizer='l2', reset_after=False, go_backwards=True)",
    "LSTM(3, recurrent_dropout=0.2, seed=4)", "GRU(3, recurrent_dropout=0.5, dropout=0.25)",
]

CONFIG_SCRIPT = textwrap.dedent("""
    import json, sys, keras
    from keras.layers import *
    configs = [keras.layers.serialize(eval(e)) for e in json.loads(sys.argv[1])]
    with open(sys.argv[2], "w") as f:
        json.dump(configs, f)
""")

# Keys a kcompile config has that Keras's lacks: SimpleRNN's seed (Keras 3.15 takes `seed` but does
# not write it; kcompile keeps it so that a reloaded layer draws the same dropout masks).
KCOMPILE_ONLY_KEYS = {"SimpleRNN": {"seed"}}


@pytest.fixture(scope="module")
def keras_configs(tmp_path_factory):
    path = tmp_path_factory.mktemp("keras_configs") / "configs.json"
    run_keras(CONFIG_SCRIPT, [json.dumps(CONFIG_LAYERS), str(path)])
    with open(path) as f:
        return dict(zip(CONFIG_LAYERS, json.load(f)))


def _plain(value):
    """A Keras config value as kcompile writes it (no 'module'/'registered_name')."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in ("module", "registered_name")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
@pytest.mark.parametrize("expr", CONFIG_LAYERS)
def test_config_keys_are_keras_3s(expr, keras_configs):
    """The same keys as Keras 3.15's config (Dense's activity_regularizer only when set), the same
    plain values (numbers, strings, None; the regularizers), and Keras's config loads here into a
    layer whose config is ours."""
    keras_serialized = keras_configs[expr]
    keras_config = keras_serialized["config"]
    layer = eval(expr, _namespace())
    ours = json.loads(json.dumps(layer.get_config()))
    extra = KCOMPILE_ONLY_KEYS.get(type(layer).__name__, set())
    assert sorted(set(ours) - extra) == sorted(keras_config)
    for key, value in keras_config.items():
        if key in ("name", "dtype"):
            continue
        if key.endswith("initializer"):     # (Keras's GlorotUniform has input_axes, ...)
            assert ours[key]["class_name"] == value["class_name"], key
        else:
            assert ours[key] == _plain(value), key
    loaded = L.deserialize(keras_serialized)
    assert type(loaded) is type(layer)
    mine = loaded.get_config()
    assert {k: v for k, v in mine.items() if k != "name"} == \
        {k: v for k, v in ours.items() if k != "name"}


def _as_written_before(config, cls):
    """The config kcompile wrote before it had these keys (checked against the previous commit's
    output): no constraint keys, zero_output_for_mask, quantization_config, synchronized or
    renorm*, and Dense's activity_regularizer always there."""
    old = {k: v for k, v in config.items()
           if not k.endswith("_constraint") and not k.startswith("renorm")
           and k not in ("zero_output_for_mask", "quantization_config", "synchronized")}
    if cls == "Dense":
        old.setdefault("activity_regularizer", None)
    return old


@pytest.mark.parametrize("expr", CONFIG_LAYERS)
def test_configs_round_trip_and_earlier_configs_still_load(expr, tmp_path):
    layer = eval(expr, _namespace())
    config = json.loads(json.dumps(L.serialize(layer)))
    assert L.deserialize(config).get_config() == layer.get_config()
    old = {"class_name": config["class_name"],
           "config": _as_written_before(config["config"], config["class_name"])}
    assert L.deserialize(old).get_config() == layer.get_config()


def test_models_saved_with_the_earlier_configs_load(tmp_path):
    """A .keras file whose layer configs are those kcompile wrote before still loads and predicts
    the same."""
    import zipfile
    model = Sequential([L.Input((3, 2)), L.LSTM(3, return_sequences=True), L.GRU(2),
                        L.BatchNormalization(), L.LayerNormalization(), L.Dense(1)])
    x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as src, \
            zipfile.ZipFile(tmp_path / "old.keras", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                document = json.loads(data)
                for entry in document["config"]["layers"]:
                    entry["config"] = _as_written_before(entry["config"], entry["class_name"])
                assert "kernel_constraint" not in json.dumps(document)
                data = json.dumps(document).encode()
            dst.writestr(item, data)
    loaded = load_model(tmp_path / "old.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.get_config() == model.get_config()


# -- recurrent dropout on LSTM and GRU -------------------------------------------------------------

def _traced_with_masks(layer, x, dropout):
    """The layer's training output on x (reference interpreter) and the dropout masks it drew:
    the masks are a function of the step's seed and the layer's streams, so drawing them again in
    the same trace gives the ones the layer used."""
    from ir import build_seq as S
    from kcompile.layers.layer import call_eagerly
    gates, units, steps, features = layer.GATES, layer.units, x.shape[1], x.shape[2]

    def fn(inputs):
        out = layer(inputs, training=True)
        parts = [S.concat([S.take(out, t, 1) for t in range(steps)], 1)]
        if dropout:
            parts += layer._masks(features, dropout, "dropout", gates)
        parts += layer._masks(units, layer.recurrent_dropout, "recurrent_dropout", gates)
        return S.concat(parts, 1)
    result = call_eagerly(fn, x, variables=layer.weights, training=True).astype(np.float64)
    out = result[:, :steps * units].reshape(len(x), steps, units)
    rest = result[:, steps * units:]
    input_masks = None
    if dropout:
        input_masks = np.split(rest[:, :gates * features], gates, 1)
        rest = rest[:, gates * features:]
    return out, (input_masks, np.split(rest, gates, 1))


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("make, reference", [
    (lambda **kw: L.LSTM(3, return_sequences=True, **kw), np_lstm),
    (lambda **kw: L.GRU(3, return_sequences=True, **kw), np_gru),
    (lambda **kw: L.GRU(3, return_sequences=True, reset_after=False, **kw),
     lambda *a, **kw: np_gru(*a, reset_after=False, **kw)),
    (lambda **kw: L.LSTM(3, return_sequences=True, go_backwards=True, **kw),
     lambda x, *a, **kw: np_lstm(x[:, ::-1], *a, **kw)),
], ids=["lstm", "gru", "gru_reset_before", "lstm_backwards"])
def test_recurrent_dropout_is_one_mask_per_gate_on_the_state(make, reference, dropout):
    """Keras 3's semantics (its cells' implementation 1, which recurrent_dropout selects): each
    gate's copy of the state h (and of the inputs, with dropout) is multiplied by a mask of its
    own, drawn once for the batch and used at every step; the masks are 0 or 1/(1-rate)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((40, 4, 2)).astype(np.float32)
    layer = make(dropout=dropout, recurrent_dropout=0.4, seed=3)
    layer.build_for((None, 4, 2))
    layer.set_weights([0.6 * rng.standard_normal(w.shape) for w in layer.weights])
    out, masks = _traced_with_masks(layer, x, dropout)
    weights = [w.astype(np.float64) for w in layer.get_weights()]
    want = reference(x.astype(np.float64), *weights, masks=masks)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    for rate, group in ((dropout, masks[0]), (0.4, masks[1])):
        if group is None:
            continue
        for mask in group:
            kept = mask != 0
            np.testing.assert_allclose(mask[kept], 1 / (1 - rate), rtol=1e-6)
            assert 0 < kept.mean() < 1
        assert not np.array_equal(group[0], group[1])      # a mask of its own per gate
    # without the masks (numpy), the outputs differ: the masks matter
    assert not np.allclose(out, reference(x.astype(np.float64), *weights), atol=1e-3)


def test_recurrent_dropout_masks_have_the_rate_and_are_independent_per_gate():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3000, 2, 2)).astype(np.float32)
    layer = L.GRU(8, recurrent_dropout=0.3, seed=1, return_sequences=True)
    layer.build_for((None, 2, 2))
    _, (_, masks) = _traced_with_masks(layer, x, 0.0)
    dropped = [mask == 0 for mask in masks]
    for d in dropped:
        assert d.mean() == pytest.approx(0.3, abs=0.01)
    both = (dropped[0] & dropped[1]).mean()
    assert both == pytest.approx(0.09, abs=0.01)      # independent: 0.3 * 0.3
    # a new draw for every call (batch)
    _, (_, again) = _traced_with_masks(layer, x, 0.0)
    assert not np.array_equal(again[0], masks[0])


@pytest.mark.parametrize("make", [
    lambda: L.LSTM(3, dropout=0.2, recurrent_dropout=0.3, seed=2),
    lambda: L.GRU(3, recurrent_dropout=0.3, seed=2, return_sequences=True),
    lambda: L.GRU(3, recurrent_dropout=0.5, reset_after=False, seed=2),
], ids=["lstm", "gru", "gru_reset_before"])
def test_recurrent_dropout_trains_alike_compiled_and_reference(make):
    """The layer harness: fit compiled draws the masks the reference interpreter does (the same
    weights after a step), and the step differs from one without recurrent dropout."""
    from layer_harness import run_layer_test
    layer = make()
    output_shape = (4, 3) if layer.return_sequences else (3,)
    results = run_layer_test(make, (4, 2), output_shape, 3)
    config = {**layer.get_config(), "recurrent_dropout": 0.0}
    plain = run_layer_test(lambda: type(layer).from_config(config), (4, 2), output_shape, 3)
    assert not np.allclose(results["reference"][1][0], plain["reference"][1][0])
    # inference ignores it: the predictions before the step are the same
    np.testing.assert_array_equal(results["reference"][0], plain["reference"][0])


@pytest.mark.parametrize("target", TARGETS)
def test_recurrent_dropout_is_off_in_inference(target):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 4, 2)).astype(np.float32)
    y = rng.standard_normal((5, 3)).astype(np.float32)
    for cls in (L.LSTM, L.GRU):
        dropped = Sequential([L.Input((4, 2)), cls(3, recurrent_dropout=0.5, dropout=0.5)])
        plain = Sequential([L.Input((4, 2)), cls(3)])
        plain.set_weights(dropped.get_weights())
        for model in (dropped, plain):
            model.compile(optimizer="sgd", loss="mse", target=target)
        np.testing.assert_array_equal(dropped.predict(x, verbose=0), plain.predict(x, verbose=0))
        assert dropped.evaluate(x, y, verbose=0) == plain.evaluate(x, y, verbose=0)
        layer = dropped.layers[0]
        np.testing.assert_array_equal(layer(x), layer(x, training=False))
        assert not np.allclose(layer(x, training=True), layer(x))


def test_recurrent_dropout_round_trips_and_is_checked():
    layer = L.LSTM(3, recurrent_dropout=0.25, seed=4)
    assert L.deserialize(json.loads(json.dumps(L.serialize(layer)))).recurrent_dropout == 0.25
    for bad in (1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match="recurrent_dropout"):
            L.GRU(2, recurrent_dropout=bad)


# Keras 3 with the masks kcompile drew: the cell's mask getters are replaced by ones returning
# them, so that Keras's own cell code applies them (Keras's random draws differ from kcompile's).
MASKED_KERAS_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, keras
    from keras.layers import *
    for spec in sys.argv[1:]:
        expr, path = eval(spec)
        data = np.load(path)
        layer = eval(expr)
        model = keras.Sequential([keras.Input(data["x"].shape[1:]), layer])
        model.set_weights([data[f"w{i}"] for i in range(len(model.weights))])
        gates = 4 if isinstance(layer, LSTM) else 3
        inputs = [data[f"input_mask{g}"] for g in range(gates)] if "input_mask0" in data else None
        state = [data[f"state_mask{g}"] for g in range(gates)]
        layer.cell.get_dropout_mask = lambda step_input: inputs
        layer.cell.get_recurrent_dropout_mask = lambda step_input: state
        np.savez(path, out=np.asarray(layer(data["x"], training=True)))
""")

MASKED_LAYERS = [
    "LSTM(3, recurrent_dropout=0.4, return_sequences=True)",
    "LSTM(3, dropout=0.3, recurrent_dropout=0.4, go_backwards=True, return_sequences=True)",
    "GRU(3, dropout=0.3, recurrent_dropout=0.4, return_sequences=True)",
    "GRU(3, recurrent_dropout=0.4, reset_after=False, return_sequences=True)",
]


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
def test_recurrent_dropout_applies_the_masks_where_keras_does(tmp_path):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((6, 4, 2)).astype(np.float32)
    specs, expected = [], []
    for index, expr in enumerate(MASKED_LAYERS):
        layer = eval(expr, _namespace())
        layer.build_for((None, 4, 2))
        layer.set_weights([0.6 * rng.standard_normal(w.shape) for w in layer.weights])
        out, (input_masks, state_masks) = _traced_with_masks(layer, x, layer.dropout)
        arrays = {"x": x, **{f"w{i}": w for i, w in enumerate(layer.get_weights())},
                  **{f"state_mask{g}": m.astype(np.float32) for g, m in enumerate(state_masks)}}
        if input_masks is not None:
            arrays.update({f"input_mask{g}": m.astype(np.float32) for g, m in enumerate(input_masks)})
        path = tmp_path / f"{index}.npz"
        np.savez(path, **arrays)
        specs.append(repr((expr, str(path))))
        expected.append(out)
    run_keras(MASKED_KERAS_SCRIPT, specs)
    for index, (expr, out) in enumerate(zip(MASKED_LAYERS, expected)):
        np.testing.assert_allclose(out, np.load(tmp_path / f"{index}.npz")["out"], rtol=1e-5,
                                   atol=1e-6, err_msg=expr)
