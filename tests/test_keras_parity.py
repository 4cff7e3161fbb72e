"""Parity with Keras 3 where it is installed: the same model built in both, with
the same weights, must predict the same and take the same training steps.

Each row of `MODELS` builds its layers, loss and optimizer from a module namespace `M`, which is
either `kcompile` or `keras`, so one description serves both libraries:

    ParityCase("conv", lambda M: [M.layers.Conv2D(4, 3), M.layers.Flatten(), M.layers.Dense(2)],
               input_shape=(6, 6, 1))

Add a row for every new layer, activation, loss or optimizer (`convert_weights` converts one layer's
weights where the two libraries lay them out differently).  `METRICS` does the same for metric
objects, updated eagerly in both.  kcompile runs on the reference interpreter here (it decides the
semantics; every other target is tested against it), and a few rows also on LLVM.

Keras runs on PyTorch when it is installed (eager ops, no compilation per op: the whole file takes
seconds), else on JAX; KERAS_BACKEND, when set, decides.
"""
import importlib.util
import os
import sys
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

_saved_backend = os.environ.get("KERAS_BACKEND")
if _saved_backend is None and "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch" if importlib.util.find_spec("torch") else "jax"
try:
    keras = pytest.importorskip(
        "keras", reason="Keras 3 (with PyTorch or JAX: pip install torch keras) is not installed; "
                        "these tests compare kcompile's numerics with it")
finally:  # the choice is made once keras is imported; leave the environment as it was
    if _saved_backend is None:
        os.environ.pop("KERAS_BACKEND", None)
if not keras.__version__.startswith("3."):
    pytest.skip(f"Keras 3 is needed for the parity tests; found {keras.__version__}",
                allow_module_level=True)

import kcompile  # noqa: E402
from kcompile.models import Sequential  # noqa: E402


def _available_targets():
    try:
        import codegen.runtime  # noqa: F401
    except ImportError:
        return []
    return ["llvm"]


def sgd(M):
    return M.optimizers.SGD(learning_rate=0.1)


@dataclass
class ParityCase:
    """One model, built from `M` (kcompile or keras): its layers after the input, loss, optimizer."""
    name: str
    layers: object                      # M -> list of layers
    input_shape: tuple = (4,)
    loss: object = "mean_squared_error"  # a name both know, or M -> loss object
    targets: str = "real"               # how to draw y: see `draw_targets`
    optimizer: object = sgd             # M -> optimizer
    steps: int = 1                      # training steps compared
    rtol: float = 1e-5
    atol: float = 1e-5
    convert_weights: object = None      # (one layer's weights, back=False): kcompile -> keras, or back

    def __str__(self):
        return self.name


def dense(activation, units=3):
    return lambda M: [M.layers.Dense(5, activation=activation), M.layers.Dense(units)]


def head(hidden, output=None, units=3):
    """Dense(5, hidden) -> Dense(units, output): loss rows also cover a hidden activation each."""
    return lambda M: [M.layers.Dense(5, activation=hidden), M.layers.Dense(units, activation=output)]


