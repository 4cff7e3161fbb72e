"""Losses and metrics against numpy re-implementations of Keras 3's formulas: eagerly, through
`evaluate` on every target, with sample weights and reductions, float64 finite-difference gradients
of every loss, and the ratio metrics (precision, recall, AUC) accumulated over an epoch."""
import numpy as np
import pytest

import ir

from kcompile import losses, metrics, optimizers
from kcompile.layers import Dense, Input
from kcompile.models import Sequential
from kcompile.trainer import TargetSpec, trace_train
from targets import TARGETS

EPS = 1e-7


# ----------------------------------------------------------------------------------------------
# numpy formulas (float64), one value per sample
# ----------------------------------------------------------------------------------------------

def np_softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_bce(y, p, from_logits=False, label_smoothing=0.0):
    y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        return (y * np_softplus(-p) + (1 - y) * np_softplus(p)).mean(-1)
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(-1)


def np_cce(y, p, from_logits=False, label_smoothing=0.0):
    y = y * (1 - label_smoothing) + label_smoothing / y.shape[-1]
    log_p = np_log_softmax(p) if from_logits else np.log(np.clip(p / p.sum(-1, keepdims=True), EPS,
                                                                 1 - EPS))
    return -(y * log_p).sum(-1)


def np_binary_focal(y, p, gamma=2.0, alpha=None, from_logits=False, label_smoothing=0.0):
    y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    p = 1 / (1 + np.exp(-p)) if from_logits else p
    q = np.clip(p, EPS, 1 - EPS)
    p_t = y * p + (1 - y) * (1 - p)
    values = (1 - p_t) ** gamma * -(y * np.log(q) + (1 - y) * np.log(1 - q))
    if alpha is not None:
        values = values * (y * alpha + (1 - y) * (1 - alpha))
    return values.mean(-1)


def np_categorical_focal(y, p, gamma=2.0, alpha=0.25, from_logits=False):
    p = np.exp(np_log_softmax(p)) if from_logits else p
    p = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
    return (alpha * (1 - p) ** gamma * -y * np.log(p)).sum(-1)


def np_huber(y, p, delta=1.0):
    e = p - y
    return np.where(np.abs(e) <= delta, 0.5 * e * e, delta * np.abs(e) - 0.5 * delta ** 2).mean(-1)


def np_kld(y, p):
    y, p = np.clip(y, EPS, 1), np.clip(p, EPS, 1)
    return (y * np.log(y / p)).sum(-1)


def np_hinge_labels(y):
    return 2 * y - 1 if np.all((y == 0) | (y == 1)) else y


def np_l2_normalize(x):
    return x / np.sqrt(np.maximum((x * x).sum(-1, keepdims=True), 1e-12))


