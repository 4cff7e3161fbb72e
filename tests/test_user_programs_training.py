"""What a Keras 3 user's ordinary training program sees, compared with Keras 3 itself: the
summary table's layout, ... (each test says where its expected values come from)."""
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