# Losses, each on an output it makes sense for, with a different hidden activation per row.
MODELS = [
    ParityCase("binary_crossentropy, relu", head("relu", "sigmoid"), loss="binary_crossentropy",
               targets="binary"),
    ParityCase("BinaryCrossentropy logits smoothing, leaky_relu", head("leaky_relu"),
               loss=lambda M: M.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1),
               targets="binary"),
    ParityCase("categorical_crossentropy, relu6", head("relu6", "softmax"),
               loss="categorical_crossentropy", targets="one_hot"),
    ParityCase("CategoricalCrossentropy logits smoothing, sigmoid", head("sigmoid"),
               loss=lambda M: M.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2),
               targets="one_hot"),
    ParityCase("sparse_categorical_crossentropy, tanh", head("tanh", "softmax"),
               loss="sparse_categorical_crossentropy", targets="sparse"),
    ParityCase("SparseCategoricalCrossentropy logits, elu", head("elu"),
               loss=lambda M: M.losses.SparseCategoricalCrossentropy(from_logits=True),
               targets="sparse"),
    ParityCase("mae, selu", head("selu"), loss="mae"),
    ParityCase("mse, celu", head("celu"), loss="mse"),
    ParityCase("mape, softsign", head("softsign"), loss="mape", rtol=1e-4),
    ParityCase("msle, silu", head("silu", "softplus"), loss="msle", targets="positive"),
    ParityCase("huber, swish", head("swish"), loss="huber"),
    ParityCase("Huber delta, gelu", head("gelu"), loss=lambda M: M.losses.Huber(delta=0.3)),
    ParityCase("log_cosh, hard_sigmoid", head("hard_sigmoid"), loss="log_cosh"),
    ParityCase("kld, hard_silu", head("hard_silu", "softmax"), loss="kld", targets="distribution"),
    ParityCase("poisson, hard_swish", head("hard_swish", "softplus"), loss="poisson",
               targets="positive"),
    ParityCase("hinge, hard_tanh", head("hard_tanh"), loss="hinge", targets="binary"),
    ParityCase("squared_hinge, exponential", head("exponential"), loss="squared_hinge",
               targets="binary"),
    ParityCase("categorical_hinge, log_sigmoid", head("log_sigmoid"), loss="categorical_hinge",
               targets="one_hot"),
    ParityCase("cosine_similarity, mish", head("mish"), loss="cosine_similarity"),
    ParityCase("BinaryFocalCrossentropy balanced logits, elu", head("elu"),
               loss=lambda M: M.losses.BinaryFocalCrossentropy(apply_class_balancing=True, gamma=1.5,
                                                                from_logits=True),
               targets="binary"),
    ParityCase("categorical_focal_crossentropy, tanh", head("tanh", "softmax"),
               loss="categorical_focal_crossentropy", targets="one_hot"),
    ParityCase("one output column, squareplus", head("squareplus", "sigmoid", units=1),
               loss="binary_crossentropy", targets="binary"),
]
# The activations no loss row has, on the hidden layer, then as the output.
MODELS += [ParityCase(f"{name}", dense(name)) for name in (
    "softplus", "tanh_shrink", "soft_shrink", "hard_shrink", "sparse_plus", "sparse_sigmoid", "linear")]
MODELS += [ParityCase(f"output {name}", head("tanh", name)) for name in ("softmax", "log_softmax")]
MODELS += [
    ParityCase("gelu approximate",
               lambda M: [M.layers.Dense(5), M.layers.Activation(
                   lambda x: M.activations.gelu(x, approximate=True)), M.layers.Dense(3)]),
    ParityCase("relu options",
               lambda M: [M.layers.Dense(5), M.layers.Activation(
                   lambda x: M.activations.relu(x, negative_slope=0.1, max_value=1.0, threshold=0.2)),
                   M.layers.Dense(3)]),
    # weight penalties in the loss (biases of ones: at 0, L1's slope is the backend's choice of
    # abs'(0), 1 on JAX and 0 on PyTorch)
    ParityCase("regularizers",
               lambda M: [M.layers.Dense(5, activation="relu",
                                         kernel_regularizer=M.regularizers.L1L2(l1=0.01, l2=0.02),
                                         bias_regularizer="l1", bias_initializer="ones"),
                          M.layers.Dense(3, kernel_regularizer=M.regularizers.l2(0.05))],
               steps=3),
]


def schedule(name, **kwargs):
    return lambda M: getattr(M.optimizers.schedules, name)(**kwargs)


def optimizer(name, learning_rate=None, **kwargs):
    def make(M):
        rate = learning_rate(M) if callable(learning_rate) else learning_rate
        return getattr(M.optimizers, name)(**({"learning_rate": rate} if rate is not None else {}),
                                           **kwargs)
    return make


