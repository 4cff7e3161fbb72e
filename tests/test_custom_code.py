"""What a user writes around the library: custom layers (weights used in call, scalar weights,
counters assigned in call, constructor arguments saved without a get_config), custom losses with
`kcompile.ops`, and the errors for code that cannot be traced.  Checked against numpy and hand-
computed SGD steps, on both targets."""
import numpy as np
import pytest

import kcompile
from kcompile import ops
from kcompile.layers import Dense, Input, Layer
from kcompile.layers.layer import call_eagerly
from kcompile.models import Sequential, load_model
from targets import TARGETS

RNG = np.random.default_rng(11)
A = RNG.standard_normal((4, 3)).astype(np.float32)
C = RNG.standard_normal((4, 3)).astype(np.float32)

UNARY = [(ops.abs, np.abs), (ops.negative, np.negative), (ops.square, np.square),
         (lambda x: ops.sqrt(ops.abs(x)), lambda x: np.sqrt(np.abs(x))), (ops.exp, np.exp),
         (lambda x: ops.log(ops.abs(x)), lambda x: np.log(np.abs(x))), (ops.tanh, np.tanh),
         (ops.sigmoid, lambda x: 1 / (1 + np.exp(-x))), (ops.relu, lambda x: np.maximum(x, 0)),
         (ops.softmax, lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
         (ops.log_softmax, lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
         (lambda x: ops.logsumexp(x, axis=-1), lambda x: np.log(np.exp(x).sum(-1))),
         (lambda x: ops.clip(x, -0.5, 0.5), lambda x: np.clip(x, -0.5, 0.5)),
         (lambda x: ops.mean(x, axis=-1), lambda x: x.mean(-1)),
         (lambda x: ops.sum(x, axis=1, keepdims=True), lambda x: x.sum(1, keepdims=True)),
         (lambda x: ops.max(x, axis=-1), lambda x: x.max(-1)),
         (lambda x: ops.cast(ops.argmax(x, axis=-1), "float32"), lambda x: x.argmax(-1)),
         (lambda x: ops.squeeze(ops.expand_dims(x, -1), -1), lambda x: x),
         (lambda x: ops.reshape(x, (None, 3, 1)), lambda x: x.reshape(-1, 3, 1)),
         (ops.ones_like, np.ones_like), (ops.zeros_like, np.zeros_like),
         (lambda x: ops.where(ops.greater(x, 0.0), x, ops.multiply(x, 0.1)),
          lambda x: np.where(x > 0, x, 0.1 * x)),
         (lambda x: ops.matmul(x, np.eye(3, 2, dtype=np.float32)), lambda x: x @ np.eye(3, 2)),
         (lambda x: ops.transpose(ops.reshape(x, (None, 3, 1)), (0, 2, 1)),
          lambda x: x.reshape(-1, 3, 1).transpose(0, 2, 1))]
UNARY += [(lambda x: ops.logsumexp(x), lambda x: np.log(np.exp(x).sum())),
          (lambda x: ops.logsumexp(x, axis=(0, 1), keepdims=True),
           lambda x: np.log(np.exp(x).sum(keepdims=True))),
          (lambda x: ops.min(x, axis=-1), lambda x: x.min(-1)),
          (lambda x: ops.reshape(x, (-1, 3, 1)), lambda x: x.reshape(-1, 3, 1)),
          (lambda x: ops.expand_dims(x, (1, 2)), lambda x: x[:, None, None, :]),
          (lambda x: ops.transpose(ops.expand_dims(x, -1), (0, -1, -2)), lambda x: x[:, None, :]),
          (lambda x: ops.where(x > 0.5, 1.0, 0.0), lambda x: (x > 0.5).astype(float)),
          (lambda x: ops.cast(x >= 0.0, np.float32) * x, lambda x: np.maximum(x, 0)),
          (lambda x: x ** 1.5, lambda x: np.where(x >= 0, np.abs(x) ** 1.5, np.nan)),
          (lambda x: x ** -3, lambda x: x ** -3.0), (lambda x: x ** 70, lambda x: x ** 70)]
UNARY += [(lambda x: ops.power(ops.abs(x), 2.5), lambda x: np.abs(x) ** 2.5),
          (lambda x: ops.power(ops.abs(x) + 1.0, x), lambda x: (np.abs(x) + 1.0) ** x),
          (ops.softplus, lambda x: np.log1p(np.exp(x))), (ops.silu, lambda x: x / (1 + np.exp(-x))),
          (ops.sign, np.sign), (lambda x: ops.rsqrt(ops.abs(x)), lambda x: 1 / np.sqrt(np.abs(x))),
          (lambda x: ops.var(x, axis=-1), lambda x: x.var(-1)),
          (lambda x: ops.std(x, axis=1, keepdims=True), lambda x: x.std(1, keepdims=True)),
          (lambda x: ops.concatenate([x, x * 2.0], axis=-1), lambda x: np.concatenate([x, 2 * x], -1)),
          (lambda x: ops.stack([x, -x], axis=1), lambda x: np.stack([x, -x], 1)),
          (lambda x: x * ops.ones((3,)) + ops.zeros((1, 3)), lambda x: x)]
UNARY += [(ops.floor, np.floor), (lambda x: ops.round(x * 4.0), lambda x: np.round(x * 4.0)),
          (lambda x: ops.cast(ops.logical_not(x > 0.5), "float32"), lambda x: x <= 0.5)]
BINARY = [(lambda a, c: ops.cast(ops.logical_and(a > 0.2, c > 0.2), "float32"),
           lambda a, c: (a > 0.2) & (c > 0.2)),
          (lambda a, c: ops.cast(ops.logical_or(a > 0.7, c), "float32"),
           lambda a, c: (a > 0.7) | (c != 0)),
          (ops.add, np.add), (ops.subtract, np.subtract), (ops.multiply, np.multiply),
          (ops.divide, np.divide), (ops.maximum, np.maximum), (ops.minimum, np.minimum),
          (lambda a, c: ops.cast(ops.less_equal(a, c), "float32"), lambda a, c: a <= c)]
# floor division and remainders as numpy's (the divisor's sign), operators and functions; a
# number base with a traced exponent (Keras's schedules write ops.power(decay_rate, step / n))
BINARY += [(ops.floor_divide, np.floor_divide), (ops.mod, np.mod),
           (lambda a, c: (a * 7.0) // c, lambda a, c: (a * 7.0) // c),
           (lambda a, c: (a * 7.0) % c, lambda a, c: np.mod(a * 7.0, c)),
           (lambda a, c: 5.0 // (c + 3.0) + 5.0 % (c + 3.0),
            lambda a, c: 5.0 // (c + 3.0) + np.mod(5.0, c + 3.0)),
           (lambda a, c: ops.power(0.5, a) + ops.power(np.float32(3.0), c),
            lambda a, c: 0.5 ** a + 3.0 ** c)]


@pytest.mark.parametrize("index", range(len(UNARY)))
def test_ops_unary_against_numpy(index):
    fn, reference = UNARY[index]
    np.testing.assert_allclose(call_eagerly(fn, A), reference(A.astype(np.float64)), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("index", range(len(BINARY)))
def test_ops_binary_against_numpy(index):
    fn, reference = BINARY[index]
    np.testing.assert_allclose(call_eagerly(fn, A, C), reference(A.astype(np.float64), C),
                               rtol=1e-5, atol=1e-6)


def test_ops_run_on_arrays_outside_a_trace_as_numpy_would():
    # as a script post-processing predictions with keras.ops: one run of the reference interpreter
    p = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]], np.float32)
    e = np.exp(p - p.max(axis=1, keepdims=True))
    np.testing.assert_allclose(ops.softmax(p), e / e.sum(axis=1, keepdims=True), rtol=1e-6)
    labels = ops.argmax(p, axis=1)
    assert labels.dtype == np.int32 and labels.tolist() == [1, 0]
    np.testing.assert_allclose(ops.exp(np.ones(3)), np.exp(np.ones(3)), rtol=1e-6)
    np.testing.assert_allclose(ops.add(p, 1), p + 1)                       # a Python constant
    np.testing.assert_allclose(ops.add(np.arange(3), p), np.arange(3) + p)  # ints promoted
    np.testing.assert_array_equal(ops.where(p > 0, p, 0.0), np.where(p > 0, p, 0.0))
    np.testing.assert_allclose(ops.matmul(p, p.T), p @ p.T, rtol=1e-6)
    assert ops.concatenate([p, p], axis=0).shape == (4, 3)
    assert ops.transpose(p).shape == (3, 2) and float(ops.mean(p)) == pytest.approx(p.mean())
    with pytest.raises(TypeError, match="numeric arrays"):
        ops.exp(np.array(["a"]))
    # numbers only, as a learning-rate schedule writes `lr * ops.exp(-0.1)`: floats as float32
    value = ops.exp(-0.1)
    assert value.dtype == np.float32 and float(value) == pytest.approx(np.exp(-0.1), rel=1e-6)
    assert ops.add(1.0, 2.0).dtype == np.float32 and float(ops.add(1.0, 2.0)) == 3.0
    assert ops.add(1, 2).dtype == np.int32 and int(ops.add(1, 2)) == 3
    assert float(ops.maximum(1.5, 2)) == 2.0


class IntegerDivision(Layer):
    def call(self, x):
        n, d = ops.cast(x[:, 0:2], "int32"), ops.cast(x[:, 2:4], "int32")
        return ops.concatenate([ops.divide(n, d), n / d, n / 4, 3 / d], axis=-1)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("target", TARGETS)
def test_integers_divide_as_float32_as_keras(target):
    """ops.divide and `/` of int32 values give float32 true quotients (as Keras's on JAX): 7 / 2 is
    3.5, and x / 0 is inf or NaN, not an integer division (which would fault on a zero)."""
    x = np.array([[7, -7, 2, 0], [1, 0, -4, 0], [9, 5, 3, 2]], np.float32)
    model = Sequential([Input((4,)), IntegerDivision()])
    model.compile(optimizer="sgd", loss="mse", target=target)
    got = model.predict(x, verbose=0)
    n, d = x[:, :2], x[:, 2:]
    with np.errstate(all="ignore"):
        want = np.concatenate([n / d, n / d, n / 4, 3 / d], axis=-1).astype(np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    i = ops.divide(np.array([7, -7], np.int32), np.array([2, 4], np.int32))
    np.testing.assert_array_equal(i, np.array([3.5, -1.75], np.float32))


class Counter(Layer):
    """A scalar weight used directly, and a non-trainable counter assigned in call."""

    def __init__(self, scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape):
        self.s = self.add_weight(shape=(), initializer="ones", name="s")
        self.steps = self.add_weight(shape=(), initializer="zeros", name="steps", trainable=False)

    def call(self, x, training=False):
        if training:
            self.steps.assign_add(1.0)
        return x * self.s * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape


@pytest.mark.parametrize("target", TARGETS)
def test_a_custom_layer_with_a_scalar_weight_and_a_counter(target, tmp_path):
    model = Sequential([Input(shape=(3,)), Counter(scale=2.0)])
    layer = model.layers[0]
    assert layer.s.shape == () and float(layer.s) == 1.0
    model.compile(optimizer=kcompile.optimizers.SGD(learning_rate=0.01), loss="mse", target=target)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 3), np.float32)
    model.fit(x, y, batch_size=2, epochs=3, verbose=0)
    s = 1.0
    for _ in range(6):   # output 2 s everywhere: d mean((2 s)^2) / ds = 8 s
        s -= 0.01 * 8 * s
    assert float(layer.s) == pytest.approx(s, rel=1e-6)
    assert float(layer.steps) == 6.0   # once per step, not once when traced
    layer.s.assign(5.0)
    model.set_weights([np.array(1.5), np.array(0.0)])
    # saved without a get_config: the constructor's plain arguments are recorded
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras", custom_objects={"Counter": Counter})
    assert loaded.layers[0].scale == 2.0
    np.testing.assert_allclose(loaded.predict(x, verbose=0), np.full((4, 3), 3.0))


def test_a_layer_without_get_config_and_unrecordable_arguments_is_refused_at_save(tmp_path):
    class Holder(Layer):
        def __init__(self, table, **kwargs):
            super().__init__(**kwargs)
            self.table = table

        def call(self, x):
            return x

        def compute_output_shape(self, input_shape):
            return input_shape

    model = Sequential([Input(shape=(3,)), Holder(np.ones(3))])
    with pytest.raises(NotImplementedError, match="define get_config"):
        model.save(tmp_path / "h.keras")
    assert not (tmp_path / "h.keras").exists()


@pytest.mark.parametrize("body,error,match", [
    ("x * self.w.numpy()", TypeError, "constant, which never trains"),
    ("x * np.asarray(self.w)", TypeError, "constant, which never trains"),
    ("np.exp(self.w) * x", TypeError, "numpy's exp"),
    ("x if x else -x", TypeError, "cannot branch"),
    ("self.w.assign(self.w * 2) or x", TypeError, "trainable weight"),
    ("None", TypeError, "call returned NoneType"),
    ("ops.expand_dims(x, -1)", ValueError, r"returned shape \(None, 3, 1\), but compute_output_shape"),
])
def test_code_that_cannot_be_traced_is_refused_with_the_reason(body, error, match):
    class Bad(Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(3,), initializer="ones", name="w")

        def call(self, x):
            return eval(body, {"np": np, "ops": ops, "x": x, "self": self})

        def compute_output_shape(self, input_shape):
            return input_shape

    model = Sequential([Input(shape=(3,)), Bad()])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(error, match=match):
        model.fit(np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32), verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], np.ones(3, np.float32))


