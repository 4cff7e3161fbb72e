"""ZeroPadding1D/2D, Cropping1D/2D, UpSampling1D/2D and SpatialDropout1D/2D: outputs and input
gradients against numpy (np.pad, slicing, np.repeat) on every target, a few training steps of small
CNNs compiled against the reference interpreter, Keras 3 parity (predictions, one SGD step, configs
and output shapes), config, JSON and file round trips, and the errors of bad arguments."""
import json
import textwrap

import numpy as np
import pytest

import ir
from ir import build as B

import kcompile
from kcompile import layers as L
from kcompile import optimizers
from kcompile.describe import describe
from kcompile.layers.layer import TraceScope
from kcompile.models import Sequential, load_model, model_from_json
from kcompile.utils import set_random_seed
from layer_harness import check_fit_matches_reference, Offset
from targets import TARGETS
from keras_subprocess import keras_available, run_keras_models


def _repeat(x, sizes):
    for axis, size in enumerate(sizes, start=1):
        x = np.repeat(x, size, axis=axis)
    return x


def _unrepeat(g, sizes):
    """The adjoint of _repeat: each repeated block summed."""
    for axis, size in enumerate(sizes, start=1):
        shape = g.shape[:axis] + (g.shape[axis] // size, size) + g.shape[axis + 1:]
        g = g.reshape(shape).sum(axis=axis + 1)
    return g


def _crop(x, crops):
    index = (slice(None),) + tuple(slice(a, x.shape[i + 1] - b) for i, (a, b) in enumerate(crops))
    return x[index]


def _pad(x, pads):
    return np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))


