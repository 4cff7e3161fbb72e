"""Conv1D and Conv2D with dilation_rate > 1 and groups > 1: outputs, input and weight gradients
against a direct float64 numpy convolution on every target, a few training steps compiled against
the reference interpreter, Keras 3 parity (predictions and one SGD step with Keras's weights,
configs, output shapes), config, JSON and file round trips, and the errors of bad arguments."""
import json
import textwrap

import numpy as np
import pytest

import ir
from ir import build as B

from kcompile import layers as L
from kcompile import optimizers
from kcompile.describe import describe
from kcompile.layers.convolutional import dilate_kernel
from kcompile.models import Sequential, load_model, model_from_json
from kcompile.utils import set_random_seed
from keras_subprocess import keras_available, run_keras_models
from layer_harness import check_fit_matches_reference, Offset, run_layer_test
from targets import TARGETS


# ----------------------------------------------------------------------------------------------
# The numpy reference: a sum over the kernel's taps of strided views of the padded input
# ----------------------------------------------------------------------------------------------

def _axis_pads(size, extent, stride, padding):
    """(low, high) zeros of one axis for a window spanning `extent` inputs (TensorFlow's 'same':
    the odd one at the end; 'causal': extent - 1 before)."""
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return extent - 1, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def conv_numpy(x, kernel, strides, dilation, paddings, groups, output_gradient=None):
    """x[N,H,W,C] (*) kernel[KH,KW,C/groups,F] in float64, output channel f of group f // (F/groups)
    seeing input channels of that group only.  With `output_gradient` [N,OH,OW,F], also the
    gradients (of sum(output * output_gradient)) with respect to x and to the kernel."""
    x, kernel = x.astype(np.float64), kernel.astype(np.float64)
    kh, kw, cg, f = kernel.shape
    fg = f // groups
    extents = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilation)]
    pads = [_axis_pads(x.shape[1 + i], extents[i], strides[i], paddings[i]) for i in range(2)]
    padded = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh, ow = ((padded.shape[1 + i] - extents[i]) // strides[i] + 1 for i in range(2))
    out = np.zeros((x.shape[0], oh, ow, f))
    dpadded, dkernel = np.zeros_like(padded), np.zeros_like(kernel)
    for a in range(kh):
        for b in range(kw):
            rows = slice(a * dilation[0], a * dilation[0] + (oh - 1) * strides[0] + 1, strides[0])
            cols = slice(b * dilation[1], b * dilation[1] + (ow - 1) * strides[1] + 1, strides[1])
            for g in range(groups):
                channels, filters = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
                window = padded[:, rows, cols, channels]
                out[..., filters] += window @ kernel[a, b, :, filters]
                if output_gradient is not None:
                    gradient = output_gradient[..., filters]
                    dpadded[:, rows, cols, channels] += gradient @ kernel[a, b, :, filters].T
                    dkernel[a, b, :, filters] += np.einsum("nhwc,nhwf->cf", window, gradient)
    if output_gradient is None:
        return out
    dx = dpadded[:, pads[0][0]:pads[0][0] + x.shape[1], pads[1][0]:pads[1][0] + x.shape[2]]
    return out, dx, dkernel


def _image_view(layer):
    """The layer's (strides, dilation, paddings) as a 2-D convolution's: a sequence is a one-row
    image."""
    if layer.rank == 1:
        return ((1,) + layer.strides, (1,) + layer.dilation_rate, ("valid", layer.padding))
    return layer.strides, layer.dilation_rate, (layer.padding,) * 2


# (layer class, arguments, per-sample input shape, expected per-sample output shape)
CASES = {
    "1d_valid_d2": (L.Conv1D, dict(filters=4, kernel_size=3, dilation_rate=2), (11, 2), (7, 4)),
    "1d_valid_d3": (L.Conv1D, dict(filters=3, kernel_size=3, dilation_rate=3), (9, 2), (3, 3)),
    "1d_same_d3": (L.Conv1D, dict(filters=4, kernel_size=3, dilation_rate=3, padding="same"),
                   (10, 2), (10, 4)),
    "1d_same_d3_even": (L.Conv1D, dict(filters=2, kernel_size=2, dilation_rate=3, padding="same"),
                        (7, 3), (7, 2)),
    "1d_causal_d2": (L.Conv1D, dict(filters=3, kernel_size=3, dilation_rate=2, padding="causal"),
                     (9, 2), (9, 3)),
    "1d_causal_d3_g2": (L.Conv1D, dict(filters=4, kernel_size=2, dilation_rate=3, padding="causal",
                                       groups=2), (9, 4), (9, 4)),
    "1d_causal_d4_g2_past_the_start": (L.Conv1D, dict(filters=2, kernel_size=3, dilation_rate=4,
                                                      padding="causal", groups=2), (5, 4), (5, 2)),
    "1d_valid_g2_s2": (L.Conv1D, dict(filters=6, kernel_size=3, strides=2, groups=2), (9, 4),
                       (4, 6)),
    "2d_valid_d2": (L.Conv2D, dict(filters=3, kernel_size=3, dilation_rate=2), (8, 7, 2), (4, 3, 3)),
    "2d_valid_d3": (L.Conv2D, dict(filters=2, kernel_size=(2, 3), dilation_rate=3), (7, 9, 1),
                    (4, 3, 2)),
    "2d_same_d23": (L.Conv2D, dict(filters=3, kernel_size=(3, 2), dilation_rate=(2, 3),
                                   padding="same"), (6, 7, 2), (6, 7, 3)),
    "2d_same_d3": (L.Conv2D, dict(filters=2, kernel_size=2, dilation_rate=3, padding="same"),
                   (5, 6, 2), (5, 6, 2)),
    "2d_same_d3_wider_than_the_image": (L.Conv2D, dict(filters=2, kernel_size=3, dilation_rate=3,
                                                       padding="same"), (4, 4, 2), (4, 4, 2)),
    "2d_valid_g2": (L.Conv2D, dict(filters=4, kernel_size=3, groups=2), (6, 5, 4), (4, 3, 4)),
    "2d_same_g2_s2": (L.Conv2D, dict(filters=4, kernel_size=(3, 2), strides=2, padding="same",
                                     groups=2), (7, 6, 4), (4, 3, 4)),
    "2d_same_d2_g2": (L.Conv2D, dict(filters=6, kernel_size=3, dilation_rate=2, padding="same",
                                     groups=2), (6, 5, 4), (6, 5, 6)),
    "2d_1x1_g3": (L.Conv2D, dict(filters=6, kernel_size=1, groups=3), (4, 3, 6), (4, 3, 6)),
}

LEARNING_RATE = 10.0


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_and_gradients_match_numpy(name, target):
    cls, arguments, shape, output_shape = CASES[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    model = Sequential([L.Input(shape), Offset(), cls(**arguments)])
    layer = model.layers[1]
    groups = arguments.get("groups", 1)
    kernel_shape = layer.kernel_size + (shape[-1] // groups, arguments["filters"])
    assert layer.kernel.shape == kernel_shape
    assert model.output_shape == (None,) + output_shape
    kernel = rng.standard_normal(kernel_shape).astype(np.float32)
    bias = rng.standard_normal(arguments["filters"]).astype(np.float32)
    model.set_weights([np.zeros(shape, np.float32), kernel, bias])

    image = x[:, None] if layer.rank == 1 else x
    image_kernel = kernel[None] if layer.rank == 1 else kernel
    y = rng.standard_normal((3,) + output_shape).astype(np.float32)
    want = conv_numpy(image, image_kernel, *_image_view(layer), groups) + bias
    want = want[:, 0] if layer.rank == 1 else want
    # mse: the mean over every output entry, so d loss / d output = 2 (output - y) / its size
    gradient = 2.0 * (want - y) / want.size
    _, dx, dkernel = conv_numpy(image, image_kernel, *_image_view(layer), groups,
                                gradient[:, None] if layer.rank == 1 else gradient)

    model.compile(optimizer=optimizers.SGD(learning_rate=LEARNING_RATE), loss="mse", target=target)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)
    model.fit(x, y, batch_size=3, epochs=1, shuffle=False, verbose=0)
    offset, new_kernel, new_bias = model.get_weights()
    np.testing.assert_allclose(-offset / LEARNING_RATE, (dx[:, 0] if layer.rank == 1 else dx).sum(0),
                               rtol=1e-4, atol=1e-6, err_msg="input gradient")
    np.testing.assert_allclose((kernel - new_kernel) / LEARNING_RATE,
                               dkernel[0] if layer.rank == 1 else dkernel, rtol=1e-4, atol=1e-6,
                               err_msg="kernel gradient")
    np.testing.assert_allclose((bias - new_bias) / LEARNING_RATE,
                               gradient.reshape(-1, gradient.shape[-1]).sum(axis=0), rtol=1e-4,
                               atol=1e-6, err_msg="bias gradient")


def test_the_dilated_kernel_has_zeros_between_the_taps():
    kernel = np.arange(1.0, 2 * 3 * 2 * 1 + 1).reshape(2, 3, 2, 1)
    node = B.arg("k", "f64", kernel.shape)
    graph = ir.Graph("dilate", [node], [("k", dilate_kernel(node, (3, 2)))])
    dilated = ir.run(graph, {"k": kernel})["k"]
    want = np.zeros((4, 5, 2, 1))
    want[::3, ::2] = kernel
    np.testing.assert_array_equal(dilated, want)


# ----------------------------------------------------------------------------------------------
# Training: the layer harness and a few steps of small models, compiled against the reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["1d_causal_d3_g2", "2d_same_d2_g2", "2d_valid_d3"])
def test_layer_harness(name):
    cls, arguments, shape, output_shape = CASES[name]
    run_layer_test(lambda: cls(**arguments), shape, output_shape, 2)


def _wavenet():
    return Sequential([L.Input((16, 4)), L.Conv1D(4, 2, padding="causal", activation="tanh"),
                       L.Conv1D(4, 2, dilation_rate=2, padding="causal", groups=2,
                                activation="tanh"),
                       L.Conv1D(6, 2, dilation_rate=4, padding="causal", groups=2),
                       L.GlobalAveragePooling1D(), L.Dense(2)])


def _images():
    return Sequential([L.Input((9, 8, 2)), L.Conv2D(4, 3, dilation_rate=2, padding="same",
                                                    activation="relu"),
                       L.Conv2D(6, (2, 3), dilation_rate=(3, 1), groups=2, activation="relu"),
                       L.Conv2D(4, 3, strides=2, padding="same", groups=2), L.Flatten(),
                       L.Dense(2)])


@pytest.mark.parametrize("make_model", [_wavenet, _images], ids=["1d", "2d"])
def test_a_few_fit_steps_compiled_agree_with_the_reference(make_model):
    check_fit_matches_reference(make_model)


# ----------------------------------------------------------------------------------------------
# Configs, JSON, files, the compile cache's description
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_config_reports_dilation_and_groups_and_round_trips(name):
    cls, arguments, _, _ = CASES[name]
    layer = cls(**arguments)
    config = layer.get_config()
    rank = 1 if cls is L.Conv1D else 2
    dilation = arguments.get("dilation_rate", 1)
    assert config["dilation_rate"] == (dilation if isinstance(dilation, tuple) else (dilation,) * rank)
    assert config["groups"] == arguments.get("groups", 1)
    assert cls.from_config(config).get_config() == config
    assert L.deserialize(json.loads(json.dumps(L.serialize(layer)))).get_config() == config


def test_model_from_json_and_save_load_keep_the_predictions(tmp_path):
    for make_model in (_wavenet, _images):
        set_random_seed(0)
        model = make_model()
        x = np.random.default_rng(0).standard_normal((5,) + model.input_shape[1:]).astype(np.float32)
        want = model.predict(x, verbose=0)
        clone = model_from_json(model.to_json())
        assert [a.get_config() for a in clone.layers] == [b.get_config() for b in model.layers]
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone.predict(x, verbose=0), want)
        model.save(tmp_path / "m.keras")
        loaded = load_model(tmp_path / "m.keras")
        assert [a.get_config() for a in loaded.layers] == [b.get_config() for b in model.layers]
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), want)


