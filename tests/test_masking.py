"""Keras masking in Sequential models: Embedding(mask_zero=True) and Masking make a (batch, steps)
mask, the layers acting on each step pass it on, the recurrent layers skip the masked steps (state
carried over them; return_sequences outputs the carried state, or zeros with zero_output_for_mask
and inside Bidirectional), GlobalAveragePooling1D averages the unmasked steps, and any other layer
drops it with Keras's warning; the loss of an output that still carries the mask (a
return_sequences output) is Keras's masked mean.

Outputs, input gradients and weight gradients against a float64 numpy RNN with masking written here
(gradients by central differences, the mask held fixed), on every target, with padding at the end,
in the middle and at the start; the masked loss against numpy for each reduction, with and without
sample weights; Keras 3 parity (predictions, evaluate's loss, one SGD step, configs); training
compiled against the reference interpreter; config, JSON and file round trips; errors."""
import json
import textwrap
import warnings

import numpy as np
import pytest

from kcompile import losses as kcompile_losses
from kcompile import optimizers
from kcompile import layers as L
from kcompile.models import Sequential, load_model, model_from_json
from kcompile.utils import set_random_seed
from keras_subprocess import keras_available, run_keras
from layer_harness import Offset, central_differences
from targets import TARGETS

STEPS, FEATURES = 6, 3


# -- float64 numpy references ----------------------------------------------------------------------

def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def cell_step(kind, x_t, state, kernel, recurrent, bias):
    """One step of Keras's SimpleRNN, LSTM (gates i, f, c, o) or GRU (reset_after=True) cell."""
    if kind == "simple":
        h = np.tanh(x_t @ kernel + state[0] @ recurrent + bias)
        return h, (h,)
    if kind == "lstm":
        h, c = state
        i, f, candidate, o = np.split(x_t @ kernel + h @ recurrent + bias, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(candidate)
        h = sigmoid(o) * np.tanh(c)
        return h, (h, c)
    h = state[0]
    x_z, x_r, x_h = np.split(x_t @ kernel + bias[0], 3, axis=-1)
    r_z, r_r, r_h = np.split(h @ recurrent + bias[1], 3, axis=-1)
    z, r = sigmoid(x_z + r_z), sigmoid(x_r + r_r)
    h = z * h + (1 - z) * np.tanh(x_h + r * r_h)
    return h, (h,)


def masked_rnn(kind, x, mask, weights, sequences=False, backwards=False, zero_output=False):
    """Keras's masked loop: where a step is masked the state is the previous one (zeros before the
    first step), and the step's output is that state's h, or zeros with zero_output."""
    units = weights[1].shape[0]
    state = tuple(np.zeros((len(x), units)) for _ in range(2 if kind == "lstm" else 1))
    outputs = []
    for t in (range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])):
        output, new = cell_step(kind, x[:, t], state, *weights)
        keep = mask[:, t, None]
        state = tuple(np.where(keep, n, old) for n, old in zip(new, state))
        outputs.append(np.where(keep, output, 0.0) if zero_output else state[0])
    return np.stack(outputs, 1) if sequences else outputs[-1]


def bidirectional(kind, x, mask, weights, sequences=False, merge="concat"):
    """Keras's Bidirectional: both directions with zero_output_for_mask = return_sequences, the
    backward outputs put back in time order."""
    half = len(weights) // 2
    forward = masked_rnn(kind, x, mask, weights[:half], sequences, zero_output=sequences)
    backward = masked_rnn(kind, x, mask, weights[half:], sequences, backwards=True,
                          zero_output=sequences)
    if sequences:
        backward = backward[:, ::-1]
    return np.concatenate([forward, backward], -1) if merge == "concat" else forward + backward


def masking(x, value=0.0):
    """Keras's Masking: (the inputs with the masked steps zeroed, the mask)."""
    keep = (x != value).any(axis=-1)
    return np.where(keep[..., None], x, 0.0), keep


def padded_sequences(rng, batch=4):
    """Sample 0 unpadded, 1 padded at the end, 2 in the middle and at the end, 3 at the start."""
    x = rng.standard_normal((batch, STEPS, FEATURES))
    x[1, 4:] = 0.0
    x[2, 2:4] = 0.0
    x[2, 5] = 0.0
    x[3, :2] = 0.0
    return x.astype(np.float32)