# (layer, per-sample input shape, numpy forward, numpy adjoint of the forward)
CASES = {
    "zero_padding1d": (lambda: L.ZeroPadding1D(), (4, 3),
                       lambda x: _pad(x, [(1, 1)]), lambda g: _crop(g, [(1, 1)])),
    "zero_padding1d_asymmetric": (lambda: L.ZeroPadding1D(padding=(0, 3)), (4, 3),
                                  lambda x: _pad(x, [(0, 3)]), lambda g: _crop(g, [(0, 3)])),
    "zero_padding2d": (lambda: L.ZeroPadding2D(2), (3, 4, 2),
                       lambda x: _pad(x, [(2, 2), (2, 2)]), lambda g: _crop(g, [(2, 2), (2, 2)])),
    "zero_padding2d_pairs": (lambda: L.ZeroPadding2D(((1, 0), (2, 3))), (3, 4, 2),
                             lambda x: _pad(x, [(1, 0), (2, 3)]),
                             lambda g: _crop(g, [(1, 0), (2, 3)])),
    "cropping1d": (lambda: L.Cropping1D((2, 1)), (6, 3),
                   lambda x: _crop(x, [(2, 1)]), lambda g: _pad(g, [(2, 1)])),
    "cropping2d": (lambda: L.Cropping2D(((1, 2), (0, 1))), (5, 4, 2),
                   lambda x: _crop(x, [(1, 2), (0, 1)]), lambda g: _pad(g, [(1, 2), (0, 1)])),
    "cropping2d_symmetric": (lambda: L.Cropping2D((1, 2)), (5, 6, 2),
                             lambda x: _crop(x, [(1, 1), (2, 2)]),
                             lambda g: _pad(g, [(1, 1), (2, 2)])),
    "up_sampling1d": (lambda: L.UpSampling1D(3), (4, 2),
                      lambda x: _repeat(x, (3,)), lambda g: _unrepeat(g, (3,))),
    "up_sampling2d": (lambda: L.UpSampling2D(), (3, 4, 2),
                      lambda x: _repeat(x, (2, 2)), lambda g: _unrepeat(g, (2, 2))),
    "up_sampling2d_rows": (lambda: L.UpSampling2D(size=(3, 1), interpolation="NEAREST"), (2, 3, 2),
                           lambda x: _repeat(x, (3, 1)), lambda g: _unrepeat(g, (3, 1))),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_output_and_input_gradient_match_numpy(name, target):
    make_layer, shape, forward, adjoint = CASES[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    want = forward(x)
    y = rng.standard_normal(want.shape).astype(np.float32)
    model = Sequential([L.Input(shape), Offset(), make_layer()])
    assert model.output_shape == (None,) + want.shape[1:]
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    np.testing.assert_array_equal(model.predict(x, verbose=0), want)
    model.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    # mse: the mean over every output entry, so d loss / d output = 2 (output - y) / its size
    gradient = adjoint(2.0 * (want.astype(np.float64) - y) / want.size).sum(axis=0)
    np.testing.assert_allclose(-model.layers[0].w.numpy(), gradient, rtol=1e-5, atol=1e-7)


def _traced(layers, shape, x, seed):
    """The layers' outputs in training mode from one traced graph, run on the reference interpreter."""
    node = B.arg("x", "f32", (None,) + shape)
    seed_node = B.arg("seed", "u32", ())
    with TraceScope({}, seed=seed_node):
        outputs = [(f"y{i}", layer(node, training=True)) for i, layer in enumerate(layers)]
    graph = ir.Graph("g", [node, seed_node], outputs)
    result = ir.run(graph, {"x": x, "seed": np.uint32(seed)})
    return [result[f"y{i}"] for i in range(len(layers))]


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_spatial_dropout_drops_whole_channels_of_each_sample(rate):
    x = np.full((100, 5, 6, 40), 2.0, np.float32)
    (out,) = _traced([L.SpatialDropout2D(rate)], x.shape[1:], x, seed=7)
    flat = out.reshape(100, 30, 40)
    assert np.all(flat == flat[:, :1, :]), "one mask entry per sample and channel"
    kept = flat[:, 0, :] != 0
    np.testing.assert_allclose(flat[:, 0, :][kept], 2.0 / (1 - rate), rtol=1e-6)
    # 4000 Bernoulli(rate) draws: the dropped fraction's standard deviation is below 0.008
    assert abs(1 - kept.mean() - rate) < 0.04
    sequences = np.ones((50, 7, 30), np.float32)
    (out,) = _traced([L.SpatialDropout1D(rate)], sequences.shape[1:], sequences, seed=7)
    assert np.all(out == out[:, :1, :]) and 0 < np.mean(out == 0) < 1
    # inference: the inputs themselves
    np.testing.assert_array_equal(L.SpatialDropout1D(rate)(sequences), sequences)
    np.testing.assert_array_equal(L.SpatialDropout2D(rate)(x), x)


def test_spatial_dropout_draws_as_dropout_with_keras_noise_shape():
    """The same stream as Dropout's (the layer's name and seed): SpatialDropout1D is exactly
    Dropout(noise_shape=(None, 1, channels)) of that name and seed; another name draws another mask."""
    x = np.ones((20, 4, 16), np.float32)
    spatial, dropout, other = _traced(
        [L.SpatialDropout1D(0.5, seed=3, name="drop"),
         L.Dropout(0.5, noise_shape=(None, 1, 16), seed=3, name="drop"),
         L.SpatialDropout1D(0.5, seed=3, name="other")], x.shape[1:], x, seed=11)
    np.testing.assert_array_equal(spatial, dropout)
    assert not np.array_equal(spatial, other)
    images = np.ones((10, 3, 2, 8), np.float32)
    spatial, dropout = _traced([L.SpatialDropout2D(0.4, name="d"),
                                L.Dropout(0.4, noise_shape=(None, 1, 1, 8), name="d")],
                               images.shape[1:], images, seed=2)
    np.testing.assert_array_equal(spatial, dropout)


@pytest.mark.parametrize("target", TARGETS)
def test_spatial_dropout_input_gradient_is_the_masked_output_gradient(target):
    rate, shape = 0.5, (3, 2, 24)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1,) + shape).astype(np.float32)
    y = rng.standard_normal((1,) + shape).astype(np.float32)
    set_random_seed(4)
    model = Sequential([L.Input(shape), Offset(), L.SpatialDropout2D(rate)])
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    model.fit(x, y, batch_size=1, epochs=1, shuffle=False, verbose=0)
    gradient = -model.layers[0].w.numpy()
    kept = np.any(gradient != 0, axis=(0, 1))             # a channel is kept or dropped whole
    assert 0 < kept.sum() < shape[-1]
    scale = kept / (1 - rate)
    want = scale * 2.0 * (x[0].astype(np.float64) * scale - y[0]) / x.size
    np.testing.assert_allclose(gradient, want, rtol=1e-5, atol=1e-7)


def _cnn_2d():
    return Sequential([L.Input((7, 6, 2)), L.ZeroPadding2D(((1, 0), (0, 1))),
                       L.Conv2D(3, 3, activation="relu"), L.UpSampling2D((2, 1)),
                       L.Cropping2D(((1, 1), (0, 1))), L.SpatialDropout2D(0.3), L.Flatten(),
                       L.Dense(2)])


