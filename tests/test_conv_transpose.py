"""Conv1DTranspose and Conv2DTranspose: outputs and input, kernel and bias gradients against a direct
float64 numpy scatter on every target, the layer harness, a few training steps compiled against the
reference interpreter, Keras 3 parity (output shapes over many strides, paddings and output_paddings;
predictions and one SGD step with Keras's weights; configs; a Keras model's JSON rebuilt), config,
JSON and file round trips, and the errors of bad arguments."""
import itertools
import json
import textwrap

import numpy as np
import pytest

import kcompile
from kcompile import layers as L
from kcompile import optimizers
from kcompile.describe import describe
from kcompile.models import Sequential, load_model, model_from_json
from kcompile.utils import set_random_seed
from keras_subprocess import keras_available, run_keras_models
from layer_harness import check_fit_matches_reference, Offset, run_layer_test
from targets import TARGETS


# -- the numpy reference: each input pixel times the kernel, added into the output -----------------

def _axis(size, kernel, stride, padding, output_padding):
    """(output size, offset of the output in the uncropped scatter) of one axis, from Keras 3's
    documented arithmetic: 'valid' (size - 1) * stride + kernel + output_padding (default
    max(kernel, stride) - kernel); 'same' size * stride, or (size - 1) * stride + kernel % 2 +
    output_padding; the crop puts ceil(pad / 2) (at most kernel - 1) of the padding before."""
    if padding == "valid":
        extra = max(kernel, stride) - kernel if output_padding is None else output_padding
        return (size - 1) * stride + kernel + extra, 0
    if output_padding is None:
        out, pad = size * stride, stride + kernel - 2
    else:
        out, pad = (size - 1) * stride + kernel % 2 + output_padding, kernel + kernel % 2 - 2 + output_padding
    return out, kernel - 1 - min(-(-pad // 2), kernel - 1)


def _geometry(x_shape, kernel_shape, strides, padding, output_padding):
    output_padding = output_padding or (None, None)
    axes = [_axis(x_shape[1 + i], kernel_shape[i], strides[i], padding, output_padding[i])
            for i in range(2)]
    full = tuple((x_shape[1 + i] - 1) * strides[i] + kernel_shape[i] for i in range(2))
    return [a[0] for a in axes], [a[1] for a in axes], full


def _scatter(x, kernel, strides):
    """The uncropped transposed convolution, x[N,H,W,C] and kernel[KH,KW,F,C] -> [N,FH,FW,F]."""
    (sh, sw), (kh, kw) = strides, kernel.shape[:2]
    n, h, w, _ = x.shape
    full = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw, kernel.shape[2]))
    for i in range(h):
        for j in range(w):
            full[:, i * sh:i * sh + kh, j * sw:j * sw + kw] += np.einsum("nc,abfc->nabf", x[:, i, j],
                                                                          kernel)
    return full


def conv_transpose_numpy(x, kernel, bias, strides, padding, output_padding=None):
    x, kernel = x.astype(np.float64), kernel.astype(np.float64)
    out, offset, full_size = _geometry(x.shape, kernel.shape, strides, padding, output_padding)
    canvas = np.zeros((x.shape[0], max(out[0] + offset[0], full_size[0]),
                       max(out[1] + offset[1], full_size[1]), kernel.shape[2]))
    canvas[:, :full_size[0], :full_size[1]] = _scatter(x, kernel, strides)
    return canvas[:, offset[0]:offset[0] + out[0], offset[1]:offset[1] + out[1]] + bias


