"""Recurrent layers (SimpleRNN, LSTM, GRU): the layer harness on both targets, the recurrences against
numpy written from Keras's cell equations, gradients through time against finite differences, Keras 3
parity (predictions and one SGD step with Keras's weights; skipped without Keras), and the graph an
unrolled layer traces to."""
import json
import textwrap

import numpy as np
import pytest

import ir
from ir import build as B

from kcompile import layers as L
from kcompile import optimizers
from kcompile.layers import GRU, LSTM, Dense, Input, SimpleRNN
from kcompile.layers.layer import TraceScope
from kcompile.initializers import Orthogonal
from kcompile.models import Sequential, load_model
from kcompile.utils import set_random_seed

from layer_harness import run_layer_test
from keras_subprocess import keras_available, run_keras_models

STEPS, FEATURES = 3, 5


# -- the harness: shapes, weights, config round trip, a training step on both targets ---------------

@pytest.mark.parametrize("make_layer, output_shape, weights", [
    (lambda: SimpleRNN(4), (4,), 3),
    (lambda: SimpleRNN(3, activation="relu", use_bias=False, return_sequences=True), (STEPS, 3), 2),
    (lambda: LSTM(3, return_sequences=True, go_backwards=True), (STEPS, 3), 3),
    (lambda: GRU(4), (4,), 3),
    (lambda: GRU(3, reset_after=False, return_sequences=True), (STEPS, 3), 3),
], ids=["simple_rnn", "simple_rnn_sequences", "lstm_backwards_sequences", "gru",
        "gru_reset_before_sequences"])
def test_layer_harness(make_layer, output_shape, weights):
    run_layer_test(make_layer, (STEPS, FEATURES), output_shape, weights)