def _cnn_1d():
    return Sequential([L.Input((9, 2)), L.ZeroPadding1D(2), L.Conv1D(3, 3, activation="tanh"),
                       L.SpatialDropout1D(0.25), L.UpSampling1D(2), L.Cropping1D((1, 2)),
                       L.GlobalAveragePooling1D(), L.Dense(2)])


@pytest.mark.parametrize("make_model", [_cnn_2d, _cnn_1d], ids=["2d", "1d"])
def test_a_few_fit_steps_compiled_agree_with_the_reference(make_model):
    check_fit_matches_reference(make_model)


# -- configs, JSON, files -----------------------------------------------------------------------

ALL_LAYERS = [lambda: L.ZeroPadding1D(), lambda: L.ZeroPadding1D((2, 0)), lambda: L.ZeroPadding2D(),
              lambda: L.ZeroPadding2D((1, 2)), lambda: L.ZeroPadding2D(((0, 1), (2, 3))),
              lambda: L.Cropping1D(), lambda: L.Cropping1D(2), lambda: L.Cropping2D(),
              lambda: L.Cropping2D(1), lambda: L.Cropping2D(((0, 1), (1, 0))), lambda: L.UpSampling1D(),
              lambda: L.UpSampling1D(3), lambda: L.UpSampling2D(), lambda: L.UpSampling2D(3),
              lambda: L.SpatialDropout1D(0.2), lambda: L.SpatialDropout1D(0.5, seed=4),
              lambda: L.SpatialDropout2D(0.1, name="maps")]


@pytest.mark.parametrize("index", range(len(ALL_LAYERS)))
def test_config_round_trips(index):
    layer = ALL_LAYERS[index]()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    through_json = json.loads(json.dumps(L.serialize(layer)))
    assert L.deserialize(through_json).get_config() == config
    assert kcompile.saving.deserialize_keras_object(
        json.loads(json.dumps(kcompile.saving.serialize_keras_object(layer)))).get_config() == config


def test_spatial_dropout_config_has_keras_keys():
    assert L.SpatialDropout1D(0.2).get_config() == {"rate": 0.2, "seed": None,
                                                    "name": "spatial_dropout1d", "dtype": "float32"}
    assert L.SpatialDropout2D(0.2, seed=1).get_config() == {
        "rate": 0.2, "seed": 1, "name": "spatial_dropout2d", "dtype": "float32",
        "data_format": "channels_last"}


def test_model_from_json_and_save_load_keep_the_predictions(tmp_path):
    set_random_seed(0)
    model = _cnn_2d()
    x = np.random.default_rng(0).standard_normal((5, 7, 6, 2)).astype(np.float32)
    want = model.predict(x, verbose=0)
    clone = model_from_json(model.to_json())
    assert [type(a) for a in clone.layers] == [type(b) for b in model.layers]
    assert [a.get_config() for a in clone.layers] == [b.get_config() for b in model.layers]
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(x, verbose=0), want)
    model.compile(optimizer="adam", loss="mse", target="reference")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert [a.get_config() for a in loaded.layers] == [b.get_config() for b in model.layers]
    # the loaded model keeps target='reference' (the interpreter, bit for bit the saved model's);
    # the compiled predictions before agree within float32 rounding (the GEMM's sums in another order)
    assert loaded.target == "reference"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    set_random_seed(0)
    sequences = _cnn_1d()
    sequences.save(tmp_path / "s.keras")
    x = np.random.default_rng(0).standard_normal((5, 9, 2)).astype(np.float32)
    np.testing.assert_array_equal(load_model(tmp_path / "s.keras").predict(x, verbose=0),
                                  sequences.predict(x, verbose=0))


def test_summary_lists_the_output_shapes():
    lines = []
    _cnn_2d().summary(print_fn=lines.append)
    text = "\n".join(lines)
    for row in ["zero_padding2d (ZeroPadding2D)", "(None, 8, 7, 2)", "up_sampling2d (UpSampling2D)",
                "(None, 12, 5, 3)", "cropping2d (Cropping2D)", "(None, 10, 4, 3)",
                "spatial_dropout2d (SpatialDropout2D)"]:
        assert row in text, text