# -- recurrent layers after Masking, against numpy --------------------------------------------------

# (layer, numpy forward(x, mask, weights), whether the output is a sequence)
RNN_CASES = {
    "simple_rnn": (lambda: L.SimpleRNN(4), lambda x, m, w: masked_rnn("simple", x, m, w), False),
    "lstm": (lambda: L.LSTM(4), lambda x, m, w: masked_rnn("lstm", x, m, w), False),
    "gru": (lambda: L.GRU(4), lambda x, m, w: masked_rnn("gru", x, m, w), False),
    "lstm_sequences": (lambda: L.LSTM(3, return_sequences=True),
                       lambda x, m, w: masked_rnn("lstm", x, m, w, sequences=True), True),
    "gru_sequences_backwards": (
        lambda: L.GRU(3, return_sequences=True, go_backwards=True),
        lambda x, m, w: masked_rnn("gru", x, m, w, sequences=True, backwards=True), True),
    "simple_rnn_zero_output": (
        lambda: L.SimpleRNN(4, return_sequences=True, zero_output_for_mask=True),
        lambda x, m, w: masked_rnn("simple", x, m, w, sequences=True, zero_output=True), True),
    # (the last output of a sample padded at the end is then zero, as Keras's outputs[-1])
    "lstm_zero_output_last": (lambda: L.LSTM(3, zero_output_for_mask=True),
                              lambda x, m, w: masked_rnn("lstm", x, m, w, zero_output=True), False),
    "bidirectional_lstm_sequences": (
        lambda: L.Bidirectional(L.LSTM(3, return_sequences=True)),
        lambda x, m, w: bidirectional("lstm", x, m, w, sequences=True), True),
    "bidirectional_gru_sum": (lambda: L.Bidirectional(L.GRU(3), merge_mode="sum"),
                              lambda x, m, w: bidirectional("gru", x, m, w, merge="sum"), False),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(RNN_CASES))
def test_recurrent_layers_skip_masked_steps_as_numpy(name, target):
    """Predictions are the numpy masked loop's; one SGD step of learning rate 1 moves the Offset
    weight by minus the summed input gradient and the layer's weights by minus theirs, against
    central differences of the float64 mse (the mask held fixed: it has no gradient).  A sequence
    output is flattened for the loss (Flatten drops the mask, so the masked steps' outputs count)."""
    make_layer, forward, sequences = RNN_CASES[name]
    rng = np.random.default_rng(1)
    x = padded_sequences(rng)
    stack = [L.Input((STEPS, FEATURES)), Offset(), L.Masking(), make_layer()]
    model = Sequential(stack + ([L.Flatten()] if sequences else []))
    layer = model.layers[2]
    weights = [(rng.uniform(0.2, 0.8, w.shape) * rng.choice([-1, 1], w.shape)).astype(np.float32)
               for w in layer.weights]
    layer.set_weights(weights)
    weights = [w.astype(np.float64) for w in weights]
    fixed_x, mask = masking(x.astype(np.float64))
    assert not mask[1, 4:].any() and not mask[2, 2:4].any() and mask[2, 4] and not mask[3, :2].any()
    want = forward(fixed_x, mask, weights)
    flat = want.reshape(len(x), -1)
    y = rng.standard_normal(flat.shape).astype(np.float32)
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # (Flatten drops the mask, with Keras's warning)
        np.testing.assert_allclose(model.predict(x, verbose=0), flat, rtol=1e-5, atol=1e-6)

        def loss(x, *weights):
            return ((forward(np.where(mask[..., None], x, 0.0), mask, weights).reshape(len(x), -1)
                     - y) ** 2).mean()

        arrays = [x.astype(np.float64)] + weights
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(-model.layers[0].w.numpy(), central_differences(loss, arrays, 0).sum(0),
                               rtol=1e-4, atol=1e-6, err_msg="input gradient")
    for i, (variable, before) in enumerate(zip(layer.weights, weights)):
        np.testing.assert_allclose(before - variable.numpy(), central_differences(loss, arrays, i + 1),
                                   rtol=1e-4, atol=1e-6, err_msg=f"{variable.path} gradient")