# NOTE: Adam's first steps are lr * g / (|g| + epsilon): with the default epsilon (1e-7), float32
# rounding of a gradient that happens to be ~1e-7 moves the weight by ~lr.  epsilon=1e-4 keeps the
# comparison about the formulas.  Each row also covers a schedule or a clipping option.
OPTIMIZERS = {
    "SGD nesterov, PiecewiseConstantDecay": optimizer("SGD", schedule(
        "PiecewiseConstantDecay", boundaries=[0, 1], values=[0.1, 0.05, 0.01]), momentum=0.9,
        nesterov=True),
    "Adam amsgrad, ExponentialDecay": optimizer("Adam", schedule(
        "ExponentialDecay", initial_learning_rate=0.01, decay_steps=2, decay_rate=0.5), amsgrad=True,
        epsilon=1e-4),
    "AdamW, CosineDecay warmup, clipnorm": optimizer("AdamW", schedule(
        "CosineDecay", initial_learning_rate=0.0, decay_steps=3, warmup_target=0.02, warmup_steps=2),
        weight_decay=0.1, clipnorm=0.05, epsilon=1e-4),
    "RMSprop centered momentum, InverseTimeDecay": optimizer("RMSprop", schedule(
        "InverseTimeDecay", initial_learning_rate=0.01, decay_steps=1, decay_rate=0.5), momentum=0.5,
        centered=True),
    "Adagrad, PolynomialDecay": optimizer("Adagrad", schedule(
        "PolynomialDecay", initial_learning_rate=0.1, decay_steps=3, power=2.0)),
    "SGD clipvalue, weight_decay, ExponentialDecay staircase": optimizer("SGD", schedule(
        "ExponentialDecay", initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5, staircase=True),
        clipvalue=0.01, weight_decay=0.05),
    "Adam global_clipnorm": optimizer("Adam", 0.01, global_clipnorm=0.1, epsilon=1e-4),
    "SGD momentum, CosineDecay": optimizer("SGD", schedule(
        "CosineDecay", initial_learning_rate=0.1, decay_steps=3, alpha=0.2), momentum=0.5),
}
MODELS += [ParityCase(f"optimizer {name}", dense("tanh"), optimizer=make, steps=3)
           for name, make in OPTIMIZERS.items()]

LLVM_ROWS = ("Huber delta, gelu", "sparse_categorical_crossentropy, tanh",
             "optimizer AdamW, CosineDecay warmup, clipnorm")


def draw_targets(kind, output_shape, rng, rows):
    shape = (rows,) + tuple(output_shape[1:])
    if kind == "binary":
        return rng.integers(0, 2, shape).astype(np.float32)
    if kind == "one_hot":
        return np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1], shape[:-1])]
    if kind == "sparse":
        return rng.integers(0, shape[-1], shape[:-1])
    if kind == "distribution":
        y = rng.random(shape) + 0.05
        return (y / y.sum(-1, keepdims=True)).astype(np.float32)
    if kind == "positive":
        return (rng.random(shape) * 3).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def loss_of(case, M):
    return case.loss(M) if callable(case.loss) else case.loss


def build_ours(case):
    layers = case.layers(kcompile)
    return Sequential([kcompile.layers.Input(shape=case.input_shape)] + layers), layers


_ROWS = {}      # case name -> (x, y, initial weights per layer)
_EXPECTED = {}  # case name -> Keras's (predictions, [weights per layer after each step], [losses])


def row_data(case):
    if case.name not in _ROWS:
        rng = np.random.default_rng(zlib.crc32(case.name.encode()))
        model, layers = build_ours(case)
        x = rng.standard_normal((6,) + case.input_shape).astype(np.float32)
        y = draw_targets(case.targets, model.output_shape, rng, 6)
        _ROWS[case.name] = (x, y, [layer.get_weights() for layer in layers])
    return _ROWS[case.name]


def _to_keras(case, weights):
    return case.convert_weights(weights) if case.convert_weights else weights


def _from_keras(case, weights):
    weights = [np.asarray(w) for w in weights]
    return case.convert_weights(weights, back=True) if case.convert_weights else weights