# name -> (loss as compile takes it, numpy per-sample formula, kind of targets, model output)
LOSSES = {
    "binary_crossentropy": ("binary_crossentropy", np_bce, "binary", "sigmoid"),
    "bce_logits_smoothing": (losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2),
                             lambda y, p: np_bce(y, p, True, 0.2), "binary", "linear"),
    "categorical_crossentropy": ("categorical_crossentropy", np_cce, "one_hot", "softmax"),
    "cce_logits_smoothing": (losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
                             lambda y, p: np_cce(y, p, True, 0.1), "one_hot", "linear"),
    "sparse_categorical_crossentropy_logits": (
        losses.SparseCategoricalCrossentropy(from_logits=True),
        lambda y, p: np_cce(np.eye(3)[y.astype(int)], p, True), "sparse", "linear"),
    "mae": ("mae", lambda y, p: np.abs(y - p).mean(-1), "real", "linear"),
    "mse": ("MSE", lambda y, p: ((y - p) ** 2).mean(-1), "real", "linear"),
    "mape": ("mape", lambda y, p: 100 * np.abs((y - p) / np.maximum(np.abs(y), EPS)).mean(-1), "real",
             "linear"),
    "msle": ("msle", lambda y, p: ((np.log(np.maximum(p, EPS) + 1)
                                    - np.log(np.maximum(y, EPS) + 1)) ** 2).mean(-1), "positive",
             "softplus"),
    "huber": ("huber", np_huber, "real", "linear"),
    "huber_0.3": (losses.Huber(delta=0.3), lambda y, p: np_huber(y, p, 0.3), "real", "linear"),
    "log_cosh": ("log_cosh", lambda y, p: np.log(np.cosh(p - y)).mean(-1), "real", "linear"),
    "kld": ("kld", np_kld, "distribution", "softmax"),
    "poisson": ("poisson", lambda y, p: (p - y * np.log(p + EPS)).mean(-1), "positive", "softplus"),
    "hinge": ("hinge", lambda y, p: np.maximum(1 - np_hinge_labels(y) * p, 0).mean(-1), "binary",
              "linear"),
    "squared_hinge": ("squared_hinge",
                      lambda y, p: (np.maximum(1 - np_hinge_labels(y) * p, 0) ** 2).mean(-1), "binary",
                      "linear"),
    "categorical_hinge": ("categorical_hinge",
                          lambda y, p: np.maximum(((1 - y) * p).max(-1) - (y * p).sum(-1) + 1, 0),
                          "one_hot", "linear"),
    "binary_focal": ("binary_focal_crossentropy", np_binary_focal, "binary", "sigmoid"),
    "binary_focal_options": (
        losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.3, gamma=1.5,
                                       from_logits=True, label_smoothing=0.1),
        lambda y, p: np_binary_focal(y, p, 1.5, 0.3, True, 0.1), "binary", "linear"),
    "categorical_focal": ("categorical_focal_crossentropy", np_categorical_focal, "one_hot",
                          "softmax"),
    "categorical_focal_logits": (
        losses.CategoricalFocalCrossentropy(alpha=0.5, gamma=2.5, from_logits=True),
        lambda y, p: np_categorical_focal(y, p, 2.5, 0.5, True), "one_hot", "linear"),
    "cosine_similarity": (losses.CosineSimilarity(),
                          lambda y, p: -(np_l2_normalize(y) * np_l2_normalize(p)).sum(-1), "real",
                          "linear"),
}


def targets(kind, rows, rng, classes=3):
    if kind == "binary":
        return rng.integers(0, 2, (rows, classes)).astype(np.float64)
    if kind == "one_hot":
        return np.eye(classes)[rng.integers(0, classes, rows)]
    if kind == "sparse":
        return rng.integers(0, classes, rows).astype(np.int64)
    if kind == "distribution":
        y = rng.random((rows, classes)) + 0.05
        return y / y.sum(-1, keepdims=True)
    if kind == "positive":
        return rng.random((rows, classes)) * 3
    return rng.standard_normal((rows, classes))


def np_activation(name, z):
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "softmax":
        return np.exp(np_log_softmax(z))
    if name == "softplus":
        return np_softplus(z)
    return z