def test_sequence_outputs_at_masked_steps_are_the_carried_state_or_zeros():
    """The returned sequence itself (no loss on it): the carried h at masked steps by default, zeros
    with zero_output_for_mask, and the output mask passes on to a Dense after it."""
    rng = np.random.default_rng(4)
    x = padded_sequences(rng)
    for zero in (False, True):
        def lstm():
            return L.LSTM(3, return_sequences=True, zero_output_for_mask=zero)
        sequence_model = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), lstm()])
        model = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), lstm(), L.Dense(2), L.LSTM(2)])
        model.layers[1].set_weights(sequence_model.layers[1].get_weights())
        for each in (sequence_model, model):
            each.compile(loss="mse", target="reference")
        out = sequence_model.predict(x, verbose=0)
        if zero:
            assert np.all(out[1, 4:] == 0) and np.all(out[2, 2:4] == 0) and np.all(out[3, :2] == 0)
        else:
            np.testing.assert_array_equal(out[1, 4], out[1, 3])
            np.testing.assert_array_equal(out[2, 3], out[2, 1])
            assert np.all(out[3, :2] == 0)     # (the state before the first unmasked step)
        w = [v.numpy().astype(np.float64) for v in model.layers[1].weights]
        fixed, mask = masking(x.astype(np.float64))
        np.testing.assert_allclose(out, masked_rnn("lstm", fixed, mask, w, True, zero_output=zero),
                                   rtol=1e-5, atol=1e-6)
        # the last LSTM sees the mask through Dense: its state is carried over the masked steps
        dense, last = model.layers[2], model.layers[3]
        sequence = np.asarray(out, np.float64) @ dense.kernel.numpy() + dense.bias.numpy()
        want = masked_rnn("lstm", sequence, mask, [v.numpy().astype(np.float64) for v in last.weights])
        np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


# -- Embedding(mask_zero=True), mask propagation, GlobalAveragePooling1D ---------------------------

VOCABULARY = 7


def padded_ids(rng, batch=5):
    ids = rng.integers(1, VOCABULARY, (batch, STEPS))
    ids[1, 4:] = 0
    ids[2, 1:3] = 0
    ids[3, :3] = 0
    ids[4, 2] = 0
    return ids.astype(np.float32)


def _dense(x, kernel, bias):
    return x @ kernel + bias


def _layer_norm(x, gamma, beta, epsilon=1e-3):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + epsilon) * gamma + beta


# (layers after the Embedding, numpy forward(embedded, mask, weights after the table))
EMBEDDING_CASES = {
    "average_pooling": (
        lambda: [L.GlobalAveragePooling1D(), L.Dense(2)],
        lambda e, m, w: _dense((e * m[..., None]).sum(1) / m.sum(1, keepdims=True), *w)),
    "average_pooling_keepdims": (
        lambda: [L.GlobalAveragePooling1D(keepdims=True), L.Flatten(), L.Dense(2)],
        lambda e, m, w: _dense((e * m[..., None]).sum(1) / m.sum(1, keepdims=True), *w)),
    "dense_then_lstm": (
        lambda: [L.Dense(4, activation="tanh"), L.Dropout(0.0), L.LSTM(3), L.Dense(2)],
        lambda e, m, w: _dense(masked_rnn("lstm", np.tanh(_dense(e, *w[:2])), m, w[2:5]), *w[5:])),
    "time_distributed_layer_norm_gru": (
        lambda: [L.TimeDistributed(L.Dense(4)), L.LayerNormalization(), L.GRU(3)],
        lambda e, m, w: masked_rnn("gru", _layer_norm(_dense(e, *w[:2]), *w[2:4]), m, w[4:])),
    "bidirectional_then_pooling": (
        lambda: [L.Bidirectional(L.SimpleRNN(2, return_sequences=True)),
                 L.GlobalAveragePooling1D()],
        lambda e, m, w: (lambda s: (s * m[..., None]).sum(1) / m.sum(1, keepdims=True))(
            bidirectional("simple", e, m, w, sequences=True))),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(EMBEDDING_CASES))