def keras_expected(case):
    """Keras's predictions, and weights (per layer) and loss after each step, for `case`."""
    if case.name in _EXPECTED:
        return _EXPECTED[case.name]
    layers = case.layers(keras)
    model = keras.Sequential([keras.Input(shape=case.input_shape)] + layers)
    model.compile(optimizer=case.optimizer(keras), loss=loss_of(case, keras), run_eagerly=True,
                  jit_compile=False)
    x, y, weights = row_data(case)
    for layer, layer_weights in zip(layers, weights):
        if layer_weights:
            layer.set_weights(_to_keras(case, layer_weights))
    predictions = np.asarray(model.predict_on_batch(x))
    steps, losses = [], []
    for _ in range(case.steps):
        losses.append(float(model.train_on_batch(x, y)))
        steps.append([_from_keras(case, layer.get_weights()) for layer in layers])
    _EXPECTED[case.name] = predictions, steps, losses
    return _EXPECTED[case.name]


def run_parity(case, target):
    x, y, initial = row_data(case)
    predictions, steps, losses = keras_expected(case)
    ours, layers = build_ours(case)
    for layer, weights in zip(layers, initial):
        layer.set_weights(weights)
    ours.compile(optimizer=case.optimizer(kcompile), loss=loss_of(case, kcompile), target=target)
    np.testing.assert_allclose(ours.predict_on_batch(x), predictions, rtol=case.rtol, atol=case.atol,
                               err_msg=f"{case}: predictions")
    for step, expected in enumerate(steps):
        loss = ours.train_on_batch(x, y)
        assert np.isfinite(loss)
        assert loss == pytest.approx(losses[step], rel=case.rtol, abs=case.atol), f"{case}: loss"
        for layer, want in zip(layers, expected):
            for got_w, want_w in zip(layer.get_weights(), want):
                np.testing.assert_allclose(got_w, want_w, rtol=case.rtol, atol=case.atol,
                                           err_msg=f"{case}: weights after step {step + 1}")


@pytest.mark.parametrize("case", MODELS, ids=str)
def test_same_predictions_and_training_steps_as_keras(case):
    run_parity(case, "reference")


@pytest.mark.parametrize("target", _available_targets())
@pytest.mark.parametrize("case", [c for c in MODELS if c.name in LLVM_ROWS], ids=str)
def test_compiled_targets_agree_with_keras_too(case, target):
    run_parity(case, target)


# ----------------------------------------------------------------------------------------------
# Metrics, eagerly
# ----------------------------------------------------------------------------------------------

@dataclass
class MetricCase:
    name: str
    metric: object            # M -> metric object
    targets: str = "binary"   # y kind
    predictions: str = "probability"  # 'probability' (per entry), 'distribution' or 'real'
    columns: int = 3
    weighted: bool = False

    def __str__(self):
        return self.name


METRICS = [
    MetricCase("BinaryAccuracy threshold weighted", lambda M: M.metrics.BinaryAccuracy(threshold=0.3),
               weighted=True),
    MetricCase("CategoricalAccuracy", lambda M: M.metrics.CategoricalAccuracy(), "one_hot",
               "distribution"),
    MetricCase("SparseCategoricalAccuracy", lambda M: M.metrics.SparseCategoricalAccuracy(), "sparse",
               "distribution"),
    MetricCase("TopKCategoricalAccuracy", lambda M: M.metrics.TopKCategoricalAccuracy(k=2), "one_hot",
               "distribution", columns=5),
    MetricCase("SparseTopKCategoricalAccuracy weighted",
               lambda M: M.metrics.SparseTopKCategoricalAccuracy(k=3), "sparse", "distribution",
               columns=6, weighted=True),
    MetricCase("MeanAbsoluteError", lambda M: M.metrics.MeanAbsoluteError(), "real", "real"),
    MetricCase("RootMeanSquaredError weighted", lambda M: M.metrics.RootMeanSquaredError(), "real",
               "real", weighted=True),
    MetricCase("Precision", lambda M: M.metrics.Precision()),
    MetricCase("Precision threshold class_id weighted",
               lambda M: M.metrics.Precision(thresholds=0.3, class_id=1), weighted=True),
    MetricCase("Recall weighted", lambda M: M.metrics.Recall(thresholds=0.6), weighted=True),
    MetricCase("AUC", lambda M: M.metrics.AUC()),
    MetricCase("AUC PR weighted from logits",
               lambda M: M.metrics.AUC(curve="PR", num_thresholds=50, from_logits=True), "binary",
               "real", weighted=True),
    MetricCase("TruePositives", lambda M: M.metrics.TruePositives()),
    # scores outside [0, 1] (a linear output) count clipped, as in Keras
    MetricCase("AUC of real scores", lambda M: M.metrics.AUC(), "binary", "real"),
    MetricCase("AUC PR of real scores weighted", lambda M: M.metrics.AUC(curve="PR"), "binary",
               "real", weighted=True),
]


