"""F-scores, R2, IoU and the standalone Mean/Sum metrics, as keras.metrics: values against counts
worked out by hand and numpy formulas, eagerly and through fit/evaluate on every target (with
sample weights), config round trips and save/load, and numbers Keras 3 gives for the same inputs
(each also derived by hand in the test)."""
import numpy as np
import pytest

import kcompile
from kcompile import metrics, optimizers
from kcompile.layers import Dense, Input
from kcompile.models import Sequential
from targets import TARGETS

EPS = 1e-7


# ----------------------------------------------------------------------------------------------
# numpy formulas (float64)
# ----------------------------------------------------------------------------------------------

def np_fbeta(y, p, beta=1.0, threshold=None, average=None, w=None):
    """Keras's FBetaScore over one batch of everything: predicted where the score is the row's
    largest (ties all count, a zero never does) or above the threshold."""
    if threshold is None:
        predicted = (p >= p.max(-1, keepdims=True)) & (np.abs(p) > 1e-9)
    else:
        predicted = p > threshold
    predicted = predicted.astype(np.float64)
    weights = np.ones((len(y), 1)) if w is None else np.asarray(w, np.float64)[:, None]
    axis = None if average == "micro" else 0
    tp = (predicted * y * weights).sum(axis)
    fp = (predicted * (1 - y) * weights).sum(axis)
    fn = ((1 - predicted) * y * weights).sum(axis)
    support = (y * weights).sum(axis)
    precision, recall = tp / (tp + fp + EPS), tp / (tp + fn + EPS)
    score = (1 + beta ** 2) * precision * recall / (beta ** 2 * precision + recall + EPS)
    if average == "weighted":
        return float((score * support / (support.sum() + EPS)).sum())
    return float(score.mean()) if average else score


def np_r2(y, p, w=None, aggregation="uniform_average"):
    weights = np.ones_like(y) if w is None else np.broadcast_to(np.asarray(w)[:, None], y.shape)
    mean = (y * weights).sum(0) / weights.sum(0)
    total = ((y - mean) ** 2 * weights).sum(0)
    scores = 1 - ((y - p) ** 2 * weights).sum(0) / total
    if aggregation == "uniform_average":
        return float(scores.mean())
    if aggregation == "variance_weighted_average":
        return float((scores * total).sum() / total.sum())
    return scores


def np_confusion_matrix(true_ids, predicted_ids, classes, w=None):
    matrix = np.zeros((classes, classes))
    np.add.at(matrix, (true_ids, predicted_ids), 1.0 if w is None else w)
    return matrix


def np_mean_iou(matrix, class_ids=None):
    tp = np.diag(matrix)
    iou = tp / (matrix.sum(0) + matrix.sum(1) - tp)   # every class occurs in these tests
    return float(iou[class_ids].mean() if class_ids is not None else iou.mean())


def fixed_model(units, activation, seed, input_shape=(4,)):
    rng = np.random.default_rng(seed)
    model = Sequential([Input(shape=input_shape), Dense(units, activation=activation)])
    kernel, bias = rng.standard_normal((input_shape[-1], units)), rng.standard_normal(units) * 0.5
    model.set_weights([kernel, bias])
    return model, kernel, bias


def np_softmax(z):
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Eager values, counted by hand (and what Keras 3.15 gives for the same inputs)
# ----------------------------------------------------------------------------------------------

# Keras's docstring example.  With threshold 0.5 the predictions are [[0,1,1],[0,1,1],[1,1,0]].
Y_TRUE = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]], np.float32)
Y_PRED = np.array([[0.2, 0.6, 0.7], [0.2, 0.6, 0.6], [0.6, 0.8, 0.0]], np.float32)
WEIGHTS = np.array([1.0, 2.0, 0.5], np.float32)
# keras.metrics (3.15, JAX backend) on exactly these inputs, float32:
KERAS_F1 = [0.4999999701976776, 0.7999999523162842, 0.666666567325592]
KERAS_F2 = [0.38461539149284363, 0.9090909361839294, 0.8333331942558289]
KERAS_F1_WEIGHTED = {"micro": 0.4615384042263031, "macro": 0.44999998807907104,
                     "weighted": 0.3791666626930237}
KERAS_F1_ARGMAX = [0.0, 0.4999999403953552, 0.666666567325592]
KERAS_R2 = 0.5714285373687744
KERAS_MEAN_IOU = 0.5166666507720947
KERAS_MEAN = 3.375


def f_beta(tp, fp, fn, beta=1.0):
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return (1 + beta ** 2) * precision * recall / (beta ** 2 * precision + recall)


