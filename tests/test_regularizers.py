"""Weight regularizers (kcompile.regularizers): penalties against numpy, the loss that train and
evaluate report with them, one SGD step against a hand-derived gradient, configs and saving."""
import numpy as np
import pytest

import ir
from ir import build as B
from kcompile import optimizers, regularizers
from kcompile.layers import Conv2D, Dense, Embedding, Flatten, Input
from kcompile.models import Sequential, load_model

from targets import TARGETS


@pytest.mark.parametrize("regularizer, formula", [
    ("l1", lambda w: 0.01 * np.abs(w).sum()),
    ("l2", lambda w: 0.01 * (w * w).sum()),
    (regularizers.L1(0.3), lambda w: 0.3 * np.abs(w).sum()),
    (regularizers.l2(0.2), lambda w: 0.2 * (w * w).sum()),
    (regularizers.L1L2(l1=0.1, l2=0.4), lambda w: 0.1 * np.abs(w).sum() + 0.4 * (w * w).sum()),
    (regularizers.l1_l2(l1=0.01, l2=0.02), lambda w: 0.01 * np.abs(w).sum() + 0.02 * (w * w).sum()),
    (regularizers.l1_l2(), lambda w: 0.0 * w.sum()),        # Keras 3: l1_l2 is L1L2, (0, 0)
    (regularizers.L1L2(), lambda w: 0.0 * w.sum()),
])
def test_penalty_values(regularizer, formula):
    w = np.random.default_rng(0).standard_normal((4, 3))
    node = B.arg("w", "f64", (4, 3))
    value = ir.run(ir.Graph("p", [node], [("p", regularizers.get(regularizer)(node))]), {"w": w})["p"]
    assert float(value) == pytest.approx(formula(w), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("target", TARGETS)
def test_loss_and_sgd_step_include_the_penalties(target):
    """mse + 0.05 |K1|_1 + 0.1 |K1|^2 + 0.2 |b1|^2 + 0.3 |K2|^2, reported by evaluate and
    train_on_batch, and its gradient in the step (by hand, float64)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    model = Sequential([Input((4,)),
                        Dense(3, kernel_regularizer=regularizers.L1L2(l1=0.05, l2=0.1),
                              bias_regularizer=regularizers.L2(0.2), bias_initializer="ones"),
                        Dense(2, kernel_regularizer=regularizers.l2(0.3))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=target)
    k1, b1, k2, b2 = (w.astype(np.float64) for w in model.get_weights())
    h = x @ k1 + b1
    error = h @ k2 + b2 - y
    penalty = 0.05 * np.abs(k1).sum() + 0.1 * (k1 ** 2).sum() + 0.2 * (b1 ** 2).sum() \
        + 0.3 * (k2 ** 2).sum()
    loss = (error ** 2).mean() + penalty
    assert model.evaluate(x, y, verbose=0) == pytest.approx(loss, rel=1e-5)
    assert model.train_on_batch(x, y) == pytest.approx(loss, rel=1e-5)
    d_out = 2 * error / error.size
    d_h = d_out @ k2.T
    want = [k1 - 0.1 * (x.T @ d_h + 0.05 * np.sign(k1) + 0.2 * k1), b1 - 0.1 * (d_h.sum(0) + 0.4 * b1),
            k2 - 0.1 * (h.T @ d_out + 0.6 * k2), b2 - 0.1 * d_out.sum(0)]
    for got, expected in zip(model.get_weights(), want):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_l1_at_exactly_zero_steps_as_keras_on_jax():
    """abs'(0) = 1 (JAX's jnp.abs): an L1 penalty moves a zero weight down by lr * l1."""
    model = Sequential([Input((2,)), Dense(1, bias_regularizer=regularizers.L1(0.5))])
    model.set_weights([np.zeros((2, 1)), np.zeros(1)])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target="reference")
    model.train_on_batch(np.zeros((1, 2), np.float32), np.zeros((1, 1), np.float32))
    np.testing.assert_allclose(model.get_weights()[1], [-0.05])


def test_conv_and_embedding_regularizers_configs_and_saving(tmp_path):
    model = Sequential([Input((5, 5, 1)), Conv2D(2, 3, kernel_regularizer="l2", bias_regularizer="l1"),
                        Flatten(), Dense(1)])
    conv = model.layers[0]
    assert conv.get_config()["kernel_regularizer"] == {"class_name": "L2", "config": {"l2": 0.01}}
    text = Sequential([Input((3,)), Embedding(7, 2, embeddings_regularizer=regularizers.L1(0.2))])
    table = text.layers[0].embeddings.numpy().astype(np.float64)
    text.compile(optimizer="sgd", loss="mse", target="reference")
    ids, y = np.array([[1, 2, 2]], np.float32), np.zeros((1, 3, 2), np.float32)
    expected = (table[[1, 2, 2]] ** 2).mean() + 0.2 * np.abs(table).sum()
    assert text.evaluate(ids, y, verbose=0) == pytest.approx(expected, rel=1e-5)
    model.compile(optimizer="adam", loss="mse")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.get_config() == model.get_config()
    x = np.random.default_rng(2).random((4, 5, 5, 1), dtype=np.float32)
    y = np.zeros((4, 1), np.float32)
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-6)


def test_a_function_regularizer_with_a_tensor_penalty_is_summed():
    rng = np.random.default_rng(5)
    x, y = rng.random((4, 3), dtype=np.float32), rng.random((4, 2), dtype=np.float32)
    model = Sequential([Input((3,)), Dense(2, use_bias=False, kernel_regularizer=lambda w: 0.1 * w ** 2)])
    model.compile(optimizer="sgd", loss="mse", target="reference")
    w = model.get_weights()[0].astype(np.float64)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(((x @ w - y) ** 2).mean()
                                                           + 0.1 * (w ** 2).sum(), rel=1e-5)
    broken = Sequential([Input((3,)), Dense(2, kernel_regularizer=lambda w: None)])
    broken.compile(optimizer="sgd", loss="mse", target="reference")
    with pytest.raises(TypeError, match="regularizer of 'dense/kernel' returned None"):
        broken.evaluate(x, y, verbose=0)


def test_bad_regularizers_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown regularizer: 'l3'"):
        Dense(2, kernel_regularizer="l3")
    with pytest.raises(ValueError, match="`l2` must be a finite number >= 0 .within float32.s range"):
        regularizers.L2(-1.0)
    model = Sequential([Input((2,)), Dense(1, kernel_regularizer=lambda w: B.reduce_sum(w))])
    model.compile(optimizer="sgd", loss="mse", target="reference")
    model.fit(np.ones((2, 2)), np.ones((2, 1)), verbose=0)     # a function trains ...
    with pytest.raises(ValueError, match="plain function, which cannot be saved"):
        model.save(tmp_path / "m.keras")                    # ... but cannot be saved
    assert not (tmp_path / "m.keras").exists()


# ----------------------------------------------------------------------------------------------
# Losses added in call (Layer.add_loss) and activity regularizers
# ----------------------------------------------------------------------------------------------

def _add_loss_model(target):
    from kcompile import ops
    from kcompile.layers import Layer

    class ActivationPenalty(Layer):
        def call(self, x):
            self.add_loss(0.01 * ops.sum(ops.square(x)))
            return x

    model = Sequential([Input((4,)), ActivationPenalty(),
                        Dense(5, activation="tanh", activity_regularizer=regularizers.L2(0.1)),
                        Dense(3)])
    rng = np.random.default_rng(1)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.5
                       for w in model.get_weights()])
    model.compile(optimizer=optimizers.SGD(0.1), loss="mse", target=target)
    return model


def _penalized_loss(weights, x, y):
    """mse + 0.01 sum(x^2) + 0.1 sum(h^2) / rows, for one batch (float64)."""
    w1, b1, w2, b2 = (w.astype(np.float64) for w in weights)
    h = np.tanh(x @ w1 + b1)
    mse = ((h @ w2 + b2 - y) ** 2).mean()
    return mse + 0.01 * (x.astype(np.float64) ** 2).sum() + 0.1 * (h ** 2).sum() / len(x)


@pytest.mark.parametrize("target", TARGETS)
def test_add_loss_and_activity_regularizers_join_the_loss_as_in_keras(target):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.standard_normal((16, 3)).astype(np.float32)
    model = _add_loss_model(target)
    weights = model.get_weights()
    # evaluate: each batch's loss with its penalties, weighed by the batch's rows
    want = np.mean([_penalized_loss(weights, x[a:a + 8], y[a:a + 8]) for a in (0, 8)])
    assert model.evaluate(x, y, batch_size=8, verbose=0) == pytest.approx(want, rel=1e-5)
    # one SGD step trains on them: the gradient by central differences of the same function
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)
    moved = model.get_weights()
    eps = 1e-4
    for index in (0, 2):
        for position in ((0, 0), (1, 2)):
            up = [w.astype(np.float64).copy() for w in weights]
            down = [w.astype(np.float64).copy() for w in weights]
            up[index][position] += eps
            down[index][position] -= eps
            grad = (_penalized_loss(up, x[:8], y[:8]) - _penalized_loss(down, x[:8], y[:8])) / (2 * eps)
            assert moved[index][position] == pytest.approx(weights[index][position] - 0.1 * grad,
                                                           rel=1e-3, abs=1e-5)


def test_the_activity_regularizer_is_saved_and_add_loss_outside_call_is_refused(tmp_path):
    model = Sequential([Input((4,)), Dense(2, activity_regularizer="l2")])
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[0].activity_regularizer, regularizers.L2)
    with pytest.raises(ValueError, match="add_loss.. can only be called from inside call"):
        model.layers[0].add_loss(np.float32(1.0))


@pytest.mark.parametrize("target", TARGETS)
def test_an_embeddings_activity_regularizer_joins_the_loss(target, tmp_path):
    """Embedding(activity_regularizer=L2(0.1)), as Keras 3's: mse + 0.1 * sum(rows looked up^2) /
    batch size (numpy); it is saved with the model."""
    from kcompile.layers import Embedding, Flatten
    model = Sequential([Input((2,), dtype="int32"),
                        Embedding(5, 3, activity_regularizer=regularizers.L2(0.1)), Flatten()])
    model.compile(optimizer=optimizers.SGD(0.1), loss="mse", target=target)
    ids = np.array([[0, 4], [2, 2], [1, 3]], np.int32)
    y = np.zeros((3, 6), np.float32)
    table = model.get_weights()[0].astype(np.float64)
    looked_up = table[ids]
    want = (looked_up ** 2).mean() + 0.1 * (looked_up ** 2).sum() / 3
    assert model.evaluate(ids, y, batch_size=3, verbose=0) == pytest.approx(want, rel=1e-5)
    model.save(tmp_path / "e.keras")
    assert isinstance(load_model(tmp_path / "e.keras").layers[0].activity_regularizer, regularizers.L2)