@pytest.mark.parametrize("case", METRICS, ids=str)
def test_metrics_accumulate_as_in_keras(case):
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    ours, theirs = case.metric(kcompile), case.metric(keras)
    for rows in (8, 8):  # one shape: Keras's eager ops compile once
        y = draw_targets(case.targets, (None, case.columns), rng, rows)
        if case.predictions == "distribution":
            p = rng.random((rows, case.columns)).astype(np.float32)
            p /= p.sum(-1, keepdims=True)
        elif case.predictions == "real":
            p = rng.standard_normal((rows, case.columns)).astype(np.float32)
        else:
            p = rng.random((rows, case.columns)).astype(np.float32)
        w = rng.random(rows).astype(np.float32) if case.weighted else None
        ours.update_state(y, p, sample_weight=w)
        theirs.update_state(y, p, sample_weight=w)
    assert ours.result() == pytest.approx(float(theirs.result()), rel=1e-5, abs=1e-6)



_KERAS_CONFIG_MODELS = {
    "mlp": lambda K: [K.Input((8,)), K.Dense(6, activation="relu", kernel_regularizer="l2"),
                      K.Dropout(0.2), K.BatchNormalization(), K.Dense(3, activation="softmax")],
    "cnn": lambda K: [K.Input((10, 10, 2)), K.Conv2D(4, 3, padding="same", activation="relu"),
                      K.MaxPooling2D(), K.Conv2D(3, 2, strides=2),
                      K.AveragePooling2D(2, padding="same"), K.GlobalAveragePooling2D(), K.Dense(2)],
    "rnn": lambda K: [K.Input((5, 3)), K.LSTM(4, return_sequences=True), K.GRU(3), K.Dense(2)],
    "bidirectional": lambda K: [K.Input((5, 3)), K.Bidirectional(K.SimpleRNN(4, return_sequences=True)),
                                K.TimeDistributed(K.Dense(2)), K.GlobalMaxPooling1D()],
    "embedding": lambda K: [K.Input((6,), dtype="int32"), K.Embedding(10, 4),
                            K.Conv1D(3, 2, padding="causal"), K.MaxPooling1D(), K.Flatten(),
                            K.LayerNormalization(), K.Dense(1, activation="sigmoid")],
}


@pytest.mark.parametrize("name", sorted(_KERAS_CONFIG_MODELS))
def test_a_keras_3_model_json_rebuilds_in_kcompile_and_predicts_alike(name):
    """Keras 3.15's configs hold arguments at their defaults that kcompile does not implement
    (InputLayer's ragged, Dense's quantization_config, the initializers' input_axes, an RNN's
    zero_output_for_mask, BatchNormalization's renorm): model_from_json of Keras's to_json had
    refused them.  With Keras's weights, the rebuilt model predicts what Keras does."""
    from kcompile.models import model_from_json
    original = keras.Sequential(_KERAS_CONFIG_MODELS[name](keras.layers), name=name)
    rebuilt = model_from_json(original.to_json())
    rebuilt.set_weights(original.get_weights())
    rng = np.random.default_rng(0)
    shape = (4,) + tuple(original.input_shape[1:])
    x = (rng.integers(0, 10, shape) if name == "embedding" else rng.standard_normal(shape))
    x = x.astype(np.float32)
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0),
                               np.asarray(original.predict(x, verbose=0)), rtol=1e-5, atol=2e-6)