def test_the_description_covers_the_arguments():
    """The compile cache's key (kcompile.describe) tells the layers' arguments apart."""
    def model(padding, size, cropping, rate):
        return Sequential([L.Input((5, 4, 2)), L.ZeroPadding2D(padding), L.UpSampling2D(size),
                           L.Cropping2D(cropping), L.SpatialDropout2D(rate)])
    base = describe(list(model(1, 2, 1, 0.5).layers))
    assert describe(list(model(1, 2, 1, 0.5).layers)) == base
    for changed in [model(2, 2, 1, 0.5), model(1, 3, 1, 0.5), model(1, 2, 2, 0.5),
                    model(1, 2, 1, 0.4)]:
        assert describe(list(changed.layers)) != base


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: L.ZeroPadding1D(-1), ValueError, r"`padding`.*padding=-1"),
    (lambda: L.ZeroPadding1D((1, 2, 3)), ValueError, r"`padding`.*padding=\(1, 2, 3\)"),
    (lambda: L.ZeroPadding1D(1.5), ValueError, r"`padding`"),
    (lambda: L.ZeroPadding2D(((1, 2), (1, -2))), ValueError, r"`padding`.*-2"),
    (lambda: L.ZeroPadding2D((1, 2, 3)), ValueError, r"`padding`.*\(1, 2, 3\)"),
    (lambda: L.ZeroPadding2D(((1, 2, 3), 1)), ValueError, r"`padding`"),
    (lambda: L.ZeroPadding2D("same"), ValueError, r"`padding`.*'same'"),
    (lambda: L.Cropping1D(-2), ValueError, r"`cropping`.*cropping=-2"),
    (lambda: L.Cropping1D((1,)), ValueError, r"`cropping`"),
    (lambda: L.Cropping2D(-1), ValueError, r"`cropping`.*cropping=-1"),
    (lambda: L.Cropping2D(((1, 1),)), ValueError, r"`cropping`"),
    (lambda: L.UpSampling1D(0), ValueError, r"`size`.*size=0"),
    (lambda: L.UpSampling1D(-2), ValueError, r"`size`"),
    (lambda: L.UpSampling1D(2.0), TypeError, r"`size`"),
    (lambda: L.UpSampling2D(0), ValueError, r"`size`.*size=0"),
    (lambda: L.UpSampling2D((2, 0)), ValueError, r"`size`"),
    (lambda: L.UpSampling2D((2, 2, 2)), ValueError, r"`size`"),
    (lambda: L.UpSampling2D(interpolation="bilinear"), NotImplementedError,
     r"interpolation='nearest' only.*interpolation='bilinear'"),
    (lambda: L.UpSampling2D(interpolation="cubic"), ValueError, r"`interpolation`"),
    (lambda: L.SpatialDropout1D(1.5), ValueError, r"`rate`"),
    (lambda: L.SpatialDropout2D(-0.1), ValueError, r"`rate`"),
    (lambda: L.ZeroPadding2D(data_format="channels_first"), NotImplementedError, "channels_last"),
    (lambda: L.ZeroPadding1D(data_format="channels_first"), NotImplementedError,
     r"sequences of shape \(batch, steps, channels\)"),
    (lambda: L.Cropping2D(data_format="channels_first"), NotImplementedError, "channels_last"),
    (lambda: L.UpSampling2D(data_format="channels_first"), NotImplementedError, "channels_last"),
    (lambda: L.SpatialDropout2D(0.5, data_format="channels_first"), NotImplementedError,
     "channels_last"),
    (lambda: L.ZeroPadding1D(data_format="nchw"), ValueError, "data_format"),
])
def test_bad_arguments_are_refused_naming_them(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("layer, shape, match", [
    (lambda: L.Cropping1D((2, 2)), (4, 3), r"removes 4 of the 4 steps.*\(None, 4, 3\)"),
    (lambda: L.Cropping1D(5), (4, 3), r"removes 10 of the 4 steps.*\(None, 4, 3\)"),
    (lambda: L.Cropping2D(((2, 2), (0, 0))), (4, 5, 2), r"4 of the 4 rows.*\(None, 4, 5, 2\)"),
    (lambda: L.Cropping2D(((0, 0), (3, 3))), (4, 5, 2), r"6 of the 5 columns.*\(None, 4, 5, 2\)"),
])
def test_cropping_everything_is_refused_when_the_model_is_built(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([L.Input(shape), layer()])
    deferred = Sequential([layer()])
    with pytest.raises(ValueError, match=match):
        deferred.build((None,) + shape)


@pytest.mark.parametrize("layer, shape", [
    (L.ZeroPadding1D, (4, 5, 3)), (L.Cropping1D, (4,)), (L.UpSampling1D, (4, 3, 2)),
    (L.ZeroPadding2D, (4, 3)), (L.Cropping2D, (4, 3)), (L.UpSampling2D, (4,)),
    (lambda: L.SpatialDropout1D(0.5), (4, 3, 2)), (lambda: L.SpatialDropout2D(0.5), (4, 3)),
])
def test_inputs_of_the_wrong_rank_are_refused(layer, shape):
    with pytest.raises(ValueError, match=r"needs (sequences|images) of shape"):
        Sequential([L.Input(shape), layer()])


NEW_LAYERS = ("ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "UpSampling1D",
              "UpSampling2D", "SpatialDropout1D", "SpatialDropout2D")


def test_the_layers_are_in_the_namespace():
    for name in NEW_LAYERS:
        assert name in L.__all__ and name in L._CLASSES and getattr(L, name).__name__ == name
    with pytest.raises(AttributeError, match="ZeroPadding3D.*not implemented"):
        L.ZeroPadding3D


# -- Keras 3 parity -------------------------------------------------------------------------------


# (Keras layer expressions, written alike in both APIs; input shape; one SGD step compared too)
KERAS_MODELS = {
    "images": (["ZeroPadding2D(((1, 0), (2, 1)))", "Conv2D(3, 3, activation='relu')",
                "UpSampling2D((2, 1))", "Cropping2D(((1, 2), (0, 1)))", "SpatialDropout2D(0.4)",
                "ZeroPadding2D(1)", "Cropping2D(1)", "UpSampling2D()", "Flatten()", "Dense(2)"],
               (6, 5, 2), False),
    "sequences": (["ZeroPadding1D((2, 1))", "Conv1D(3, 3, activation='tanh')", "UpSampling1D(3)",
                   "Cropping1D((1, 4))", "SpatialDropout1D(0.2)", "ZeroPadding1D()", "Cropping1D()",
                   "Flatten()", "Dense(2)"], (7, 2), False),
    "no_dropout": (["ZeroPadding2D(1)", "Conv2D(2, 3)", "UpSampling2D((1, 2))", "Cropping2D((0, 1))",
                    "Conv2D(2, 2, activation='relu')", "Flatten()", "Dense(2)"], (4, 4, 1), True),
}

KERAS_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, keras
    from keras.layers import *
    for spec in sys.argv[1:]:
        exprs, shape, train, path = eval(spec)
        data = np.load(path)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape)] + [eval(e) for e in exprs])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
        weights = model.get_weights()
        results = dict(prediction=model.predict(data["x"], verbose=0))
        if train:
            model.fit(data["x"], data["y"], batch_size=len(data["x"]), epochs=1, shuffle=False,
                      verbose=0)
            results.update({f"t{i}": w for i, w in enumerate(model.get_weights())})
        configs = [layer.get_config() for layer in model.layers]
        shapes = [list(layer.output.shape) for layer in model.layers]
        np.savez(path, configs=json.dumps(configs), shapes=json.dumps(shapes),
                 **{f"w{i}": w for i, w in enumerate(weights)}, **results)