def test_f_scores_from_counts_by_hand_and_as_keras():
    # per class (tp, fp, fn) at threshold 0.5: class 0 (1, 0, 2), class 1 (2, 1, 0), class 2 (1, 1, 0)
    counts = [(1, 0, 2), (2, 1, 0), (1, 1, 0)]
    by_hand = [f_beta(*c) for c in counts]
    np.testing.assert_allclose(by_hand, [0.5, 0.8, 2 / 3])
    f1 = metrics.F1Score(threshold=0.5)
    f1.update_state(Y_TRUE, Y_PRED)
    np.testing.assert_allclose(f1.result(), by_hand, rtol=1e-6)
    np.testing.assert_allclose(f1.result(), KERAS_F1, rtol=1e-6)
    f2 = metrics.FBetaScore(beta=2.0, threshold=0.5)
    assert f2.name == "fbeta_score" and f1.name == "f1_score"
    by_hand = [f_beta(*c, beta=2.0) for c in counts]
    np.testing.assert_allclose(f2(Y_TRUE, Y_PRED), by_hand, rtol=1e-6)   # __call__: update, result
    np.testing.assert_allclose(f2.result(), KERAS_F2, rtol=1e-6)

    # Weighted by (1, 2, 0.5): class 0 tp 0.5 fp 0 fn 3 (support 3.5), class 1 tp 1.5 fp 2 fn 0
    # (support 1.5), class 2 tp 1 fp 2 fn 0 (support 1).
    scores = np.array([f_beta(0.5, 0, 3), f_beta(1.5, 2, 0), f_beta(1, 2, 0)])
    np.testing.assert_allclose(scores, [0.25, 0.6, 0.5])
    expected = {"micro": f_beta(3.0, 4.0, 3.0), "macro": scores.mean(),
                "weighted": (scores * [3.5, 1.5, 1.0]).sum() / 6.0}
    for average, value in expected.items():
        metric = metrics.F1Score(average=average, threshold=0.5)
        metric.update_state(Y_TRUE, Y_PRED, sample_weight=WEIGHTS)
        assert metric.result() == pytest.approx(value, rel=1e-6)
        assert metric.result() == pytest.approx(KERAS_F1_WEIGHTED[average], rel=1e-6)
        assert metric.result() == pytest.approx(np_fbeta(Y_TRUE, Y_PRED, average=average,
                                                         threshold=0.5, w=WEIGHTS), rel=1e-9)

    # threshold=None: each row's largest score is predicted, both of a tie ([0.2, 0.6, 0.6]):
    # predictions class 2, classes 1 and 2, class 1; class 0 (0, 0, 3), 1 (1, 1, 1), 2 (1, 1, 0)
    argmax = metrics.F1Score()
    argmax.update_state(Y_TRUE, Y_PRED)
    np.testing.assert_allclose(argmax.result(), [0.0, f_beta(1, 1, 1), f_beta(1, 1, 0)], atol=1e-6)
    np.testing.assert_allclose(argmax.result(), KERAS_F1_ARGMAX, rtol=1e-6, atol=1e-7)


def test_f_scores_accumulate_over_batches_and_a_zero_row_predicts_nothing():
    rng = np.random.default_rng(3)
    y = (rng.random((15, 4)) > 0.5).astype(np.float64)
    p = rng.random((15, 4))
    p[4] = 0.0        # no prediction at all in this row (Keras: |score| > 1e-9)
    p[5, :2] = 0.9    # a tie: both predicted
    w = rng.random(15)
    for average in (None, "micro", "macro", "weighted"):
        metric = metrics.FBetaScore(average=average, beta=0.5)
        for rows in (slice(0, 4), slice(4, 11), slice(11, 15)):
            metric.update_state(y[rows], p[rows], sample_weight=w[rows])
        np.testing.assert_allclose(metric.result(), np_fbeta(y, p, 0.5, None, average, w), rtol=1e-5)
        metric.reset_state()
        metric.update_state(y[:3], p[:3])
        np.testing.assert_allclose(metric.result(), np_fbeta(y[:3], p[:3], 0.5, None, average),
                                   rtol=1e-5)


def test_f_score_arguments_checked_as_keras():
    with pytest.raises(ValueError, match="average"):
        metrics.F1Score(average="samples")
    with pytest.raises(ValueError, match="beta"):
        metrics.FBetaScore(beta=2)           # an int: Keras wants a Python float
    with pytest.raises(ValueError, match="threshold"):
        metrics.F1Score(threshold=1.5)
    with pytest.raises(ValueError, match="2D inputs"):
        metrics.F1Score().update_state(np.zeros(3), np.zeros(3))