# -- semantics against numpy ---------------------------------------------------------------------

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def numpy_rnn(kind, x, weights, units, go_backwards=False, reset_after=True):
    """Keras 3's cells, step by step in float64: the sequence of outputs."""
    kernel, recurrent = weights[0].astype(np.float64), weights[1].astype(np.float64)
    bias = weights[2].astype(np.float64) if len(weights) > 2 else None
    h = np.zeros((x.shape[0], units))
    c = np.zeros_like(h)
    outputs = []
    steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    for t in steps:
        x_t = x[:, t].astype(np.float64)
        if kind == "simple_rnn":
            h = np.tanh(x_t @ kernel + (0 if bias is None else bias) + h @ recurrent)
        elif kind == "lstm":
            z = x_t @ kernel + h @ recurrent + (0 if bias is None else bias)
            i, f, g, o = np.split(z, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        else:
            input_bias, recurrent_bias = ((bias[0], bias[1]) if reset_after else (bias, 0))
            x_z, x_r, x_h = np.split(x_t @ kernel + input_bias, 3, axis=1)
            if reset_after:
                r_z, r_r, r_h = np.split(h @ recurrent + recurrent_bias, 3, axis=1)
            else:
                r_z, r_r = np.split(h @ recurrent[:, :2 * units], 2, axis=1)
            z, r = _sigmoid(x_z + r_z), _sigmoid(x_r + r_r)
            hh = np.tanh(x_h + (r * r_h if reset_after else (r * h) @ recurrent[:, 2 * units:]))
            h = z * h + (1 - z) * hh
        outputs.append(h)
    return np.stack(outputs, axis=1)


@pytest.mark.parametrize("kind, kwargs", [
    ("simple_rnn", {}), ("lstm", {}), ("lstm", {"go_backwards": True}), ("gru", {}),
    ("gru", {"reset_after": False}), ("gru", {"go_backwards": True}),
])
def test_recurrences_match_numpy(kind, kwargs):
    rng = np.random.default_rng(1)
    cls = {"simple_rnn": SimpleRNN, "lstm": LSTM, "gru": GRU}[kind]
    x = rng.standard_normal((4, 6, FEATURES)).astype(np.float32)
    layer = cls(5, return_sequences=True, **kwargs)
    layer.build((None, 6, FEATURES))
    weights = [rng.standard_normal(w.shape).astype(np.float32) * 0.5 for w in layer.get_weights()]
    layer.set_weights(weights)
    expected = numpy_rnn(kind, x, weights, 5, **kwargs)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    last = cls(5, **kwargs)
    last.build((None, 6, FEATURES))
    last.set_weights(weights)
    np.testing.assert_allclose(last(x), expected[:, -1], rtol=1e-5, atol=1e-6)


def test_weights_have_keras_shapes_and_initial_values():
    set_random_seed(0)
    lstm, gru, gru_before, rnn = LSTM(8), GRU(8), GRU(8, reset_after=False), SimpleRNN(8)
    for layer in (lstm, gru, gru_before, rnn):
        layer.build((None, 4, 6))
    assert [w.path for w in lstm.weights] == ["lstm/kernel", "lstm/recurrent_kernel", "lstm/bias"]
    assert [w.shape for w in lstm.weights] == [(6, 32), (8, 32), (32,)]
    assert [w.shape for w in gru.weights] == [(6, 24), (8, 24), (2, 24)]
    assert [w.shape for w in gru_before.weights] == [(6, 24), (8, 24), (24,)]
    assert [w.shape for w in rnn.weights] == [(6, 8), (8, 8), (8,)]
    # unit_forget_bias: the forget gate (the second block of i, f, c, o) starts at one
    np.testing.assert_array_equal(lstm.bias.numpy(), np.repeat([0.0, 1.0, 0.0, 0.0], 8))
    np.testing.assert_array_equal(gru.bias.numpy(), 0)
    # orthogonal recurrent kernels: orthonormal rows (8 x 32) or an orthogonal square (8 x 8)
    for layer in (lstm, gru, rnn):
        u = layer.recurrent_kernel.numpy().astype(np.float64)
        np.testing.assert_allclose(u @ u.T, np.eye(8), atol=1e-5)
    w = Orthogonal(gain=2.0, seed=3)((5, 3)).astype(np.float64)
    np.testing.assert_allclose(w.T @ w, 4 * np.eye(3), atol=1e-5)


# -- gradients through time ------------------------------------------------------------------------

@pytest.mark.parametrize("make_layer", [
    lambda: SimpleRNN(3, return_sequences=True), lambda: LSTM(3), lambda: GRU(3),
    lambda: GRU(2, reset_after=False, return_sequences=True, go_backwards=True),
], ids=["simple_rnn", "lstm", "gru", "gru_reset_before"])
def test_gradients_through_time_match_finite_differences(make_layer):
    """The layer traced in float64: d(sum(out * w)) / d(weights and inputs) against central
    differences on the interpreter."""
    layer = make_layer()
    layer.build((None, STEPS, 2))
    rng = np.random.default_rng(2)
    x = B.arg("x", "f64", (None, STEPS, 2))
    args = {v: B.arg(v.path, "f64", v.shape) for v in layer.weights}
    with TraceScope(args):
        out = layer(x)
    w = B.arg("w", "f64", out.shape)
    loss = B.reduce_sum(B.mul(out, w))
    wrt = [x] + list(args.values())
    grads = ir.gradients(loss, wrt)
    inputs = [x, w] + list(args.values())
    grad_graph = ir.Graph("g", inputs, [(f"d{i}", g) for i, g in enumerate(grads)])
    loss_graph = ir.Graph("l", inputs, [("loss", loss)])
    feeds = {"x": rng.standard_normal((2, STEPS, 2)), "w": rng.standard_normal((2,) + out.shape[1:])}
    feeds.update({v.path: rng.standard_normal(v.shape) * 0.7 for v in layer.weights})
    analytic = ir.run(grad_graph, feeds)
    for i, node in enumerate(wrt):
        name = node.attr("name")
        numeric = np.zeros_like(feeds[name])
        for j in range(numeric.size):
            values = []
            for step in (1e-6, -1e-6):
                moved = feeds[name].copy()
                moved.reshape(-1)[j] += step
                values.append(float(ir.run(loss_graph, {**feeds, name: moved})["loss"]))
            numeric.reshape(-1)[j] = (values[0] - values[1]) / 2e-6
        np.testing.assert_allclose(analytic[f"d{i}"], numeric, rtol=1e-5, atol=1e-7,
                                   err_msg=f"d loss / d {name}")


# -- the traced graph ------------------------------------------------------------------------------

def test_stacked_layers_read_each_step_without_a_concat():
    """The second layer takes step t of the first one's sequence output: the builder resolves
    slice(concat(h_1 .. h_T), t) to h_t, so no concat survives in the predict graph."""
    model = Sequential([Input(shape=(4, 3)), LSTM(5, return_sequences=True), GRU(2)])
    model.compile(optimizer="sgd", loss="mse", target="reference")
    x = np.random.default_rng(3).standard_normal((2, 4, 3)).astype(np.float32)
    model.predict(x, verbose=0)
    graph = model._program("predict").graph
    assert not [n for n in graph.nodes() if n.op == "concat"]
    first, second = model.layers
    expected = second(first(x))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-7)


