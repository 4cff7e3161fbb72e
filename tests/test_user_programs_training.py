"""What a Keras 3 user's ordinary training program sees, where kcompile differed from Keras 3:
the summary table's column widths, optimizers' `decay=`, `model.jit_compile`, BackupAndRestore,
the loss functions in `kcompile.metrics` and the threshold-constrained metrics. Expected values
are Keras 3.15's output for the same program, its documented behaviour or numpy."""
import json

import numpy as np
import pytest

import kcompile
from kcompile import layers as L
from kcompile.models import Sequential


def tutorial_mlp():
    return Sequential([kcompile.Input((28, 28)), L.Flatten(), L.Dense(128, activation="relu"),
                       L.Dropout(0.2), L.Dense(10)])


# Keras 3.15's model.summary() of tutorial_mlp() on an 80-column terminal (line_length 76), as rich
# prints it: columns of int(0.45 * 76), ... characters, narrowed by the borders and padding.
KERAS_SUMMARY_76 = """\
Model: "sequential"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓
┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩
│ flatten (Flatten)               │ (None, 784)            │             0 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dense (Dense)                   │ (None, 128)            │       100,480 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dropout (Dropout)               │ (None, 128)            │             0 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ dense_1 (Dense)                 │ (None, 10)             │         1,290 │
└─────────────────────────────────┴────────────────────────┴───────────────┘
 Total params: 101,770 (397.54 KB)
 Trainable params: 101,770 (397.54 KB)
 Non-trainable params: 0 (0.00 B)"""

# The same with show_trainable=True (Keras: 12 characters wider, capped at 76 here too).
KERAS_SUMMARY_TRAINABLE_76 = """\
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━┓
┃ Layer (type)                ┃ Output Shape          ┃    Param # ┃ Trainable ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━┩
│ flatten (Flatten)           │ (None, 784)           │          0 │     -     │"""


def test_summary_columns_have_kerass_widths(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    model = tutorial_mlp()
    model.summary()
    assert capsys.readouterr().out.rstrip("\n") == KERAS_SUMMARY_76
    lines = []
    model.summary(print_fn=lines.append, line_length=76)
    assert lines[0].rstrip("\n") == KERAS_SUMMARY_76
    model.summary(show_trainable=True)
    # Keras's rich cuts the header to 'Trai…' in a column of 5; here the column widens to fit.
    assert KERAS_SUMMARY_TRAINABLE_76 in capsys.readouterr().out


def test_summary_line_length_88_has_kerass_columns():
    # Keras 3.15 on a wide terminal: cells (with padding) of 38, 29 and 17 characters.
    lines = []
    tutorial_mlp().summary(print_fn=lines.append, line_length=88)
    row = next(line for line in lines[0].splitlines() if line.startswith("│ dense (Dense)"))
    assert [len(cell) for cell in row.split("│")[1:-1]] == [38, 29, 17]


def test_kerass_ignored_decay_argument_warns_and_unknown_arguments_are_value_errors():
    # Keras 3: `decay` (Keras 2's) warns "Argument `decay` is no longer supported and will be
    # ignored." and changes nothing; any other unknown argument is a ValueError.
    with pytest.warns(UserWarning, match="`decay` is no longer supported"):
        adam = kcompile.optimizers.Adam(learning_rate=0.01, decay=1e-6)
    assert "decay" not in adam.get_config()
    assert adam.get_config() == kcompile.optimizers.Adam(learning_rate=0.01).get_config()
    with pytest.raises(ValueError, match="not recognized"):
        kcompile.optimizers.SGD(momentun=0.9)
    with pytest.raises(TypeError, match="momentun"):
        kcompile.optimizers.SGD(momentun=0.9)


def small_classifier():
    return Sequential([kcompile.Input((4,)), L.Dense(8, activation="relu"),
                       L.Dense(3, activation="softmax")])


def test_model_jit_compile_is_kerass_flag():
    # Keras 3 on JAX: 'auto' resolves to True, run_eagerly=True turns it off, and an explicit
    # jit_compile=False stays False (also in get_compile_config()).
    model = small_classifier()
    assert model.jit_compile is True
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert model.jit_compile is True and model.get_compile_config()["jit_compile"] is True
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=False)
    assert model.jit_compile is False and model.get_compile_config()["jit_compile"] is False
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    assert model.jit_compile is False