""")


def _keras_model(name):
    exprs, shape, _ = KERAS_MODELS[name]
    namespace = {k: getattr(L, k) for k in dir(L) if not k.startswith("_")}
    return Sequential([L.Input(shape=shape)] + [eval(e, namespace) for e in exprs])


def _keras_data(name):
    shape = KERAS_MODELS[name][1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + shape).astype(np.float32)
    return x, rng.standard_normal((6, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    return run_keras_models(KERAS_SCRIPT, KERAS_MODELS, _keras_data, tmp_path_factory.mktemp("keras"))


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_agrees_with_keras(name, keras_results):
    keras_out = keras_results[name]
    x, y = _keras_data(name)
    model = _keras_model(name)
    # Keras's output shapes and configs (dtype aside: Keras's is a DTypePolicy)
    shapes = json.loads(str(keras_out["shapes"]))
    assert [list(layer.output_shape) for layer in model.layers] == shapes
    for layer, keras_config in zip(model.layers, json.loads(str(keras_out["configs"]))):
        if type(layer).__name__ not in NEW_LAYERS:
            continue
        ours = json.loads(json.dumps(layer.get_config()))
        keras_config["name"] = ours["name"]      # (Keras numbers names per process)
        assert {k: v for k, v in ours.items() if k != "dtype"} == \
            {k: v for k, v in keras_config.items() if k != "dtype"}, type(layer).__name__
    model.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=TARGETS[-1])
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
    if KERAS_MODELS[name][2]:
        model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
        for i, (variable, got) in enumerate(zip(model.weights, model.get_weights())):
            np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{variable.path} after one SGD step")