def conv_transpose_gradients(x, kernel, g, strides, padding, output_padding=None):
    """(d/dx, d/dkernel) of sum(g * conv_transpose(x, kernel)): g put back where each output entry
    came from in the uncropped scatter, then gathered as each pixel and each tap used it."""
    x, kernel = x.astype(np.float64), kernel.astype(np.float64)
    out, offset, full_size = _geometry(x.shape, kernel.shape, strides, padding, output_padding)
    canvas = np.zeros((x.shape[0], max(out[0] + offset[0], full_size[0]),
                       max(out[1] + offset[1], full_size[1]), kernel.shape[2]))
    canvas[:, offset[0]:offset[0] + out[0], offset[1]:offset[1] + out[1]] = g
    full = canvas[:, :full_size[0], :full_size[1]]
    (sh, sw), (kh, kw) = strides, kernel.shape[:2]
    dx, dkernel = np.zeros_like(x), np.zeros_like(kernel)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            block = full[:, i * sh:i * sh + kh, j * sw:j * sw + kw]          # [N,KH,KW,F]
            dx[:, i, j] = np.einsum("nabf,abfc->nc", block, kernel)
            dkernel += np.einsum("nabf,nc->abfc", block, x[:, i, j])
    return dx, dkernel


def dilate(kernel, dilation):
    """kernel[KH,KW,...] with d - 1 zeros between its taps on each of the first two axes: the
    kernel whose scatter is the dilated transposed convolution's."""
    (kh, kw), (dh, dw) = kernel.shape[:2], dilation
    dilated = np.zeros(((kh - 1) * dh + 1, (kw - 1) * dw + 1) + kernel.shape[2:], kernel.dtype)
    dilated[::dh, ::dw] = kernel
    return dilated


def test_the_numpy_gradients_are_the_adjoints_of_the_numpy_forward():
    """<y(x, k), g> = <x, dx> = <k, dk> (y is linear in x and in k), with finite differences too."""
    rng = np.random.default_rng(0)
    for strides, padding, output_padding, kernel_size in [((2, 3), "same", None, (3, 4)),
                                                          ((3, 2), "valid", (2, 1), (2, 3)),
                                                          ((2, 2), "same", (1, 0), (4, 1))]:
        x = rng.standard_normal((2, 3, 4, 2))
        kernel = rng.standard_normal(kernel_size + (3, 2))
        y = conv_transpose_numpy(x, kernel, 0.0, strides, padding, output_padding)
        g = rng.standard_normal(y.shape)
        dx, dkernel = conv_transpose_gradients(x, kernel, g, strides, padding, output_padding)
        total = np.sum(y * g)
        np.testing.assert_allclose([np.sum(x * dx), np.sum(kernel * dkernel)], [total, total])
        step = np.zeros_like(x)
        step[1, 2, 0, 1] = 1e-6
        moved = conv_transpose_numpy(x + step, kernel, 0.0, strides, padding, output_padding)
        np.testing.assert_allclose(np.sum((moved - y) * g) / 1e-6, dx[1, 2, 0, 1], rtol=1e-6)


# -- outputs and gradients on every target ----------------------------------------------------------


# (rank, kernel_size, strides, padding, output_padding[, dilation_rate]): rank 2 on (3, 4, 2)
# images, rank 1 on (5, 2)
CASES = [
    (2, (3, 3), (1, 1), "valid", None),
    (2, (3, 3), (2, 2), "same", None),
    (2, (2, 3), (2, 1), "valid", (1, 0)),
    (2, (3, 2), (3, 2), "same", (2, 1)),
    (2, (4, 4), (2, 2), "same", (0, 1)),
    (2, (1, 1), (2, 3), "valid", None),        # the default output_padding fills the stride
    (2, (2, 2), (3, 3), "valid", None),
    (1, (3,), (2,), "same", None),
    (1, (4,), (3,), "valid", (2,)),
    (1, (2,), (2,), "same", (1,)),
    (1, (1,), (1,), "valid", None),
    # dilated (Keras: strides 1 only, so output_padding None or 0); 'same' with an even dilated
    # extent and output_padding 0 gives in - 1 steps
    (2, (3, 3), (1, 1), "valid", None, (2, 2)),
    (2, (2, 3), (1, 1), "same", None, (3, 2)),
    (2, (2, 2), (1, 1), "same", (0, 0), (3, 1)),
    (2, (3, 2), (1, 1), "valid", (0, 0), (1, 4)),
    (2, (1, 3), (1, 1), "same", (0, 0), (5, 2)),
    (1, (3,), (1,), "same", None, (2,)),
    (1, (2,), (1,), "same", (0,), (3,)),
    (1, (4,), (1,), "valid", None, (2,)),
]