class Interrupt(kcompile.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("Interrupting!")


def seeded_classifier(seed=5):
    rng = np.random.default_rng(seed)
    model = small_classifier()
    model.set_weights([rng.standard_normal((4, 8)) * 0.5, rng.standard_normal(8) * 0.1,
                       rng.standard_normal((8, 3)) * 0.5, rng.standard_normal(3) * 0.1])
    model.compile(optimizer=kcompile.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def classification_data(rows=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, 4)).astype("float32"), rng.integers(0, 3, rows)


def test_backup_and_restore_resumes_an_interrupted_fit_as_if_never_interrupted(tmp_path):
    # Keras 3's documented example: a fit interrupted at epoch 3 of 6, run again with the
    # callback, trains epochs 3 to 5 only; the weights and the optimizer's state (Adam's moments
    # and iterations) are the backup's, so the result is the uninterrupted fit's.
    x, y = classification_data()
    backup = tmp_path / "backup"
    uninterrupted = seeded_classifier()
    expected = uninterrupted.fit(x, y, epochs=6, batch_size=8, shuffle=False, verbose=0)
    with pytest.raises(RuntimeError, match="Interrupting"):
        seeded_classifier().fit(x, y, epochs=6, batch_size=8, shuffle=False, verbose=0,
                                callbacks=[kcompile.callbacks.BackupAndRestore(backup), Interrupt(3)])
    assert sorted(p.name for p in backup.iterdir()) == ["latest.weights.h5", "training_metadata.json"]
    assert json.loads((backup / "training_metadata.json").read_text()) == {"epoch": 3, "batch": 0}
    resumed = seeded_classifier()
    history = resumed.fit(x, y, epochs=6, batch_size=8, shuffle=False, verbose=0,
                          callbacks=[kcompile.callbacks.BackupAndRestore(backup)])
    assert history.epoch == [3, 4, 5]
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"][3:], rtol=1e-5)
    for got, want in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert int(resumed.optimizer.iterations) == 30
    assert not backup.exists()     # deleted when training ends (delete_checkpoint=True)
    # The next fit of the same model starts at its own initial_epoch again.
    assert resumed.fit(x, y, epochs=2, verbose=0).epoch == [0, 1]


def test_backup_and_restore_every_few_batches_and_its_arguments(tmp_path):
    x, y = classification_data()
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError):
        seeded_classifier().fit(x, y, epochs=6, batch_size=8, shuffle=False, verbose=0, callbacks=[
            kcompile.callbacks.BackupAndRestore(backup, save_freq=3, delete_checkpoint=False),
            Interrupt(2)])
    # 5 batches an epoch, a backup every 3: the last after epoch 1's 4th batch (Keras 3 the same)
    assert json.loads((backup / "training_metadata.json").read_text()) == {"epoch": 1, "batch": 3}
    with pytest.raises(ValueError, match="save_freq"):
        kcompile.callbacks.BackupAndRestore(backup, save_freq="x")
    with pytest.raises(ValueError, match="Empty `backup_dir`"):
        kcompile.callbacks.BackupAndRestore("")


def test_backup_and_restore_double_checkpoint_falls_back_to_the_previous_backup(tmp_path):
    x, y = classification_data()
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError):
        seeded_classifier().fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0, callbacks=[
            kcompile.callbacks.BackupAndRestore(backup, double_checkpoint=True), Interrupt(3)])
    assert json.loads((backup / "training_metadata.json.bkp").read_text())["epoch"] == 2
    (backup / "latest.weights.h5").write_text("garbage")
    # Keras 3 (the same script): the .bkp files of epoch 2 are restored, epochs 2 to 4 run.
    history = seeded_classifier().fit(x, y, epochs=5, batch_size=8, shuffle=False, verbose=0,
                                      callbacks=[kcompile.callbacks.BackupAndRestore(
                                          backup, double_checkpoint=True)])
    assert history.epoch == [2, 3, 4]