def test_numpy_arithmetic_on_a_weight_in_call_trains_it():
    class Scaled(Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(3,), initializer="ones", name="w")

        def call(self, x):
            return np.float32(0.5) * self.w * x

        def compute_output_shape(self, input_shape):
            return input_shape

    model = Sequential([Input(shape=(3,)), Scaled()])
    model.compile(optimizer=kcompile.optimizers.SGD(learning_rate=0.1), loss="mse")
    model.fit(np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32), verbose=0)
    # output 0.5 w: d mean((0.5 w_j)^2) / d w_j = 2 * 0.25 w_j * 2 / 6
    np.testing.assert_allclose(model.get_weights()[0], np.full(3, 1 - 0.1 * 1 / 6), rtol=1e-6)


def test_custom_regularizers_and_initializers_load_through_custom_objects(tmp_path):
    class Halves(kcompile.initializers.Initializer):
        def generate(self, shape):
            return np.full(shape, 0.5)

        def get_config(self):
            return {}

    class Squares(kcompile.regularizers.Regularizer):
        def __init__(self, factor=0.1):
            self.factor = factor

        def __call__(self, x):
            return self.factor * ops.sum(ops.square(x))

        def get_config(self):
            return {"factor": self.factor}

    model = Sequential([Input(shape=(3,)), Dense(2, kernel_initializer=Halves(),
                                                  kernel_regularizer=Squares(0.2))])
    model.compile(optimizer="sgd", loss="mse")
    model.save(tmp_path / "r.keras")
    loaded = load_model(tmp_path / "r.keras", custom_objects={"Halves": Halves, "Squares": Squares})
    dense = loaded.layers[0]
    assert isinstance(dense.kernel_regularizer, Squares) and dense.kernel_regularizer.factor == 0.2
    np.testing.assert_array_equal(loaded.get_weights()[0], np.full((3, 2), 0.5, np.float32))
    x, y = np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32)
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(0.2 * 6 * 0.25, rel=1e-6)