def test_embedding_mask_zero_reaches_the_layers_after_it(name, target):
    """Embedding(mask_zero=True): ids 0 are masked for the layers after it, through Dense, Dropout,
    TimeDistributed and LayerNormalization; predictions and every weight's gradient (one SGD step)
    against numpy and central differences."""
    make_layers, forward = EMBEDDING_CASES[name]
    rng = np.random.default_rng(2)
    ids = padded_ids(rng)
    model = Sequential([L.Input((STEPS,), dtype="int32"), L.Embedding(VOCABULARY, 3, mask_zero=True)]
                       + make_layers())
    weights = [(rng.uniform(0.2, 0.8, w.shape) * rng.choice([-1, 1], w.shape)).astype(np.float32)
               for w in model.weights]
    model.set_weights(weights)
    weights = [w.astype(np.float64) for w in weights]
    mask = ids != 0

    def predict(table, *rest):
        return forward(table[ids.astype(int)], mask, list(rest))

    want = predict(*weights)
    y = rng.standard_normal(want.shape).astype(np.float32)
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    np.testing.assert_allclose(model.predict(ids, verbose=0), want, rtol=1e-5, atol=1e-6)

    def loss(*weights):
        return ((predict(*weights) - y) ** 2).mean()

    model.fit(ids, y, batch_size=len(ids), epochs=1, shuffle=False, verbose=0)
    for i, (variable, before) in enumerate(zip(model.weights, weights)):
        np.testing.assert_allclose(before - variable.numpy(), central_differences(loss, weights, i),
                                   rtol=1e-4, atol=1e-6, err_msg=f"{variable.path} gradient")


def test_global_average_pooling_of_a_masked_sequence_is_the_mean_of_its_unmasked_steps():
    rng = np.random.default_rng(3)
    x = padded_sequences(rng)
    model = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), L.GlobalAveragePooling1D()])
    keep = (x != 0).any(-1)
    want = np.stack([x[i][keep[i]].astype(np.float64).mean(0) for i in range(len(x))])
    for target in TARGETS:
        model.compile(loss="mse", target=target)
        np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-6, atol=1e-7)
    # Masking also sets the masked steps' features to zero (they equal mask_value -1 here)
    shifted = np.where(keep[..., None], x, -1.0).astype(np.float32)
    masked = Sequential([L.Input((STEPS, FEATURES)), L.Masking(mask_value=-1.0)])
    np.testing.assert_array_equal(masked.predict(shifted, verbose=0), x)


# -- Keras 3 parity ------------------------------------------------------------------------------

# (Keras layer expressions, written alike in both APIs; input shape; integer ids; one SGD step)
KERAS_MODELS = {
    "embedding_lstm": (["Embedding(9, 16, mask_zero=True)", "LSTM(8)",
                        "Dense(1, activation='sigmoid')"], (STEPS,), True, True),
    "masking_gru_pooling": (["Masking(mask_value=0.0)", "GRU(8, return_sequences=True)",
                             "GlobalAveragePooling1D()", "Dense(3, activation='softmax')"],
                            (STEPS, FEATURES), False, True),
    "embedding_bidirectional": (["Embedding(9, 4, mask_zero=True)",
                                 "Bidirectional(LSTM(3, return_sequences=True))",
                                 "TimeDistributed(Dense(4))", "Bidirectional(GRU(3))", "Dense(2)"],
                                (STEPS,), True, True),
    # (a masked sequence output: Keras's loss is the mean over the unmasked steps)
    "embedding_tagger": (["Embedding(9, 4, mask_zero=True)", "LSTM(3, return_sequences=True)",
                          "TimeDistributed(Dense(2))"], (STEPS,), True, True),
    # (outputs that are masked sequences: predictions and loss only; the last recurrent layer's outputs at
    # masked steps are seen, an earlier one's are skipped by the next)
    "masking_sequences": (["Masking(mask_value=0.0)",
                           "SimpleRNN(4, return_sequences=True, go_backwards=True)",
                           "LSTM(3, return_sequences=True)", "Dense(2)"],
                          (STEPS, FEATURES), False, False),
    "masking_zero_output": (["Masking()", "GRU(3, return_sequences=True, zero_output_for_mask=True)"],
                            (STEPS, FEATURES), False, False),
    "masking_bidirectional": (["Masking()", "Bidirectional(GRU(2, return_sequences=True))"],
                              (STEPS, FEATURES), False, False),
    # (Keras's unrolled loop outputs the carried state at masked steps even where Bidirectional
    # sets zero_output_for_mask)
    "masking_unrolled_bidirectional": (["Masking()",
                                        "Bidirectional(LSTM(2, return_sequences=True, unroll=True))",
                                        "Dense(2)"], (STEPS, FEATURES), False, False),
}

