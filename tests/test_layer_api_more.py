"""What a Keras 3 user reads off layers after building a model: `layer.input` / `layer.output`
(symbolic tensors of the built model), `layer.dtype_policy`, a variable's `constraint` /
`aggregation` / `synchronization`, eager calls on integer arrays, and `pop()` on an empty model.
Expected values are Keras 3's documented (and observed, Keras 3.15 on JAX) behaviour, written out
by hand; numeric results against numpy."""
import numpy as np

import kcompile
import pytest

from kcompile import layers as L
from kcompile.layers import Input
from kcompile.models import Sequential, clone_model


def _model_with_input():
    return Sequential([Input((4,), name="features"), L.Dense(3, name="a"), L.Dense(2, name="b")])


def test_layer_input_and_output_are_the_symbolic_tensors_of_the_built_model():
    model = _model_with_input()
    a, b = model.layers
    # Keras: a.input is model.inputs[0]; b.input is a.output; b.output is model.outputs[0]
    assert a.input.shape == (None, 4) and a.input.dtype == "float32"
    assert a.input.name == model.inputs[0].name == "features"
    assert a.output.shape == (None, 3) and b.input.shape == (None, 3)
    assert b.output.shape == (None, 2) == model.outputs[0].shape
    assert b.output.dtype == "float32"


def test_layer_input_and_output_after_build_or_first_call():
    model = Sequential([L.Dense(3), L.Flatten(), L.Dense(2)])
    with pytest.raises(AttributeError, match="never been called"):
        model.layers[0].output
    model.build((None, 5))
    assert [layer.output.shape for layer in model.layers] == [(None, 3), (None, 3), (None, 2)]
    assert model.layers[0].input.shape == (None, 5)
    called = Sequential([L.Dense(3), L.Dense(2)])
    called(np.ones((2, 5), np.float32))
    assert called.layers[1].input.shape == (None, 3)
    assert called.layers[1].output.shape == (None, 2)


def test_layer_input_and_output_of_a_layer_in_no_model_are_attribute_errors():
    # Keras: "The layer dense has never been called and thus has no defined output."
    dense = L.Dense(3)
    assert not hasattr(dense, "output") and not hasattr(dense, "input")
    dense(np.ones((2, 4), np.float32))     # an eager call does not give it one either (as Keras)
    with pytest.raises(AttributeError, match="never been called.*no defined output"):
        dense.output
    with pytest.raises(AttributeError, match="never been called.*no defined input"):
        dense.input


def test_layer_output_follows_pop_and_add():
    model = _model_with_input()
    popped = model.pop()
    assert model.layers[-1].output.shape == (None, 3)
    assert not hasattr(popped, "output")      # it belongs to no model now
    model.add(L.Dense(7, name="c"))
    assert model.layers[-1].input.shape == (None, 3)
    assert model.layers[-1].output.shape == (None, 7)


def test_input_layer_output_and_models_still_work_after_copies():
    model = _model_with_input()
    clone = clone_model(model)
    assert clone.layers[1].output.shape == (None, 2)
    assert clone.inputs[0].shape == (None, 4)
    np.testing.assert_equal(clone.predict(np.ones((3, 4), np.float32), verbose=0).shape, (3, 2))


def test_dtype_policy():
    dense = L.Dense(2)
    policy = dense.dtype_policy
    # Keras: <DTypePolicy "float32">, with name, compute_dtype and variable_dtype 'float32'
    assert repr(policy) == '<DTypePolicy "float32">'
    assert (policy.name, policy.compute_dtype, policy.variable_dtype) == ("float32",) * 3
    assert policy == _model_with_input().dtype_policy
    assert policy.get_config() == {"name": "float32"}
    assert type(policy).from_config(policy.get_config()) == policy
    with pytest.raises(ValueError, match="float32"):
        type(policy)("mixed_float16")
    # Keras's top-level name
    assert kcompile.DTypePolicy("float32") == policy and "DTypePolicy" in kcompile.__all__


def test_variable_constraint_aggregation_synchronization():
    kernel = _model_with_input().layers[0].kernel
    # Keras 3's defaults for a layer weight made without a constraint
    assert kernel.constraint is None
    assert kernel.aggregation == "none"
    assert kernel.synchronization == "auto"


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, bool])
def test_eager_call_of_a_layer_with_weights_on_integer_inputs(dtype):
    # Keras: integer inputs meet the float32 kernel as float32 (JAX promotes int @ float32)
    dense = L.Dense(2, activation="relu")
    x = (np.arange(6).reshape(2, 3) % 2).astype(dtype)
    out = np.asarray(dense(x))
    assert out.dtype == np.float32
    expected = np.maximum(x.astype(np.float64) @ dense.kernel.numpy() + dense.bias.numpy(), 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_eager_call_of_conv_and_embedding_on_integer_inputs():
    conv = L.Conv1D(2, 2, use_bias=False)
    x = np.array([[[1], [2], [3], [4]]], np.int32)
    out = np.asarray(conv(x))
    kernel = conv.kernel.numpy()            # (2, 1, 2)
    expected = np.stack([x[0, i:i + 2, :].reshape(-1) @ kernel.reshape(2, 2) for i in range(3)])
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    embedding = L.Embedding(10, 3)
    ids = np.array([[1, 9], [0, 4]], np.int64)
    np.testing.assert_array_equal(np.asarray(embedding(ids)), embedding.embeddings.numpy()[ids])


def test_eager_call_of_a_layer_without_weights_keeps_integers():
    # Keras: ReLU on int32 gives int32
    out = np.asarray(L.ReLU()(np.array([[-1, 2]], np.int32)))
    np.testing.assert_array_equal(out, [[0, 2]])
    assert out.dtype.kind == "i"


def test_pop_of_an_empty_model_raises_index_error_as_keras_3():
    model = Sequential()
    with pytest.raises(IndexError):       # Keras 3 (list.pop)
        model.pop()
    with pytest.raises(TypeError, match="no layers"):   # Keras 2's type, still caught
        model.pop()
    model = Sequential([Input((3,)), L.Dense(2)])
    model.pop()
    with pytest.raises(IndexError):
        model.pop()