def test_ops_reshape_refuses_to_mix_the_batch_axis():
    with pytest.raises(ValueError, match="batch axis"):
        call_eagerly(lambda x: ops.reshape(x, (-1,)), A)


@pytest.mark.parametrize("target", TARGETS)
def test_a_masked_loss_with_comparisons_and_a_power_at_zero(target):
    """`t != 0` in a loss is a mask (it was Python's identity, True: silently unmasked), a bool mask
    times a float is 0/1, and w ** 1.5 at w = 0 has gradient 0 (not 0 * inf = NaN)."""
    def masked(y_true, y_pred):
        return ops.sum(ops.square(y_pred - y_true) * (y_true != 0), axis=-1)

    rng = np.random.default_rng(2)
    x = rng.random((8, 3)).astype(np.float32)
    y = rng.random((8, 2)).astype(np.float32)
    y[:, 0] = 0
    model = Sequential([Input(shape=(3,)), Dense(2)])
    model.compile(optimizer="sgd", loss=masked, target=target)
    p = model.predict(x, verbose=0).astype(np.float64)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(
        (((p - y) ** 2) * (y != 0)).sum(-1).mean(), rel=1e-5)

    class Power(Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(3,), initializer="zeros", name="w")

        def call(self, x):
            return x + self.w ** 1.5 + ops.cast(self.w > 1.0, "float32")

        def compute_output_shape(self, input_shape):
            return input_shape

    model = Sequential([Input(shape=(3,)), Power()])
    model.compile(optimizer=kcompile.optimizers.SGD(learning_rate=0.1), loss="mse", target=target)
    model.fit(np.ones((4, 3), np.float32), np.zeros((4, 3), np.float32), verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], np.zeros(3, np.float32))