def test_keras_metrics_module_has_the_loss_functions_and_a_model_using_them_reloads(tmp_path):
    # keras.metrics.huber is keras.losses.huber (and so for the other loss functions), logged under
    # the function's name.
    names = ["binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
             "binary_focal_crossentropy", "categorical_focal_crossentropy", "kl_divergence",
             "poisson", "hinge", "squared_hinge", "categorical_hinge", "huber", "log_cosh"]
    for name in names:
        assert getattr(kcompile.metrics, name) is getattr(kcompile.losses, name), name
    x, y = classification_data(24)
    y = np.eye(3, dtype="float32")[y]
    model = seeded_classifier()
    model.compile(optimizer="sgd", loss="categorical_crossentropy",
                  metrics=[kcompile.metrics.huber, kcompile.metrics.log_cosh])
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert sorted(results) == ["huber", "log_cosh", "loss"]
    p = model.predict(x, verbose=0).astype(np.float64)
    error = np.abs(p - y)
    huber = np.where(error <= 1, 0.5 * error ** 2, error - 0.5).mean(-1).mean()
    log_cosh = (np.log(np.cosh(p - y))).mean(-1).mean()
    assert results["huber"] == pytest.approx(huber, rel=1e-5)
    assert results["log_cosh"] == pytest.approx(log_cosh, rel=1e-5)
    model.save(tmp_path / "m.keras")      # loading found no metric named 'huber' before
    loaded = kcompile.models.load_model(tmp_path / "m.keras")
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(results, rel=1e-6)


def np_at_constraint(y, p, w, thresholds, constraint, value, result):
    """Keras's SensitivitySpecificityBase in numpy: rates at each threshold (p > t is positive),
    the best `result` rate where the `constraint` rate is >= value, else 0."""
    predicted = p[:, None] > np.asarray(thresholds)[None, :]
    actual = (y != 0)[:, None]
    w = w[:, None]
    tp, fp = (w * (predicted & actual)).sum(0), (w * (predicted & ~actual)).sum(0)
    tn, fn = (w * (~predicted & ~actual)).sum(0), (w * (~predicted & actual)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = {"recall": np.nan_to_num(tp / (tp + fn)), "precision": np.nan_to_num(tp / (tp + fp)),
                 "specificity": np.nan_to_num(tn / (tn + fp))}
    rates["sensitivity"] = rates["recall"]
    feasible = rates[constraint] >= value
    return rates[result][feasible].max() if feasible.any() else 0.0


def test_threshold_constrained_metrics_against_numpy():
    # Keras 3's SensitivityAtSpecificity, SpecificityAtSensitivity, PrecisionAtRecall and
    # RecallAtPrecision (Keras 3.15 gives these same values for this model and data).
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 4)).astype("float32")
    y = (x[:, 0] + 0.5 * rng.standard_normal(60) > 0).astype("float32")
    weights = np.linspace(0, 2, 60)
    model = Sequential([kcompile.Input((4,)), L.Dense(1, activation="sigmoid")])
    model.set_weights([rng.standard_normal((4, 1)), np.zeros(1)])
    M = kcompile.metrics
    cases = [(M.SensitivityAtSpecificity(0.5), "specificity", 0.5, "sensitivity", 200),
             (M.SpecificityAtSensitivity(0.7, num_thresholds=50), "sensitivity", 0.7, "specificity", 50),
             (M.PrecisionAtRecall(0.8), "recall", 0.8, "precision", 200),
             (M.RecallAtPrecision(0.6, num_thresholds=1), "precision", 0.6, "recall", 1)]
    model.compile(optimizer="sgd", loss="binary_crossentropy",
                  weighted_metrics=[case[0] for case in cases])
    results = model.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)
    p = model.predict(x, verbose=0)[:, 0]
    for metric, constraint, value, result, count in cases:
        thresholds = [0.5] if count == 1 else \
            [0.0] + [(i + 1) / (count - 1) for i in range(count - 2)] + [1.0]
        expected = np_at_constraint(y, p, weights, thresholds, constraint, value, result)
        assert results[metric.name] == pytest.approx(expected, abs=1e-6), metric.name
        assert metric.get_config()[constraint] == value
    assert sorted(results) == ["loss", "precision_at_recall", "recall_at_precision",
                               "sensitivity_at_specificity", "specificity_at_sensitivity"]
    with pytest.raises(ValueError, match="`recall` must be in the range"):
        M.PrecisionAtRecall(1.5)
    with pytest.raises(ValueError, match="num_thresholds"):
        M.PrecisionAtRecall(0.5, num_thresholds=0)