def test_the_description_tells_dilation_and_groups_apart():
    """The compile cache's key (kcompile.describe) must not serve one convolution's program for
    another."""
    def model(**arguments):
        return Sequential([L.Input((8, 8, 4)), L.Conv2D(4, 3, padding="same", **arguments)])
    base = describe(list(model().layers))
    assert describe(list(model().layers)) == base
    variants = [describe(list(model(**a).layers)) for a in
                [dict(dilation_rate=2), dict(dilation_rate=(1, 2)), dict(groups=2), dict(groups=4)]]
    assert len({json.dumps(v) for v in variants + [base]}) == 5


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: L.Conv2D(4, 3, strides=2, dilation_rate=2),
     r"`strides > 1` not supported in conjunction with `dilation_rate > 1`.*strides=\(2, 2\)"),
    (lambda: L.Conv2D(4, 3, strides=(1, 2), dilation_rate=(2, 1)), r"`strides > 1`.*Use strides=1"),
    (lambda: L.Conv1D(4, 3, strides=2, dilation_rate=3), r"`strides > 1`.*dilation_rate=\(3,\)"),
    (lambda: L.Conv2D(4, 3, dilation_rate=0), r"`dilation_rate`.*dilation_rate=0"),
    (lambda: L.Conv2D(4, 3, dilation_rate=(2,)), r"`dilation_rate`.*tuple of 2"),
    (lambda: L.Conv1D(4, 3, dilation_rate=1.5), r"`dilation_rate`"),
    (lambda: L.Conv2D(4, 3, groups=0), r"groups must be a positive integer.*groups=0"),
    (lambda: L.Conv2D(4, 3, groups=2.0), r"groups must be a positive integer.*groups=2.0"),
    (lambda: L.Conv1D(4, 3, groups=True), r"groups must be a positive integer"),
    (lambda: L.Conv2D(5, 3, groups=2), r"filters must be evenly divisible.*groups=2, filters=5"),
])
def test_bad_arguments_are_refused_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make, shape, match", [
    (lambda: L.Conv2D(4, 3, groups=2), (6, 6, 3),
     r"input channels must be evenly divisible.*groups=2.*3 channels"),
    (lambda: L.Conv1D(6, 3, groups=3), (8, 4), r"input channels must be evenly divisible"),
    (lambda: L.Conv1D(2, 3, dilation_rate=4), (8, 2),
     r"a \(3,\) kernel dilated by \(4,\) \(extent \(9,\)\) does not fit.*or dilation_rate"),
    (lambda: L.Conv2D(2, 3, dilation_rate=(1, 3)), (5, 6, 2),
     r"dilated by \(1, 3\) \(extent \(3, 7\)\) does not fit"),
])
def test_inputs_that_do_not_fit_are_refused_when_the_model_is_built(make, shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([L.Input(shape), make()])


def test_a_built_grouped_layer_checks_the_input_channels():
    layer = L.Conv2D(4, 3, groups=2)
    layer.build((None, 6, 6, 4))
    assert layer.kernel.shape == (3, 3, 2, 4)
    assert layer.compute_output_shape((None, 6, 6, 4)) == (None, 4, 4, 4)
    with pytest.raises(ValueError, match="expected 4 input channels"):
        layer.compute_output_shape((None, 6, 6, 2))


# ----------------------------------------------------------------------------------------------
# Keras 3 parity
# ----------------------------------------------------------------------------------------------

# (Keras layer expressions, written alike in both APIs; input shape)
KERAS_MODELS = {
    "sequences": (["Conv1D(4, 3, dilation_rate=2, padding='causal', groups=2, activation='tanh')",
                   "Conv1D(6, 2, dilation_rate=3, padding='same', groups=2)",
                   "Conv1D(4, 3, dilation_rate=3, activation='relu')",
                   "Conv1D(4, 2, dilation_rate=2)", "Conv1D(4, 2, dilation_rate=3, padding='causal')",
                   "Conv1D(2, 3, strides=2, padding='same', groups=2)", "Flatten()", "Dense(2)"],
                  (15, 4)),
    "images": (["Conv2D(4, 3, dilation_rate=2, padding='same', groups=2, activation='relu')",
                "Conv2D(4, (2, 3), dilation_rate=(3, 2))",
                "Conv2D(4, 3, dilation_rate=3, activation='tanh')",
                "Conv2D(2, 2, dilation_rate=3, padding='same')", "Conv2D(4, 2, dilation_rate=2)",
                "Conv2D(6, 3, strides=2, padding='same', groups=2)", "Conv2D(4, 1, groups=2)",
                "Flatten()", "Dense(2)"], (16, 16, 4)),
}

# (layer expression, input shape) for compute_output_shape alone
KERAS_SHAPES = [
    ("Conv1D(2, 3, dilation_rate=3)", (None, 7, 2)),
    ("Conv1D(2, 3, dilation_rate=3, padding='causal')", (None, 5, 2)),
    ("Conv1D(2, 4, dilation_rate=2, padding='same')", (None, 5, 2)),
    ("Conv1D(4, 3, groups=2, strides=3)", (None, 10, 6)),
    ("Conv2D(2, (3, 2), dilation_rate=(2, 4))", (None, 5, 6, 2)),
    ("Conv2D(4, 3, dilation_rate=3, padding='same', groups=2)", (None, 4, 5, 6)),
    ("Conv2D(8, 3, strides=2, groups=4)", (None, 9, 8, 8)),
]

# The keys of the convolution's geometry (and the constraints, None): the initializers' and the
# dtype's configs differ in form (Keras's carry module and registered_name).
GEOMETRY = ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
            "activation", "use_bias", "kernel_constraint", "bias_constraint")