@pytest.mark.parametrize("target", TARGETS)
def test_a_metric_returning_the_batch_mean_and_keras_layer_arguments(target):
    def matches(y_true, y_pred):
        return ops.mean(ops.cast(ops.equal(ops.argmax(y_true, axis=-1),
                                           ops.argmax(y_pred, axis=-1)), "float32"))

    rng = np.random.default_rng(3)
    x = rng.random((10, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[np.arange(10) % 2]
    model = Sequential([Input(shape=(3,)), kcompile.layers.Rescaling(np.float32(0.5),
                                                                     offset=[0.0, 1.0, 2.0]),
                        kcompile.layers.LeakyReLU(alpha=0.2), Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[matches], target=target)
    logs = model.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    hits = model.predict(x, verbose=0).argmax(-1) == y.argmax(-1)
    assert logs["matches"] == pytest.approx(hits.mean())
    # a number per batch counts once per batch, as Keras's MeanMetricWrapper counts it: batches of
    # 4, 4 and 2 rows give the mean of their three means
    logs = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    assert logs["matches"] == pytest.approx(np.mean([hits[:4].mean(), hits[4:8].mean(),
                                                     hits[8:].mean()]))
    model.compile(optimizer=kcompile.optimizers.SGD(learning_rate=0.0), loss="mse",
                  metrics=[matches], target=target)
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert history.history["matches"][0] == pytest.approx(logs["matches"])
    assert model.layers[1].negative_slope == pytest.approx(0.2)
    clone = kcompile.models.clone_model(model)
    assert clone.layers[0].offset == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="keyed by the name of the model's one output"):
        model.compile(optimizer="sgd", loss="mse", loss_weights={"wrong": 1.0})


def test_clone_model_clones_custom_layers():
    class Positive(Layer):
        def call(self, x):
            return ops.relu(x)

        def compute_output_shape(self, input_shape):
            return input_shape

    clone = kcompile.models.clone_model(Sequential([Input(shape=(3,)), Positive()]))
    assert type(clone.layers[0]) is Positive


class Projection(Layer):
    """No compute_output_shape: the shape comes from tracing call, as Keras 3 infers it."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="ones", name="w")
        self.calls = self.add_weight(shape=(), initializer="zeros", name="calls", trainable=False)

    def call(self, x, training=False):
        if training:
            self.calls.assign_add(1.0)
        return ops.matmul(x, self.w) * 2.0


@pytest.mark.parametrize("target", TARGETS)
def test_a_custom_layer_without_compute_output_shape_gets_it_from_call(target):
    model = Sequential([Input(shape=(3,)), Projection(4), Dense(2, kernel_initializer="ones")])
    assert model.layers[0].output_shape == (None, 4)
    assert model.layers[1].get_weights()[0].shape == (4, 2)
    model.compile(optimizer=kcompile.optimizers.SGD(learning_rate=0.0), loss="mse", target=target)
    x = RNG.standard_normal((6, 3)).astype(np.float32)
    model.fit(x, np.zeros((6, 2), np.float32), batch_size=2, epochs=1, verbose=0)
    # three steps counted: the shape inference's own trace records nothing
    assert float(model.layers[0].calls.numpy()) == 3.0
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               (x @ np.ones((3, 4)) * 2.0) @ np.ones((4, 2)), rtol=1e-5)
    assert Projection(5)(x).shape == (6, 5)


class Symmetric(Layer):
    """A weight used with its own transpose: its gradient's update reads dW transposed."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], input_shape[-1]),
                                 initializer="glorot_uniform", name="w")

    def call(self, x):
        return x @ ((self.w + ops.transpose(self.w)) * 0.5)


def test_a_weight_used_with_its_transpose_trains_as_the_reference_does():
    """dW's row blocks are computed and updated one by one; an update that reads dW transposed
    must wait for all of it (it read rows not computed yet: garbage, NaN or a crash past 48
    rows)."""
    rng = np.random.default_rng(1)
    x, y = (rng.standard_normal((64, 100)).astype(np.float32) for _ in range(2))
    results = []
    for target in ("reference", "llvm"):
        kcompile.utils.set_random_seed(5)
        model = Sequential([Input(shape=(100,)), Symmetric()])
        initial = model.get_weights()[0]
        model.compile(optimizer=kcompile.optimizers.SGD(learning_rate=0.05), loss="mse",
                      target=target)
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        results.append(model.get_weights()[0])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-4, atol=1e-6)
    step = results[1] - initial
    np.testing.assert_allclose(step, step.T, atol=1e-6)   # the gradient of a symmetric use