def test_r2_by_hand_adjusted_and_aggregated():
    # y (1, 4, 3), mean 8/3: total sum of squares 14/3; residuals 1 + 0 + 1 = 2; R2 = 1 - 3/7
    r2 = metrics.R2Score()
    r2.update_state(np.array([[1], [4], [3]]), np.array([[2], [4], [4]]))
    assert r2.result() == pytest.approx(4 / 7) and r2.result() == pytest.approx(KERAS_R2, rel=1e-6)
    # adjusted with one regressor over n = 3 entries: 1 - (1 - 4/7) * (3 - 1) / (3 - 1 - 1) = 1/7
    adjusted = metrics.R2Score(num_regressors=1)
    adjusted.update_state(np.array([[1], [4], [3]]), np.array([[2], [4], [4]]))
    assert adjusted.result() == pytest.approx(1 / 7)
    with pytest.warns(UserWarning, match="More independent predictors"):
        too_many = metrics.R2Score(num_regressors=5)
        too_many.update_state(np.array([[1], [4], [3]]), np.array([[2], [4], [4]]))
        assert too_many.result() == pytest.approx(4 / 7)

    rng = np.random.default_rng(4)
    y = rng.standard_normal((12, 3)) * [1.0, 3.0, 0.5]
    p = y + rng.standard_normal((12, 3)) * 0.8
    w = rng.random(12)
    for aggregation in (None, "uniform_average", "variance_weighted_average"):
        metric = metrics.R2Score(class_aggregation=aggregation)
        metric.update_state(y[:5], p[:5], sample_weight=w[:5])
        metric.update_state(y[5:], p[5:], sample_weight=w[5:])
        np.testing.assert_allclose(metric.result(), np_r2(y, p, w, aggregation), rtol=1e-5)
    # (N,) against (N, 1): ranks matched as Keras's, one column
    metric = metrics.R2Score()
    metric.update_state(y[:, 0], p[:, :1])
    assert metric.result() == pytest.approx(np_r2(y[:, :1], p[:, :1]), rel=1e-5)
    with pytest.raises(ValueError, match="class_aggregation"):
        metrics.R2Score(class_aggregation="mean")


def test_mean_iou_from_a_confusion_matrix_by_hand():
    true_ids, predicted_ids = [0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2]
    weights = [1, 2, 1, 1, 3, 1, 1]
    # rows true, columns predicted: (0,0) 1, (0,1) 2, (1,1) 2, (2,2) 3 + 1, (2,0) 1
    matrix = np.array([[1, 2, 0], [0, 2, 0], [1, 0, 4]], np.float64)
    np.testing.assert_array_equal(np_confusion_matrix(true_ids, predicted_ids, 3, weights), matrix)
    # IoU = tp / (true + predicted - tp): class 0 1 / (3 + 2 - 1), class 1 2 / (2 + 4 - 2),
    # class 2 4 / (5 + 4 - 4)
    by_hand = (1 / 4 + 2 / 4 + 4 / 5) / 3
    metric = metrics.MeanIoU(num_classes=3)
    assert metric.name == "mean_io_u"
    metric.update_state(true_ids, predicted_ids, sample_weight=weights)
    np.testing.assert_array_equal(metric.confusion_matrix(), matrix)
    assert metric.result() == pytest.approx(by_hand, rel=1e-6)
    assert metric.result() == pytest.approx(KERAS_MEAN_IOU, rel=1e-6)
    # a class that is neither true nor predicted anywhere is left out of the mean, not counted 0
    four = metrics.MeanIoU(num_classes=4)
    four.update_state(true_ids, predicted_ids, sample_weight=weights)
    assert four.result() == pytest.approx(by_hand, rel=1e-6)
    iou = metrics.IoU(num_classes=3, target_class_ids=[0, 2])
    iou.update_state(true_ids, predicted_ids, sample_weight=weights)
    assert iou.result() == pytest.approx((1 / 4 + 4 / 5) / 2, rel=1e-6)
    # ignore_class=1 drops the two samples labelled 1: (0,0) 1, (0,1) 2, (2,2) 4, (2,0) 1; class 1
    # is still predicted (2 / 2 + 0 ... its IoU is 0 / (0 + 2 - 0) = 0)
    ignored = metrics.MeanIoU(num_classes=3, ignore_class=1)
    ignored.update_state(true_ids, predicted_ids, sample_weight=weights)
    assert ignored.result() == pytest.approx((1 / 4 + 0 + 4 / 5) / 3, rel=1e-6)