def test_first_step_skips_the_recurrent_matmul():
    x = B.arg("x", "f32", (None, 4, 3))
    layer = LSTM(2)
    layer.build(x.shape)
    with TraceScope({v: B.arg(v.path, "f32", v.shape) for v in layer.weights}):
        out = layer(x)
    matmuls = [n for n in ir.Graph("g", [x], [("y", out)]).nodes() if n.op == "matmul"]
    assert len(matmuls) == 4 + 3       # x_t @ kernel for every step, h @ recurrent_kernel from step 2


def test_dropout_masks_inputs_in_training_only():
    set_random_seed(4)
    x = np.random.default_rng(4).standard_normal((64, 3, 6)).astype(np.float32)
    layer = LSTM(4, dropout=0.5, seed=1)
    plain = layer(x)
    np.testing.assert_array_equal(plain, layer(x, training=False))
    trained = layer(x, training=True)
    assert not np.allclose(trained, plain)
    # the one mask of the layer, shared by every step: a zero weight row is a dropped feature
    kernel, recurrent, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), recurrent, bias])
    np.testing.assert_array_equal(layer(x, training=True), layer(x))


def test_in_place_update_read_through_slices():
    """An in-place update that reads its own input through slice/concat must not overwrite what
    the loop still reads (memory.py computes it in the workspace and copies it after)."""
    from codegen.runtime import CompiledRunner
    from ir import build_seq as S
    w = B.arg("w", "f32", (6,))
    x = B.arg("x", "f32", (None, 6))
    rotated = S.concat([S.slice(w, 1, 6, 0), S.slice(w, 0, 1, 0)], 0)
    graph = ir.Graph("step", [x, w], [("y", B.add(x, w)), ("w", B.add(rotated, 1.0))])
    state = {"w": np.arange(6, dtype=np.float32)}
    expected = ir.run(graph, {"x": np.zeros((2, 6), np.float32), "w": state["w"].copy()})["w"]
    CompiledRunner(graph, state).run({"x": np.zeros((2, 6), np.float32)})
    np.testing.assert_array_equal(state["w"], expected)


# -- configs, saving, errors -----------------------------------------------------------------------

@pytest.mark.parametrize("layer", [
    SimpleRNN(3, activation="relu", dropout=0.1, recurrent_dropout=0.2, go_backwards=True, seed=5),
    LSTM(3, recurrent_activation="tanh", unit_forget_bias=False, return_sequences=True),
    GRU(3, reset_after=False, use_bias=False, recurrent_initializer=Orthogonal(gain=0.5, seed=2)),
], ids=["simple_rnn", "lstm", "gru"])
def test_config_round_trips_through_json_and_deserialize(layer):
    config = json.loads(json.dumps(L.serialize(layer)))
    clone = L.deserialize(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_saved_model_reloads_with_its_recurrent_layers(tmp_path):
    model = Sequential([Input(shape=(3, 2)), GRU(3, return_sequences=True), LSTM(2), Dense(1)])
    model.compile(optimizer="adam", loss="mse", target="reference")
    x = np.random.default_rng(5).standard_normal((4, 3, 2)).astype(np.float32)
    model.fit(x, np.ones((4, 1), np.float32), epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    again = load_model(path)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_unsupported_arguments_and_bad_inputs_say_what_to_do():
    with pytest.raises(NotImplementedError, match="return_sequences=True"):
        LSTM(2, return_state=True)
    with pytest.raises(NotImplementedError, match="stateful"):
        GRU(2, stateful=True)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        LSTM(2, recurrent_dropout=1.0)
    with pytest.raises(ValueError, match="units"):
        SimpleRNN(0)
    with pytest.raises(ValueError, match="dropout"):
        GRU(2, dropout=1.5)
    with pytest.raises(ValueError, match=r"\(batch, timesteps, features\)"):
        Sequential([Input(shape=(6,)), LSTM(2)])
    layer = GRU(2)
    layer.build((None, 3, 4))
    with pytest.raises(ValueError, match="expected 4 features"):
        layer.compute_output_shape((None, 3, 5))


# -- Keras 3 parity --------------------------------------------------------------------------------


# (name, layer expressions written alike in both APIs, input shape)
KERAS_MODELS = {
    "simple_rnn": (["SimpleRNN(4, return_sequences=True)", "SimpleRNN(3, go_backwards=True)"], (3, 2)),
    "lstm": (["LSTM(3)", "Dense(2)"], (3, 2)),
    "gru": (["GRU(3, return_sequences=True)", "Dense(2)"], (3, 2)),
}

# Runs in a child process (Keras and JAX stay out of the test process), once for every model.
KERAS_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, keras
    from keras.layers import *
    for spec in sys.argv[1:]:
        exprs, shape, path = eval(spec)
        data = np.load(path)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape)] + [eval(e) for e in exprs])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
        # biases are zero at first: perturb every weight so that each one matters
        rng = np.random.default_rng(1)
        model.set_weights([w + 0.3 * rng.standard_normal(w.shape) for w in model.get_weights()])
        weights = model.get_weights()
        prediction = model.predict(data["x"], verbose=0)
        model.fit(data["x"], data["y"], batch_size=len(data["x"]), epochs=1, shuffle=False,
                  verbose=0)
        np.savez(path, prediction=prediction, after=model.predict(data["x"], verbose=0),
                 **{f"w{i}": w for i, w in enumerate(weights)},
                 **{f"t{i}": w for i, w in enumerate(model.get_weights())})