def test_an_inferred_output_shape_draws_the_weights_in_layer_order():
    class Scale(Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="random_normal")

        def call(self, x):
            return x * self.w

    class ScaleWithShape(Scale):
        def compute_output_shape(self, input_shape):
            return input_shape

    weights = []
    for layer in (Scale, ScaleWithShape):
        kcompile.utils.set_random_seed(0)
        weights.append(Sequential([Input(shape=(3,)), Dense(4), layer()]).get_weights())
    for inferred, given in zip(*weights):
        np.testing.assert_array_equal(inferred, given)


def test_layers_inside_layers_and_metrics_without_a_rule_are_refused_with_the_way_out():
    class Block(Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = Dense(4)

        def call(self, x):
            return self.inner(x)

    with pytest.raises(NotImplementedError, match="holds the layer 'dense'.*in self.inner"):
        Sequential([Input(shape=(3,)), Block()])

    # made in build (Keras's usual place) or in call: the same refusal, not a tracing error
    # ("variable 'dense/kernel' is not an input of the graph being traced")
    class BuildsBlock(Layer):
        def build(self, input_shape):
            self.inner = Dense(4)
            self.inner.build(input_shape)

        def call(self, x):
            return self.inner(x)

    class CallsBlock(Layer):
        def call(self, x):
            return Dense(4)(x)

    with pytest.raises(NotImplementedError, match="holds the layer 'dense'.*in self.inner"):
        Sequential([Input(shape=(3,)), BuildsBlock()])
    with pytest.raises(NotImplementedError, match="'calls_block'.*calls the layer 'dense'.*in its call"):
        Sequential([Input(shape=(3,)), CallsBlock()])

    # a layer without weights made in call is only arithmetic: it runs
    class Rectifies(Layer):
        def call(self, x):
            return kcompile.layers.Activation("relu")(x)

    model = Sequential([Input(shape=(3,)), Rectifies()])
    x = np.array([[-1.0, 0.5, 2.0]], np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), np.maximum(x, 0))

    class Nothing(kcompile.metrics.Metric):      # neither update_state nor values
        pass

    model = Sequential([Input(shape=(3,)), Dense(2)])
    with pytest.raises(NotImplementedError, match="'nothing' \\(Nothing\\).*update_state.*values\\(self, y_true"):
        model.compile(optimizer="sgd", loss="mse", metrics=[Nothing()])
    # a subclass of Sequential keeps its layers, of course
    class MySequential(Sequential):
        pass
    assert MySequential([Input(shape=(3,)), Dense(2)]).output_shape == (None, 2)


_SLICES = ["t[:, 1:5:2]", "t[:, 1:5:2][:, :, ::2]", "t[..., 0]", "t[:, -1]", "t[:, None, 2, 1:]",
           "t[:, ::3, -2:]", "t[:, :, :, None]"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("expression", _SLICES)
def test_a_traced_value_takes_static_basic_indices(expression, target):
    """t[...] in a custom layer's call (ints, slices with a step, ..., None), as numpy indexes the
    same array: the prediction, and one SGD step of a Dense layer after it (the gradient flows back
    only through the elements picked)."""
    class Pick(Layer):
        def call(self, t):
            return eval(expression, {"t": t})

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    picked = eval(expression, {"t": x})
    model = Sequential([Input((5, 3)), Pick()])
    model.compile(optimizer="sgd", loss="mse", target=target)
    np.testing.assert_array_equal(model.predict(x, verbose=0), picked)

    features = picked.reshape(4, -1)
    kernel = rng.standard_normal((features.shape[1], 1)).astype(np.float32)
    y = rng.standard_normal((4, 1)).astype(np.float32)
    model = Sequential([Input((5, 3)), Pick(), kcompile.layers.Flatten(), Dense(1)])
    model.set_weights([kernel, np.zeros(1, np.float32)])
    model.compile(optimizer=kcompile.optimizers.SGD(0.1), loss="mse", target=target)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    error = features @ kernel - y                      # d mse / d out = 2 error / n
    np.testing.assert_allclose(model.get_weights()[0], kernel - 0.1 * features.T @ (2 * error / 4),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("expression, error, match", [
    ("t[:, t]", TypeError, "static basic indices.*traced values and boolean masks"),
    ("t[:, np.array([0, 2])]", TypeError, "Index arrays"),
    ("t[:, [0, 2]]", TypeError, "Index arrays, lists"),
    ("t[t > 0]", TypeError, "boolean masks"),
    ("t[:, True]", TypeError, "static basic indices"),
    ("t[:, ::-1]", TypeError, "positive integer step"),
    ("t[0]", TypeError, "batch axis.*not known while the graph is traced"),
    ("t[1:]", TypeError, "batch axis"),
    ("t[:, 9]", IndexError, "index 9 is out of bounds for axis 1 with size 5"),
    ("t[:, 3:1]", IndexError, "selects nothing"),
    ("t[:, 0, 0, 0]", IndexError, "too many indices"),
])
def test_indices_a_traced_value_cannot_take_are_named(expression, error, match):
    class Pick(Layer):
        def call(self, t):
            return eval(expression, {"t": t, "np": np})

    with pytest.raises(error, match=match):
        Sequential([Input((5, 3)), Pick()])


def test_compute_output_shape_returning_no_shape_and_axes_that_are_no_integers():
    class NoShape(Layer):
        def call(self, t):
            return t

        def compute_output_shape(self, input_shape):
            pass                                            # the forgotten return

    with pytest.raises(TypeError, match=r"'no_shape' \(NoShape\): compute_output_shape returned "
                                        r"None \(a missing `return`\?\).*\(None, 4\)"):
        Sequential([Input((4,)), NoShape(), Dense(3)])

    class HalfShape(NoShape):
        def compute_output_shape(self, input_shape):
            return (None, 4.5)

    with pytest.raises(TypeError, match="not all integers or None"):
        Sequential([Input((4,)), HalfShape()])

    for function in ("sum", "mean", "max", "min", "var", "std", "logsumexp"):
        class Named(Layer):
            def call(self, t):
                return getattr(ops, function)(t, axis="features", keepdims=True)
        with pytest.raises(TypeError, match=rf"ops\.{'var' if function == 'std' else function}: "
                                            "`axis` must be an integer.*axis='features'"):
            Sequential([Input((4,)), Named()])

    class OutOfRange(Layer):
        def call(self, t):
            return ops.sum(t, axis=(1, 2))
    with pytest.raises(ValueError, match=r"axis 2 is out of range for a value of rank 2"):
        Sequential([Input((4,)), OutOfRange()])

    class Fine(Layer):                                      # a tuple or a list of axes still works
        def call(self, t):
            return ops.sum(t, axis=[-1], keepdims=True) + ops.mean(t, axis=(1,), keepdims=True)
    model = Sequential([Input((4,)), Fine()])
    model.compile(loss="mse", target="reference")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               x.sum(1, keepdims=True) + x.mean(1, keepdims=True))


def test_ops_round_takes_halves_to_even_and_floor_matches_numpy_at_every_scale():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-3, 9, 20000)).astype(np.float32)
    halves = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, 8388607.5, 4194304.5,
                       8388609.0, -8388607.5], np.float32)
    for values in (x, np.round(x * 2) / 2, halves):
        np.testing.assert_array_equal(ops.round(values), np.round(values))
        np.testing.assert_array_equal(ops.floor(values), np.floor(values))