def fixed_model(activation, seed=0):
    rng = np.random.default_rng(seed)
    model = Sequential([Input(shape=(4,)), Dense(3, activation=activation)])
    kernel, bias = rng.standard_normal((4, 3)), rng.standard_normal(3) * 0.5
    model.set_weights([kernel, bias])
    return model, kernel, bias


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_function_matches_numpy_eagerly(name):
    loss, formula, kind, activation = LOSSES[name]
    rng = np.random.default_rng(1)
    y = targets(kind, 9, rng)
    p = np_activation(activation, rng.standard_normal((9, 3)) * 2)
    fn = losses.get(loss)
    got = fn.call(y, p) if isinstance(fn, losses.Loss) else fn(y, p)
    np.testing.assert_allclose(got, formula(y, p), rtol=1e-5, atol=1e-6)
    reduced = losses.as_loss_object(fn)(y, p)
    assert float(reduced) == pytest.approx(formula(y, p).mean(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_every_loss_evaluates_on_every_target(target):
    # The mean per-sample loss of the model's predictions, over batches of 4 (the last one partial).
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    for name, (loss, formula, kind, activation) in LOSSES.items():
        y = targets(kind, 10, rng)
        model, kernel, bias = fixed_model(activation)
        model.compile(optimizer=optimizers.SGD(learning_rate=0.05), loss=loss, target=target)
        p = np_activation(activation, x.astype(np.float64) @ kernel + bias)
        got = model.evaluate(x, y, batch_size=4, verbose=0)
        assert got == pytest.approx(formula(y, p).mean(), rel=2e-5, abs=2e-6), name


def _every_loss(y_true, y_pred):
    """The sum of every dense-target loss of the table: one train step exercises all their gradients."""
    total = None
    for name, (loss, _, kind, _) in LOSSES.items():
        if kind == "sparse":
            continue
        fn = losses.get(loss)
        value = fn.call(y_true, y_pred) if isinstance(fn, losses.Loss) else fn(y_true, y_pred)
        total = value if total is None else ir.build.add(total, value)
    return total


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "reference"])
def test_a_train_step_through_every_loss_matches_the_reference(target):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = targets("one_hot", 6, rng)
    labels = rng.integers(0, 3, 6)
    for loss, y_fed in ((_every_loss, y), (LOSSES["sparse_categorical_crossentropy_logits"][0], labels)):
        weights = {}
        for run_on in ("reference", target):
            model, _, _ = fixed_model("sigmoid", seed=16)
            model.compile(optimizer=optimizers.SGD(learning_rate=0.05), loss=loss, target=run_on)
            assert np.isfinite(model.train_on_batch(x, y_fed))
            weights[run_on] = model.get_weights()
        for got, want in zip(weights[target], weights["reference"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_one_column_predictions_against_flat_targets_give_one_loss_per_sample():
    """Keras gives (N,) targets against (N, 1) predictions an axis (not the predictions' axis
    dropped, which would average over the batch): per-sample losses, weighted objects, metrics."""
    rng = np.random.default_rng(9)
    y = rng.standard_normal(12).astype(np.float32)
    p = rng.random((12, 1)).astype(np.float32)
    w = rng.random(12).astype(np.float32)
    squared, absolute = (y - p[:, 0]) ** 2, np.abs(y - p[:, 0])
    for fn, want in ((losses.mean_squared_error, squared), (losses.mean_absolute_error, absolute)):
        for a, b in ((y, p), (p, y)):
            got = np.asarray(fn(a, b))
            assert got.shape == (12,)
            np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(losses.MeanSquaredError()(y, p, sample_weight=w)) == pytest.approx(
        (squared * w).mean(), rel=1e-5)
    metric = metrics.MeanAbsoluteError()
    metric.update_state(y, p, sample_weight=w)
    assert float(metric.result()) == pytest.approx((absolute * w).sum() / w.sum(), rel=1e-5)


def test_one_sample_given_as_a_vector_smooths_its_labels_over_its_classes():
    """Keras takes a 1-D y_true/y_pred pair as one sample of len() classes: label smoothing
    spreads s over those classes (the vector's length is only known when called)."""
    y = np.array([0.0, 1.0, 0.0], np.float32)
    p = np.array([0.2, 0.7, 0.1], np.float32)
    for smoothing in (0.0, 0.1):
        want = np_cce(y, p, label_smoothing=smoothing)
        loss = losses.CategoricalCrossentropy(label_smoothing=smoothing)
        assert float(loss(y, p)) == pytest.approx(want, rel=1e-5)
        assert float(np.asarray(losses.categorical_crossentropy(y, p, label_smoothing=smoothing))) \
            == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_a_custom_loss_written_with_operators(target):
    """A Keras-style custom loss of plain arithmetic on the traced tensors: its value averages over
    every element, as Keras's does, and one SGD step follows its gradient (by hand in float64)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.standard_normal((6, 3)).astype(np.float32)

    def custom(y_true, y_pred):
        d = y_pred - y_true
        return 0.5 * d ** np.int64(2) + 1.0 / (2.0 + d * d) - (-d) / 4 + abs(d) * 0.0 + (+d) ** 0 \
            - 2.0 ** (d * 0.0)

    model, kernel, bias = fixed_model("linear")
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss=custom, target=target)
    d = x.astype(np.float64) @ kernel + bias - y
    value = 0.5 * d ** 2 + 1.0 / (2.0 + d * d) + d / 4
    assert model.evaluate(x, y, verbose=0) == pytest.approx(value.mean(), rel=1e-5)
    grad_d = (d - 2 * d / (2.0 + d * d) ** 2 + 0.25) / d.size
    model.train_on_batch(x, y)
    np.testing.assert_allclose(model.get_weights()[0], kernel - 0.1 * x.T.astype(np.float64) @ grad_d,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.get_weights()[1], bias - 0.1 * grad_d.sum(0), rtol=1e-5,
                               atol=1e-6)
    # other exponents: products for integers (negative ones too), exp(p log x) otherwise
    w0, b0 = (w.astype(np.float64) for w in model.get_weights())
    d = x.astype(np.float64) @ w0 + b0 - y
    model.compile(optimizer="sgd", target=target,
                  loss=lambda t, p: (p - t) ** 3 + (p - t) ** -2 + abs(p - t) ** 1.5 + (p - t) ** 7)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(
        (d ** 3 + d ** -2.0 + np.abs(d) ** 1.5 + d ** 7).mean(), rel=1e-4)
    with pytest.raises(TypeError, match="must be a number"):
        model.compile(optimizer="sgd", loss=lambda t, p: (p - t) ** "2", target=target)
        model.evaluate(x, y, verbose=0)
    with pytest.raises(TypeError, match="returned None; a loss function must return"):
        model.compile(optimizer="sgd", loss=lambda t, p: None, target=target)
        model.evaluate(x, y, verbose=0)
    # numpy arrays and scalars combine with traced values into graph nodes ...
    model.compile(optimizer="sgd", loss=lambda t, p: np.float32(0.5) * (p - t) * (p - t)
                  + np.zeros(3, np.float32) * p + np.negative(np.zeros(3, np.float32) - p) * 0.0,
                  target=target)
    d = x.astype(np.float64) @ model.get_weights()[0] + model.get_weights()[1] - y
    assert model.evaluate(x, y, verbose=0) == pytest.approx(0.5 * (d ** 2).mean(), rel=1e-5)
    # ... but a numpy function cannot take one, and a metric must return a traced value
    for metric, problem in ((lambda t, p: np.mean(p), "cannot become a numpy array"),
                            (lambda t, p: np.tanh(p), "numpy's tanh cannot compute on a traced "
                                                      "value.*kcompile.ops.tanh"),
                            (lambda t, p: np.abs(p - t) + np.exp(p),
                             "numpy's exp cannot compute on a traced value"),
                            (lambda t, p: 1.0, "returned 1.0; a metric function must return")):
        model.compile(optimizer="sgd", loss="mse", metrics=[metric], target=target)
        with pytest.raises(TypeError, match=problem):
            model.evaluate(x, y, verbose=0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_gradient_matches_finite_differences_in_float64(name):
    loss, _, kind, activation = LOSSES[name]
    rng = np.random.default_rng(3)
    model, _, _ = fixed_model(activation, seed=4)
    x = rng.standard_normal((5, 4))
    y = targets(kind, 5, rng)
    spec = (TargetSpec("i32", (None,), (None,)) if kind == "sparse"
            else TargetSpec("f32", (None, 3), (None, 3)))
    graph = trace_train(model, losses.get(loss), [], optimizers.SGD(learning_rate=1.0), spec,
                        dtype="f64")
    feeds = {"x": x, "y": y.astype(np.int32) if kind == "sparse" else y, "seed": np.uint32(0),
             "optimizer/learning_rate": np.float32(1.0), "optimizer/iterations": np.int32(0)}
    for variable in model.weights:
        feeds[variable.path] = variable.numpy().astype(np.float64)
    out = ir.run(graph, feeds)
    h = 1e-6
    for variable in model.weights:
        analytic = feeds[variable.path] - out[variable.path]  # SGD with learning rate 1: w - w' = g
        flat = feeds[variable.path].reshape(-1)
        for index in range(flat.size):
            saved = flat[index]
            flat[index] = saved + h
            up = ir.run(graph, feeds)["loss"]
            flat[index] = saved - h
            down = ir.run(graph, feeds)["loss"]
            flat[index] = saved
            assert analytic.reshape(-1)[index] == pytest.approx((up - down) / (2 * h), rel=1e-5,
                                                                abs=1e-7), (name, variable.path)


def test_sample_weights_and_reductions_follow_keras():
    rng = np.random.default_rng(5)
    y, p = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    w = rng.random(6)
    per_sample = np.abs(y - p).mean(-1)
    mae = losses.MeanAbsoluteError()
    # 'sum_over_batch_size': divided by the batch size, not by the weights' sum.
    assert float(mae(y, p, sample_weight=w)) == pytest.approx((per_sample * w).sum() / 6, rel=1e-5)
    assert float(losses.MeanAbsoluteError(reduction="sum")(y, p, w)) == pytest.approx(
        (per_sample * w).sum(), rel=1e-5)
    assert float(losses.MeanAbsoluteError(reduction="mean_with_sample_weight")(y, p, w)) == \
        pytest.approx((per_sample * w).sum() / w.sum(), rel=1e-5)
    assert float(losses.MeanAbsoluteError(reduction="mean_with_sample_weight")(y, p, 0 * w)) == 0.0
    np.testing.assert_allclose(losses.MeanAbsoluteError(reduction="none")(y, p, w), per_sample * w,
                               rtol=1e-5)
    np.testing.assert_allclose(mae(y, p, sample_weight=w[:, None]), (per_sample * w).mean(), rtol=1e-5)
    # weights of shape (batch, 1): unreduced losses of that shape, as Keras's
    unreduced = losses.MeanAbsoluteError(reduction="none")(y, p, w[:, None])
    assert unreduced.shape == (6, 1)
    np.testing.assert_allclose(unreduced[:, 0], per_sample * w, rtol=1e-5)
    # per-step losses (batch, steps) with a weight per sample (batch, 1): Keras divides by the sum
    # of the weights as given, not as broadcast over the steps
    y3, p3 = rng.standard_normal((6, 4, 3)), rng.standard_normal((6, 4, 3))
    per_step = np.abs(y3 - p3).mean(-1)
    assert float(losses.MeanAbsoluteError(reduction="mean_with_sample_weight")(y3, p3, w[:, None])) \
        == pytest.approx((per_step * w[:, None]).sum() / w.sum(), rel=1e-5)
    with pytest.raises(ValueError, match="Invalid value for argument `reduction`"):
        losses.Huber(reduction="average")


def test_loss_names_classes_and_configs_round_trip():
    for alias, fn in (("mae", losses.mean_absolute_error), ("MAE", losses.mean_absolute_error),
                      ("kld", losses.kl_divergence), ("KLD", losses.kl_divergence),
                      ("kullback_leibler_divergence", losses.kl_divergence),
                      ("bce", losses.binary_crossentropy), ("mape", losses.mean_absolute_percentage_error),
                      ("msle", losses.mean_squared_logarithmic_error), ("logcosh", losses.log_cosh)):
        assert losses.get(alias) is fn
    for cls in (losses.BinaryCrossentropy, losses.MeanAbsoluteError, losses.Huber, losses.KLDivergence,
                losses.LogCosh, losses.Hinge, losses.Poisson, losses.CosineSimilarity):
        loss = cls()
        assert isinstance(losses.get(cls.__name__), cls)
        clone = losses.deserialize(losses.serialize(loss))
        assert type(clone) is cls and clone.get_config() == loss.get_config()
    assert losses.Huber(delta=2.0).get_config()["delta"] == 2.0
    assert losses.BinaryCrossentropy().name == "binary_crossentropy"
    assert losses.Huber().name == "huber_loss"
    assert losses.target_kind(losses.Huber()) == "dense"


def test_crossentropy_resolves_to_binary_for_one_output_column():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.integers(0, 2, 8)
    model = Sequential([Input(shape=(4,)), Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="crossentropy", metrics=["accuracy"], target="reference")
    p = model.predict(x, verbose=0).astype(np.float64)
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert loss == pytest.approx(np_bce(y[:, None].astype(float), p).mean(), rel=1e-5)
    assert accuracy == pytest.approx(((p[:, 0] > 0.5) == y).mean())


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def np_in_top_k(labels, scores, k):
    true_score = scores[np.arange(len(labels)), labels]
    return ((scores > true_score[:, None]).sum(-1) < k).astype(np.float64)


def test_mean_metric_functions_match_numpy():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 6, 40)
    scores = rng.random((40, 6)).round(1)  # ties: the true class wins them, as in Keras's in_top_k
    for k in (1, 2, 5):
        expected = np_in_top_k(labels, scores, k)
        np.testing.assert_array_equal(metrics.sparse_top_k_categorical_accuracy(labels, scores, k=k),
                                      expected)
        np.testing.assert_array_equal(metrics.top_k_categorical_accuracy(np.eye(6)[labels], scores, k=k),
                                      expected)
    y, p = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(metrics.mean_absolute_error(y, p), np.abs(y - p).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(metrics.cosine_similarity(y, p),
                               (np_l2_normalize(y) * np_l2_normalize(p)).sum(-1), rtol=1e-5)
    exact = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(metrics.accuracy(exact, np.array([[1.0, 0.0], [3.0, 4.0]])), [0.5, 1])
    rmse = metrics.RootMeanSquaredError()
    rmse.update_state(y[:2], p[:2])
    rmse.update_state(y[2:], p[2:])
    assert rmse.result() == pytest.approx(np.sqrt(((y - p) ** 2).mean()), rel=1e-5)


def np_confusion(y, p, threshold=0.5, w=None):
    w = np.ones(len(y)) if w is None else w
    w = np.broadcast_to(w.reshape((-1,) + (1,) * (y.ndim - 1)), y.shape)
    predicted, actual = p > threshold, y != 0
    return {"tp": (w * (predicted & actual)).sum(), "fp": (w * (predicted & ~actual)).sum(),
            "tn": (w * (~predicted & ~actual)).sum(), "fn": (w * (~predicted & actual)).sum()}


def np_roc_auc(y, p, num_thresholds=200):
    inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
    thresholds = [-EPS] + inner + [1 + EPS]
    counts = [np_confusion(y, p, t) for t in thresholds]
    tpr = np.array([c["tp"] / max(c["tp"] + c["fn"], 1e-300) for c in counts])
    fpr = np.array([c["fp"] / max(c["fp"] + c["tn"], 1e-300) for c in counts])
    return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))


@pytest.mark.parametrize("target", TARGETS)
def test_ratio_metrics_accumulate_over_the_epoch(target):
    # Batches of 3 over 20 samples: the epoch's precision is tp / (tp + fp) of all of them, which
    # differs from the mean of batch precisions.
    rng = np.random.default_rng(8)
    x = rng.standard_normal((20, 4)).astype(np.float32)
    y = rng.integers(0, 2, (20, 3)).astype(np.float32)
    model, kernel, bias = fixed_model("sigmoid", seed=9)
    model.compile(optimizer="sgd", loss="binary_crossentropy",
                  metrics=[metrics.Precision(), metrics.Recall(thresholds=0.3), "auc",
                           metrics.Precision(class_id=1, name="precision_1"), metrics.TruePositives(),
                           metrics.AUC(curve="PR", num_thresholds=50)],
                  target=target)
    p = 1 / (1 + np.exp(-(x.astype(np.float64) @ kernel + bias)))
    logs = model.evaluate(x, y, batch_size=3, verbose=0, return_dict=True)
    c = np_confusion(y, p)
    assert logs["precision"] == pytest.approx(c["tp"] / (c["tp"] + c["fp"]))
    c3 = np_confusion(y, p, 0.3)
    assert logs["recall"] == pytest.approx(c3["tp"] / (c3["tp"] + c3["fn"]))
    c1 = np_confusion(y[:, 1], p[:, 1])
    assert logs["precision_1"] == pytest.approx(c1["tp"] / (c1["tp"] + c1["fp"]))
    assert logs["true_positives"] == c["tp"]
    assert logs["auc"] == pytest.approx(np_roc_auc(y, p), rel=1e-6)
    eager = metrics.AUC(curve="PR", num_thresholds=50)
    eager.update_state(y, p)
    assert logs["auc_1"] == pytest.approx(eager.result(), rel=1e-6)
    assert 0.0 < logs["auc_1"] < 1.0


def test_weighted_metrics_and_sample_weights_in_evaluate():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((11, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 11)
    w = rng.random(11)
    model, kernel, bias = fixed_model("softmax", seed=11)
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"],
                  weighted_metrics=["accuracy", metrics.Precision()], target="reference")
    assert model.metrics_names == ["loss", "accuracy", "weighted_accuracy", "precision"]
    p = np.exp(np_log_softmax(x.astype(np.float64) @ kernel + bias))
    per_sample = np_cce(np.eye(3)[labels], p)
    correct = (p.argmax(-1) == labels).astype(np.float64)
    logs = model.evaluate(x, np.eye(3)[labels], sample_weight=w, batch_size=4, verbose=0,
                          return_dict=True)
    # The loss of a batch is sum(l * w) / batch size; the epoch's is the mean of those over samples.
    assert logs["loss"] == pytest.approx((per_sample * w).sum() / 11, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(correct.mean())              # unweighted, as Keras
    assert logs["weighted_accuracy"] == pytest.approx((correct * w).sum() / w.sum(), rel=1e-6)
    c = np_confusion(np.eye(3)[labels], p, w=w)
    assert logs["precision"] == pytest.approx(c["tp"] / (c["tp"] + c["fp"]), rel=1e-6)


def test_metric_objects_eagerly_with_weights_and_reset():
    rng = np.random.default_rng(12)
    y, p = rng.integers(0, 2, (30, 1)), rng.random((30, 1))
    w = rng.random(30)
    precision = metrics.Precision()
    precision.update_state(y[:10], p[:10], sample_weight=w[:10])
    precision.update_state(y[10:], p[10:], sample_weight=w[10:])
    c = np_confusion(y, p, w=w)
    assert precision.result() == pytest.approx(c["tp"] / (c["tp"] + c["fp"]), rel=1e-6)
    precision.reset_state()
    assert precision.result() == 0.0
    accuracy = metrics.BinaryAccuracy()
    accuracy.update_state(y, p, sample_weight=w)
    assert accuracy.result() == pytest.approx((((p > 0.5) == y)[:, 0] * w).sum() / w.sum(), rel=1e-6)
    auc = metrics.AUC()
    auc.update_state(y, p)
    assert auc.result() == pytest.approx(np_roc_auc(y, p), rel=1e-6)


def test_metric_names_and_configs():
    assert isinstance(metrics.get("precision"), metrics.Precision)
    assert isinstance(metrics.get("AUC"), metrics.AUC)
    assert isinstance(metrics.get("root_mean_squared_error"), metrics.RootMeanSquaredError)
    assert metrics.resolve("mae", (None, 3), (None, 3)).name == "mae"
    assert metrics.resolve("auc", (None, 1), (None, 1)).name == "auc"
    assert metrics.TopKCategoricalAccuracy().name == "top_k_categorical_accuracy"
    for metric in (metrics.TopKCategoricalAccuracy(k=3), metrics.Precision(thresholds=0.7, class_id=2),
                   metrics.AUC(num_thresholds=20, curve="PR"), metrics.BinaryAccuracy(threshold=0.2),
                   metrics.RootMeanSquaredError()):
        clone = type(metric).from_config(metric.get_config())
        assert clone.get_config() == metric.get_config()
    with pytest.raises(NotImplementedError, match="top_k"):
        metrics.Precision(top_k=2)


def test_ignore_class_is_refused_when_the_loss_is_made_with_the_fix():
    # at construction, not at the first fit (where labels equal to it read as out of range)
    with pytest.raises(NotImplementedError, match=r"ignore_class=-1.*sample_weight 0"):
        losses.SparseCategoricalCrossentropy(ignore_class=-1)
    assert losses.SparseCategoricalCrossentropy().ignore_class is None


@pytest.mark.parametrize("target", TARGETS)
def test_top_k_metrics_in_fit_logs(target):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((24, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 24)
    model, kernel, bias = fixed_model("softmax", seed=14)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss="sparse_categorical_crossentropy",
                  metrics=[metrics.SparseTopKCategoricalAccuracy(k=2), "sparse_categorical_accuracy"],
                  target=target)
    history = model.fit(x, labels, batch_size=5, epochs=1, shuffle=False, verbose=0).history
    p = np.exp(np_log_softmax(x.astype(np.float64) @ kernel + bias))
    assert history["sparse_top_k_categorical_accuracy"][0] == pytest.approx(
        np_in_top_k(labels, p, 2).mean())
    assert history["sparse_categorical_accuracy"][0] == pytest.approx((p.argmax(-1) == labels).mean())


def test_eager_calls_name_the_arguments_whose_rows_disagree_and_take_one_weight_for_all():
    with pytest.raises(ValueError, match="y_true has 3 rows and y_pred has 4"):
        losses.mean_squared_error(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="y_true has 3 rows and y_pred has 4"):
        metrics.Accuracy().update_state(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="sample_weight has shape \\(2,\\) but y_pred has 3 rows"):
        losses.MeanSquaredError()(np.zeros((3, 2)), np.ones((3, 2)), sample_weight=[1.0, 2.0])
    # one number weighs every sample (Keras broadcasts it): mean over the batch of 2 * 1
    t, p = np.zeros((3, 2)), np.ones((3, 2))
    assert losses.MeanSquaredError()(t, p, sample_weight=[2.0]) == pytest.approx(2.0)
    assert losses.MeanSquaredError()(t, p, sample_weight=2.0) == pytest.approx(2.0)
    metric = metrics.MeanAbsoluteError()
    metric.update_state(t, np.array([[1.0, 1.0], [3.0, 3.0], [5.0, 5.0]]), sample_weight=[0.5])
    assert metric.result() == pytest.approx(3.0)


def test_auc_counts_scores_outside_the_unit_interval_clipped():
    """A linear output's scores: Keras clips them to [0, 1] before counting, so the ranking of the
    scores inside decides (hand-computed: positives at 0.7 and a clipped 0, negatives at two
    clipped 0s; ROC AUC 0.75)."""
    y = np.array([[0], [0], [1], [1]], np.float32)
    p = np.array([[-3.0], [-1.0], [-2.0], [0.7]], np.float32)
    auc = metrics.AUC()
    auc.update_state(y, p)
    assert auc.result() == pytest.approx(0.75, abs=1e-6)
    clipped = metrics.AUC()
    clipped.update_state(y, np.clip(p, 0.0, 1.0))
    assert clipped.result() == pytest.approx(auc.result())


@pytest.mark.parametrize("target", TARGETS)
def test_a_users_loss_and_metric_function_get_targets_of_the_predictions_rank(target):
    """One value per sample given as y of shape (n,) against Dense(1)'s (n, 1): a loss or metric
    function of the user's gets y as (n, 1), as Keras's loss wrapper gives it (it would broadcast to
    (n, n) otherwise): the mean absolute error of numpy's, the same as for y of shape (n, 1).  A
    Loss subclass's `call` gets the tensors as they are, and the error names their shapes."""
    import kcompile

    def my_mae(y_true, y_pred):
        return kcompile.ops.mean(kcompile.ops.abs(y_true - y_pred), axis=-1)

    rng = np.random.default_rng(2)
    x, y = rng.random((30, 4), np.float32), rng.random(30, np.float32)
    model = Sequential([Input((4,)), Dense(1)])
    model.compile(optimizer="sgd", loss=my_mae, metrics=[my_mae], target=target)
    want = np.abs(model.predict(x, verbose=0)[:, 0].astype(np.float64) - y).mean()
    got = model.evaluate(x, y, verbose=0, batch_size=30, return_dict=True)
    assert got["loss"] == pytest.approx(want, rel=1e-5)
    assert got["my_mae"] == pytest.approx(want, rel=1e-5)
    assert model.evaluate(x, y[:, None], verbose=0, batch_size=30) == pytest.approx(
        [got["loss"], got["my_mae"]], rel=1e-6)
    history = model.fit(x, y, epochs=1, batch_size=30, verbose=0, shuffle=False)
    assert history.history["loss"][0] == pytest.approx(want, rel=1e-5)

    class MyLoss(losses.Loss):
        def call(self, y_true, y_pred):
            return kcompile.ops.mean(kcompile.ops.abs(y_true - y_pred), axis=-1)

    model.compile(optimizer="sgd", loss=MyLoss(), target=target)
    with pytest.raises(ValueError, match=r"loss 'my_loss' could not be computed on y_true of "
                                         r"shape \(None,\) and y_pred of shape \(None, 1\)"):
        model.evaluate(x, y, verbose=0)
    trained = np.abs(model.predict(x, verbose=0)[:, 0].astype(np.float64) - y).mean()
    assert model.evaluate(x, y[:, None], verbose=0, batch_size=30) == pytest.approx(trained,
                                                                                     rel=1e-5)
