"""Embedding: the layer harness with integer ids, the lookup and its gradient (repeated ids add up)
against numpy, clamping of ids outside the table, and a small model trained on both targets."""
import numpy as np
import pytest

from kcompile import optimizers
from kcompile.layers import Dense, Embedding, Flatten, GlobalAveragePooling2D, Input, Reshape
from kcompile.models import Sequential
from kcompile.utils import set_random_seed

from layer_harness import run_layer_test


def _ids(rows):
    return lambda rng, shape: rng.integers(0, rows, shape).astype(np.float32)


@pytest.mark.parametrize("make_layer, input_shape, output_shape", [
    (lambda: Embedding(7, 3), (5,), (5, 3)),
    (lambda: Embedding(4, 2, embeddings_initializer="ones"), (2, 3), (2, 3, 2)),
])
def test_embedding_harness(make_layer, input_shape, output_shape):
    run_layer_test(make_layer, input_shape, output_shape, 1, inputs=_ids(4))


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_lookup_and_gradient_match_numpy(target):
    rng = np.random.default_rng(0)
    ids = np.array([[1, 3, 1, 0], [3, 3, 2, 1], [4, 0, 0, 0]], np.float32)
    y = rng.standard_normal((3, 4, 2)).astype(np.float32)
    model = Sequential([Input(shape=(4,)), Embedding(5, 2)])
    table = rng.standard_normal((5, 2)).astype(np.float32)
    model.set_weights([table])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.5), loss="mse", target=target)
    np.testing.assert_array_equal(model.predict(ids, verbose=0), table[ids.astype(int)])
    model.fit(ids, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    # mse: d loss / d out = 2 (out - y) / size; every occurrence of an id adds its row
    d_out = 2 * (table[ids.astype(int)] - y) / y.size
    d_table = np.zeros_like(table)
    np.add.at(d_table, ids.astype(int).reshape(-1), d_out.reshape(-1, 2))
    np.testing.assert_allclose(model.get_weights()[0], table - 0.5 * d_table, rtol=1e-5, atol=1e-6)


def test_ids_outside_the_table_are_clamped():
    """Ids computed inside the model (here behind a Reshape) are clamped on the floats, before the
    cast to i32, so ids the cast could not represent (>= 2**31, +-inf, NaN) follow the rule too:
    NaN reads row 0.  Both targets agree (the expectation is written out by hand)."""
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    ids = np.array([[-3, 0, 9, 2 ** 31, 2 ** 40, 1e30, np.inf, -np.inf, np.nan, -2 ** 40, 2.7, -0.5]],
                   np.float32)
    rows = [0, 0, 3, 3, 3, 3, 3, 0, 0, 0, 2, 0]
    model = Sequential([Input(shape=(12,)), Reshape((12,)), Embedding(4, 2)])
    model.set_weights([table])
    for target in ("reference", "llvm"):
        model.compile(optimizer="sgd", loss="mse", target=target)
        np.testing.assert_array_equal(model.predict(ids, verbose=0)[0], table[rows])


def test_a_float_to_int32_cast_saturates_in_compiled_code():
    """codegen's float -> i32 conversion is defined for every float (fptosi alone is poison for
    NaN and values out of range): NaN -> 0, otherwise truncation clamped to the i32 range."""
    from kcompile import ops
    from kcompile.layers import Layer

    class ToInt(Layer):
        def call(self, t):
            return ops.cast(ops.cast(t, "int32"), "float32")

    x = np.array([[np.nan, np.inf, -np.inf, 2 ** 31, -2 ** 31, 3e9, -3e9, 2.9, -2.9, 1e30]],
                 np.float32)
    want = np.array([[0, 2 ** 31 - 1, -2 ** 31, 2 ** 31 - 1, -2 ** 31, 2 ** 31 - 1, -2 ** 31, 2, -2,
                      2 ** 31 - 1]], np.float64).astype(np.float32)
    model = Sequential([Input(shape=(10,)), ToInt()])
    model.compile(optimizer="sgd", loss="mse", target="llvm")
    np.testing.assert_array_equal(model.predict(x, verbose=0), want)


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_ids_out_of_range_in_the_data_are_refused(target):
    """When the input feeds the Embedding directly, an id outside [0, input_dim) in the data is a
    ValueError naming the layer, the id, its position and the range, before any step runs (the
    model's weights and step count stay as they were)."""
    rng = np.random.default_rng(1)
    model = Sequential([Input((3,), dtype="int32"), Embedding(10, 2, name="words"), Flatten(),
                        Dense(2)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", target=target)
    x = rng.integers(0, 10, (8, 3))
    y = rng.integers(0, 2, 8)
    model.fit(x, y, verbose=0)
    model.predict(x[:1].astype(np.float32), verbose=0)   # (so predict's one-batch fast path is ready)
    weights = model.get_weights()
    iterations = int(np.asarray(model.optimizer.iterations))
    cases = [(57, "57"), (-1, "-1"), (10, "10"), (2 ** 31, str(2 ** 31)), (np.nan, "nan"),
             (np.inf, "inf"), (1e30, r"1e\+30")]
    for bad, shown in cases:
        xb = x.astype(np.float64 if isinstance(bad, float) else np.int64)
        xb[5, 1] = bad
        calls = {
            "fit": lambda: model.fit(xb, y, verbose=0),
            "fit validation_data": lambda: model.fit(x, y, validation_data=(xb, y), verbose=0),
            "evaluate": lambda: model.evaluate(xb, y, verbose=0),
            "predict": lambda: model.predict(xb, verbose=0),
            "predict fast path": lambda: model.predict(xb[5:6].astype(np.float32), verbose=0),
            "train_on_batch": lambda: model.train_on_batch(xb, y),
            "test_on_batch": lambda: model.test_on_batch(xb, y),
            "predict_on_batch": lambda: model.predict_on_batch(xb),
            "fit on a generator": lambda: model.fit(iter([(xb, y)]), verbose=0),
        }
        for what, call in calls.items():
            position = r"\[0, 1\]" if what == "predict fast path" else r"\[5, 1\]"
            with pytest.raises(ValueError,
                               match=rf"'words'.*\[0, 10\).* {shown} at position {position}"):
                call()
        for got, want in zip(model.get_weights(), weights):
            np.testing.assert_array_equal(got, want)
        assert int(np.asarray(model.optimizer.iterations)) == iterations
    # ids in range (also as floats holding integers) still train
    model.fit(x.astype(np.float32), y, verbose=0)
    assert int(np.asarray(model.optimizer.iterations)) == iterations + 1


def test_default_initializer_is_uniform_005_and_config_round_trips():
    set_random_seed(1)
    layer = Embedding(1000, 16)
    layer.build((None, 3))
    (table,) = layer.get_weights()
    assert np.abs(table).max() <= 0.05 and table.std() > 0.02
    assert layer.get_config()["embeddings_initializer"]["class_name"] == "RandomUniform"
    assert Embedding.from_config(layer.get_config()).get_config() == layer.get_config()
    assert layer.name == "embedding"


def test_an_integer_input_feeds_ids_as_keras_models_write_it(tmp_path):
    """Input(dtype='int32') before an Embedding: int ids are looked up as the float-fed model's, the
    dtype survives get_config and save/load, and other float dtypes compute in float32."""
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 30, (12, 6)).astype(np.int32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 12)]
    models = []
    for dtype in ("int32", None):
        set_random_seed(3)
        model = Sequential([Input((6,), dtype=dtype), Embedding(30, 4), Flatten(), Dense(3)])
        model.compile(optimizer=optimizers.SGD(0.1), loss="mse")
        model.fit(ids if dtype else ids.astype(np.float32), y, epochs=2, batch_size=4, shuffle=False,
                  verbose=0)
        models.append(model)
    for got, want in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_array_equal(got, want)
    table, kernel, bias = (w.astype(np.float64) for w in models[0].get_weights())
    np.testing.assert_allclose(models[0].predict(ids, verbose=0),
                               table[ids].reshape(12, -1) @ kernel + bias, rtol=1e-5, atol=1e-6)
    assert models[0].get_config()["layers"][0]["config"]["dtype"] == "int32"
    models[0].save(tmp_path / "m.keras")
    from kcompile.models import load_model
    assert load_model(tmp_path / "m.keras").get_config() == models[0].get_config()
    # other float types compute in float32 (as Keras's float32 layers cast them); non-numbers are
    # refused
    assert Input((6,), dtype="float64")._input_layer.get_config()["dtype"] == "float32"
    with pytest.raises(ValueError, match="float inputs .computed in float32., or integer ids"):
        Input((6,), dtype="bool")


def test_embedding_arguments_are_checked():
    with pytest.raises(ValueError, match="input_dim"):
        Embedding(0, 3)
    with pytest.raises(ValueError, match="output_dim"):
        Embedding(3, 2.5)
    # ids are fed as float32: 2**24 + 1 would be read as 2**24
    assert Embedding(2 ** 24, 1).input_dim == 2 ** 24
    with pytest.raises(ValueError, match="exact up to 2\\*\\*24"):
        Embedding(2 ** 24 + 1, 1)
    assert Embedding(3, 2, mask_zero=True).get_config()["mask_zero"] is True   # (test_masking.py)
    with pytest.warns(UserWarning, match="input_length"):
        Embedding(3, 2, input_length=5)


def test_a_text_classifier_trains_alike_compiled_and_interpreted():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 20, (48, 6)).astype(np.float32)
    labels = (ids[:, 0] < 10).astype(np.int32)
    results = {}
    for target in ("reference", "llvm"):
        set_random_seed(3)
        model = Sequential([Input(shape=(6,)), Embedding(20, 4), Reshape((6, 1, 4)),
                            GlobalAveragePooling2D(), Dense(8, activation="relu"), Flatten(),
                            Dense(2, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", target=target)
        history = model.fit(ids, labels, batch_size=16, epochs=3, shuffle=False, verbose=0)
        results[target] = (history.history["loss"], model.get_weights())
    np.testing.assert_allclose(results["llvm"][0], results["reference"][0], rtol=1e-4)
    for got, want in zip(results["llvm"][1], results["reference"][1]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)