KERAS_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, keras
    from keras.layers import *
    for spec in sys.argv[1:]:
        exprs, shape, ids, train, path = eval(spec)
        data = np.load(path)
        x = data["x"].astype("int32") if ids else data["x"]
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape, dtype="int32" if ids else "float32")]
                                 + [eval(e) for e in exprs])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="mse",
                      metrics=["mae"])
        weights = model.get_weights()
        results = dict(prediction=model.predict(x, verbose=0),
                       loss=model.evaluate(x, data["y"], batch_size=len(x), verbose=0))
        if train:
            model.fit(x, data["y"], batch_size=len(x), epochs=1, shuffle=False, verbose=0)
            results.update({f"t{i}": w for i, w in enumerate(model.get_weights())})
        configs = [layer.get_config() for layer in model.layers]
        np.savez(path, configs=json.dumps(configs), **{f"w{i}": w for i, w in enumerate(weights)},
                 **results)
""")


def _keras_model(name):
    exprs, shape, ids, _ = KERAS_MODELS[name]
    namespace = {k: getattr(L, k) for k in dir(L) if not k.startswith("_")}
    return Sequential([L.Input(shape=shape, dtype="int32" if ids else "float32")]
                      + [eval(e, namespace) for e in exprs])


def _keras_data(name):
    _, shape, ids, _ = KERAS_MODELS[name]
    rng = np.random.default_rng(5)
    x = padded_ids(rng, 6) if ids else padded_sequences(rng, 6)
    x[5] = x[0]
    if ids:
        x[5, -1] = 0
    else:
        x[5, -1] = 0.0
    outputs = _keras_model(name).output_shape[1:]
    return x, rng.uniform(0, 1, (6,) + outputs).astype(np.float32)


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keras")
    specs = []
    for name, (exprs, shape, ids, train) in KERAS_MODELS.items():
        x, y = _keras_data(name)
        path = directory / f"{name}.npz"
        np.savez(path, x=x, y=y)
        specs.append(repr((exprs, shape, ids, train, str(path))))
    run_keras(KERAS_SCRIPT, specs)
    return {name: np.load(directory / f"{name}.npz") for name in KERAS_MODELS}


def _comparable(config):
    """A layer config without its dtype, serialized objects (initializers) by class name (Keras's
    also carry 'module', 'registered_name' and 3.15's input_axes, compared elsewhere)."""
    return {k: (v["class_name"] if isinstance(v, dict) and "class_name" in v else v)
            for k, v in config.items() if k != "dtype"}


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_agrees_with_keras(name, keras_results):
    keras_out = keras_results[name]
    x, y = _keras_data(name)
    model = _keras_model(name)
    for layer, keras_config in zip(model.layers, json.loads(str(keras_out["configs"]))):
        ours = json.loads(json.dumps(layer.get_config()))
        keras_config["name"] = ours["name"]      # (Keras numbers names per process)
        if type(layer).__name__ in ("Embedding", "Masking", "LSTM", "GRU", "SimpleRNN"):
            # (Keras writes the constraints and quantization settings kcompile refuses)
            for key in ("embeddings_constraint", "quantization_config", "kernel_regularizer",
                        "recurrent_regularizer", "bias_regularizer", "kernel_constraint",
                        "recurrent_constraint", "bias_constraint", "activity_regularizer"):
                if key not in ours:
                    keras_config.pop(key, None)
            if type(layer).__name__ == "SimpleRNN":
                ours.pop("seed")       # (Keras 3's SimpleRNN config has none; kcompile's has)
            assert _comparable(ours) == _comparable(keras_config), type(layer).__name__
    model.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.5), loss="mse", metrics=["mae"],
                  target=TARGETS[-1])
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
    # (on a masked sequence output, the loss and mae are means over the unmasked steps)
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=len(x), verbose=0),
                               keras_out["loss"], rtol=1e-5)
    if KERAS_MODELS[name][3]:
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for i, got in enumerate(model.get_weights()):
            np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                       err_msg=model.weights[i].path)