def test_iou_ids_and_weights_truncated_as_keras_int_dtype():
    # Keras's default int dtype: scores 0.7 -> class 0, 1.9 -> 1, -0.5 -> 0 (toward zero); the
    # weights 1.5 -> 1 and 0.5 -> 0; an id out of [0, 3) counts nothing.
    metric = metrics.MeanIoU(num_classes=3)
    metric.update_state([0, 1, 2, 2, 1], [0.7, 1.9, -0.5, 2.0, 3.0],
                        sample_weight=[1.5, 1, 1, 0.5, 1])
    np.testing.assert_array_equal(metric.confusion_matrix(), [[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    # class 0 1 / (1 + 2 - 1), class 1 1 / 1, class 2 0 / 1
    assert metric.result() == pytest.approx((0.5 + 1 + 0) / 3, rel=1e-6)
    # a float dtype keeps the weights (and, as Keras, drops the id -0.5 as out of range)
    floats = metrics.MeanIoU(num_classes=3, dtype="float32")
    floats.update_state([0, 1, 2, 2, 1], [0.7, 1.9, -0.5, 2.0, 3.0],
                        sample_weight=[1.5, 1, 1, 0.5, 1])
    np.testing.assert_array_equal(floats.confusion_matrix(),
                                  [[1.5, 0, 0], [0, 1, 0], [0, 0, 0.5]])


def test_one_hot_iou_takes_the_argmax():
    rng = np.random.default_rng(6)
    labels = np.tile(np.arange(4), 4)
    scores = rng.random((16, 4))
    expected = np_confusion_matrix(labels, scores.argmax(-1), 4)
    metric = metrics.OneHotMeanIoU(num_classes=4)
    metric.update_state(np.eye(4)[labels], scores)
    np.testing.assert_array_equal(metric.confusion_matrix(), expected)
    one = metrics.OneHotIoU(num_classes=4, target_class_ids=[1, 3])
    one.update_state(np.eye(4)[labels], scores)
    assert one.result() == pytest.approx(np_mean_iou(expected, [1, 3]), rel=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        metrics.IoU(num_classes=3, target_class_ids=[3])


def test_mean_and_sum_standalone():
    mean, total = metrics.Mean(), metrics.Sum()
    assert (mean.name, total.name) == ("mean", "sum")
    # per-sample means 1.5 and 4, weights 1 and 3: (1.5 + 12) / 4; the sum weighs the entries
    mean.update_state([[1, 2], [3, 5]], sample_weight=[1, 3])
    assert mean.result() == pytest.approx(27 / 8) and mean.result() == pytest.approx(KERAS_MEAN)
    total.update_state([[1, 2], [3, 5]], sample_weight=[1, 3])
    assert total.result() == pytest.approx(3 + 24)
    mean.update_state(4.0)   # one more value of weight 1: (13.5 + 4) / 5
    assert mean.result() == pytest.approx(17.5 / 5)
    assert total([1.0, 2.0]) == pytest.approx(30.0)   # __call__ accumulates too
    mean.reset_state()
    total.reset_state()
    assert mean.result() == 0.0 and total.result() == 0.0
    mean.update_state([1.0, 2.0, 6.0])
    assert mean.result() == pytest.approx(3.0)
    # weights shaped like the values: sum(v * w) / sum(w)
    weighted = metrics.Mean()
    weighted.update_state([[1, 2], [3, 5]], sample_weight=[[1, 0], [2, 1]])
    assert weighted.result() == pytest.approx((1 + 6 + 5) / 4)
    # Keras's compile() fails on them (update_state takes values); kcompile says so at compile
    model = Sequential([Input(shape=(2,)), Dense(1)])
    for metric in (metrics.Mean(), "sum"):
        with pytest.raises(TypeError, match="standalone metric"):
            model.compile(optimizer="sgd", loss="mse", metrics=[metric], target="reference")


@pytest.mark.parametrize("weighted_first", [False, True])
def test_a_standalone_metric_mixes_weighted_and_unweighted_updates(weighted_first):
    """As Keras's metrics keep (total, count): an unweighted update counts each value once, a
    weighted one by its weight, in either order (hand-computed sums); a function giving one number
    per batch counts once per unweighted batch."""
    yt = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    yp = np.array([[0.2, 0.8], [0.4, 0.9]], np.float32)
    w = np.array([1.0, 0.5], np.float32)
    calls = [(yt, yp, None), (yt, yp, w)]
    if weighted_first:
        calls.reverse()
    mse, acc, r2 = metrics.MeanSquaredError(), metrics.BinaryAccuracy(), metrics.R2Score()
    per_batch = metrics.MeanMetricWrapper(lambda t, p: kcompile.ops.mean(t), name="mean_true")
    for a, b, weight in calls:
        for metric in (mse, acc, r2):
            metric.update_state(a, b, sample_weight=weight)
        # batch means 0.5 unweighted, 1.0 weighted
        per_batch.update_state(yt if weight is None else np.ones_like(yt), b, sample_weight=weight)
    sq = ((yt - yp) ** 2).mean(axis=1)                  # 0.04, 0.585 per sample
    assert mse.result() == pytest.approx((sq.sum() + (sq * w).sum()) / (2 + w.sum()), rel=1e-6)
    hits = ((yp > 0.5) == yt).mean(axis=1)              # 1.0, 0.0 per sample
    assert acc.result() == pytest.approx((hits.sum() + (hits * w).sum()) / 3.5, rel=1e-6)
    weights = np.concatenate([np.ones(2), w])[:, None]
    t, p = np.concatenate([yt, yt]), np.concatenate([yp, yp])
    mean = (weights * t).sum(0) / weights.sum()
    scores = 1 - (weights * (t - p) ** 2).sum(0) / (weights * (t - mean) ** 2).sum(0)
    assert r2.result() == pytest.approx(scores.mean(), rel=1e-5)
    # the unweighted batch counts once (weight 1), the weighted batch by its weights' sum
    assert per_batch.result() == pytest.approx((0.5 + 1.0 * w.sum()) / (1 + w.sum()), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# In compiled steps, on every target
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_classification_metrics_through_fit_and_evaluate(target):
    # 23 samples in batches of 5: the counts of every batch are added up over the epoch.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((23, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 23)
    labels[:3] = [0, 1, 2]      # every class is a true class
    y = np.eye(3)[labels]
    w = rng.random(23).astype(np.float32)
    model, kernel, bias = fixed_model(3, "softmax", seed=8)
    model.compile(optimizer=optimizers.SGD(learning_rate=0.0), loss="categorical_crossentropy",
                  metrics=[metrics.F1Score(), metrics.FBetaScore(average="macro", beta=2.0,
                                                                 threshold=0.4, name="f2"),
                           metrics.OneHotMeanIoU(3), metrics.OneHotIoU(3, [0, 2])],
                  weighted_metrics=[metrics.F1Score(average="weighted", name="weighted_f1"),
                                    metrics.OneHotMeanIoU(3, dtype="float32", name="weighted_iou")],
                  target=target)
    p = np_softmax(x.astype(np.float64) @ kernel + bias)
    matrix = np_confusion_matrix(labels, p.argmax(-1), 3)
    expected = {"f1_score": np_fbeta(y, p), "f2": np_fbeta(y, p, 2.0, 0.4, "macro"),
                "one_hot_mean_io_u": np_mean_iou(matrix), "one_hot_io_u": np_mean_iou(matrix, [0, 2]),
                "weighted_f1": np_fbeta(y, p, average="weighted", w=w),
                "weighted_iou": np_mean_iou(np_confusion_matrix(labels, p.argmax(-1), 3, w))}
    history = model.fit(x, y, sample_weight=w, batch_size=5, epochs=1, shuffle=False,
                        verbose=0).history
    logs = model.evaluate(x, y, sample_weight=w, batch_size=5, verbose=0, return_dict=True)
    assert np.shape(logs["f1_score"]) == (3,)
    for name, value in expected.items():
        np.testing.assert_allclose(logs[name], value, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(history[name][0], value, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("target", TARGETS)
def test_sparse_mean_iou_per_pixel_through_evaluate(target):
    # Predictions (batch, 2, 2, 3) against labels (batch, 2, 2): every pixel is one pair.
    rng = np.random.default_rng(9)
    x = rng.standard_normal((10, 2, 2, 4)).astype(np.float32)
    labels = rng.integers(0, 3, (10, 2, 2))
    model, kernel, bias = fixed_model(3, "softmax", seed=10, input_shape=(2, 2, 4))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=[metrics.MeanIoU(3, sparse_y_pred=False),
                           metrics.MeanIoU(3, sparse_y_pred=False, ignore_class=1, name="ignore_1")],
                  target=target)
    logs = model.evaluate(x, labels, batch_size=3, verbose=0, return_dict=True)
    predicted = np_softmax(x.astype(np.float64) @ kernel + bias).argmax(-1)
    matrix = np_confusion_matrix(labels.ravel(), predicted.ravel(), 3)
    assert logs["mean_io_u"] == pytest.approx(np_mean_iou(matrix), rel=1e-5)
    kept = labels.ravel() != 1
    matrix = np_confusion_matrix(labels.ravel()[kept], predicted.ravel()[kept], 3)
    tp = np.diag(matrix)
    denominator = matrix.sum(0) + matrix.sum(1) - tp
    valid = denominator > 0    # class 1 may still be predicted (IoU 0) or not occur at all
    assert logs["ignore_1"] == pytest.approx(
        (tp[valid] / denominator[valid]).sum() / valid.sum(), rel=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_r2_through_evaluate_with_weights(target):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((17, 4)).astype(np.float32)
    model, kernel, bias = fixed_model(2, None, seed=12)
    p = x.astype(np.float64) @ kernel + bias
    y = (p + rng.standard_normal((17, 2)) * 0.5).astype(np.float32)
    w = rng.random(17).astype(np.float32)
    model.compile(optimizer="sgd", loss="mse",
                  metrics=[metrics.R2Score(), metrics.R2Score(class_aggregation=None, name="r2_each"),
                           metrics.R2Score(num_regressors=3, name="adjusted")],
                  weighted_metrics=[metrics.R2Score(class_aggregation="variance_weighted_average",
                                                    name="weighted_r2")],
                  target=target)
    logs = model.evaluate(x, y, sample_weight=w, batch_size=4, verbose=0, return_dict=True)
    y = y.astype(np.float64)
    assert logs["r2_score"] == pytest.approx(np_r2(y, p), rel=1e-4)
    np.testing.assert_allclose(logs["r2_each"], np_r2(y, p, aggregation=None), rtol=1e-4)
    n = y.size     # Keras's n: the entries of y_true seen
    assert logs["adjusted"] == pytest.approx(1 - (1 - np_r2(y, p)) * (n - 1) / (n - 3 - 1), rel=1e-4)
    assert logs["weighted_r2"] == pytest.approx(np_r2(y, p, w, "variance_weighted_average"), rel=1e-4)


# ----------------------------------------------------------------------------------------------
# Names, configs, save and load
# ----------------------------------------------------------------------------------------------

NEW_METRICS = (metrics.F1Score(average="macro", threshold=0.3, name="f"),
               metrics.FBetaScore(average="weighted", beta=0.5),
               metrics.R2Score(class_aggregation=None, num_regressors=2),
               metrics.MeanIoU(4, ignore_class=0, sparse_y_pred=False),
               metrics.IoU(4, [1, 2], dtype="float32"), metrics.OneHotMeanIoU(3, name="o"),
               metrics.OneHotIoU(3, [0]), metrics.Mean(name="m"), metrics.Sum())


@pytest.mark.parametrize("metric", NEW_METRICS, ids=lambda m: type(m).__name__)
def test_config_round_trip(metric):
    clone = type(metric).from_config(metric.get_config())
    assert clone.get_config() == metric.get_config()
    assert isinstance(metrics.get({"class_name": type(metric).__name__,
                                   "config": metric.get_config()}), type(metric))


def test_names_and_keras_configs():
    for name, cls in (("f1_score", metrics.F1Score), ("F1Score", metrics.F1Score),
                      ("FBetaScore", metrics.FBetaScore), ("r2_score", metrics.R2Score),
                      ("mean", metrics.Mean), ("sum", metrics.Sum)):
        assert type(metrics.get(name)) is cls
    # the keys Keras 3 writes
    assert metrics.F1Score().get_config() == {"name": "f1_score", "dtype": "float32", "average": None,
                                              "threshold": None}
    assert metrics.R2Score().get_config() == {"name": "r2_score", "dtype": "float32",
                                              "class_aggregation": "uniform_average",
                                              "num_regressors": 0}
    assert metrics.MeanIoU(3).get_config() == {"num_classes": 3, "name": "mean_io_u", "dtype": "int32",
                                               "ignore_class": None, "sparse_y_true": True,
                                               "sparse_y_pred": True, "axis": -1}
    assert metrics.direction(metrics.F1Score()) == "up"
    assert metrics.direction("r2_score") == "up"


def test_save_and_load_keep_the_metrics(tmp_path):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((12, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    model, _, _ = fixed_model(3, "softmax", seed=14)
    model.compile(optimizer="sgd", loss="categorical_crossentropy",
                  metrics=[metrics.F1Score(average="micro", threshold=0.3, name="f1"),
                           metrics.R2Score(), metrics.OneHotMeanIoU(3)],
                  target="reference")
    before = model.evaluate(x, np.eye(3)[labels], verbose=0, return_dict=True)
    model.save(tmp_path / "m.keras")
    loaded = kcompile.load_model(tmp_path / "m.keras")
    after = loaded.evaluate(x, np.eye(3)[labels], verbose=0, return_dict=True)
    assert after == pytest.approx(before)
    assert sorted(after) == ["f1", "loss", "one_hot_mean_io_u", "r2_score"]


# ----------------------------------------------------------------------------------------------
# Keras-style metrics: state variables, update_state and result
# ----------------------------------------------------------------------------------------------

class BinaryF1(kcompile.metrics.Metric):
    """As Keras's guide writes a metric: variables, update_state with assign_add, result."""

    def __init__(self, name="f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        from kcompile import ops
        p = ops.round(y_pred)
        w = 1.0 if sample_weight is None else ops.reshape(sample_weight, (-1, 1))
        self.tp.assign_add(ops.sum(p * y_true * w))
        self.fp.assign_add(ops.sum(p * (1.0 - y_true) * w))
        self.fn.assign_sub(-ops.sum((1.0 - p) * y_true * w))

    def result(self):
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn + 1e-7)


class ClassCounts(kcompile.metrics.Metric):
    """A vector variable: how often each class is predicted; the result is the largest share."""

    def __init__(self, classes=3, name="top_share"):
        super().__init__(name=name)
        self.counts = self.add_weight(shape=(classes,), name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        from kcompile import ops
        top = ops.cast(ops.equal(y_pred, ops.max(y_pred, axis=-1, keepdims=True)), "float32")
        self.counts.assign_add(ops.sum(top, axis=0))

    def result(self):
        return np.max(self.counts) / np.sum(self.counts)


def _f1(p, y, w=None):
    w = np.ones(len(y)) if w is None else w
    p = np.round(p)[:, 0]
    y = y[:, 0]
    tp, fp, fn = (p * y * w).sum(), (p * (1 - y) * w).sum(), ((1 - p) * y * w).sum()
    return 2 * tp / (2 * tp + fp + fn + 1e-7)


@pytest.mark.parametrize("target", TARGETS)
def test_a_keras_style_metric_is_traced_into_fit_and_evaluate(target):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 5)).astype(np.float32)
    y = (x[:, :1] + 0.5 * x[:, 1:2] > 0).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 150).astype(np.float32)
    model = Sequential([Input((5,)), Dense(1, activation="sigmoid")])
    f1 = BinaryF1()
    model.compile(optimizers.SGD(0.0), "binary_crossentropy", metrics=[f1],
                  weighted_metrics=[BinaryF1(name="wf1")], target=target)
    p = model.predict(x, verbose=0)          # a rate of 0: every batch sees these predictions
    history = model.fit(x, y, sample_weight=w, batch_size=32, epochs=2, verbose=0).history
    np.testing.assert_allclose(history["f1"], [_f1(p, y)] * 2, rtol=1e-5)
    np.testing.assert_allclose(history["wf1"], [_f1(p, y, w)] * 2, rtol=1e-5)
    logs = model.evaluate(x[:70], y[:70], batch_size=16, verbose=0, return_dict=True)
    assert logs["f1"] == pytest.approx(_f1(p[:70], y[:70]), rel=1e-5)
    # the object holds the evaluation's totals, as Keras's would
    assert f1.result() == pytest.approx(logs["f1"], rel=1e-6)
    np.testing.assert_allclose(f1.tp.numpy(), (np.round(p[:70]) * y[:70]).sum())


@pytest.mark.parametrize("target", TARGETS)
def test_a_keras_style_metric_with_a_vector_variable(target):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 64)]
    model = Sequential([Input((4,)), Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy", metrics=[ClassCounts()], target=target)
    p = model.predict(x, verbose=0)
    share = np.bincount(p.argmax(1), minlength=3).max() / 64
    assert model.evaluate(x, y, batch_size=10, verbose=0)[1] == pytest.approx(share)


def test_a_keras_style_metric_used_eagerly_and_reset():
    rng = np.random.default_rng(5)
    p = rng.random((40, 1)).astype(np.float32)
    y = (rng.random((40, 1)) > 0.5).astype(np.float32)
    metric = BinaryF1()
    metric.update_state(y[:25], p[:25])
    metric.update_state(y[25:], p[25:])
    assert float(metric.result()) == pytest.approx(_f1(p, y), rel=1e-6)
    assert [v.name for v in metric.variables] == ["tp", "fp", "fn"]
    metric.reset_state()
    assert [float(v.numpy()) for v in metric.variables] == [0.0, 0.0, 0.0]


def test_a_keras_style_metric_that_assigns_or_reads_its_state_while_traced_says_what_works():
    class Assigns(BinaryF1):
        def update_state(self, y_true, y_pred, sample_weight=None):
            self.tp.assign(self.tp + 1.0)

    class Reads(BinaryF1):
        def update_state(self, y_true, y_pred, sample_weight=None):
            self.tp.assign_add(self.fp * 2.0)

    x = np.ones((4, 2), np.float32)
    y = np.ones((4, 1), np.float32)
    for metric in (Assigns(), Reads()):
        model = Sequential([Input((2,)), Dense(1, activation="sigmoid")])
        model.compile("sgd", "binary_crossentropy", metrics=[metric])
        weights = model.get_weights()
        with pytest.raises(NotImplementedError, match="assign_add / assign_sub only"):
            model.fit(x, y, verbose=0)
        for got, want in zip(model.get_weights(), weights):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cls", [metrics.TruePositives, metrics.FalsePositives,
                                 metrics.TrueNegatives, metrics.FalseNegatives,
                                 metrics.Precision, metrics.Recall])
def test_a_result_over_several_thresholds_is_a_float32_copy_not_the_running_totals(cls):
    """A result kept from one update does not change with the next (Keras 3: float32 arrays).
    Hand counts for y_true (0, 1), y_pred (0.5, 0.9) at thresholds 0.2 and 0.7: TP (1, 1),
    FP (1, 0), TN (0, 1), FN (0, 0); precision (0.5, 1), recall (1, 1)."""
    want = {"TruePositives": [1, 1], "FalsePositives": [1, 0], "TrueNegatives": [0, 1],
            "FalseNegatives": [0, 0], "Precision": [0.5, 1], "Recall": [1, 1]}[cls.__name__]
    counts = cls in (metrics.TruePositives, metrics.FalsePositives, metrics.TrueNegatives,
                     metrics.FalseNegatives)
    metric = cls(thresholds=[0.2, 0.7])
    metric.update_state([0, 1], [0.5, 0.9])
    first = metric.result()
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, want)
    first[...] = -1                              # writing into a result leaves the metric alone
    metric.update_state([0, 1], [0.5, 0.9])
    np.testing.assert_array_equal(metric.result(), np.multiply(want, 2 if counts else 1))


def test_results_before_any_update_and_after_reset_state_have_their_updated_shape():
    """As Keras 3's: a list of thresholds gives a list of zeros, F1Score(average=None) zeros per
    class after reset_state (the classes it has seen), R2Score NaN (0 / 0) with nothing summed."""
    M = metrics
    for metric in (M.Precision(thresholds=[0.3, 0.6]), M.Recall(thresholds=[0.3, 0.6]),
                   M.TruePositives(thresholds=[0.3, 0.6]), M.FalseNegatives(thresholds=[0.3, 0.6])):
        np.testing.assert_array_equal(metric.result(), np.zeros(2, np.float32))
        metric.update_state([1.0, 0.0], [0.5, 0.7])
        assert np.asarray(metric.result()).shape == (2,)
        metric.reset_state()
        result = metric.result()
        assert result.dtype == np.float32
        np.testing.assert_array_equal(result, np.zeros(2, np.float32))
    assert M.Precision().result() == 0.0
    f1 = M.F1Score(average=None)
    f1.update_state(np.eye(3)[[0, 1]], np.eye(3)[[0, 2]] * 0.9)
    assert f1.result().dtype == np.float32 and f1.result()[0] == pytest.approx(1.0, abs=1e-6)
    f1.reset_state()
    np.testing.assert_array_equal(f1.result(), np.zeros(3, np.float32))
    r2 = M.R2Score()
    assert np.isnan(r2.result())
    r2.update_state(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [4.0]]))
    assert r2.result() == pytest.approx(1 - 1 / 2)        # 1 - ss_res / ss_tot
    r2.reset_state()
    assert np.isnan(r2.result())


def test_accuracy_of_integer_arrays_and_metrics_serialize_round_trips():
    """metrics.accuracy on integer arrays compares them in y_pred's dtype, as Keras 3 does (it
    had cast y_true alone to float32 and failed: "operands have different dtypes"); and
    kcompile.metrics has Keras's serialize and deserialize."""
    M = metrics
    y_true, y_pred = np.array([1, 2, 3]), np.array([1, 2, 0])
    np.testing.assert_array_equal(M.get("accuracy")(y_true, y_pred), [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(M.accuracy(y_true[:, None], y_pred[:, None]), [1.0, 1.0, 0.0])
    auc = M.AUC(num_thresholds=11, name="my_auc")
    again = M.deserialize(M.serialize(auc))
    assert type(again) is M.AUC and again.get_config() == auc.get_config()
    assert M.deserialize(M.serialize(M.mean_absolute_error)) is M.mean_absolute_error
    assert M.deserialize("mine", custom_objects={"mine": M.accuracy}) is M.accuracy
    with pytest.raises(ValueError, match="cannot serialize metric"):
        M.serialize(lambda y_true, y_pred: y_pred)