def _case_layer(rank, kernel_size, strides, padding, output_padding, dilation=None, **kwargs):
    cls = L.Conv2DTranspose if rank == 2 else L.Conv1DTranspose
    return cls(3, kernel_size if rank == 2 else kernel_size[0], strides=strides, padding=padding,
               output_padding=output_padding, dilation_rate=dilation or 1, **kwargs)


def _as_image(x, rank):
    return x if rank == 2 else x[:, None]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_output_and_gradients_match_numpy(case, target):
    rank, kernel_size, strides, padding, output_padding = case[:5]
    dilation = case[5] if len(case) > 5 else (1,) * rank
    shape = (3, 4, 2) if rank == 2 else (5, 2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    kernel = rng.standard_normal(kernel_size + (3, 2)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    image_dilation = dilation if rank == 2 else (1,) + dilation
    image_kernel = dilate(kernel if rank == 2 else kernel[None], image_dilation)
    image_strides = strides if rank == 2 else (1,) + strides
    image_padding = output_padding if rank == 2 or output_padding is None else (None,) + output_padding
    want = conv_transpose_numpy(_as_image(x, rank), image_kernel, bias, image_strides, padding,
                                image_padding)
    if rank == 1:
        want = want[:, 0]
    model = Sequential([L.Input(shape), Offset(), _case_layer(*case)])
    assert model.output_shape == (None,) + want.shape[1:]
    model.set_weights([np.zeros(shape, np.float32), kernel, bias])
    model.compile(optimizer=optimizers.SGD(learning_rate=1.0), loss="mse", target=target)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)

    y = rng.standard_normal(want.shape).astype(np.float32)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    g = 2.0 * (want - y) / want.size          # d mse / d output
    dx, dkernel = conv_transpose_gradients(_as_image(x, rank), image_kernel, _as_image(g, rank),
                                           image_strides, padding, image_padding)
    dkernel = dkernel[::image_dilation[0], ::image_dilation[1]]     # the taps' own gradients
    if rank == 1:
        dx, dkernel = dx[:, 0], dkernel[0]
    offset, new_kernel, new_bias = model.get_weights()
    np.testing.assert_allclose(-offset, dx.sum(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kernel - new_kernel, dkernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bias - new_bias, g.sum(axis=tuple(range(g.ndim - 1))), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("make_layer, input_shape, output_shape", [
    (lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu"), (3, 4, 2),
     (6, 8, 4)),
    (lambda: L.Conv2DTranspose(2, (2, 3), strides=(3, 1), output_padding=(1, 0), activation="tanh"),
     (2, 3, 3), (6, 5, 2)),
    (lambda: L.Conv1DTranspose(3, 4, strides=2, padding="same"), (5, 2), (10, 3)),
    (lambda: L.Conv1DTranspose(2, 3, strides=3, output_padding=1, kernel_regularizer="l2"), (4, 3),
     (13, 2)),
    (lambda: L.Conv2DTranspose(2, (2, 3), dilation_rate=(3, 2), activation="relu"), (3, 2, 2),
     (6, 6, 2)),
    (lambda: L.Conv1DTranspose(3, 2, dilation_rate=3, padding="same"), (5, 2), (5, 3)),
])
def test_layer_harness(make_layer, input_shape, output_shape):
    run_layer_test(make_layer, input_shape, output_shape, 2)


def test_without_bias_the_layer_has_the_kernel_only():
    run_layer_test(lambda: L.Conv2DTranspose(2, 2, strides=2, use_bias=False), (3, 3, 1), (6, 6, 2), 1)
    layer = L.Conv1DTranspose(5, 3)
    layer.build((None, 4, 2))
    assert [w.shape for w in layer.weights] == [(3, 5, 2), (5,)]     # (kernel, filters, channels)


def _decoder_2d():
    return Sequential([L.Input((6, 6, 2)), L.Conv2D(3, 3, strides=2, padding="same", activation="relu"),
                       L.Conv2DTranspose(3, 3, strides=2, padding="same", activation="relu"),
                       L.Conv2DTranspose(2, (2, 3), strides=(2, 1), output_padding=(1, 0)),
                       L.Conv2DTranspose(2, (2, 3), dilation_rate=(2, 1), padding="same"),
                       L.Flatten(), L.Dense(2)])


def _decoder_1d():
    return Sequential([L.Input((5, 2)), L.Conv1DTranspose(3, 3, strides=2, activation="tanh"),
                       L.Conv1DTranspose(2, 2, strides=2, padding="same", output_padding=1),
                       L.Conv1DTranspose(2, 3, dilation_rate=2, activation="relu"),
                       L.GlobalAveragePooling1D(), L.Dense(2)])


@pytest.mark.parametrize("make_model", [_decoder_2d, _decoder_1d], ids=["2d", "1d"])
def test_a_few_fit_steps_compiled_agree_with_the_reference(make_model):
    check_fit_matches_reference(make_model)


# -- configs, JSON, files -------------------------------------------------------------------------

ALL_LAYERS = [lambda: L.Conv2DTranspose(2, 3), lambda: L.Conv1DTranspose(2, 3),
              lambda: L.Conv2DTranspose(4, (2, 3), strides=(2, 1), padding="SAME", output_padding=(1, 0),
                                        activation="relu", use_bias=False, name="up"),
              lambda: L.Convolution1DTranspose(1, 2, strides=3, output_padding=2,
                                               kernel_initializer="he_normal", bias_regularizer="l1"),
              lambda: L.Conv2DTranspose(3, 1, output_padding=0, data_format="channels_last",
                                        dilation_rate=1),
              lambda: L.Conv2DTranspose(2, 3, dilation_rate=(2, 3), padding="same"),
              lambda: L.Conv1DTranspose(2, 2, dilation_rate=[4], output_padding=0)]


@pytest.mark.parametrize("index", range(len(ALL_LAYERS)))
def test_config_round_trips(index):
    layer = ALL_LAYERS[index]()
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    through_json = json.loads(json.dumps(L.serialize(layer)))
    assert L.deserialize(through_json).get_config() == config
    assert kcompile.saving.deserialize_keras_object(
        json.loads(json.dumps(kcompile.saving.serialize_keras_object(layer)))).get_config() == config


def test_config_has_keras_keys_and_defaults():
    config = L.Conv2DTranspose(4, 3).get_config()
    assert {k: v for k, v in config.items() if not k.endswith("initializer")} == {
        "name": "conv2d_transpose", "trainable": True, "dtype": "float32", "filters": 4,
        "kernel_size": (3, 3), "strides": (1, 1), "padding": "valid", "output_padding": None,
        "data_format": "channels_last", "dilation_rate": (1, 1), "activation": "linear",
        "use_bias": True, "kernel_regularizer": None, "bias_regularizer": None,
        "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}
    assert config["kernel_initializer"]["class_name"] == "GlorotUniform"
    one = L.Conv1DTranspose(2, 3, strides=2, output_padding=1).get_config()
    assert (one["name"], one["kernel_size"], one["strides"], one["output_padding"],
            one["dilation_rate"]) == ("conv1d_transpose", (3,), (2,), (1,), (1,))
    assert L.Conv2DTranspose(2, 3, dilation_rate=2).get_config()["dilation_rate"] == (2, 2)
    assert L.Conv1DTranspose(2, 3, dilation_rate=(3,)).get_config()["dilation_rate"] == (3,)


def test_model_from_json_and_save_load_keep_the_predictions(tmp_path):
    for make_model, shape in [(_decoder_2d, (6, 6, 2)), (_decoder_1d, (5, 2))]:
        set_random_seed(0)
        model = make_model()
        x = np.random.default_rng(0).standard_normal((5,) + shape).astype(np.float32)
        want = model.predict(x, verbose=0)
        clone = model_from_json(model.to_json())
        assert [a.get_config() for a in clone.layers] == [b.get_config() for b in model.layers]
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone.predict(x, verbose=0), want)
        model.compile(optimizer="adam", loss="mse", target="reference")
        model.save(tmp_path / "m.keras")
        loaded = load_model(tmp_path / "m.keras")
        assert [a.get_config() for a in loaded.layers] == [b.get_config() for b in model.layers]
        # (compiled for the reference interpreter, as saved; `want` came from the default target)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


def test_the_description_covers_the_arguments():
    """The compile cache's key (kcompile.describe) tells the layers' arguments apart."""
    def model(**kwargs):
        arguments = dict(filters=2, kernel_size=3, strides=2, padding="valid", output_padding=None)
        arguments.update(kwargs)
        return Sequential([L.Input((4, 4, 1)), L.Conv2DTranspose(**arguments)])
    base = describe(list(model().layers))
    assert describe(list(model().layers)) == base
    for changed in [model(filters=3), model(kernel_size=2), model(strides=3), model(padding="same"),
                    model(output_padding=1)]:
        assert describe(list(changed.layers)) != base
    undilated = describe(list(model(strides=1).layers))
    assert describe(list(model(strides=1, dilation_rate=2).layers)) != undilated


def test_the_layers_are_in_the_namespace():
    for name in ("Conv1DTranspose", "Conv2DTranspose"):
        assert name in L.__all__ and name in L._CLASSES and getattr(L, name).__name__ == name
    assert L.Convolution1DTranspose is L.Conv1DTranspose
    assert L.Convolution2DTranspose is L.Conv2DTranspose
    assert {"Convolution1DTranspose", "Convolution2DTranspose"} <= set(L.__all__)
    with pytest.raises(AttributeError, match="Conv3DTranspose.*not implemented"):
        L.Conv3DTranspose


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: L.Conv2DTranspose(0, 3), ValueError, r"`filters`.*filters=0"),
    (lambda: L.Conv2DTranspose(2.5, 3), ValueError, r"`filters`"),
    (lambda: L.Conv2DTranspose(2, 0), ValueError, r"`kernel_size`.*kernel_size=0"),
    (lambda: L.Conv2DTranspose(2, (3, 3, 3)), ValueError, r"`kernel_size`"),
    (lambda: L.Conv1DTranspose(2, 3, strides=0), ValueError, r"`strides`.*strides=0"),
    (lambda: L.Conv1DTranspose(2, 3, padding="causal"), ValueError, r"`padding`.*'causal'"),
    (lambda: L.Conv2DTranspose(2, 3, padding="full"), ValueError, r"`padding`.*'full'"),
    (lambda: L.Conv2DTranspose(2, 3, strides=2, output_padding=2), ValueError,
     r"`output_padding`.*less than the stride.*axis 0"),
    (lambda: L.Conv2DTranspose(2, 3, strides=(3, 1), output_padding=(2, 1)), ValueError,
     r"`output_padding`.*axis 1 output_padding is 1 but strides is 1"),
    (lambda: L.Conv1DTranspose(2, 3, strides=2, output_padding=-1), ValueError,
     r"`output_padding`.*non-negative.*output_padding=-1"),
    (lambda: L.Conv2DTranspose(2, 3, strides=2, output_padding=(1, 1, 1)), ValueError,
     r"`output_padding`.*tuple of 2"),
    # Keras refuses strides > 1 with dilation_rate > 1 in its transposed convolutions
    (lambda: L.Conv2DTranspose(2, 3, strides=(2, 1), dilation_rate=(1, 2)), ValueError,
     r"`strides > 1` not supported in conjunction with `dilation_rate > 1`.*strides=\(2, 1\).*"
     r"dilation_rate=\(1, 2\)"),
    (lambda: L.Conv1DTranspose(2, 3, strides=2, dilation_rate=2), ValueError,
     r"`strides > 1`.*`dilation_rate > 1`"),
    (lambda: L.Conv1DTranspose(2, 3, dilation_rate=2, output_padding=1), ValueError,
     r"`output_padding`.*less than the stride"),
    (lambda: L.Conv2DTranspose(2, 3, dilation_rate=0), ValueError,
     r"`dilation_rate`.*positive.*dilation_rate=0"),
    (lambda: L.Conv1DTranspose(2, 3, dilation_rate=(2, 2)), ValueError, r"`dilation_rate`"),
    (lambda: L.Conv2DTranspose(2, 3, data_format="channels_first"), NotImplementedError,
     r"channels_last.*images of shape"),
    (lambda: L.Conv1DTranspose(2, 3, data_format="channels_first"), NotImplementedError,
     r"sequences of shape \(batch, steps, channels\)"),
    (lambda: L.Conv2DTranspose(2, 3, data_format="nhwc"), ValueError, r"`data_format`"),
    (lambda: L.Conv2DTranspose(2, 3, kernel_constraint="non_neg"), NotImplementedError,
     r"kernel_constraint"),
    (lambda: L.Conv1DTranspose(2, 3, bias_constraint="non_neg"), NotImplementedError,
     r"bias_constraint"),
    (lambda: L.Conv2DTranspose(2, 3, groups=2), ValueError, r"groups"),
])
def test_bad_arguments_are_refused_naming_them(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("layer, shape, match", [
    (lambda: L.Conv2DTranspose(2, 3), (4, 3), r"needs images of shape.*Reshape\(\(4, 3, 1\)\)"),
    (lambda: L.Conv1DTranspose(2, 3), (4, 3, 2), r"needs sequences of shape"),
    (lambda: L.Conv1DTranspose(2, 3), (4,), r"needs sequences of shape.*Reshape\(\(4, 1\)\)"),
    # 'same' with an even kernel and output_padding 0: (1 - 1) * 2 + 2 % 2 + 0 = 0 steps
    (lambda: L.Conv1DTranspose(2, 2, strides=2, padding="same", output_padding=0), (1, 3),
     r"empty output"),
    # the dilated extent (2 - 1) * 3 + 1 = 4 is even: (1 - 1) + 4 % 2 + 0 = 0 steps again
    (lambda: L.Conv1DTranspose(2, 2, dilation_rate=3, padding="same", output_padding=0), (1, 3),
     r"dilation_rate=\(3,\).*empty output"),
])
def test_bad_inputs_are_refused_when_the_model_is_built(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        Sequential([L.Input(shape), layer()])


def test_inputs_with_other_channels_are_refused_after_build():
    layer = L.Conv2DTranspose(2, 3)
    layer.build((None, 4, 4, 3))
    with pytest.raises(ValueError, match=r"expected 3 input channels.*\(None, 4, 4, 2\)"):
        layer.compute_output_shape((None, 4, 4, 2))


# -- Keras 3 parity -------------------------------------------------------------------------------

# (Keras layer expressions, written alike in both APIs; input shape; one SGD step compared too)
KERAS_MODELS = {
    "images": (["Conv2D(3, 3, strides=2, padding='same', activation='relu')",
                "Conv2DTranspose(3, 3, strides=2, padding='same', activation='relu')",
                "Conv2DTranspose(2, (2, 3), strides=(2, 1), output_padding=(1, 0))",
                "Flatten()", "Dense(2)"], (6, 5, 2), True),
    "images_same_output_padding": (
        ["Conv2DTranspose(3, (4, 3), strides=(3, 2), padding='same', output_padding=(2, 1), "
         "use_bias=False)", "Convolution2DTranspose(2, 1, strides=2, activation='tanh')",
         "Conv2DTranspose(2, (2, 2), strides=(3, 3))", "Flatten()", "Dense(2)"], (3, 2, 2), True),
    "sequences": (["Conv1DTranspose(3, 3, strides=2, padding='same', activation='tanh')",
                   "Conv1DTranspose(2, 4, strides=3, output_padding=2)",
                   "Convolution1DTranspose(2, 2, strides=2, padding='same', output_padding=1)",
                   "Flatten()", "Dense(2)"], (5, 2), True),
    "dilated_images": (["Conv2DTranspose(3, 3, dilation_rate=2, activation='relu')",
                        "Conv2DTranspose(3, (2, 3), dilation_rate=(3, 2), padding='same')",
                        "Conv2DTranspose(2, (2, 2), dilation_rate=(1, 3), padding='same', "
                        "output_padding=0, activation='tanh')",
                        "Conv2DTranspose(2, (3, 1), dilation_rate=(2, 5), output_padding=(0, 0))",
                        "Flatten()", "Dense(2)"], (3, 2, 2), True),
    "dilated_sequences": (["Conv1DTranspose(3, 3, dilation_rate=2, padding='same')",
                           "Conv1DTranspose(2, 2, dilation_rate=3, padding='same', output_padding=0, "
                           "activation='tanh')",
                           "Convolution1DTranspose(2, 4, dilation_rate=2)",
                           "Flatten()", "Dense(2)"], (4, 2), True),
}

def _shape_cases():
    """compute_output_shape of many layers and inputs (sizes 1 too): (expression, input shape)."""
    cases = []
    for rank, kernels, strides in [(2, [(1, 2), (3, 4), (2, 2), (5, 5)], [(1, 1), (2, 3), (4, 2)]),
                                   (1, [(1,), (2,), (3,), (6,)], [(1,), (2,), (5,)])]:
        for kernel, stride, padding, extra, size in itertools.product(
                kernels, strides, ["valid", "same"], [None, "zero", "max"], [1, 3]):
            output_padding = {None: None, "zero": (0,) * rank,
                              "max": tuple(s - 1 for s in stride)}[extra]
            cls = "Conv2DTranspose" if rank == 2 else "Conv1DTranspose"
            shape = (size, 4, 1) if rank == 2 else (size, 1)
            cases.append((f"{cls}(2, {kernel}, strides={stride}, padding={padding!r}, "
                          f"output_padding={output_padding})", shape))
    # dilated: strides 1 (output_padding None or 0), and strides 2 that Keras refuses
    for rank, kernels, dilations in [(2, [(1, 2), (3, 4), (2, 2)], [(2, 1), (3, 3), (1, 4)]),
                                     (1, [(1,), (2,), (3,)], [(2,), (3,), (5,)])]:
        for kernel, dilation, stride, padding, output_padding, size in itertools.product(
                kernels, dilations, [1, 2], ["valid", "same"], [None, 0], [1, 3]):
            cls = "Conv2DTranspose" if rank == 2 else "Conv1DTranspose"
            shape = (size, 4, 1) if rank == 2 else (size, 1)
            cases.append((f"{cls}(2, {kernel}, strides={stride}, padding={padding!r}, "
                          f"output_padding={output_padding}, dilation_rate={dilation})", shape))
    return cases


SHAPE_CASES = _shape_cases()


def _layer_from(expr):
    return eval(expr, {k: getattr(L, k) for k in dir(L) if not k.startswith("_")})


KERAS_SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, keras
    from keras.layers import *
    spec_path, shapes_path, *specs = sys.argv[1:]
    results = []
    for expr, shape in json.load(open(spec_path)):
        try:
            layer = eval(expr)
            results.append(list(layer.compute_output_shape((None,) + tuple(shape))))
        except Exception as error:
            results.append(repr(error))
    json.dump(results, open(shapes_path, "w"))
    for spec in specs:
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
        np.savez(path, configs=json.dumps(configs), shapes=json.dumps(shapes), json=model.to_json(),
                 **{f"w{i}": w for i, w in enumerate(weights)}, **results)
""")


def _keras_model(name):
    exprs, shape, _ = KERAS_MODELS[name]
    return Sequential([L.Input(shape=shape)] + [_layer_from(e) for e in exprs])


def _keras_data(name):
    shape = KERAS_MODELS[name][1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + shape).astype(np.float32)
    return x, rng.standard_normal((6, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_results(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keras")
    (directory / "shapes_in.json").write_text(json.dumps(SHAPE_CASES))
    results = run_keras_models(KERAS_SCRIPT, KERAS_MODELS, _keras_data, directory,
                               [str(directory / "shapes_in.json"), str(directory / "shapes.json")])
    results["shapes"] = json.loads((directory / "shapes.json").read_text())
    return results


def _comparable(config):
    """A config without dtype (Keras's is a DTypePolicy) and with the initializers as class name
    and the arguments kcompile has (Keras 3.15 adds module, registered_name and input_axes=None)."""
    config = {k: v for k, v in json.loads(json.dumps(config)).items() if k != "dtype"}
    for key in ("kernel_initializer", "bias_initializer"):
        config[key] = (config[key]["class_name"], {k: v for k, v in config[key]["config"].items()
                                                   if v is not None})
    return config


needs_keras = pytest.mark.skipif(not keras_available(),
                                 reason="Keras 3 with the JAX backend is not installed")


@needs_keras
def test_output_shapes_agree_with_keras(keras_results):
    assert len(keras_results["shapes"]) == len(SHAPE_CASES)
    for (expr, shape), keras_shape in zip(SHAPE_CASES, keras_results["shapes"]):
        if "`strides > 1` not supported" in str(keras_shape):      # Keras refuses the arguments
            with pytest.raises(ValueError, match="`strides > 1` not supported"):
                _layer_from(expr)
            continue
        layer = _layer_from(expr)
        if isinstance(keras_shape, list) and min(keras_shape[1:]) > 0:
            assert list(layer.compute_output_shape((None,) + shape)) == keras_shape, (expr, shape)
        else:      # Keras computes an empty (or no) output: kcompile refuses it
            with pytest.raises(ValueError, match="empty output"):
                layer.compute_output_shape((None,) + shape)


@needs_keras
@pytest.mark.parametrize("name", sorted(KERAS_MODELS))
def test_agrees_with_keras(name, keras_results):
    keras_out = keras_results[name]
    x, y = _keras_data(name)
    model = _keras_model(name)
    shapes = json.loads(str(keras_out["shapes"]))
    assert [list(layer.output_shape) for layer in model.layers] == shapes
    for layer, keras_config in zip(model.layers, json.loads(str(keras_out["configs"]))):
        if "Transpose" not in type(layer).__name__:
            continue
        keras_config["name"] = layer.name      # (Keras numbers names per process)
        assert _comparable(layer.get_config()) == _comparable(keras_config), type(layer).__name__
    model.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse", target=TARGETS[-1])
    np.testing.assert_allclose(model.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for i, (variable, got) in enumerate(zip(model.weights, model.get_weights())):
        np.testing.assert_allclose(got, keras_out[f"t{i}"], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{variable.path} after one SGD step")
    # Keras's own JSON of the model rebuilds in kcompile and predicts what Keras does
    rebuilt = model_from_json(str(keras_out["json"]))
    rebuilt.set_weights([keras_out[f"w{i}"] for i in range(len(model.weights))])
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), keras_out["prediction"], rtol=1e-4,
                               atol=1e-5)