def test_ops_special_value_tests_log1p_shape_and_convert_to_numpy_as_numpy():
    x = np.array([0.0, np.nan, np.inf, -np.inf, 1e-8, -0.5, 3.0, 1e30], np.float32)
    np.testing.assert_array_equal(ops.isnan(x), np.isnan(x))
    np.testing.assert_array_equal(ops.isinf(x), np.isinf(x))
    np.testing.assert_array_equal(ops.isfinite(x), np.isfinite(x))
    np.testing.assert_allclose(ops.log1p(np.abs(x)), np.log1p(np.abs(x)), rtol=2e-7)
    big = np.array([1e37, 3e38, 1.5, 0.9, -0.9, -1e-12], np.float32)
    np.testing.assert_allclose(ops.log1p(big), np.log1p(big.astype(np.float64)), rtol=3e-7)
    ints = np.array([1, -2, 0], np.int32)
    assert ops.isfinite(ints).all() and not ops.isinf(ints).any() and not ops.isnan(ints).any()
    assert ops.shape(x) == (8,) and ops.convert_to_numpy([1.0, 2.0]).tolist() == [1.0, 2.0]
    assert kcompile.version() == kcompile.__version__
    assert kcompile.Layer is Layer and kcompile.Metric is kcompile.metrics.Metric


@pytest.mark.parametrize("target", TARGETS)
def test_ops_one_hot_in_a_custom_loss_of_sparse_labels(target):
    def sparse_mse(y_true, y_pred):
        assert ops.shape(y_pred)[1:] == (3,)
        return ops.mean(ops.square(ops.one_hot(ops.squeeze(y_true, -1), 3) - y_pred), axis=-1)

    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    labels = rng.integers(0, 3, (10, 1)).astype(np.float32)
    model = Sequential([Input(shape=(4,)), Dense(3)])
    model.compile(optimizer="sgd", loss=sparse_mse, target=target)
    p = model.predict(x, verbose=0)
    want = ((np.eye(3)[labels[:, 0].astype(int)] - p) ** 2).mean()
    assert model.evaluate(x, labels, verbose=0) == pytest.approx(want, rel=1e-5)
    np.testing.assert_array_equal(ops.one_hot(np.array([0, 2, 5, -1]), 3),
                                  np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]], np.float32))