# -- compiled against interpreted training; round trips ------------------------------------------

@pytest.mark.skipif(len(TARGETS) < 2, reason="the LLVM target is not available")
@pytest.mark.parametrize("name", ["embedding_lstm", "masking_gru_pooling"])
def test_training_compiled_matches_the_reference_interpreter(name):
    x, y = _keras_data(name)
    results = {}
    for target in TARGETS:
        set_random_seed(7)
        model = _keras_model(name)
        model.compile(optimizer="adam", loss="mse", target=target)
        history = model.fit(x, y, batch_size=3, epochs=3, shuffle=False, verbose=0)
        results[target] = (history.history["loss"], model.get_weights())
    (loss_a, weights_a), (loss_b, weights_b) = results.values()
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_configs_json_and_saved_files_keep_the_masks(tmp_path):
    assert L.Embedding(5, 2, mask_zero=True).get_config()["mask_zero"] is True
    assert L.Embedding.from_config(L.Embedding(5, 2, mask_zero=True).get_config()).mask_zero
    assert L.Masking(mask_value=-1.0).get_config()["mask_value"] == -1.0
    assert L.deserialize(json.loads(json.dumps(L.serialize(L.Masking(2.5))))).mask_value == 2.5
    assert L.LSTM(2, zero_output_for_mask=True).get_config()["zero_output_for_mask"] is True
    for name in ("embedding_bidirectional", "masking_gru_pooling"):
        set_random_seed(1)
        model = _keras_model(name)
        x, y = _keras_data(name)
        want = model.predict(x, verbose=0)
        clone = model_from_json(model.to_json())
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone.predict(x, verbose=0), want)
        model.compile(optimizer="sgd", loss="mse", target="reference")
        model.save(tmp_path / f"{name}.keras")
        loaded = load_model(tmp_path / f"{name}.keras")
        assert [a.get_config() for a in loaded.layers] == [b.get_config() for b in model.layers]
        np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-6, atol=1e-7)


# -- what drops, refuses or passes the mask ------------------------------------------------------

def test_a_layer_without_masking_drops_the_mask_with_keras_warning():
    """Conv1D does not support masking in Keras: the mask stops there (with Keras's warning) and
    the LSTM after it reads every step, as in a model without the mask."""
    rng = np.random.default_rng(6)
    ids = padded_ids(rng)
    masked = Sequential([L.Input((STEPS,), dtype="int32"), L.Embedding(VOCABULARY, 3, mask_zero=True),
                         L.Conv1D(2, 1), L.LSTM(2)])
    plain = Sequential([L.Input((STEPS,), dtype="int32"), L.Embedding(VOCABULARY, 3),
                        L.Conv1D(2, 1), L.LSTM(2)])
    plain.set_weights(masked.get_weights())
    for model in (masked, plain):
        # (the warning comes while tracing, which a warm compile cache skips for 'llvm')
        model.compile(loss="mse", target="reference")
    with pytest.warns(UserWarning, match="does not support masking and will therefore destroy"):
        got = masked.predict(ids, verbose=0)
    np.testing.assert_array_equal(got, plain.predict(ids, verbose=0))