# Layers whose get_config() keys (in order) must be Keras's: the convolutions and their relatives
CONFIG_KEY_LAYERS = ["Conv1D(2, 3)", "Conv2D(2, 3)", "Conv1D(4, 2, dilation_rate=2, groups=2)",
                     "Conv2D(2, 3, kernel_regularizer='l2')", "DepthwiseConv1D(3)",
                     "DepthwiseConv2D(3, dilation_rate=2)", "SeparableConv1D(2, 3)",
                     "SeparableConv2D(2, 3, dilation_rate=(2, 1))", "Conv1DTranspose(2, 3)",
                     "Conv2DTranspose(2, 3, dilation_rate=2)",
                     "Conv2DTranspose(2, 3, strides=2, output_padding=1)"]

KERAS_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, keras
    from keras.layers import *
    shapes_path, keys_path, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
    shapes = []
    for expr, shape in eval(open(shapes_path).read()):
        shapes.append(list(eval(expr).compute_output_shape(shape)))
    with open(shapes_path, "w") as f:
        json.dump(shapes, f)
    keys = [list(eval(expr).get_config()) for expr in json.load(open(keys_path))]
    with open(keys_path, "w") as f:
        json.dump(keys, f)
    for spec in specs:
        exprs, shape, path = eval(spec)
        data = np.load(path)
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape)] + [eval(e) for e in exprs])
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
        weights = model.get_weights()
        prediction = model.predict(data["x"], verbose=0)
        model.fit(data["x"], data["y"], batch_size=len(data["x"]), epochs=1, shuffle=False,
                  verbose=0)
        configs = [layer.get_config() for layer in model.layers]
        output_shapes = [list(layer.output.shape) for layer in model.layers]
        np.savez(path, configs=json.dumps(configs), shapes=json.dumps(output_shapes),
                 prediction=prediction, after=model.predict(data["x"], verbose=0),
                 **{f"w{i}": w for i, w in enumerate(weights)},
                 **{f"t{i}": w for i, w in enumerate(model.get_weights())})