@pytest.mark.parametrize("target", TARGETS)
def test_the_batch_size_from_ops_shape_is_a_value_as_in_keras(target):
    def per_row_sum(y_true, y_pred):        # a loss that divides by the batch size itself
        return ops.sum(ops.square(y_true - y_pred)) / ops.cast(ops.shape(y_true)[0], "float32")

    class Flat(Layer):
        def call(self, x):
            return ops.reshape(x, (ops.shape(x)[0], -1))

    class Rows(kcompile.metrics.Metric):
        def __init__(self, name="rows"):
            super().__init__(name=name)
            self.count = self.add_variable(shape=(), name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.count.assign_add(ops.shape(y_pred)[0])

        def result(self):
            return self.count.numpy()

    rng = np.random.default_rng(6)
    x = rng.standard_normal((10, 2, 3)).astype(np.float32)
    y = rng.standard_normal((10, 2)).astype(np.float32)
    model = Sequential([Input(shape=(2, 3)), Flat(), Dense(2)])
    assert model.output_shape == (None, 2)
    model.compile(optimizer="sgd", loss=per_row_sum, metrics=[Rows()], target=target)
    p = model.predict(x, verbose=0)
    loss, rows = model.evaluate(x, y, batch_size=4, verbose=0)
    batches = [(0, 4), (4, 8), (8, 10)]
    # (Keras's loss tracker weighs each batch's loss by the batch's size)
    want = np.sum([((y[a:b] - p[a:b]) ** 2).sum() / (b - a) * (b - a) for a, b in batches]) / 10
    assert loss == pytest.approx(want, rel=1e-5) and rows == 10
    assert ops.shape(x) == (10, 2, 3)


def test_more_keras_ops_against_numpy():
    x = np.array([[1.0, 0.0, 3.0], [0.0, 0.0, -2.0]], np.float32)
    np.testing.assert_array_equal(ops.argmin(x, axis=1), np.argmin(x, axis=1))
    np.testing.assert_array_equal(ops.any(x, axis=1), np.any(x, axis=1))
    np.testing.assert_array_equal(ops.all(x != 5, axis=0), np.all(x != 5, axis=0))
    np.testing.assert_array_equal(ops.count_nonzero(x, axis=1), np.count_nonzero(x, axis=1))
    np.testing.assert_array_equal(ops.ceil(A), np.ceil(A))
    np.testing.assert_array_equal(ops.tile(x, (2, 3)), np.tile(x, (2, 3)))
    np.testing.assert_array_equal(ops.repeat(x, 2, axis=1), np.repeat(x, 2, axis=1))
    np.testing.assert_array_equal(ops.repeat(x, 2), np.repeat(x, 2))
    np.testing.assert_array_equal(ops.broadcast_to(x[0], (4, 3)), np.broadcast_to(x[0], (4, 3)))
    np.testing.assert_allclose(ops.divide_no_nan(x[0], x[1]), [0.0, 0.0, -1.5])
    assert ops.size(x) == 6
    t = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    p = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    np.testing.assert_allclose(ops.binary_crossentropy(t, p),
                               -(t * np.log(p) + (1 - t) * np.log(1 - p)), rtol=1e-6)
    logits = np.log(p)
    np.testing.assert_allclose(ops.binary_crossentropy(t, logits, from_logits=True),
                               -(t * np.log(1 / (1 + np.exp(-logits)))
                                 + (1 - t) * np.log(1 - 1 / (1 + np.exp(-logits)))), rtol=1e-5)
    np.testing.assert_allclose(ops.categorical_crossentropy(t, p), -np.log([0.8, 0.6]), rtol=1e-6)
    np.testing.assert_allclose(ops.sparse_categorical_crossentropy(np.array([1, 0]), p),
                               -np.log([0.8, 0.6]), rtol=1e-6)
    # Keras's ops.gelu is the tanh approximation by default
    v = np.array([0.5, -1.0], np.float32)
    np.testing.assert_allclose(
        ops.gelu(v), 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3))), rtol=1e-6)


@pytest.mark.parametrize("target", TARGETS)
def test_tile_and_repeat_traced_in_a_layer_keep_the_batch(target):
    class Widen(Layer):
        def call(self, x):
            return ops.concatenate([ops.tile(x, (1, 2)), ops.repeat(x, 2, axis=-1)], axis=-1)

    model = Sequential([Input(shape=(3,)), Widen()])
    model.compile(optimizer="sgd", loss="mse", target=target)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(model.predict(x, verbose=0),
                                  np.concatenate([np.tile(x, (1, 2)), np.repeat(x, 2, axis=1)], axis=1))


def test_a_function_of_ones_own_named_like_a_builtin_is_never_swapped_for_the_builtin(tmp_path):
    """A `def mse` given as the loss and a `def relu` as an activation: a saved file, a JSON config
    and a copy name them as the user's own (as Keras 3 names functions), so loading without them is
    a ValueError naming the fix, and with custom_objects gives the original's numbers; the
    built-ins of those names would give others."""
    import copy
    from kcompile.models import clone_model, model_from_json

    def mse(y_true, y_pred):
        return ops.mean(ops.abs(y_true - y_pred), axis=-1) * 10.0

    def relu(x):
        return ops.tanh(x) * 3.0

    model = Sequential([Input((4,)), Dense(3, activation=relu)])
    model.compile("sgd", loss=mse)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), np.zeros((8, 3), np.float32)
    kernel, bias = model.get_weights()
    want = np.tanh(x @ kernel + bias) * 3.0                       # numpy: the user's relu
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    want_loss = float(np.mean(np.abs(want) * 10.0))               # the user's mse
    assert model.evaluate(x, y, verbose=0) == pytest.approx(want_loss, rel=1e-5)
    path = tmp_path / "own.keras"
    model.save(path)
    for rebuild in (lambda: load_model(path), lambda: copy.deepcopy(model),
                    lambda: model_from_json(model.to_json()), lambda: clone_model(model)):
        with pytest.raises(ValueError, match=r"'relu' was a function of your own.*custom_objects="):
            rebuild()
    loaded = load_model(path, custom_objects={"relu": relu, "mse": mse})
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(want_loss, rel=1e-5)
    # the loss alone (a built-in activation): its own message
    plain = Sequential([Input((4,)), Dense(3)])
    plain.compile("sgd", loss=mse)
    plain.save(path)
    with pytest.raises(ValueError, match=r"loss 'mse' was a function of your own"):
        load_model(path)
    assert load_model(path, custom_objects={"mse": mse}).loss is mse