def test_custom_layers_receive_and_pass_on_the_mask():
    """A user's call(inputs, mask=None) gets the mask; supports_masking = True passes it on."""
    seen = []

    class Gate(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.supports_masking = True

        def compute_output_shape(self, input_shape):
            return input_shape

        def call(self, inputs, mask=None):
            seen.append(mask is not None)
            return inputs * 2.0

    rng = np.random.default_rng(8)
    x = padded_sequences(rng)
    model = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), Gate(), L.SimpleRNN(2)])
    rnn = model.layers[2]
    fixed, mask = masking(x.astype(np.float64))
    want = masked_rnn("simple", 2 * fixed, mask, [w.numpy().astype(np.float64) for w in rnn.weights])
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    assert seen and all(seen)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
def test_the_loss_of_a_masked_output_counts_the_unmasked_steps(reduction):
    """Keras's apply_mask: the mask weights each step's loss (times the sample weights); the
    default mean is over the unmasked steps (total / valid), the other reductions take the mask
    as it is."""
    rng = np.random.default_rng(10)
    x = padded_sequences(rng)
    model = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), L.Dense(2)])
    model.compile(optimizer="sgd", loss=kcompile_losses.MeanSquaredError(reduction=reduction),
                  target="reference")
    y = rng.standard_normal((4, STEPS, 2)).astype(np.float32)
    weights = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
    fixed, mask = masking(x.astype(np.float64))
    dense = model.layers[1]
    per_step = ((fixed @ dense.kernel.numpy() + dense.bias.numpy() - y) ** 2).mean(-1)
    for sample_weight in (None, weights):
        w = mask * (1.0 if sample_weight is None else sample_weight[:, None])
        if reduction == "sum_over_batch_size":
            want = (per_step * w).sum() / mask.sum()
        elif reduction == "sum":
            want = (per_step * w).sum()
        else:
            want = (per_step * w).sum() / w.sum()
        got = model.evaluate(x, y, sample_weight=sample_weight, batch_size=4, verbose=0)
        assert got == pytest.approx(want, rel=1e-5), sample_weight


def test_mean_metrics_of_a_masked_output_count_the_unmasked_steps():
    """Keras's MeanMetricWrapper weighs the values by y_pred's mask (times the sample weights of
    a weighted metric); other metrics on a masked output are refused, not computed unmasked."""
    rng = np.random.default_rng(11)
    x = padded_sequences(rng)
    model = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), L.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"], weighted_metrics=["mse"],
                  target="reference")
    y = rng.standard_normal((4, STEPS, 2)).astype(np.float32)
    weights = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
    fixed, mask = masking(x.astype(np.float64))
    dense = model.layers[1]
    error = fixed @ dense.kernel.numpy() + dense.bias.numpy() - y
    absolute, squared = np.abs(error).mean(-1), (error ** 2).mean(-1)
    weighted = mask * weights[:, None]
    got = model.evaluate(x, y, sample_weight=weights, batch_size=4, verbose=0, return_dict=True)
    assert got["mae"] == pytest.approx((absolute * mask).sum() / mask.sum(), rel=1e-5)
    assert got["mse"] == pytest.approx((squared * weighted).sum() / weighted.sum(), rel=1e-5)
    assert got["loss"] == pytest.approx((squared * weighted).sum() / mask.sum(), rel=1e-5)
    auc = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), L.Dense(1, activation="sigmoid")])
    auc.compile(optimizer="sgd", loss="binary_crossentropy", metrics=["auc"], target="reference")
    with pytest.raises(NotImplementedError, match="metric 'auc' on a model output that carries"):
        auc.evaluate(x, np.ones((4, STEPS, 1), np.float32), verbose=0)


def test_masked_layers_kcompile_refuses():
    rng = np.random.default_rng(9)
    x = padded_sequences(rng)
    # Keras refuses a (batch, steps) mask on a softmax of (batch, steps, units)
    softmax = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), L.Softmax()])
    with pytest.raises(ValueError, match="mask.*must be broadcastable"):
        softmax.predict(x, verbose=0)
    # BatchNormalization's statistics over the unmasked steps only
    batch_norm = Sequential([L.Input((STEPS, FEATURES)), L.Masking(), L.BatchNormalization(),
                             L.LSTM(2)])
    batch_norm.compile(optimizer="sgd", loss="mse", target="reference")
    with pytest.raises(NotImplementedError, match="BatchNormalization.*masked"):
        batch_norm.fit(x, np.zeros((4, 2), np.float32), verbose=0)


def test_masking_arguments_and_namespace():
    with pytest.raises(ValueError, match="mask_value"):
        L.Masking(mask_value="pad")
    with pytest.raises(ValueError, match="mask_value"):
        L.Masking(mask_value=None)
    assert "Masking" in L.__all__ and L._CLASSES["Masking"] is L.Masking
    assert "Masking" not in L._KERAS_ONLY
    assert L.Masking().compute_output_shape((None, 4, 3)) == (None, 4, 3)