""")


def _kcompile_model(name):
    exprs, shape = KERAS_MODELS[name]
    namespace = {k: getattr(L, k) for k in dir(L) if not k.startswith("_")}
    return Sequential([L.Input(shape=shape)] + [eval(e, namespace) for e in exprs])


def _data(name):
    _, shape = KERAS_MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + shape).astype(np.float32)
    y = rng.standard_normal((6,) + _kcompile_model(name).output_shape[1:]).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    return run_keras_models(KERAS_SCRIPT, KERAS_MODELS, _data, tmp_path_factory.mktemp("keras"))


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_recurrent_layers_agree_with_keras(name, keras_results):
    keras_out = keras_results[name]
    x, y = _data(name)
    model = _kcompile_model(name)
    count = len(model.weights)
    model.set_weights([keras_out[f"w{i}"] for i in range(count)])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target="llvm")
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for i, (variable, got) in enumerate(zip(model.weights, model.get_weights())):
        np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{name}: {variable.path} after one SGD step")
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["after"], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Bidirectional (Keras parity of values: tests/test_keras_parity_nn.py)
# ----------------------------------------------------------------------------------------------

def _np_simple_rnn(x, kernel, recurrent, bias):
    """numpy SimpleRNN (tanh) over x's steps in the given order: every step's state."""
    h, out = np.zeros((len(x), kernel.shape[1])), []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ kernel + h @ recurrent + bias)
        out.append(h)
    return np.stack(out, 1)


def test_bidirectional_is_the_forward_and_the_time_reversed_backward_layer(tmp_path):
    from kcompile import load_model
    from kcompile.layers import Bidirectional
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    model = Sequential([Input(shape=(5, 3)), Bidirectional(SimpleRNN(2, return_sequences=True))])
    model.compile(optimizer="sgd", loss="mse", target="llvm")
    assert [w.path for w in model.weights] == [
        f"bidirectional/{d}_simple_rnn/{n}" for d in ("forward", "backward")
        for n in ("kernel", "recurrent_kernel", "bias")]
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in model.weights]
    model.set_weights(weights)
    forward = _np_simple_rnn(x, *weights[:3])
    backward = _np_simple_rnn(x[:, ::-1], *weights[3:])[:, ::-1]          # back in time order
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               np.concatenate([forward, backward], -1), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "bi.keras")
    loaded = load_model(tmp_path / "bi.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.layers[0].get_config()["merge_mode"] == "concat"


@pytest.mark.parametrize("target", ["llvm", "reference"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_a_backward_layer_of_other_units_concatenates_to_the_sum_of_both(target, return_sequences):
    """Bidirectional(SimpleRNN(3), backward_layer=SimpleRNN(2, go_backwards=True)): 3 + 2 outputs
    per step, the forward recurrence's and the time-reversed backward one's (numpy); an
    element-by-element merge of different units is refused when the layer is made."""
    from kcompile.layers import Bidirectional
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    layer = Bidirectional(SimpleRNN(3, return_sequences=return_sequences),
                          backward_layer=SimpleRNN(2, go_backwards=True,
                                                   return_sequences=return_sequences))
    model = Sequential([Input(shape=(5, 3)), layer])
    model.compile(optimizer="sgd", loss="mse", target=target)
    assert model.output_shape == ((None, 5, 5) if return_sequences else (None, 5))
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in model.weights]
    model.set_weights(weights)
    forward = _np_simple_rnn(x, *weights[:3])
    backward = _np_simple_rnn(x[:, ::-1], *weights[3:])
    want = (np.concatenate([forward, backward[:, ::-1]], -1) if return_sequences
            else np.concatenate([forward[:, -1], backward[:, -1]], -1))
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"needs the forward layer's units \(3\); got 2"):
        Bidirectional(SimpleRNN(3), backward_layer=SimpleRNN(2, go_backwards=True),
                      merge_mode="sum")


def test_bidirectional_refuses_what_it_cannot_wrap():
    from kcompile.layers import Bidirectional, Dense
    with pytest.raises(ValueError, match="wraps a recurrent layer"):
        Bidirectional(Dense(3))
    with pytest.raises(ValueError, match="merge_mode"):
        Bidirectional(LSTM(3), merge_mode="max")
    with pytest.raises(NotImplementedError, match="two outputs"):
        Bidirectional(LSTM(3), merge_mode=None)


def test_time_distributed_dense_is_dense_on_every_step_and_saves(tmp_path):
    from kcompile import load_model
    from kcompile.layers import Conv2D, Dense, TimeDistributed
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    model = Sequential([Input(shape=(4, 5)), TimeDistributed(Dense(2, activation="relu")),
                        TimeDistributed(Dense(2, name="dense"))])
    model.compile(optimizer="sgd", loss="mse", target="llvm")
    assert [w.path for w in model.weights] == [
        "time_distributed/dense/kernel", "time_distributed/dense/bias",
        "time_distributed_1/dense/kernel", "time_distributed_1/dense/bias"]
    k1, b1, k2, b2 = model.get_weights()
    expected = np.stack([np.maximum(x[:, t] @ k1 + b1, 0) @ k2 + b2 for t in range(4)], 1)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "td.keras")
    np.testing.assert_array_equal(load_model(tmp_path / "td.keras").predict(x, verbose=0),
                                  model.predict(x, verbose=0))
    with pytest.raises(NotImplementedError, match="TimeDistributed\\(Conv2D\\) is not supported"):
        TimeDistributed(Conv2D(2, 3))
    with pytest.raises(NotImplementedError, match="Softmax and LayerNormalization over axis -1"):
        TimeDistributed(L.Softmax(axis=1))
    with pytest.raises(ValueError, match="timesteps"):
        TimeDistributed(Dense(2)).compute_output_shape((None, 5))


@pytest.mark.parametrize("target", ["llvm", "reference"])
def test_wrapped_layers_of_two_wrappers_draw_masks_of_their_own(target):
    """Two TimeDistributed(Dropout(0.5)) each hold a layer named 'dropout', and two
    Bidirectional(SimpleRNN(dropout=0.5)) a 'forward_simple_rnn' and a 'backward_simple_rnn':
    their random streams had been the same, so the second Dropout dropped what the first did and
    doubled the survivors again (an expected sum of 8000 below instead of 4000, Keras's).  Each
    now draws its own mask: the four streams differ, and the sum is about n (keep probability 1/4
    with scale 4 per unit: standard deviation about 110)."""
    set_random_seed(0)
    n = 4000
    model = Sequential([Input((1, n)), L.TimeDistributed(L.Dropout(0.5)),
                        L.TimeDistributed(L.Dropout(0.5)),
                        L.TimeDistributed(Dense(1, use_bias=False, kernel_initializer="ones"))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss="mse", target=target)
    streams = [line for line in model.dump_ir("optimized").splitlines() if "random_uniform" in line]
    assert len(streams) == 2, streams
    x, y = np.ones((1, 1, n), np.float32), np.zeros((1, 1, 1), np.float32)
    for _ in range(3):
        total = float(np.sqrt(model.train_on_batch(x, y)))     # mse of the one output against 0
        assert abs(total - n) < 600, total

    model = Sequential([Input((5, 8)),
                        L.Bidirectional(SimpleRNN(4, dropout=0.5, return_sequences=True)),
                        L.Bidirectional(SimpleRNN(4, dropout=0.5, return_sequences=True)), Dense(1)])
    model.compile(optimizer="sgd", loss="mse", target=target)
    streams = {line.split("stream=")[1] for line in model.dump_ir("optimized").splitlines()
               if "random_uniform" in line}
    assert len(streams) == 4, streams