""")


def _namespace():
    return {k: getattr(L, k) for k in dir(L) if not k.startswith("_")}


def _keras_model(name):
    exprs, shape = KERAS_MODELS[name]
    return Sequential([L.Input(shape=shape)] + [eval(e, _namespace()) for e in exprs])


def _keras_data(name):
    shape = KERAS_MODELS[name][1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + shape).astype(np.float32)
    return x, rng.standard_normal((6, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keras")
    shapes_path = directory / "shapes.txt"
    shapes_path.write_text(repr(KERAS_SHAPES))
    keys_path = directory / "keys.json"
    keys_path.write_text(json.dumps(CONFIG_KEY_LAYERS))
    results = run_keras_models(KERAS_SCRIPT, KERAS_MODELS, _keras_data, directory,
                               [str(shapes_path), str(keys_path)])
    return results, json.loads(shapes_path.read_text()), json.loads(keys_path.read_text())


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_agrees_with_keras(name, keras_results):
    keras_out = keras_results[0][name]
    x, y = _keras_data(name)
    model = _keras_model(name)
    assert [list(layer.output_shape) for layer in model.layers] == \
        json.loads(str(keras_out["shapes"]))
    for layer, keras_config in zip(model.layers, json.loads(str(keras_out["configs"]))):
        if not isinstance(layer, (L.Conv1D, L.Conv2D)):
            continue
        ours = json.loads(json.dumps(layer.get_config()))
        assert list(ours) == list(keras_config)
        assert {k: ours[k] for k in GEOMETRY} == {k: keras_config[k] for k in GEOMETRY}
    # Keras's kernels, grouped ones (kernel_size + (channels // groups, filters)) included
    assert [tuple(w.shape) for w in model.weights] == \
        [keras_out[f"w{i}"].shape for i in range(len(model.weights))]
    model.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=TARGETS[-1])
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for i, (variable, got) in enumerate(zip(model.weights, model.get_weights())):
        np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{variable.path} after one SGD step")
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["after"], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
def test_compute_output_shape_agrees_with_keras(keras_results):
    ours = [list(eval(expr, _namespace()).compute_output_shape(shape))
            for expr, shape in KERAS_SHAPES]
    assert ours == keras_results[1]


@pytest.mark.skipif(not keras_available(), reason="Keras 3 with the JAX backend is not installed")
def test_config_keys_are_keras_keys_in_keras_order(keras_results):
    """Conv1D/Conv2D (kernel_constraint and bias_constraint, None, included), the depthwise,
    separable and transposed convolutions write the keys Keras 3 writes, in its order."""
    keras_keys = keras_results[2]
    assert len(keras_keys) == len(CONFIG_KEY_LAYERS)
    for expr, keys in zip(CONFIG_KEY_LAYERS, keras_keys):
        assert list(eval(expr, _namespace()).get_config()) == keys, expr


@pytest.mark.parametrize("cls, arguments", [(L.Conv1D, dict(filters=2, kernel_size=(3,))),
                                            (L.Conv2D, dict(filters=2, kernel_size=(3, 2)))])
def test_constraint_keys_are_none_and_old_configs_without_them_load(cls, arguments):
    layer = cls(**arguments, dilation_rate=2)
    config = layer.get_config()
    assert (config["kernel_constraint"], config["bias_constraint"]) == (None, None)
    assert cls.from_config(config).get_config() == config
    old = {k: v for k, v in config.items() if not k.endswith("_constraint")}   # as saved before
    assert cls.from_config(old).get_config() == config
    assert L.deserialize({"class_name": cls.__name__, "config": old}).get_config() == config
    with pytest.raises(NotImplementedError, match="kernel_constraint"):
        cls.from_config(dict(config, kernel_constraint="non_neg"))