def test_integer_floor_division_and_remainders_stay_integers_as_numpys():
    a = np.array([[7, -7, 9], [-9, 0, 5]], np.int32)
    for fn, want in ((lambda x: x // 2, a // 2), (lambda x: x % 3, a % 3),
                     (lambda x: ops.floor_divide(x, -4), a // -4)):
        got = call_eagerly(fn, a)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_a_custom_schedule_with_power_floor_division_and_remainders_trains(target="llvm"):
    """As a Keras user writes a step schedule: 0.1 * ops.power(0.5, ops.floor(step / 3)), or with
    `//` and `%` on the step; the rate after each step of fit is the schedule's at that step."""
    from kcompile.optimizers import SGD
    from kcompile.optimizers.schedules import LearningRateSchedule

    class Steps(LearningRateSchedule):
        def __call__(self, step):
            return 0.1 * ops.power(0.5, ops.floor(step / 3)) + ops.where(step % 2 == 0, 0.0, 0.01) \
                + 0.001 * (step // 4)

    def expected(step):
        return 0.1 * 0.5 ** (step // 3) + (0.0 if step % 2 == 0 else 0.01) + 0.001 * (step // 4)

    for step in range(9):
        assert float(Steps()(step)) == pytest.approx(expected(step), rel=1e-6)
    model = Sequential([Input((3,)), Dense(2)])
    model.compile(SGD(learning_rate=Steps()), "mse", target=target)
    x, y = np.ones((12, 3), np.float32), np.zeros((12, 2), np.float32)
    seen = []
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[kcompile.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(float(model.optimizer.learning_rate)))])
    np.testing.assert_allclose(seen, [expected(step) for step in range(1, 7)], rtol=1e-6)


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_floor_of_float64_is_numpys_up_to_2_to_the_52(target):
    """ir.build.floor of an f64: values between 2**23 and 2**52 still have fractions (in f32 they
    do not), so they are floored as numpy floors them, in the interpreter and compiled."""
    import ir
    from ir import build as B
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.standard_normal(4000) * 10.0 ** rng.uniform(-3, 17, 4000),
                        [2.0 ** 23 + 0.5, -(2.0 ** 23) - 0.5, 2.0 ** 40 + 0.25, -(2.0 ** 40) - 0.25,
                         2.0 ** 52 - 0.5, -(2.0 ** 52) + 0.5, 2.0 ** 52, 2.0 ** 60, -0.0, -1e-300,
                         2.0 ** 30 - 0.5, -(2.0 ** 30) - 0.5, np.inf, -np.inf, np.nan]])
    arg = B.arg("x", "f64", (None,))
    graph = ir.Graph("floor64", [arg], [("y", B.floor(arg))])
    if target == "reference":
        got = ir.run(graph, {"x": x})["y"]
    else:
        from codegen.compiler import CompileOptions
        from codegen.runtime import CompiledRunner
        got = CompiledRunner(graph, {}, CompileOptions()).run({"x": x})["y"]
    np.testing.assert_array_equal(got, np.floor(x))


@pytest.mark.parametrize("target", TARGETS)
def test_sin_cos_tan_as_numpys_compiled_and_their_gradients(target):
    """kcompile.ops.sin/cos/tan (composites in float64): float32's correctly rounded values for
    |x| up to 1e6 (and NaN for inf and NaN), in a Lambda layer on both targets; their gradients
    are cos, -sin and 1 / cos^2, as one SGD step on a weight in front of them shows."""
    x = np.concatenate([np.linspace(-30, 30, 3001), [0.0, -0.0, 1e-30, 1e3, 1e5, 1e6, np.pi / 4,
                                                      3 * np.pi / 4, np.inf, -np.inf, np.nan]])
    x = x.astype(np.float32).reshape(-1, 1)
    with np.errstate(invalid="ignore"):
        for op, reference in ((ops.sin, np.sin), (ops.cos, np.cos), (ops.tan, np.tan)):
            model = Sequential([Input((1,)), kcompile.layers.Lambda(op)])
            model.compile(loss="mse", target=target)
            got = model.predict(x, verbose=0)
            want = reference(x.astype(np.float64)).astype(np.float32)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            finite = ~np.isnan(want)
            np.testing.assert_allclose(got[finite], want[finite], rtol=2e-7, atol=1e-30)
            np.testing.assert_array_equal(op(x), got)              # eager: the same values
    # d/dw of (op(w x) - 0)^2 / 1 = 2 op(w x) op'(w x) x; SGD(1.0) from w = 1 moves w by that
    x1 = np.array([[0.7]], np.float32)
    for op, value, slope in ((ops.sin, np.sin, np.cos), (ops.cos, np.cos, lambda v: -np.sin(v)),
                             (ops.tan, np.tan, lambda v: 1 / np.cos(v) ** 2)):
        model = Sequential([Input((1,)), Dense(1, use_bias=False, kernel_initializer="ones"),
                            kcompile.layers.Lambda(op)])
        model.compile(optimizer=kcompile.optimizers.SGD(1.0), loss="mse", target=target)
        model.fit(x1, np.zeros((1, 1), np.float32), epochs=1, verbose=0)
        step = 2 * value(0.7) * slope(0.7) * 0.7
        np.testing.assert_allclose(model.get_weights()[0], [[1 - step]], rtol=1e-5)
