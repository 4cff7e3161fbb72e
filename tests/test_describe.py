"""kcompile.describe and the trainer's use of it: a model is found in the compile cache without tracing
only when its description says it traces exactly like the one filed there."""
from __future__ import annotations

import numpy as np
import pytest

import kcompile
from kcompile import layers
from kcompile.describe import Undescribable, describe
import kcompile.trainer as trainer_module


# these tests are about the cache: on, whatever the environment says (conftest.cache_on)
pytestmark = pytest.mark.usefixtures("cache_on")


def mlp(rate=0.2, activation="relu", units=16, seed=5):
    kcompile.utils.set_random_seed(seed)
    return kcompile.Sequential([layers.Input((7,)), layers.Dense(units, activation=activation),
                                layers.Dropout(rate), layers.Dense(3, activation="softmax")])


def data():
    rng = np.random.default_rng(0)
    x = rng.random((50, 7), dtype=np.float32)
    return x, np.eye(3, dtype=np.float32)[rng.integers(0, 3, 50)]


def test_plain_values_and_arrays():
    assert describe([1, 2.5, "a", None, True]) == describe([1, 2.5, "a", None, True])
    assert describe(1) != describe(1.0) != describe(True)
    assert describe((1,)) != describe([1])
    assert describe(np.arange(3.0)) == describe(np.arange(3.0))
    assert describe(np.arange(3.0)) != describe(np.arange(1.0, 4.0))
    assert describe(np.arange(3.0)) != describe(np.arange(3.0).astype(np.float32))
    assert describe({"b": 1, "a": 2}) == describe({"a": 2, "b": 1})
    assert describe({3, 1, 2}) == describe({1, 2, 3})


def test_code_outside_kcompile_is_undescribable():
    def mine(x):
        return x
    with pytest.raises(Undescribable):
        describe(mine)
    with pytest.raises(Undescribable):
        describe(layers.Dense(3, activation=mine))

    class MyDense(layers.Dense):
        pass
    with pytest.raises(Undescribable):
        describe(MyDense(3))
    with pytest.raises(Undescribable):
        describe(np.sum)       # another library's function


def test_layers_differ_by_what_they_trace_not_by_weight_values():
    a, b = mlp(seed=1), mlp(seed=2)        # same architecture, other initial weights
    assert describe(list(a.layers)) == describe(list(b.layers))
    assert describe(list(a.weights)) == describe(list(b.weights))
    for other in (mlp(rate=0.3), mlp(activation="tanh"), mlp(units=17)):
        assert describe(list(a.layers)) != describe(list(other.layers))


def count_traces(monkeypatch):
    traces = []
    real = trainer_module.Trainer._trace
    monkeypatch.setattr(trainer_module.Trainer, "_trace",
                        lambda *args: traces.append(args[1]) or real(*args))
    return traces


def fit(model, optimizer=None, **compile_args):
    model.compile(optimizer=optimizer or kcompile.optimizers.Adam(1e-3),
                  loss="categorical_crossentropy", metrics=["accuracy"], **compile_args)
    x, y = data()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    return history.history, [w.numpy() for w in model.weights]


def test_an_identical_model_is_loaded_untraced_and_trains_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    traces = count_traces(monkeypatch)
    first = fit(mlp())
    assert traces                                  # cold: traced
    traces.clear()
    second = fit(mlp())
    assert traces == []                            # warm: found by the description
    assert second[0] == first[0]
    for a, b in zip(first[1], second[1]):
        np.testing.assert_array_equal(a, b)
    # the loaded programs still show their graphs on demand (traced then)
    model = mlp()
    assert model.compile_seconds == 0.0
    fit(model)
    spent = model.compile_seconds
    assert spent > 0.0
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert model.compile_seconds == spent          # nothing compiled again
    assert "dense" in model.dump_ir("traced")


@pytest.mark.parametrize("change", ["dropout rate", "activation", "beta_1", "trainable", "metric",
                                    "clipnorm"])
def test_a_model_that_traces_differently_is_traced(tmp_path, monkeypatch, change):
    """No false hit: each change makes the cache's description differ, so the programs are traced
    and compiled (or found by their traced text), and training matches an uncached run."""
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    fit(mlp())
    traces = count_traces(monkeypatch)

    def variant():
        model, optimizer = mlp(), kcompile.optimizers.Adam(1e-3)
        if change == "dropout rate":
            model = mlp(rate=0.3)
        elif change == "activation":
            model = mlp(activation="tanh")
        elif change == "beta_1":
            optimizer = kcompile.optimizers.Adam(1e-3, beta_1=0.8)
        elif change == "trainable":
            model.layers[0].trainable = False
        elif change == "clipnorm":
            optimizer = kcompile.optimizers.Adam(1e-3, clipnorm=0.01)
        return model, optimizer

    model, optimizer = variant()
    if change == "metric":
        model.compile(optimizer=optimizer, loss="categorical_crossentropy",
                      metrics=["accuracy", "mse"])
        x, y = data()
        got = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history
        assert "mse" in got
        assert traces
        return
    got = fit(model, optimizer)
    assert traces
    monkeypatch.setenv("KCOMPILE_CACHE", "0")
    model, optimizer = variant()
    expected = fit(model, optimizer)
    assert got[0] == expected[0]
    for a, b in zip(got[1], expected[1]):
        np.testing.assert_array_equal(a, b)


def test_the_learning_rate_is_an_input_not_part_of_the_description(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    fit(mlp(), kcompile.optimizers.Adam(1e-3))
    traces = count_traces(monkeypatch)
    got = fit(mlp(), kcompile.optimizers.Adam(5e-2))
    assert traces == []
    monkeypatch.setenv("KCOMPILE_CACHE", "0")
    expected = fit(mlp(), kcompile.optimizers.Adam(5e-2))
    assert got[0] == expected[0]
    for a, b in zip(got[1], expected[1]):
        np.testing.assert_array_equal(a, b)


def test_a_manifest_that_disagrees_with_the_model_means_tracing(tmp_path, monkeypatch):
    """The description rules this out, but should a stored signature disagree with the model's
    arrays (here: a weight's shape edited in the file), the runner's check sends the model back to
    tracing instead of failing or running code on the wrong buffers."""
    import json
    monkeypatch.setenv("KCOMPILE_CACHE_DIR", str(tmp_path))
    first = fit(mlp())
    edited = 0
    for path in tmp_path.glob("*.kcm"):
        manifest = json.loads(path.read_text())
        if manifest["data"]["extra"] is None:
            continue                                # a manifest keyed by traced graphs
        for entry in manifest["data"]["entries"].values():
            for name, (dtype, shape) in entry["inputs"]:
                if name.endswith("/kernel"):
                    shape[0] += 1
                    edited += 1
        path.write_text(json.dumps(manifest))
    assert edited
    traces = count_traces(monkeypatch)
    second = fit(mlp())
    assert traces
    assert second[0] == first[0]
    for a, b in zip(first[1], second[1]):
        np.testing.assert_array_equal(a, b)
